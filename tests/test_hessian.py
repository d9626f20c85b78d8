"""Hessian curvature estimators against exact answers.

The networks are small enough (about 200 parameters) to form the whole Hessian with
torch.autograd.functional.hessian, independently of HessianOperator's chunked double backward;
the estimators are also run on explicit symmetric matrices with known spectra.
"""

from __future__ import annotations

import math
import weakref

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from zoo_builder.annotating.landscape.hessian import (
    EigenEstimate,
    HessianOperator,
    SymmetricOperator,
    TraceEstimate,
    fixed_subset,
    hessian_metrics,
    hutchinson_trace,
    hutchpp_trace,
    krylov_deflated_trace,
    lanczos_top_eigenvalue,
    power_iteration_top_eigenvalue,
)

N_SAMPLES, CHUNK = 64, 24  # uneven chunks (24, 24, 16): the weighting by chunk size matters


#: Tiny networks: one thread is faster, and two spin on a shared machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))  # 227 parameters


def conv_bn() -> nn.Module:
    """A tiny CNN with BatchNorm (211 parameters); ResNet-18 at width 1 already has 2,910."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The full Hessian of the mean cross-entropy (eval mode, one batch) over trainable params."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    fixed = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for name, p in named:
            params[name] = theta[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        return F.cross_entropy(functional_call(model, {**params, **fixed}, (x,)), y)

    training = model.training
    model.eval()
    hessian = torch.autograd.functional.hessian(loss, flat).double()
    model.train(training)
    return (hessian + hessian.T) / 2


class Case:
    """A trained tiny network, its data, and its exact Hessian and spectrum."""

    def __init__(self, make, x_shape: tuple[int, ...], seed: int):
        torch.manual_seed(seed)
        self.model = make()
        self.x = torch.randn(N_SAMPLES, *x_shape)
        self.y = torch.randint(0, 3, (N_SAMPLES,))
        optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-2)
        for _ in range(150):  # train mode: BatchNorm's running statistics move off their init
            optimizer.zero_grad()
            F.cross_entropy(self.model(self.x), self.y).backward()
            optimizer.step()
        self.model.zero_grad(set_to_none=True)
        self.hessian = exact_hessian(self.model, self.x, self.y)
        self.eigenvalues = torch.linalg.eigvalsh(self.hessian)
        self.trace = float(self.hessian.trace())

    def operator(self, chunk_size: int = CHUNK) -> HessianOperator:
        return HessianOperator(self.model, self.x, self.y, chunk_size=chunk_size)


@pytest.fixture(scope="module", params=["mlp", "conv_bn"])
def case(request) -> Case:
    if request.param == "mlp":
        return Case(mlp, (10,), seed=0)
    return Case(conv_bn, (1, 8, 8), seed=1)


class Dense:
    """A symmetric matrix as an operator: only ``dim``, ``matvec`` and ``n_hvps``."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix.double()
        self.dim = matrix.shape[0]
        self.n_hvps = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.n_hvps += 1
        return self.matrix @ v


