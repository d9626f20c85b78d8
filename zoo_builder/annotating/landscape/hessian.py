"""Loss-landscape curvature from Hessian-vector products: top eigenvalue and trace.

The reference protocol (PyHessian, REFERENCE §3) runs power iteration for the top eigenvalue
and Hutchinson's estimator for the trace, each up to 100 products with a 1e-3 relative-change
stopping rule. Here the same quantities come from better estimators on the same operator:

* :func:`lanczos_top_eigenvalue`: Lanczos with full reorthogonalization, stopped on the Ritz
  residual bound, which is a real error bound rather than a change between iterates. Power
  iteration converges like (lambda_2 / lambda_1)^k; Lanczos like the Chebyshev rate in
  sqrt(gap), which is what makes it several times cheaper on Hessians with a small gap.
* :func:`hutchpp_trace`: Hutch++ (Meyer, Musco, Musco, Woodruff 2021). Neural-network
  Hessians have a few large outlier eigenvalues (about one per class); Hutch++ computes their
  part of the trace exactly from a sketch and leaves Hutchinson only the flat remainder, whose
  variance is far smaller.
* :func:`krylov_deflated_trace`: the same deflation with a Lanczos basis in place of the
  sketch: half the products per deflated dimension, and a better subspace. The top-eigenvalue
  Lanczos run already builds one, so :func:`hessian_metrics` gets both quantities from one
  Krylov basis plus a few Hutchinson samples.

The reference estimators are here too (:func:`power_iteration_top_eigenvalue`,
:func:`hutchinson_trace`), with the reference's sign bug fixed: its relative-change test
divides by ``trace + 1e-6`` and so stops after two samples whenever the trace is negative;
every stopping rule here divides by absolute values.

:class:`HessianOperator` is the Hessian of the mean cross-entropy of a classifier over a fixed
data set; the estimators accept any symmetric operator with ``dim``, ``matvec`` and
``n_hvps`` (see :class:`SymmetricOperator`), so they are tested on matrices with known spectra.
:func:`hessian_metrics` is the entry point the annotation pipeline calls per data subset, and
:func:`fixed_subset` draws the seeded subset it is called on.

Seed-batched: :class:`StackedHessianOperator` holds the models of a grid point (one
architecture, the same data) stacked, and computes their products in one vmapped pass;
:func:`stacked_hessian_metrics` and :func:`stacked_lanczos_top_eigenvalue` run every model's
estimators on it in lockstep. The estimators are written once, as coroutines that yield the
vectors they need multiplied (:data:`Steps`), so each model runs the same code on the same
probe vectors whether its products come alone or stacked.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import (Callable, Generator, Iterator, Literal, Protocol, Sequence, TypeVar,
                    runtime_checkable)

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

Which = Literal["LA", "LM"]
LossFn = Callable[[Tensor, Tensor], Tensor]
T = TypeVar("T")

#: An estimator written as a coroutine: it yields what it needs multiplied by the Hessian (a
#: flat vector for one product, a (dim, k) block for k products), is sent each product back,
#: and returns its result. :func:`_run` serves one operator; :func:`_run_stacked` serves one
#: estimator per model from a :class:`StackedHessianOperator`. Either way a model runs the
#: same code on the same probe vectors; only how its products are computed differs.
Steps = Generator[Tensor, Tensor, T]

#: Defaults, chosen on the test networks and the benchmark (benchmarks/hessian.py, a trained
#: ResNet-18 on digits): Lanczos to a Ritz residual of 1e-3 |lambda| (its true error is far
#: smaller); for the trace a deflation space of 16 dimensions (more than the ~10 outlier
#: eigenvalues of a 10-class problem), then Hutchinson samples on the remainder until their
#: standard error is 1.5 % of |trace| (5 % is then over 3 standard errors), at most 200
#: products in all. On the benchmark model the Krylov-deflated trace of
#: :func:`hessian_metrics` then takes about 31 products (45 at most over 40 seeds), every
#: run within 5 % of the exact trace.
DEFAULT_EIG_RTOL = 1e-3
DEFAULT_EIG_MAX_ITER = 100
DEFAULT_TRACE_HVPS = 200
DEFAULT_TRACE_TARGET_RSE = 0.015
DEFAULT_TRACE_SKETCH = 16
DEFAULT_TRACE_KRYLOV = 16


@runtime_checkable
class SymmetricOperator(Protocol):
    """What the estimators need: a symmetric linear map on flat vectors of length ``dim``.

    ``n_hvps`` counts products done. An operator may also offer ``matmat(V)`` for a
    (dim, k) block (one product per column, sharing work between columns) and ``device``
    (where its vectors live); without them the estimators loop over ``matvec`` on the CPU.
    """

    dim: int
    n_hvps: int

    def matvec(self, v: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class EigenEstimate:
    """An estimate of an extreme eigenvalue.

    ``uncertainty`` is an absolute error estimate: for Lanczos the Ritz residual bound
    |beta_k s_k| and for power iteration the residual norm ||Hv - theta v||; either way some
    eigenvalue lies within it of ``value``. ``history[i]`` is the estimate after i + 1
    products; ``converged`` says whether the stopping rule was met before ``max_iter``.
    """

    value: float
    uncertainty: float
    n_hvps: int
    converged: bool
    history: tuple[float, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class TraceEstimate:
    """An estimate of the trace; ``uncertainty`` is the standard error of its random part.

    ``history[i]`` is the estimate after the (i + 1)-th Hutchinson sample (for Hutch++, after
    its sketch and i + 1 samples on the deflated remainder); ``converged`` says whether a
    stopping rule was met (always True for a fixed budget).
    """

    value: float
    uncertainty: float
    n_hvps: int
    converged: bool
    history: tuple[float, ...] = field(default=(), repr=False)


# ----------------------------------------------------------------------------- the operator


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, and restore each one's own mode afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


class MatrixOperator:
    """A formed symmetric matrix as an operator, counting products: exact references in
    tests and benchmarks. Products are computed in the matrix's dtype (float32 storage halves
    memory) and returned in the vector's."""

    def __init__(self, matrix: Tensor):
        self.matrix = matrix
        self.dim = matrix.shape[0]
        self.n_hvps = 0

    def matvec(self, v: Tensor) -> Tensor:
        self.n_hvps += 1
        return (self.matrix @ v.to(self.matrix.dtype)).to(v.dtype)

    def matmat(self, vectors: Tensor) -> Tensor:
        self.n_hvps += vectors.shape[1]
        return (self.matrix @ vectors.to(self.matrix.dtype)).to(vectors.dtype)


