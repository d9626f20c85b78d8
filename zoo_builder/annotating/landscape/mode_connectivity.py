"""Mode connectivity of two seeds along a trained quadratic Bezier curve (REFERENCE §3).

The curve (Garipov et al. 2018) joins the weights of two trained models of one architecture::

    θ(t) = (1-t)² θ_a + 2t(1-t) θ_m + t² θ_b,   t in [0, 1]

with both ends fixed and the middle θ_m trainable, initialised on the straight line
((θ_a + θ_b) / 2, which makes the untrained curve the straight line (1-t) θ_a + t θ_b).
θ_m is trained with SGD on the expected training loss along the curve: each mini-batch draws
t ~ U(0, 1) and takes a step on cross-entropy plus ``weight_decay / 2 * ||θ(t)||²`` (the L2 on
the curve point, as the reference), with BatchNorm in train mode (batch statistics). The
forward pass is ``torch.func.functional_call`` of one working copy of ``model_a`` with the
curve point's parameters, so no module is copied per step.

Budget: curve training is counted in **optimizer steps**, not epochs, so that a zoo on a small
data set gets as much curve training as one on CIFAR. The reference trains 10 epochs at batch
128 on CIFAR's 50,000 images, about 3,900 steps (:data:`REFERENCE_CURVE_STEPS`); 10 epochs of
the 898 digits training images were 70 steps, which left spurious barriers. A spec can set a
smaller budget where the curve loss is shown to have converged (``ZooSpec.curve_steps``).
Mini-batches come from successive shuffles of the training set, full batches only.

Convergence is checked and stored: the mean training loss along the curve over the steps at
30-50% of the budget (still at the base rate) against the one over 10-30%. Their difference in
units of ln(C), the loss of a uniform guess over C classes (``loss_drop``), under
:data:`CONVERGED_DROP` counts as converged (``converged``): the loss had stopped falling
before the rate decays. The unit makes the test mean the same for every zoo, and a relative
drop would never pass on a curve whose loss heads to zero (digits: 0.062, 0.046, 0.027 at
560, 1,120, 2,240 steps, while mc read +4.1, +4.2, +4.2). The final window's mean loss is
kept too.

Learning rate: the reference meant Garipov et al.'s schedule (the base rate for the first
half of training, then linear decay to 1% of it at 90%, then 1%), but reassigns the rate
each epoch from the previous epoch's rate, so the decay compounds. Here the rate is computed
from the base rate at every step, from the fraction of training done, so short budgets
anneal as well.

Evaluation: at each t in linspace(0, 1, n_eval_points), the curve point's BatchNorm
statistics are recomputed on the clean (unaugmented) training images, then loss and error
(%) are measured in eval mode on the train and test sets. The ends are evaluated the same
way (their own running statistics are replaced too), so all points of the curve are
measured alike. With v(t) a curve of values (error or loss) and m = (v(0) + v(1)) / 2, the
reference (and the paper's Section 2) computes::

    t* = argmax_{t in [0, 1]} |v(t) - m|,   mc = m - v(t*)

The ends take part in that argmax, and their deviation from m is +-(v(1) - v(0)) / 2 by
construction: where no interior point deviates more, mc is half the gap between the ends with
a sign set by which model came first ([10, 9, 8, 7, 0] gives -5, its reverse +5). Here t* runs
over the **interior** points only (0 < t < 1), and a tie between deviations of opposite sign
goes to the barrier (the larger v)::

    t* = argmax_{0 < t < 1} |v(t) - m|  (tie: largest v(t)),   mc = m - v(t*)

so swapping the two models (reversing the curve) never changes mc ([10, 9, 8, 7, 0] and its
reverse both give -4). It equals the reference wherever the reference's t* is interior, which
is the usual case (seeds of one grid point end at similar error); the ends carry no
information about the path between them, and a tie is read as a barrier, the conservative
side for a connectivity claim. The published PTMZ values use the reference's formula; see
docs/phases.md for how the phase rules treat them.

mc < 0: a barrier between the ends; mc > 0: the curve finds lower loss than the ends (they
are under-trained); mc ~ 0: well connected.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from zoo_builder.annotating.landscape.problems import (ImageClassificationLandscape,
                                                       LandscapeProblem)
from zoo_builder.data import ImageData
from zoo_builder.data.images import Augmentation

log = logging.getLogger(__name__)

Weights = dict[str, torch.Tensor]

#: The reference's curve budget: 10 epochs of CIFAR's 50,000 images at batch 128.
REFERENCE_CURVE_STEPS = 3900

#: A drop of the curve loss between the 10-30% and 30-50% windows of the budget below this
#: many ln(C) counts as converged: under the 0.017 ln(C) by which phase rules v2 call a train
#: loss small, so a curve that still falls this fast would not change a loss judgement.
CONVERGED_DROP = 0.01


@dataclass
class ModeConnectivityResult:
    """mc of every quantity the problem measures along the curve, and the curves themselves.

    ``mc[q]`` is the mode connectivity of quantity ``q`` (e.g. ``train_error`` in percent,
    ``train_loss``; :attr:`LandscapeProblem.curve_quantities`), ``curves[q]`` its values at
    the points ``t``. ``seconds`` is the wall time of the whole measurement (curve training
    and evaluation).
    """

    mc: dict[str, float]
    curves: dict[str, list[float]]
    t: list[float]
    seconds: float
    training: "CurveTraining | None" = None

    def to_metrics(self) -> dict[str, float]:
        """The result.json / summary keys, ``curve_mc_<quantity>`` (``curve_mc_train_error``
        as published, in %), and the curve training's budget and convergence
        (``curve_steps``, ``curve_loss_final``, ``curve_loss_drop``, ``curve_converged`` as
        1.0 or 0.0, so that pairs average into the fraction converged)."""
        metrics = {f"curve_mc_{quantity}": value for quantity, value in self.mc.items()}
        if self.training is not None:
            metrics.update(self.training.to_metrics())
        return metrics


@dataclass
class CurveTraining:
    """How curve training went: its step budget and the mean loss along the curve."""

    steps: int
    loss_final: float  # mean over the last 10% of the steps
    loss_drop: float  # drop from the 10-30% window to the 30-50% window, in units of ln(C)
    converged: bool

    def to_metrics(self) -> dict[str, float]:
        return {"curve_steps": self.steps, "curve_loss_final": self.loss_final,
                "curve_loss_drop": self.loss_drop, "curve_converged": float(self.converged)}

    @classmethod
    def from_losses(cls, losses: Sequence[float], loss_scale: float = 1.0) -> "CurveTraining":
        """Summarize the per-step losses of a curve training (at least 10 steps); the drop
        is measured in units of ``loss_scale`` (ln(C) for C classes)."""
        n = len(losses)

        def window(start: float, stop: float) -> float:
            part = losses[int(start * n):max(int(stop * n), int(start * n) + 1)]
            return float(np.mean(part))

        early, late = window(0.1, 0.3), window(0.3, 0.5)
        drop = (early - late) / loss_scale if math.isfinite(early) else float("nan")
        return cls(steps=n, loss_final=window(0.9, 1.0), loss_drop=drop,
                   converged=bool(math.isfinite(drop) and drop < CONVERGED_DROP))


def curve_connectivity(values: Sequence[float]) -> float:
    """mc of a curve of values measured at t = linspace(0, 1, len(values)).

    mc = (v(0) + v(1)) / 2 - v(t*) with t* the **interior** point that deviates most from the
    ends' mean; on a tie between deviations of opposite sign, the one above the mean (a
    barrier). The reference also lets the ends compete, which makes mc depend on which model
    comes first; this does not: reversing ``values`` gives the same mc (module docstring).
    Any NaN in the curve gives NaN.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) < 3:
        raise ValueError(
            f"curve_connectivity needs a 1-D curve of at least 3 values (both ends and an "
            f"interior point), got shape {v.shape}"
        )
    if np.isnan(v).any():
        return float("nan")
    middle = (v[0] + v[-1]) / 2  # a + b == b + a exactly, so reversal gives the same float
    interior = v[1:-1]
    deviation = np.abs(interior - middle)
    # Exact ties only: the reversed curve holds the same floats, so it finds the same set.
    return float(middle - interior[deviation == deviation.max()].max())