def with_spectrum(eigenvalues: list[float] | torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A dense symmetric matrix with the given eigenvalues and random eigenvectors."""
    eigenvalues = torch.as_tensor(eigenvalues, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=generator,
                                        dtype=torch.float64))[0]
    return basis @ torch.diag(eigenvalues) @ basis.T


# ---------------------------------------------------------------------------- the operator


def test_matvec_and_matmat_equal_the_exact_hessian(case):
    op = case.operator()
    assert op.dim == case.hessian.shape[0]
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(op.dim, 3, dtype=torch.float64, generator=generator)
    expected = case.hessian @ vectors
    scale = expected.norm()
    assert (op.matvec(vectors[:, 0]) - expected[:, 0]).norm() <= 1e-4 * scale
    assert (op.matmat(vectors) - expected).norm() <= 1e-4 * scale
    assert op.n_hvps == 4  # one product per vector over the whole data set


def test_operator_uses_eval_mode_and_leaves_the_model_as_it_was(case):
    model = case.model
    model.train()
    if isinstance(model[1], nn.BatchNorm2d):
        model[1].eval()  # a submodule's own mode must survive too
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    v = torch.randn(case.hessian.shape[0], dtype=torch.float64)
    product = case.operator().matvec(v)  # the eval-mode Hessian, though the model trains
    assert (product - case.hessian @ v).norm() <= 1e-4 * (case.hessian @ v).norm()
    hessian_metrics(model, case.x, case.y, chunk_size=CHUNK)
    assert [m.training for m in model.modules()] == modes
    for key, value in model.state_dict().items():  # weights and BatchNorm running statistics
        assert torch.equal(value, state[key]), key
    assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_operator_frees_each_chunks_graph():
    """No activation (hence no graph) outlives a product: memory does not grow with products."""
    model = conv_bn().eval()
    alive: list[weakref.ref] = []
    model[2].register_forward_hook(lambda m, i, out: alive.append(weakref.ref(out)))
    op = HessianOperator(model, torch.randn(40, 1, 8, 8), torch.randint(0, 3, (40,)), chunk_size=16)
    for _ in range(3):
        op.matvec(torch.randn(op.dim))
    assert len(alive) == 9  # 3 chunks per product
    assert all(ref() is None for ref in alive)


def test_operator_counts_only_trainable_parameters(case):
    model = case.model
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    try:
        op = HessianOperator(model, case.x, case.y, chunk_size=CHUNK)
        assert op.dim == case.hessian.shape[0] - frozen.numel()
        block = case.hessian[frozen.numel():, frozen.numel():]
        v = torch.randn(op.dim, dtype=torch.float64)
        assert (op.matvec(v) - block @ v).norm() <= 1e-4 * (block @ v).norm()
    finally:
        frozen.requires_grad_(True)


def test_operator_rejects_bad_input():
    model = mlp()
    with pytest.raises(ValueError, match="differ in length"):
        HessianOperator(model, torch.randn(5, 10), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        HessianOperator(model, torch.randn(0, 10), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        HessianOperator(model, torch.randn(5, 10), torch.zeros(5, dtype=torch.long), chunk_size=0)
    op = HessianOperator(model, torch.randn(5, 10), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="block"):
        op.matmat(torch.randn(op.dim + 1, 2))
    assert isinstance(op, SymmetricOperator)


# --------------------------------------------------------------- estimators on the networks


def test_lanczos_top_eigenvalue_within_1_percent_at_default_budget(case):
    op = case.operator(chunk_size=N_SAMPLES)
    exact = float(case.eigenvalues[-1])
    estimate = lanczos_top_eigenvalue(op)
    assert isinstance(estimate, EigenEstimate)
    assert estimate.converged
    assert abs(estimate.value - exact) <= 0.01 * abs(exact)
    assert abs(estimate.value - exact) <= estimate.uncertainty + 1e-6 * abs(exact)
    assert estimate.n_hvps == op.n_hvps == len(estimate.history)


def test_hutchpp_trace_within_5_percent_at_default_budget(case):
    op = case.operator(chunk_size=N_SAMPLES)
    for seed in range(3):
        before = op.n_hvps
        estimate = hutchpp_trace(op, seed=seed)
        assert isinstance(estimate, TraceEstimate)
        assert abs(estimate.value - case.trace) <= 0.05 * abs(case.trace), seed
        assert estimate.n_hvps == op.n_hvps - before


def test_krylov_deflated_trace_within_5_percent_at_default_budget(case):
    op = case.operator(chunk_size=N_SAMPLES)
    for seed in range(3):
        before = op.n_hvps
        estimate = krylov_deflated_trace(op, seed=seed)
        assert abs(estimate.value - case.trace) <= 0.05 * abs(case.trace), seed
        assert estimate.n_hvps == op.n_hvps - before


def test_hessian_metrics_match_exact_values(case):
    metrics = hessian_metrics(case.model, case.x, case.y, chunk_size=CHUNK)
    assert set(metrics) == {"hessian_top_ev", "hessian_top_ev_uncertainty", "hessian_top_ev_hvps",
                            "hessian_trace", "hessian_trace_uncertainty", "hessian_trace_hvps"}
    top = float(case.eigenvalues[-1])
    assert abs(metrics["hessian_top_ev"] - top) <= 0.01 * abs(top)
    assert abs(metrics["hessian_trace"] - case.trace) <= 0.05 * abs(case.trace)
    assert isinstance(metrics["hessian_top_ev_hvps"], int)
    assert isinstance(metrics["hessian_trace_hvps"], int)
    # one Lanczos run serves both: the trace's count includes it and is the call's total
    assert 16 <= metrics["hessian_top_ev_hvps"] < metrics["hessian_trace_hvps"] <= 200
    assert 0 < metrics["hessian_trace_uncertainty"] < 0.05 * abs(case.trace)


def test_reference_methods_agree_with_exact_on_a_network(case):
    op = case.operator(chunk_size=N_SAMPLES)
    top = power_iteration_top_eigenvalue(op)
    exact = float(case.eigenvalues[-1])
    assert abs(top.value - exact) <= 0.05 * abs(exact)  # reference rule: no error guarantee
    assert top.n_hvps == op.n_hvps
    trace = hutchinson_trace(op, max_iter=20, rtol=0.0)
    assert trace.n_hvps == 20 and not trace.converged
    assert abs(trace.value - case.trace) <= 5 * trace.uncertainty


# ----------------------------------------------------------- estimators on known spectra


def test_top_eigenvalue_which_largest_algebraic_or_magnitude():
    spectrum = torch.cat([torch.tensor([-10.0, 6.0]), torch.linspace(-1, 1, 48)])
    matrix = with_spectrum(spectrum)
    largest = lanczos_top_eigenvalue(Dense(matrix))
    assert largest.value == pytest.approx(6.0, rel=1e-3)
    magnitude = lanczos_top_eigenvalue(Dense(matrix), which="LM")
    assert magnitude.value == pytest.approx(-10.0, rel=1e-3)
    power = power_iteration_top_eigenvalue(Dense(matrix))
    assert power.value == pytest.approx(-10.0, rel=1e-2)  # power iteration finds "LM"
    with pytest.raises(ValueError, match="which"):
        lanczos_top_eigenvalue(Dense(matrix), which="SA")


def test_lanczos_needs_far_fewer_products_than_power_iteration_on_a_small_gap():
    spectrum = torch.cat([torch.tensor([10.0, 9.5]), torch.rand(198, generator=torch.Generator()
                                                                 .manual_seed(0)) * 5])
    matrix = with_spectrum(spectrum)
    lanczos = lanczos_top_eigenvalue(Dense(matrix))
    power = power_iteration_top_eigenvalue(Dense(matrix), max_iter=1000, rtol=1e-8)
    assert lanczos.converged and lanczos.value == pytest.approx(10.0, rel=1e-4)
    assert lanczos.uncertainty <= 1e-3 * 10.0
    assert 3 * lanczos.n_hvps < power.n_hvps


def test_lanczos_is_exact_on_an_invariant_subspace():
    matrix = with_spectrum([3.0] * 10 + [1.0] * 10 + [-2.0] * 10)  # three distinct eigenvalues
    op = Dense(matrix)
    estimate = lanczos_top_eigenvalue(op, rtol=1e-12)
    assert estimate.converged and estimate.n_hvps <= 4
    assert estimate.value == pytest.approx(3.0, rel=1e-10)


def test_negative_trace_does_not_stop_early_and_keeps_its_sign():
    """The reference stops after two samples on a negative trace (it tests trace + 1e-6)."""
    matrix = with_spectrum(torch.linspace(-3.0, 1.0, 200), seed=2)  # trace -200
    methods = (hutchinson_trace, lambda op, seed: hutchpp_trace(op, seed=seed),
               lambda op, seed: krylov_deflated_trace(op, seed=seed))
    for method in methods:
        negative = method(Dense(matrix), seed=3)
        positive = method(Dense(-matrix), seed=3)
        assert negative.n_hvps == positive.n_hvps > 2
        assert negative.value == pytest.approx(-positive.value)
        assert negative.value < 0
    for method in (hutchpp_trace, krylov_deflated_trace):
        assert method(Dense(-matrix)).value == pytest.approx(200.0, rel=0.05)
        assert method(Dense(matrix)).value == pytest.approx(-200.0, rel=0.05)


def test_hutchpp_is_exact_when_the_sketch_spans_the_range():
    spectrum = torch.zeros(100)
    spectrum[:5] = torch.tensor([50.0, 20.0, -7.0, 3.0, 1.0])
    op = Dense(with_spectrum(spectrum))
    estimate = hutchpp_trace(op, n_hvps=20, sketch_size=8, target_rse=None)
    assert estimate.value == pytest.approx(67.0, rel=1e-9)
    assert estimate.uncertainty < 1e-9
    assert estimate.n_hvps == op.n_hvps == 20 and estimate.converged


def test_krylov_deflated_trace_is_exact_on_a_small_invariant_subspace():
    spectrum = torch.zeros(100)
    spectrum[:3] = torch.tensor([50.0, 20.0, -7.0])  # Lanczos finds all of it in 3-4 steps
    op = Dense(with_spectrum(spectrum))
    estimate = krylov_deflated_trace(op, n_hvps=20, krylov_size=8, target_rse=None)
    assert estimate.value == pytest.approx(63.0, rel=1e-9)
    assert estimate.uncertainty < 1e-9
    assert estimate.n_hvps == op.n_hvps == 20
    assert len(estimate.history) == 16  # 4 Krylov steps; the unused ones went to the samples


def test_hutchpp_budgets_and_adaptive_stop():
    matrix = with_spectrum(torch.cat([torch.tensor([100.0, 50.0]), torch.rand(298) + 0.5]))
    op = Dense(matrix)
    fixed = hutchpp_trace(op, n_hvps=30, target_rse=None)
    assert fixed.n_hvps == op.n_hvps == 30 and len(fixed.history) == 10
    adaptive = hutchpp_trace(Dense(matrix), n_hvps=300, sketch_size=5, target_rse=0.01)
    assert adaptive.converged and adaptive.n_hvps < 300
    assert adaptive.uncertainty <= 0.01 * abs(adaptive.value)
    assert adaptive.value == pytest.approx(float(matrix.trace()), rel=0.05)
    with pytest.raises(ValueError, match="sketch_size"):
        hutchpp_trace(op, n_hvps=10, sketch_size=5)


def test_hutchpp_beats_hutchinson_on_an_outlier_spectrum():
    """With a few large outliers Hutch++ at 60 products has a far smaller error than Hutchinson."""
    spectrum = torch.cat([torch.tensor([400.0, 300.0, 200.0, 100.0]), torch.rand(396) * 0.5])
    matrix = with_spectrum(spectrum, seed=4)
    exact = float(spectrum.sum())
    hpp = [abs(hutchpp_trace(Dense(matrix), n_hvps=60, target_rse=None, seed=s).value - exact)
           for s in range(5)]
    hutch = [abs(hutchinson_trace(Dense(matrix), max_iter=60, rtol=0.0, seed=s).value - exact)
             for s in range(5)]
    krylov = [abs(krylov_deflated_trace(Dense(matrix), n_hvps=60, target_rse=None, seed=s).value
                  - exact) for s in range(5)]
    assert max(hpp) < 0.01 * exact and max(krylov) < 0.01 * exact
    assert sum(hpp) * 5 < sum(hutch)


# ------------------------------------------------------------------------------ subsets


def test_fixed_subset_is_seeded_and_without_replacement():
    images = torch.arange(100.0)[:, None].repeat(1, 3)
    labels = torch.arange(100)
    x, y = fixed_subset(images, labels, 30, seed=5)
    assert x.shape == (30, 3) and torch.equal(x[:, 0].long(), y)
    assert len(set(y.tolist())) == 30 and y.tolist() == sorted(y.tolist())
    again, _ = fixed_subset(images, labels, 30, seed=5)
    other, _ = fixed_subset(images, labels, 30, seed=6)
    assert torch.equal(x, again) and not torch.equal(x, other)
    whole, _ = fixed_subset(images, labels, 500, seed=0)
    assert whole.shape[0] == 100
    with pytest.raises(ValueError, match="at least one"):
        fixed_subset(images, labels, 0, seed=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_operator_on_gpu_matches_cpu():
    torch.manual_seed(0)
    model = conv_bn().eval()
    x, y = torch.randn(50, 1, 8, 8), torch.randint(0, 3, (50,))
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    cpu = HessianOperator(model, x, y, chunk_size=16).matvec(v)
    gpu_op = HessianOperator(model.cuda(), x, y, chunk_size=16)  # images stay on the CPU
    assert gpu_op.device.type == "cuda"
    gpu = gpu_op.matvec(v.cuda())
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).norm() <= 1e-4 * cpu.norm()
    metrics = hessian_metrics(model, x.cuda(), y.cuda())
    assert math.isfinite(metrics["hessian_trace"]) and metrics["hessian_top_ev"] > 0