class HessianOperator:
    """The Hessian of the mean cross-entropy of ``model`` over all of ``images``/``labels``.

    ``loss_fn(outputs, labels)`` may replace cross-entropy (e.g. MSE for a regression zoo); it
    must return the mean over the samples it is given, so chunks can be weighted by size.

    The loss is evaluated in eval mode (BatchNorm uses its running statistics, which are never
    changed; dropout is off); each submodule's train/eval mode is restored after every
    product. Only parameters with ``requires_grad`` count: ``dim`` is their total size, and
    vectors are flattened in ``model.parameters()`` order.

    A product runs over the data in chunks of ``chunk_size`` samples: per chunk, the gradient
    is taken with ``create_graph=True`` and differentiated once more against the vector
    (double backward, no functorch, so BatchNorm's in-place ops are no issue), and the chunk's
    Hessian-vector product enters the sum weighted by its share of the samples. Each chunk's
    graph is freed before the next, so memory is bounded by one chunk and does not grow with
    the number of products. Images may stay on the CPU; each chunk is moved to the model's
    device.

    Precision: the product is computed in the parameters' dtype (float32 for the zoos); the
    chunk contributions are summed in the dtype of the vector passed in (the estimators pass
    float64). ``n_hvps`` counts products, one per vector over the whole data set.
    """

    def __init__(self, model: nn.Module, images: Tensor, labels: Tensor, chunk_size: int = 256,
                 loss_fn: LossFn = F.cross_entropy):
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"images and labels differ in length: {images.shape[0]} images, "
                             f"{labels.shape[0]} labels")
        if images.shape[0] == 0:
            raise ValueError("the Hessian needs at least one sample; got an empty data set")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of samples, got {chunk_size}")
        self.model = model
        self.images = images
        self.labels = labels
        self.chunk_size = int(chunk_size)
        self.loss_fn = loss_fn
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"{type(model).__name__} has no parameters with requires_grad; "
                             "there is no Hessian to compute")
        self.dim = sum(p.numel() for p in self.params)
        self.n_hvps = 0

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (and the estimators keep their vectors)."""
        return self.params[0].device

    @property
    def n_samples(self) -> int:
        return self.images.shape[0]

    def matvec(self, v: Tensor) -> Tensor:
        """H @ v for a flat vector ``v`` of length ``dim``; returned in v's dtype and device."""
        if v.ndim != 1:
            raise ValueError(f"matvec takes a flat vector, got shape {tuple(v.shape)}")
        return self.matmat(v[:, None])[:, 0]

    def matmat(self, vectors: Tensor) -> Tensor:
        """H @ V for a (dim, k) block: k products sharing each chunk's forward and backward."""
        if vectors.ndim != 2 or vectors.shape[0] != self.dim:
            raise ValueError(f"expected a ({self.dim}, k) block of vectors, got shape "
                             f"{tuple(vectors.shape)}")
        k = vectors.shape[1]
        out = torch.zeros_like(vectors)
        if k == 0:
            return out
        columns = [self._unflatten(vectors[:, j]) for j in range(k)]
        n = self.n_samples
        with _eval_mode(self.model), torch.enable_grad():
            for start in range(0, n, self.chunk_size):
                x = self.images[start:start + self.chunk_size].to(self.device)
                y = self.labels[start:start + self.chunk_size].to(self.device)
                loss = self.loss_fn(self.model(x).float(), y)
                grads = torch.autograd.grad(loss, self.params, create_graph=True,
                                            allow_unused=True)
                pairs = [(g, i) for i, g in enumerate(grads) if g is not None and g.requires_grad]
                weight = x.shape[0] / n
                for j, column in enumerate(columns):
                    if not pairs:  # the loss is (at most) linear in every parameter here
                        break
                    dot = sum((g * column[i]).sum() for g, i in pairs)
                    hv = torch.autograd.grad(dot, self.params, retain_graph=j < k - 1,
                                             allow_unused=True)
                    out[:, j] += weight * self._flatten(hv).to(out)
                del loss, grads, pairs  # free this chunk's graph before the next
        self.n_hvps += k
        return out

    def _unflatten(self, v: Tensor) -> list[Tensor]:
        v = v.to(device=self.device, dtype=self.params[0].dtype)
        pieces, offset = [], 0
        for p in self.params:
            pieces.append(v[offset:offset + p.numel()].view_as(p).to(p.dtype))
            offset += p.numel()
        return pieces

    def _flatten(self, tensors: tuple[Tensor | None, ...]) -> Tensor:
        return torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1)
                          for t, p in zip(tensors, self.params)])


class ClosureHessianOperator:
    """The Hessian of ``loss(model)``, a loss that is not a mean over independent samples.

    A PINN's training loss mixes a residual term, which differentiates the network with
    respect to its inputs, with initial and boundary terms on other points; it cannot be cut
    into chunks of (input, label) pairs the way :class:`HessianOperator` does. ``loss`` is
    called with the model (in eval mode, each submodule's mode restored afterwards) under
    ``torch.enable_grad()`` and must return a scalar built with a differentiable graph (e.g.
    ``ConvectionProblem.loss``, whose input derivatives use ``create_graph`` when gradients
    are on). Each product is one gradient with ``create_graph=True`` and one more backward;
    ``n_hvps`` and the flattening follow :class:`HessianOperator`.
    """

    def __init__(self, model: nn.Module, loss: Callable[[nn.Module], Tensor]):
        self.model = model
        self.loss = loss
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"{type(model).__name__} has no parameters with requires_grad; "
                             "there is no Hessian to compute")
        self.dim = sum(p.numel() for p in self.params)
        self.n_hvps = 0

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    def matvec(self, v: Tensor) -> Tensor:
        if v.ndim != 1:
            raise ValueError(f"matvec takes a flat vector, got shape {tuple(v.shape)}")
        return self.matmat(v[:, None])[:, 0]

    def matmat(self, vectors: Tensor) -> Tensor:
        if vectors.ndim != 2 or vectors.shape[0] != self.dim:
            raise ValueError(f"expected a ({self.dim}, k) block of vectors, got shape "
                             f"{tuple(vectors.shape)}")
        k = vectors.shape[1]
        out = torch.zeros_like(vectors)
        if k == 0:
            return out
        with _eval_mode(self.model), torch.enable_grad():
            loss = self.loss(self.model)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
            pairs = [(g, i) for i, g in enumerate(grads) if g is not None and g.requires_grad]
            for j in range(k):
                if not pairs:
                    break
                column = self._unflatten(vectors[:, j])
                dot = sum((g * column[i]).sum() for g, i in pairs)
                hv = torch.autograd.grad(dot, self.params, retain_graph=j < k - 1,
                                         allow_unused=True)
                out[:, j] = self._flatten(hv).to(out)
            del loss, grads, pairs
        self.n_hvps += k
        return out

    # the same parameter layout as HessianOperator's
    _unflatten = HessianOperator._unflatten
    _flatten = HessianOperator._flatten