def curve_learning_rate(base_lr: float, progress: float) -> float:
    """Garipov et al.'s schedule at ``progress`` (fraction of training done, 0 to 1)."""
    if progress <= 0.5:
        return base_lr
    if progress <= 0.9:
        return base_lr * (1.0 - (progress - 0.5) / 0.4 * 0.99)
    return base_lr * 0.01


def bezier_point(start: Weights, middle: Weights, end: Weights,
                 t: float | torch.Tensor) -> Weights:
    """θ(t) of the quadratic Bezier curve with control points ``start``, ``middle``, ``end``."""
    a, m, b = (1 - t) ** 2, 2 * t * (1 - t), t ** 2
    return {name: a * start[name] + m * middle[name] + b * end[name] for name in start}


def _end_weights(model_a: nn.Module, model_b: nn.Module, device: torch.device | str
                 ) -> tuple[Weights, Weights]:
    """Detached copies of both models' parameters, after checking that they match."""
    params_a, params_b = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    if not params_a:
        raise ValueError("mode connectivity needs models with parameters; model_a has none")
    missing = sorted(set(params_a) ^ set(params_b))
    mismatched = sorted(name for name in set(params_a) & set(params_b)
                        if params_a[name].shape != params_b[name].shape)
    if missing or mismatched:
        details = [f"{name}: {tuple(params_a[name].shape)} vs {tuple(params_b[name].shape)}"
                   for name in mismatched[:5]]
        raise ValueError(
            "mode connectivity needs two models of the same architecture; parameters only in "
            f"one model: {missing[:5] or 'none'}; shapes that differ: {details or 'none'}"
        )
    start = {name: p.detach().to(device).clone() for name, p in params_a.items()}
    return start, {name: params_b[name].detach().to(device).clone() for name in params_a}