# ------------------------------------------------------------------------- shared helpers


def _device(op: SymmetricOperator) -> torch.device:
    return torch.device(getattr(op, "device", "cpu"))


def _apply(op: SymmetricOperator, vectors: Tensor) -> Tensor:
    """H @ V column by column, through ``matmat`` where the operator has one."""
    matmat = getattr(op, "matmat", None)
    if matmat is not None:
        return matmat(vectors)
    return torch.stack([op.matvec(vectors[:, j]) for j in range(vectors.shape[1])], dim=1)


def _run(op: SymmetricOperator, steps: Steps[T]) -> T:
    """Run an estimator's steps on one operator and return its result."""
    try:
        request = next(steps)
        while True:
            request = steps.send(op.matvec(request) if request.ndim == 1
                                 else _apply(op, request))
    except StopIteration as stop:
        return stop.value


def _generator(seed: int) -> torch.Generator:
    """A CPU generator: the same seed draws the same vectors on every device."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def _rademacher(n: int, k: int, generator: torch.Generator, dtype: torch.dtype,
                device: torch.device) -> Tensor:
    signs = torch.randint(0, 2, (n, k), generator=generator, dtype=torch.int8)
    return (signs.to(device=device, dtype=dtype) * 2 - 1)


def _gaussian_unit(n: int, generator: torch.Generator, dtype: torch.dtype,
                   device: torch.device) -> Tensor:
    v = torch.randn(n, generator=generator, dtype=dtype).to(device)
    return v / v.norm()


def _check_budget(name: str, value: int, minimum: int = 1) -> int:
    if int(value) < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


# --------------------------------------------------------------------- top eigenvalue


@dataclass
class _LanczosRun:
    """A Lanczos run: the eigenvalue estimate, and the orthonormal Krylov basis it built."""

    estimate: EigenEstimate
    basis: list[Tensor]  # orthonormal vectors of length dim, one per step
    basis_trace: float  # tr(V^T H V) = sum of the alphas, known without further products


def _lanczos(op: SymmetricOperator, *, max_iter: int, rtol: float, which: Which, seed: int,
             dtype: torch.dtype, min_iter: int = 0) -> _LanczosRun:
    """Lanczos with full reorthogonalization until the Ritz residual bound meets ``rtol``.

    Runs at least ``min_iter`` steps (to build a basis for deflation) and at most
    ``max_iter``; the estimate is the one after the last step.
    """
    _check_which(which)
    return _run(op, _lanczos_steps(op.dim, _device(op), max_iter=max_iter, rtol=rtol,
                                   which=which, seed=seed, dtype=dtype, min_iter=min_iter))


def _check_which(which: str) -> None:
    if which not in ("LA", "LM"):
        raise ValueError(f"which must be 'LA' (largest algebraic) or 'LM' (largest magnitude), "
                         f"got {which!r}")


def _lanczos_steps(n: int, device: torch.device, *, max_iter: int, rtol: float, which: Which,
                   seed: int, dtype: torch.dtype, min_iter: int = 0) -> Steps[_LanczosRun]:
    """:func:`_lanczos` as :data:`Steps` on an operator of size ``n`` on ``device``."""
    q = _gaussian_unit(n, _generator(seed), dtype, device)
    basis: list[Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    history: list[float] = []
    theta, residual, converged = 0.0, math.inf, False
    for _ in range(min(max_iter, n)):
        basis.append(q)
        w = (yield q).to(device=device, dtype=dtype)
        alpha = float(w @ q)
        alphas.append(alpha)
        # Full reorthogonalization against the whole basis, twice ("twice is enough"); it
        # also removes the three-term recurrence's components, so those are not subtracted.
        for _ in range(2):
            for b in basis:
                w -= (b @ w) * b
        beta = float(w.norm())
        if not (math.isfinite(alpha) and math.isfinite(beta)):
            # The loss is not finite at these weights (a diverged model): no curvature.
            estimate = EigenEstimate(math.nan, math.inf, len(history) + 1, False, tuple(history))
            return _LanczosRun(estimate, basis, math.nan)
        tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
        ritz_values, ritz_vectors = torch.linalg.eigh(tridiagonal)
        index = int(ritz_values.argmax() if which == "LA" else ritz_values.abs().argmax())
        theta = float(ritz_values[index])
        residual = abs(beta * float(ritz_vectors[-1, index]))
        history.append(theta)
        converged = residual <= rtol * abs(theta)
        if beta <= 1e-12 * max(abs(a) for a in alphas):
            # An invariant subspace: the Ritz values are exact eigenvalues of H restricted to
            # it. With a random start this means H has no other directions to explore.
            converged = True
            break
        if converged and len(basis) >= min_iter:
            break
        betas.append(beta)
        q = w / beta
    estimate = EigenEstimate(theta, residual, len(history), converged, tuple(history))
    return _LanczosRun(estimate, basis, sum(alphas))


def lanczos_top_eigenvalue(
    op: SymmetricOperator,
    *,
    max_iter: int = DEFAULT_EIG_MAX_ITER,
    rtol: float = DEFAULT_EIG_RTOL,
    which: Which = "LA",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> EigenEstimate:
    """The top eigenvalue by Lanczos with full reorthogonalization, one product per step.

    ``which="LA"`` (default) targets the largest algebraic eigenvalue, the sharpness the
    phase taxonomy means; ``which="LM"`` the eigenvalue of largest magnitude (with its sign),
    which is what the reference's power iteration converges to. On trained networks the two
    coincide; they differ when a negative eigenvalue dominates (e.g. far from a minimum).

    After step k the Ritz value theta of the tridiagonal matrix T_k has the residual bound
    r = |beta_k s_k| (s_k the last component of its eigenvector of T_k): some eigenvalue lies
    within r of theta. The run stops once r <= rtol * |theta|; r is reported as
    ``uncertainty``. The actual error is usually far smaller (of order r^2 / gap).
    The basis is kept in ``dtype`` on the operator's device: memory ``max_iter * dim``
    numbers at most (pass ``torch.float32`` to halve it on large models).
    """
    max_iter = _check_budget("max_iter", max_iter)
    if not rtol > 0:
        raise ValueError(f"rtol must be positive, got {rtol}")
    return _lanczos(op, max_iter=max_iter, rtol=rtol, which=which, seed=seed,
                    dtype=dtype).estimate


def power_iteration_top_eigenvalue(
    op: SymmetricOperator,
    *,
    max_iter: int = 100,
    rtol: float = 1e-3,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> EigenEstimate:
    """The reference protocol (PyHessian): power iteration on the Rayleigh quotient.

    It converges to the eigenvalue of largest magnitude, with its sign. It stops when the
    Rayleigh quotient changes by less than ``rtol`` relative to the previous one (PyHessian's
    rule, with |previous| + 1e-6 in the denominator). ``uncertainty`` is the residual norm
    ||Hv - theta v|| of the last iterate, a bound the reference does not report.
    """
    max_iter = _check_budget("max_iter", max_iter)
    device = _device(op)
    v = _gaussian_unit(op.dim, _generator(seed), dtype, device)
    eigenvalue: float | None = None
    history: list[float] = []
    residual, converged = math.inf, False
    for _ in range(max_iter):
        hv = op.matvec(v).to(device=device, dtype=dtype)
        rayleigh = float(hv @ v)
        residual = float((hv - rayleigh * v).norm())
        history.append(rayleigh)
        norm = hv.norm()
        if eigenvalue is not None and abs(eigenvalue - rayleigh) / (abs(eigenvalue) + 1e-6) < rtol:
            converged = True
            break
        eigenvalue = rayleigh
        if norm == 0:  # H v = 0: v is an eigenvector of eigenvalue 0
            converged = True
            break
        v = hv / norm
    return EigenEstimate(history[-1], residual, len(history), converged, tuple(history))


# ------------------------------------------------------------------------------- trace


def _standard_error(samples: list[float]) -> float:
    if len(samples) < 2:
        return math.inf
    mean = sum(samples) / len(samples)
    variance = sum((s - mean) ** 2 for s in samples) / (len(samples) - 1)
    return math.sqrt(variance / len(samples))


def hutchinson_trace(
    op: SymmetricOperator,
    *,
    max_iter: int = 100,
    rtol: float = 1e-3,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> TraceEstimate:
    """The reference protocol (PyHessian): Hutchinson with Rademacher vectors.

    The trace is the running mean of v^T H v; the run stops when the mean changes by less
    than ``rtol`` relative to the previous mean, as in PyHessian, except that the denominator
    is |previous| + 1e-6 (PyHessian's ``trace + 1e-6`` stops at once on a negative trace).
    ``uncertainty`` is the standard error of the mean (inf after a single sample).
    """
    max_iter = _check_budget("max_iter", max_iter)
    device, generator = _device(op), _generator(seed)
    samples: list[float] = []
    history: list[float] = []
    trace, converged = 0.0, False
    for _ in range(max_iter):
        v = _rademacher(op.dim, 1, generator, dtype, device)[:, 0]
        samples.append(float(op.matvec(v).to(device=device, dtype=dtype) @ v))
        mean = sum(samples) / len(samples)
        history.append(mean)
        if abs(mean - trace) / (abs(trace) + 1e-6) < rtol:
            converged = True
            break
        trace = mean
    return TraceEstimate(history[-1], _standard_error(samples), len(samples), converged,
                         tuple(history))


def _deflated_hutchinson(op: SymmetricOperator, basis: list[Tensor], basis_trace: float,
                         **options) -> tuple[TraceEstimate, int]:
    """:func:`_deflated_hutchinson_steps` on ``op``."""
    return _run(op, _deflated_hutchinson_steps(op.dim, _device(op), basis, basis_trace,
                                               **options))


def _deflated_hutchinson_steps(
    n: int,
    device: torch.device,
    basis: list[Tensor],
    basis_trace: float,
    *,
    max_samples: int,
    target_rse: float | None,
    min_samples: int,
    generator: torch.Generator,
    block_size: int,
    dtype: torch.dtype,
) -> Steps[tuple[TraceEstimate, int]]:
    """tr(V^T H V) (given) plus Hutchinson on (I - VV^T) H (I - VV^T), V's columns ``basis``.

    The trace splits exactly as tr(H) = tr(V^T H V) + tr((I - P) H (I - P)) for any
    orthonormal V (P = VV^T), so with Rademacher vectors drawn independently of V the sum is
    unbiased. Returns the estimate and the number of samples drawn (its only products);
    with a ``target_rse`` sampling stops once it is met, without one all ``max_samples`` are
    drawn.
    """
    samples: list[float] = []
    history: list[float] = []
    total, converged = 0.0, target_rse is None
    while len(samples) < max_samples:
        size = min(block_size, max_samples - len(samples))
        if target_rse is not None:  # one sample at a time once the target can be checked
            size = min(size, max(1, min_samples - len(samples)))
        g = _rademacher(n, size, generator, dtype, device)
        for b in basis:  # vector by vector: no (dim, k) copy of the basis
            g -= torch.outer(b, b @ g)
        hg = (yield g).to(g)
        for value in (g * hg).sum(dim=0).tolist():
            samples.append(value)
            total += value
            history.append(basis_trace + total / len(samples))
        if (target_rse is not None and len(samples) >= max(2, min_samples)
                and _standard_error(samples) <= target_rse * abs(history[-1])):
            converged = True
            break
    if not samples:  # the basis spans everything: the trace is exact
        return TraceEstimate(basis_trace, 0.0, 0, True, (basis_trace,)), 0
    estimate = TraceEstimate(history[-1], _standard_error(samples), len(samples), converged,
                             tuple(history))
    return estimate, len(samples)


def _check_trace_options(n_hvps: int, deflation: int, target_rse: float | None,
                         name: str, cost: int) -> None:
    if deflation < 0 or cost * deflation + 2 > n_hvps:
        raise ValueError(f"{name} {deflation} leaves fewer than 2 of the n_hvps={n_hvps} "
                         f"products for the Hutchinson part (need {cost} * {name} + 2 <= n_hvps)")
    if target_rse is not None and not target_rse > 0:
        raise ValueError(f"target_rse must be positive (or None for a fixed budget), got "
                         f"{target_rse}")


def hutchpp_trace(
    op: SymmetricOperator,
    *,
    n_hvps: int = DEFAULT_TRACE_HVPS,
    sketch_size: int | None = None,
    target_rse: float | None = DEFAULT_TRACE_TARGET_RSE,
    min_samples: int = 10,
    seed: int = 0,
    block_size: int = 16,
    dtype: torch.dtype = torch.float64,
) -> TraceEstimate:
    """The trace by Hutch++ with Rademacher vectors, for any symmetric operator.

    With a sketch of k = ``sketch_size`` vectors S: Q = orth(H S) (k products); tr(Q^T H Q)
    exactly (k products); plus Hutchinson on the deflated remainder (I - QQ^T) H (I - QQ^T)
    with further vectors drawn independently of S, so the sum is unbiased. ``uncertainty``
    is the standard error of the Hutchinson part from its sample variance; the deflated part
    has no random error.

    Adaptive (default, ``target_rse`` set): the remainder is sampled until its standard error
    is at most ``target_rse * |trace|`` (after at least ``min_samples`` samples) or until
    ``n_hvps`` products in all; ``converged`` says whether the target was reached. The
    default sketch is ``min(DEFAULT_TRACE_SKETCH, n_hvps // 3)``: enough for the outlier
    eigenvalues of a classifier's Hessian (about one per class). Stopping on the sample
    variance biases the estimate slightly; ``min_samples`` keeps that far below the error.

    Fixed budget (``target_rse=None``): exactly ``n_hvps`` products, by default split in
    thirds as in the paper (k = ``n_hvps // 3``). Memory: k + ``block_size`` vectors of
    ``dim`` in ``dtype``.
    """
    n_hvps = _check_budget("n_hvps", n_hvps, 3)
    block_size = _check_budget("block_size", block_size)
    if sketch_size is not None:
        k = int(sketch_size)
    elif target_rse is None:
        k = n_hvps // 3
    else:
        k = min(DEFAULT_TRACE_SKETCH, n_hvps // 3)
    _check_trace_options(n_hvps, k, target_rse, "sketch_size", 2)
    n, device, generator = op.dim, _device(op), _generator(seed)
    k = min(k, n)
    q = torch.zeros((n, 0), dtype=dtype, device=device)
    q_trace = 0.0
    if k > 0:
        sketch = _rademacher(n, k, generator, dtype, device)
        q = torch.linalg.qr(_apply(op, sketch).to(device=device, dtype=dtype))[0]
        del sketch
        for start in range(0, k, block_size):
            block = q[:, start:start + block_size]
            q_trace += float((block * _apply(op, block).to(block)).sum())
    estimate, samples = _deflated_hutchinson(
        op, list(q.unbind(dim=1)), q_trace, max_samples=n_hvps - 2 * k, target_rse=target_rse,
        min_samples=min_samples, generator=generator, block_size=block_size, dtype=dtype)
    return TraceEstimate(estimate.value, estimate.uncertainty, 2 * k + samples,
                         estimate.converged, estimate.history)


def krylov_deflated_trace(
    op: SymmetricOperator,
    *,
    n_hvps: int = DEFAULT_TRACE_HVPS,
    krylov_size: int = DEFAULT_TRACE_KRYLOV,
    target_rse: float | None = DEFAULT_TRACE_TARGET_RSE,
    min_samples: int = 10,
    seed: int = 0,
    block_size: int = 16,
    dtype: torch.dtype = torch.float64,
) -> TraceEstimate:
    """The trace by Hutchinson deflated with a Lanczos (Krylov) basis instead of a sketch.

    Hutch++ spends 2k products to deflate a k-dimensional subspace. Here k = ``krylov_size``
    Lanczos steps (from a Gaussian start) give an orthonormal basis V and, for free,
    tr(V^T H V) = the sum of the Lanczos alphas; Hutchinson then samples the remainder
    (I - VV^T) H (I - VV^T) with Rademacher vectors independent of V, so the estimate is
    unbiased. A Krylov space also captures the outlier eigenvectors better than one sketch
    of the same size, so each deflated dimension costs half as much and removes more
    variance (the idea of Krylov-aware trace estimation, Chen & Hallman 2023).
    :func:`hessian_metrics` reuses its top-eigenvalue Lanczos run as this basis.

    ``n_hvps``, ``target_rse`` and ``min_samples`` work as in :func:`hutchpp_trace`.
    """
    n_hvps = _check_budget("n_hvps", n_hvps, 3)
    block_size = _check_budget("block_size", block_size)
    _check_trace_options(n_hvps, krylov_size, target_rse, "krylov_size", 1)
    basis: list[Tensor] = []
    basis_trace, steps = 0.0, 0
    if krylov_size > 0:
        run = _lanczos(op, max_iter=krylov_size, rtol=0.0, which="LA", seed=seed, dtype=dtype)
        basis, basis_trace, steps = run.basis, run.basis_trace, run.estimate.n_hvps
    estimate, samples = _deflated_hutchinson(
        op, basis, basis_trace, max_samples=n_hvps - steps, target_rse=target_rse,
        min_samples=min_samples, generator=_generator(seed + 1), block_size=block_size,
        dtype=dtype)
    return TraceEstimate(estimate.value, estimate.uncertainty, steps + samples,
                         estimate.converged, estimate.history)


# ----------------------------------------------------------------------- the entry point


def fixed_subset(images: Tensor, labels: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random subset of ``n`` samples, drawn without replacement, in data order.

    The Hessian of a model is measured on a fixed subset of its training data: the same seed
    gives the same samples for every model of a zoo. If ``n`` is at least the data set's size
    the whole data set is returned.
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images and labels differ in length: {images.shape[0]} images, "
                         f"{labels.shape[0]} labels")
    if n < 1:
        raise ValueError(f"a subset needs at least one sample, got n={n}")
    total = images.shape[0]
    if n >= total:
        return images, labels
    index = torch.randperm(total, generator=_generator(seed))[:n].sort().values
    return images[index.to(images.device)], labels[index.to(labels.device)]


def hessian_metrics(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    seed: int = 0,
    chunk_size: int = 256,
    eig_rtol: float = DEFAULT_EIG_RTOL,
    eig_max_iter: int = DEFAULT_EIG_MAX_ITER,
    which: Which = "LA",
    trace_hvps: int = DEFAULT_TRACE_HVPS,
    trace_krylov_size: int = DEFAULT_TRACE_KRYLOV,
    trace_target_rse: float | None = DEFAULT_TRACE_TARGET_RSE,
    trace_min_samples: int = 10,
    loss_fn: LossFn = F.cross_entropy,
    dtype: torch.dtype = torch.float64,
) -> dict[str, float]:
    """Top eigenvalue and trace of the loss Hessian of ``model`` on one data subset.

    ``images`` are what the model takes as input (already normalized); the loss is the mean
    cross-entropy over all of them, in eval mode (see :class:`HessianOperator`). One Lanczos
    run gives the top eigenvalue (as :func:`lanczos_top_eigenvalue`; it runs at least
    ``trace_krylov_size`` steps) and its basis deflates the trace (as
    :func:`krylov_deflated_trace`), whose Hutchinson part samples until its standard error is
    ``trace_target_rse * |trace|`` or the trace has used ``trace_hvps`` products.

    Values are raw (not logs). ``hessian_top_ev_uncertainty`` is the Lanczos residual bound,
    ``hessian_trace_uncertainty`` the trace's standard error. ``hessian_top_ev_hvps`` counts
    the Lanczos steps; ``hessian_trace_hvps`` counts every product the trace used, those
    Lanczos steps included, so it is also the total cost of the call.

    Memory beyond the model: the Lanczos basis, one ``dim`` vector per step in ``dtype``
    (at least ``trace_krylov_size``, at most ``eig_max_iter``); pass ``torch.float32`` to
    halve it on large models.
    """
    op = HessianOperator(model, images, labels, chunk_size=chunk_size, loss_fn=loss_fn)
    return operator_hessian_metrics(
        op, seed=seed, eig_rtol=eig_rtol, eig_max_iter=eig_max_iter, which=which,
        trace_hvps=trace_hvps, trace_krylov_size=trace_krylov_size,
        trace_target_rse=trace_target_rse, trace_min_samples=trace_min_samples, dtype=dtype)


def operator_hessian_metrics(
    op: SymmetricOperator,
    *,
    seed: int = 0,
    eig_rtol: float = DEFAULT_EIG_RTOL,
    eig_max_iter: int = DEFAULT_EIG_MAX_ITER,
    which: Which = "LA",
    trace_hvps: int = DEFAULT_TRACE_HVPS,
    trace_krylov_size: int = DEFAULT_TRACE_KRYLOV,
    trace_target_rse: float | None = DEFAULT_TRACE_TARGET_RSE,
    trace_min_samples: int = 10,
    dtype: torch.dtype = torch.float64,
) -> dict[str, float]:
    """:func:`hessian_metrics` on any symmetric operator (e.g. a
    :class:`ClosureHessianOperator` for a PINN loss, or a :class:`HessianOperator` over token
    windows): the same keys, budgets and estimators."""
    options = dict(eig_rtol=eig_rtol, eig_max_iter=eig_max_iter, which=which,
                   trace_hvps=trace_hvps, trace_krylov_size=trace_krylov_size,
                   trace_target_rse=trace_target_rse, trace_min_samples=trace_min_samples,
                   dtype=dtype)
    _check_metrics_options(**options)
    return _run(op, _hessian_metrics_steps(op.dim, _device(op), seed=seed, **options))


def _check_metrics_options(*, eig_rtol: float, eig_max_iter: int, which: Which, trace_hvps: int,
                           trace_krylov_size: int, trace_target_rse: float | None,
                           **_: object) -> None:
    _check_budget("eig_max_iter", eig_max_iter)
    if not eig_rtol > 0:
        raise ValueError(f"eig_rtol must be positive, got {eig_rtol}")
    _check_which(which)
    _check_trace_options(trace_hvps, trace_krylov_size, trace_target_rse, "trace_krylov_size", 1)


def _hessian_metrics_steps(n: int, device: torch.device, *, seed: int, eig_rtol: float,
                           eig_max_iter: int, which: Which, trace_hvps: int,
                           trace_krylov_size: int, trace_target_rse: float | None,
                           trace_min_samples: int, dtype: torch.dtype
                           ) -> Steps[dict[str, float]]:
    """:func:`operator_hessian_metrics` as :data:`Steps`: one Lanczos run, whose basis
    deflates the Hutchinson samples of the trace."""
    run = yield from _lanczos_steps(n, device, max_iter=max(eig_max_iter, trace_krylov_size),
                                    rtol=eig_rtol, which=which, seed=seed, dtype=dtype,
                                    min_iter=trace_krylov_size)
    steps = run.estimate.n_hvps
    trace, samples = yield from _deflated_hutchinson_steps(
        n, device, run.basis, run.basis_trace,
        max_samples=max(trace_hvps - steps, trace_min_samples), target_rse=trace_target_rse,
        min_samples=trace_min_samples, generator=_generator(seed + 1), block_size=16,
        dtype=dtype)
    return {
        "hessian_top_ev": run.estimate.value,
        "hessian_top_ev_uncertainty": run.estimate.uncertainty,
        "hessian_top_ev_hvps": steps,
        "hessian_trace": trace.value,
        "hessian_trace_uncertainty": trace.uncertainty,
        "hessian_trace_hvps": steps + samples,
    }


# ------------------------------------------------------------------- seed-batched products


class NotStackableError(ValueError):
    """The Hessians of some models cannot be computed as one stacked operator; says why."""


class StackedHessianOperator:
    """The Hessians of M models of one architecture on the same data, computed together.

    Model i's Hessian is that of ``HessianOperator(models[i], images, labels, chunk_size,
    loss_fn)``: the same loss, chunks, eval mode (BatchNorm on its running statistics, dropout
    off; the models are not touched, the stacked copy's template is put in eval mode) and
    parameter order. The models' parameters and buffers are stacked
    (:class:`zoo_builder.building.batched.StackedModels`, as seed-batched training stacks
    them); per chunk, one ``vmap`` of ``functional_call`` gives every model's loss on the shared
    inputs, the gradient of their sum is every model's own gradient (built with
    ``create_graph``), and each product is one more backward of that stacked graph, as in
    :class:`HessianOperator`. A convolution becomes one grouped convolution over the models.

    :meth:`matmat` takes one (dim, k) block per model, stacked as (m, dim, k), for the models
    it names (those whose estimators still run); ``n_hvps`` counts products per model, summed.
    :func:`stacked_hessian_metrics` and :func:`stacked_lanczos_top_eigenvalue` run the
    estimators of every model on it.
    """

    def __init__(self, models: Sequence[nn.Module], images: Tensor, labels: Tensor,
                 chunk_size: int = 256, loss_fn: LossFn = F.cross_entropy):
        from zoo_builder.building.batched import StackedModels  # the training code's stacking

        if len(models) < 1:
            raise ValueError("a stacked Hessian needs at least one model")
        # the per-model operator checks the data and what is trainable
        first = HessianOperator(models[0], images, labels, chunk_size, loss_fn)
        _check_same_architecture(models)
        self.images, self.labels = images, labels
        self.chunk_size, self.loss_fn = first.chunk_size, loss_fn
        self.names = [name for name, p in models[0].named_parameters() if p.requires_grad]
        self.dim = first.dim
        self.n_models = len(models)
        self.stacked = StackedModels.stack(models).train(False)
        self.n_hvps = 0
        self._kept: tuple[list[int], list[Tensor], list[tuple[Tensor, int]]] | None = None
        template = self.stacked.template

        def loss(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor,
                 y: Tensor) -> Tensor:
            return self.loss_fn(functional_call(template, (params, buffers), (x,)).float(), y)

        self._losses = vmap(loss, in_dims=(0, 0, None, None), randomness="error")

    @classmethod
    def from_operators(cls, ops: Sequence[SymmetricOperator]) -> "StackedHessianOperator":
        """The operators of several models stacked: they must be :class:`HessianOperator` s
        over the same data, chunks and loss whose models share an architecture; otherwise
        :class:`NotStackableError` says what differs."""
        if not ops:
            raise ValueError("no operators to stack")
        for op in ops:
            if type(op) is not HessianOperator:
                why = (" (a loss over the whole model, e.g. a PINN's input derivatives, does "
                       "not run under vmap)" if isinstance(op, ClosureHessianOperator) else "")
                raise NotStackableError(f"only HessianOperators stack, got "
                                        f"{type(op).__name__}{why}")
        first = ops[0]
        for op in ops[1:]:
            if op.chunk_size != first.chunk_size or op.loss_fn is not first.loss_fn:
                raise NotStackableError("the operators differ in their chunk size or loss")
            if not (_same_tensor(op.images, first.images)
                    and _same_tensor(op.labels, first.labels)):
                raise NotStackableError("the operators measure different data")
        return cls([op.model for op in ops], first.images, first.labels, first.chunk_size,
                   first.loss_fn)

    @property
    def device(self) -> torch.device:
        return next(iter(self.stacked.params.values())).device

    @property
    def n_samples(self) -> int:
        return self.images.shape[0]

    def matmat(self, vectors: Tensor, models: Sequence[int] | None = None) -> Tensor:
        """H_i @ V_i for each model i of ``models`` (default: all, in order), the blocks V_i
        stacked as (len(models), dim, k); k products per model sharing each chunk's stacked
        forward and gradient. Returned in the vectors' dtype and device."""
        models = list(range(self.n_models)) if models is None else [int(i) for i in models]
        if vectors.ndim != 3 or vectors.shape[:2] != (len(models), self.dim):
            raise ValueError(f"expected ({len(models)}, {self.dim}, k) blocks for models "
                             f"{models}, got shape {tuple(vectors.shape)}")
        k = vectors.shape[2]
        out = torch.zeros_like(vectors)
        if k == 0 or not models:
            return out
        n = self.n_samples
        keep = n <= self.chunk_size
        with torch.enable_grad():
            for start in range(0, n, self.chunk_size):
                trainable, pairs = self._gradients(models, start, keep)
                weight = min(self.chunk_size, n - start) / n
                for j in range(k):
                    if not pairs:  # the loss is (at most) linear in every parameter here
                        break
                    column = self._unflatten(vectors[:, :, j], trainable)
                    dot = sum((g * column[i]).sum() for g, i in pairs)
                    hv = torch.autograd.grad(dot, trainable, retain_graph=keep or j < k - 1,
                                             allow_unused=True)
                    out[:, :, j] += weight * self._flatten(hv, trainable).to(out)
                del trainable, pairs  # free this chunk's graph (unless kept) before the next
        self.n_hvps += k * len(models)
        return out

    def _gradients(self, models: list[int], start: int, keep: bool
                   ) -> tuple[list[Tensor], list[tuple[Tensor, int]]]:
        """The stacked trainable parameters of ``models`` and their gradients (with
        ``create_graph``) on the chunk at ``start``, as (gradient, parameter index) pairs.

        With one chunk (``keep``) the gradients and their graph are kept for the next call
        on the same models: products then cost one backward each. That is safe here, unlike
        in :class:`HessianOperator`, because the stacked weights are this operator's own copy,
        which nothing changes; and it costs no peak memory, since every product needs that
        graph anyway."""
        if keep and self._kept is not None and self._kept[0] == models:
            return self._kept[1], self._kept[2]
        self._kept = None  # free the graph of the models that were running before
        params, buffers = self._select(models)
        trainable = [params[name] for name in self.names]
        x = self.images[start:start + self.chunk_size].to(self.device)
        y = self.labels[start:start + self.chunk_size].to(self.device)
        losses = self._losses(params, buffers, x, y)
        # the models are independent: the gradient of the sum is each model's own
        grads = torch.autograd.grad(losses.sum(), trainable, create_graph=True, allow_unused=True)
        pairs = [(g, i) for i, g in enumerate(grads) if g is not None and g.requires_grad]
        if keep:
            self._kept = (models, trainable, pairs)
        return trainable, pairs

    def _select(self, models: list[int]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The stacked state of ``models``: the stacked leaves themselves for all models,
        else new leaves holding those rows."""
        params, buffers = self.stacked.params, self.stacked.buffers
        if models == list(range(self.n_models)):
            return params, buffers
        index = torch.tensor(models, device=self.device)
        return ({name: t[index].detach().requires_grad_(t.requires_grad)
                 for name, t in params.items()},
                {name: t[index] for name, t in buffers.items()})

    def _unflatten(self, v: Tensor, trainable: list[Tensor]) -> list[Tensor]:
        v = v.to(device=self.device, dtype=trainable[0].dtype)
        pieces, offset = [], 0
        for p in trainable:
            size = p[0].numel()
            pieces.append(v[:, offset:offset + size].reshape(p.shape).to(p.dtype))
            offset += size
        return pieces

    @staticmethod
    def _flatten(tensors: tuple[Tensor | None, ...], trainable: list[Tensor]) -> Tensor:
        return torch.cat([(t if t is not None else torch.zeros_like(p)).flatten(1)
                          for t, p in zip(tensors, trainable)], dim=1)


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
                      and bool(torch.equal(a, b)))


def _check_same_architecture(models: Sequence[nn.Module]) -> None:
    def layout(model: nn.Module) -> list[tuple]:
        return ([(name, tuple(p.shape), p.dtype, p.requires_grad)
                 for name, p in model.named_parameters()]
                + [(name, tuple(b.shape), b.dtype) for name, b in model.named_buffers()])

    first = layout(models[0])
    for index, model in enumerate(models[1:], start=1):
        if type(model) is not type(models[0]) or layout(model) != first:
            raise NotStackableError(f"model {index} ({type(model).__name__}) differs from model "
                                    f"0 ({type(models[0]).__name__}) in its parameters or "
                                    "buffers; only models of one architecture and shape stack")


def _run_stacked(op: StackedHessianOperator, runs: Sequence[Steps[T]]) -> list[T]:
    """Run one estimator per model of ``op`` (``runs[i]`` for model i) in lockstep.

    Each round computes, in one :meth:`StackedHessianOperator.matmat` for every model whose
    estimator still runs, the next columns of its pending request, as many as the narrowest
    request has left: a block of ten Hutchinson samples is served over several rounds while
    another model takes its single Lanczos steps, so no product is computed in vain. A request
    is answered once all its columns are done; a model whose estimator has finished leaves
    the stack. Returns the results in model order.
    """
    if len(runs) != op.n_models:
        raise ValueError(f"{len(runs)} estimators for {op.n_models} models")
    results: list = [None] * len(runs)
    requests: dict[int, Tensor] = {}  # each model's pending request, as a (dim, k) block
    flat: dict[int, bool] = {}  # whether it asked with a flat vector (one product)
    done: dict[int, list[Tensor]] = {}  # the products of its first columns so far

    def advance(index: int, product: Tensor | None) -> None:
        try:
            request = runs[index].send(product)  # send(None) starts a generator
            while request.ndim == 2 and request.shape[1] == 0:
                request = runs[index].send(torch.zeros_like(request))
        except StopIteration as stop:
            requests.pop(index, None)
            results[index] = stop.value
            return
        flat[index] = request.ndim == 1
        requests[index] = request[:, None] if flat[index] else request
        done[index] = []

    for index in range(len(runs)):
        advance(index, None)
    while requests:
        active = sorted(requests)
        offsets = [sum(part.shape[1] for part in done[i]) for i in active]
        width = min(requests[i].shape[1] - offset for i, offset in zip(active, offsets))
        block = torch.stack([requests[i][:, offset:offset + width].to(requests[active[0]])
                             for i, offset in zip(active, offsets)])
        products = op.matmat(block, active)
        for row, index in enumerate(active):
            done[index].append(products[row])
            if offsets[row] + width == requests[index].shape[1]:
                product = torch.cat(done[index], dim=1) if len(done[index]) > 1 \
                    else done[index][0]
                advance(index, product[:, 0] if flat[index] else product)
    return results


def _per_model(seed: int | Sequence[int], n_models: int) -> list[int]:
    seeds = [int(seed)] * n_models if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != n_models:
        raise ValueError(f"{len(seeds)} seeds for {n_models} models")
    return seeds


def stacked_hessian_metrics(
    op: StackedHessianOperator,
    *,
    seed: int | Sequence[int] = 0,
    eig_rtol: float = DEFAULT_EIG_RTOL,
    eig_max_iter: int = DEFAULT_EIG_MAX_ITER,
    which: Which = "LA",
    trace_hvps: int = DEFAULT_TRACE_HVPS,
    trace_krylov_size: int = DEFAULT_TRACE_KRYLOV,
    trace_target_rse: float | None = DEFAULT_TRACE_TARGET_RSE,
    trace_min_samples: int = 10,
    dtype: torch.dtype = torch.float64,
) -> list[dict[str, float]]:
    """:func:`operator_hessian_metrics` of every model of ``op``, in model order.

    Each model runs the same estimators with its own random vectors, drawn from ``seed`` (one
    for all models, as the annotation uses, or one per model) exactly as it would draw them
    alone, and stops by its own rules; only the products are computed together. The values
    equal the one-model path's up to the rounding of the products (the grouped kernels sum in
    another order), which may move a stopping decision by one step at a tolerance's edge.
    """
    options = dict(eig_rtol=eig_rtol, eig_max_iter=eig_max_iter, which=which,
                   trace_hvps=trace_hvps, trace_krylov_size=trace_krylov_size,
                   trace_target_rse=trace_target_rse, trace_min_samples=trace_min_samples,
                   dtype=dtype)
    _check_metrics_options(**options)
    return _run_stacked(op, [_hessian_metrics_steps(op.dim, op.device, seed=s, **options)
                             for s in _per_model(seed, op.n_models)])


def stacked_lanczos_top_eigenvalue(
    op: StackedHessianOperator,
    *,
    max_iter: int = DEFAULT_EIG_MAX_ITER,
    rtol: float = DEFAULT_EIG_RTOL,
    which: Which = "LA",
    seed: int | Sequence[int] = 0,
    dtype: torch.dtype = torch.float64,
) -> list[EigenEstimate]:
    """:func:`lanczos_top_eigenvalue` of every model of ``op``, in model order (``seed`` as in
    :func:`stacked_hessian_metrics`)."""
    max_iter = _check_budget("max_iter", max_iter)
    if not rtol > 0:
        raise ValueError(f"rtol must be positive, got {rtol}")
    _check_which(which)
    runs = _run_stacked(op, [_lanczos_steps(op.dim, op.device, max_iter=max_iter, rtol=rtol,
                                            which=which, seed=s, dtype=dtype)
                             for s in _per_model(seed, op.n_models)])
    return [run.estimate for run in runs]