def _make_optimizer(kind: str, parameters: list[torch.Tensor], lr: float,
                    momentum: float) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum)
    if kind == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    raise ValueError(f"unknown curve optimizer {kind!r}; expected 'sgd' or 'adam'")


def _train_curve(net: nn.Module, start: Weights, middle: Weights, end: Weights,
                 problem: LandscapeProblem, *, steps: int, lr: float, momentum: float,
                 weight_decay: float, batch_size: int, optimizer: str,
                 generator: torch.Generator) -> list[float]:
    """Train the curve's middle in place for ``steps`` optimizer steps (see the module
    docstring); return the loss of every step."""
    optimizer = _make_optimizer(optimizer, list(middle.values()), lr, momentum)
    device = next(iter(middle.values())).device
    net.train()
    losses = torch.empty(steps, device=device)
    batches = problem.curve_batches(batch_size, generator)
    point = _CurvePoint(net)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = curve_learning_rate(lr, step / steps)
        batch = next(batches)
        t = torch.rand((), generator=generator, device=generator.device).to(device)
        point.weights = bezier_point(start, middle, end, t)
        loss = problem.curve_loss(point, batch)
        penalty = sum(w.pow(2).sum() for w in point.weights.values())
        optimizer.zero_grad(set_to_none=True)
        (loss + 0.5 * weight_decay * penalty).backward()
        optimizer.step()
        losses[step] = loss.detach()
    history = losses.tolist()
    log.info("curve training: %d steps, mean loss along the curve %.4f over the first 10%%, "
             "%.4f over the last", steps, float(np.mean(history[:max(steps // 10, 1)])),
             float(np.mean(history[-max(steps // 10, 1):])))
    if not all(math.isfinite(value) for value in history):
        log.warning("curve training diverged (non-finite loss, lr %g); the interior of the "
                    "curve will measure NaN", lr)
    return history


class _CurvePoint(nn.Module):
    """``net`` evaluated at the weights ``weights`` (``functional_call``), so a problem's loss
    can take it as a model: no module is copied per step."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.weights: Weights = {}

    def forward(self, *args: Any) -> torch.Tensor:
        return functional_call(self.net, self.weights, args)


class EndValues:
    """The measurements of curve ends, by model (the model object itself, not its weights'
    values: a model must not be modified while its entry is in use), shared by the curves of
    one grid point."""

    def __init__(self) -> None:
        self._values: dict[int, tuple[nn.Module, dict[str, float]]] = {}

    def __contains__(self, model: nn.Module) -> bool:
        return id(model) in self._values

    def __getitem__(self, model: nn.Module) -> dict[str, float]:
        return dict(self._values[id(model)][1])

    def __setitem__(self, model: nn.Module, values: dict[str, float]) -> None:
        # the model is kept so that its id cannot be reused by another object meanwhile
        self._values[id(model)] = (model, dict(values))


def bezier_mode_connectivity(
    model_a: nn.Module,
    model_b: nn.Module,
    data: ImageData | LandscapeProblem,
    *,
    steps: int = REFERENCE_CURVE_STEPS,
    lr: float | None = None,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    n_eval_points: int = 5,
    augment: Augmentation | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    end_values: EndValues | None = None,
) -> ModeConnectivityResult:
    """Train a Bezier curve between two models and measure mc of every quantity the problem
    judges a point by (for classifiers: train/test error and loss).

    ``data`` is a :class:`~zoo_builder.annotating.landscape.problems.LandscapeProblem` (the
    loss, the batches and the measurements of a workload) or, for classifiers, their
    :class:`ImageData`. Defaults are the reference's (PTMZ: 10 CIFAR epochs =
    :data:`REFERENCE_CURVE_STEPS` steps, SGD lr 0.1, momentum 0.9, L2 5e-4, batch 128, 5
    points); ``lr`` None takes the problem's (``curve_lr``, with its ``curve_optimizer``);
    ``steps=0`` measures the straight line. ``augment`` (e.g. the zoo's ``Augmentation``, with
    ``ImageData`` only) applies to curve training only; ``seed`` fixes the shuffling, the t of
    each mini-batch and the augmentation. The models are not modified. Buffers other than
    BatchNorm running statistics (which are recomputed at every point) come from ``model_a``.

    The measurements at the ends depend on the end's weights alone (statistics recomputed on
    the fixed training data, deterministic evaluation), so the curves of one grid point's
    seed pairs share them: with ``end_values`` (one :class:`EndValues` per grid point,
    passed to every pair) each model's end is measured once, not once per pair.
    """
    problem = (data if isinstance(data, LandscapeProblem)
               else ImageClassificationLandscape({}, data.to(device), augment=augment,
                                                 device=device))
    lr = problem.curve_lr if lr is None else lr
    if steps < 0 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need steps >= 0, batch_size >= 1 and lr > 0; got steps={steps}, "
                         f"batch_size={batch_size}, lr={lr}")
    if n_eval_points < 3:
        raise ValueError(f"n_eval_points must be at least 3 (both ends and an interior point), "
                         f"got {n_eval_points}")
    started = time.perf_counter()
    start, end = _end_weights(model_a, model_b, device)
    middle = {name: ((start[name] + end[name]) / 2).requires_grad_() for name in start}
    net = copy.deepcopy(model_a).to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    training = None
    if steps > 0:
        losses = _train_curve(net, start, middle, end, problem, steps=steps, lr=lr,
                              momentum=momentum, weight_decay=weight_decay,
                              batch_size=batch_size, optimizer=problem.curve_optimizer,
                              generator=generator)
        training = CurveTraining.from_losses(losses, loss_scale=problem.loss_scale)

    ts = np.linspace(0.0, 1.0, n_eval_points).tolist()
    curves: dict[str, list[float]] = {quantity: [] for quantity in problem.curve_quantities}
    parameters = dict(net.named_parameters())
    for t in ts:
        # The ends are the models' own weights, whatever happened to the middle.
        weights = start if t == 0.0 else end if t == 1.0 else bezier_point(start, middle, end, t)
        end_model = model_a if t == 0.0 else model_b if t == 1.0 else None
        if end_model is not None and end_values is not None and end_model in end_values:
            values = end_values[end_model]
        elif not all(torch.isfinite(w).all() for w in weights.values()):
            # A diverged middle: NaN, not the error of whatever class NaN logits argmax to.
            values = {quantity: float("nan") for quantity in curves}
        else:
            with torch.no_grad():
                for name, parameter in parameters.items():
                    parameter.copy_(weights[name])
            problem.prepare_point(net, batch_size)
            values = problem.point_metrics(net.eval())
            if end_model is not None and end_values is not None:
                end_values[end_model] = values
        for quantity in curves:
            curves[quantity].append(values[quantity])
    return ModeConnectivityResult(
        mc={quantity: curve_connectivity(values) for quantity, values in curves.items()},
        curves=curves, t=ts, seconds=time.perf_counter() - started, training=training)
