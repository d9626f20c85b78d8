"""What a zoo costs to train: FLOPs per model from its architecture and schedule, and
device-hours at a given or measured throughput (``zoo-builder estimate``).

FLOPs count the multiply-adds of convolutions, linear layers and attention (2 FLOPs each),
the convention of ``torch.utils.flop_counter`` and of scaling-law estimates; normalisation,
activations and the optimizer are left out (a few per cent). The forward FLOPs of one sample
come from the model itself: it is built on the meta device (no memory, no compute) and run on
one sample with hooks that count every Conv2d, Linear and attention product from the shapes
that flow through it (tests/test_estimate.py checks them against torch.utils.flop_counter).
A training sample costs 3x its forward pass (the backward pass is twice the forward).

Per model (``training::epochs_train`` epochs):

- images: (N_train // B) * B training samples per epoch, and a forward pass over the train
  and test sets after every epoch and before the first (the trainer's metrics);
- language: ``training::steps_per_epoch`` * B sequences of ``model::block_size`` tokens per
  epoch, and ``training::eval_batches`` batches on each split after every epoch;
- PINNs (L-BFGS): ``optim::max_iter`` iterations per epoch at ~1.25 loss evaluations each (the
  strong-Wolfe line search), a loss evaluation costing ~9 forward passes per collocation point
  (the input derivatives, then the weight gradient through them) and 3 per initial or
  boundary point. The least certain of the three; PINNs are a rounding error of the total.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wslbench import zoo_format as fmt
from zoo_builder.building.specs import ZooSpec
from zoo_builder.building.workloads import EVAL_BATCH_SIZE
from zoo_builder.models import build_model

#: Training samples a backward pass adds to a forward pass: backward = 2x forward.
TRAIN_FORWARD_MULTIPLE = 3
#: The paper's compute for training its 12 zoos: 16 DGX H100 GPUs for 30 days.
PAPER_GPUS, PAPER_TRAIN_DAYS, PAPER_METRIC_DAYS = 16, 30, 14
#: H100 SXM dense bf16 peak, and the share of it a default estimate assumes.
H100_BF16_FLOPS = 989e12
DEFAULT_UTILIZATION = 0.4
#: L-BFGS: loss evaluations per iteration with a strong-Wolfe line search (typical).
LBFGS_EVALS_PER_ITER = 1.25

#: (train, test) set sizes and one input's shape (C, H, W), without loading the data.
IMAGE_DATA = {"cifar10": (50_000, 10_000, (3, 32, 32)), "cifar100": (50_000, 10_000, (3, 32, 32)),
              "svhn": (73_257, 26_032, (3, 32, 32)),
              "tinyimagenet": (100_000, 10_000, (3, 64, 64)),
              "digits": (898, 899, (1, 8, 8)), "digits-rotated": (898, 899, (1, 8, 8)),
              "stl10": (5_000, 8_000, (3, 96, 96))}

#: The 12 zoos of the paper, as spec names.
PAPER_SPECS = tuple([f"{d}-resnet{depth}" for d in ("svhn", "cifar10", "cifar100", "tinyimagenet")
                     for depth in (18, 50)]
                    + ["cifar10-vit", "cifar100-vit", "openwebtext-gpt2", "convection-pinn"])


def forward_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    """FLOPs of ``model(inputs)``: 2 per multiply-add of every Conv2d, Linear, attention
    product and GPT language-model head, counted from the shapes seen by hooks."""
    from zoo_builder.models.gpt import GPT
    from zoo_builder.models.vit import SelfAttention

    total = 0

    def count(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = math.prod(module.kernel_size)
            total += 2 * output.numel() * (module.in_channels // module.groups) * kernel
        elif isinstance(module, nn.Linear):
            total += 2 * output.numel() * module.in_features
        elif isinstance(module, SelfAttention):  # scores q k^T and their weighted sum of v
            batch, tokens, dim = args[0].shape
            total += 2 * 2 * batch * tokens * tokens * dim
        elif isinstance(module, GPT):  # logits = h @ token_embedding^T, not a module
            total += 2 * output.numel() * module.token_embedding.embedding_dim

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear, SelfAttention, GPT))]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(inputs)  # eval: BatchNorm takes a batch of one; the FLOPs are the same
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return total


def sample_input(params: dict[str, Any], device: str = "meta") -> torch.Tensor:
    """One training sample of the model of ``params`` (a batch of one)."""
    workload = params.get("training::workload", "image_classification")
    if workload == "language_modeling":
        return torch.zeros(1, int(params["model::block_size"]), dtype=torch.long, device=device)
    if workload == "physics_informed":
        return torch.zeros(1, int(params.get("model::in_features", 2)), device=device)
    name = params["dataset::name"]
    if name not in IMAGE_DATA:
        raise ValueError(f"no input shape known for data set {name!r}; known: "
                         f"{sorted(IMAGE_DATA)} (add it to IMAGE_DATA in {__name__})")
    return torch.zeros(1, *IMAGE_DATA[name][2], device=device)


def model_forward_flops(params: dict[str, Any]) -> int:
    """Forward FLOPs of one sample of the model of ``params``, built on the meta device
    (once per architecture and input: batch size and seed do not change them)."""
    key = json.dumps([fmt.params_section(params, "model"), params.get("dataset::name"),
                      params.get("training::workload")], sort_keys=True, default=str)
    if key not in _FORWARD_FLOPS:
        _FORWARD_FLOPS[key] = _model_forward_flops(params)
    return _FORWARD_FLOPS[key]


_FORWARD_FLOPS: dict[str, int] = {}


def _model_forward_flops(params: dict[str, Any]) -> int:
    with torch.device("meta"):
        model = build_model(fmt.params_section(params, "model"))
    return forward_flops(model, sample_input(params))


@dataclass(frozen=True)
class ModelCost:
    """One model's FLOPs: per forward sample, and for its whole schedule."""

    forward_per_sample: int
    train_flops: float
    eval_flops: float

    @property
    def total(self) -> float:
        return self.train_flops + self.eval_flops


def model_cost(params: dict[str, Any]) -> ModelCost:
    """The FLOPs of training the model of ``params`` (a flat params.json) on its schedule."""
    forward = model_forward_flops(params)
    epochs = int(params["training::epochs_train"])
    batch = int(params.get("training::batchsize", 1))
    workload = params.get("training::workload", "image_classification")
    if workload == "language_modeling":
        block = int(params["model::block_size"])
        train_samples = int(params["training::steps_per_epoch"]) * batch
        eval_batch = max(1, min(batch, EVAL_BATCH_SIZE * 16 // block))
        eval_samples = 2 * int(params.get("training::eval_batches", 10)) * eval_batch
    elif workload == "physics_informed":
        points = (9 * int(params.get("dataset::collocation_points", 1000))
                  + 3 * (int(params.get("dataset::initial_points", 256))
                         + 2 * int(params.get("dataset::boundary_points", 100))))
        iterations = int(params.get("optim::max_iter", 20))
        train = epochs * iterations * LBFGS_EVALS_PER_ITER * points * forward
        return ModelCost(forward, train, 0.0)
    else:
        n_train, n_test, _ = IMAGE_DATA[params["dataset::name"]]
        train_samples = (n_train // min(batch, n_train)) * min(batch, n_train)
        eval_samples = n_train + n_test
    return ModelCost(forward, float(epochs * train_samples * TRAIN_FORWARD_MULTIPLE * forward),
                     float((epochs + 1) * eval_samples * forward))


@dataclass(frozen=True)
class ZooCost:
    """A zoo's FLOPs: per model (in grid order) and in all."""

    spec: ZooSpec
    models: list[ModelCost]

    @property
    def total(self) -> float:
        return sum(model.total for model in self.models)


def zoo_cost(spec: ZooSpec) -> ZooCost:
    """The FLOPs of every model of ``spec`` (grid points share a cost; seeds do not change it)."""
    costs: dict[str, ModelCost] = {}
    models = []
    for plan in spec.trials():
        key = json.dumps({k: v for k, v in plan.params.items() if k != "seed"}, sort_keys=True,
                         default=str)
        if key not in costs:
            costs[key] = model_cost(plan.params)
        models.append(costs[key])
    return ZooCost(spec, models)


def read_measured(path: str | Path) -> dict[str, float]:
    """Achieved FLOP/s per model type from a measurement file: the JSON that
    ``benchmarks/train_throughput.py --json FILE`` writes, i.e. ``{"model_flops_per_s":
    {"resnet18": F, ..., "all": F}}`` ("all" is used for types not measured)."""
    data = json.loads(Path(path).read_text())
    rates = data.get("model_flops_per_s")
    if not isinstance(rates, dict) or not rates:
        raise ValueError(f"measurement file '{path}' has no 'model_flops_per_s' object (model "
                         "type -> FLOP/s); write one with benchmarks/train_throughput.py --json")
    return {str(key): float(value) for key, value in rates.items()}


def format_flops(value: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} "


def format_estimate(costs: list[ZooCost], device_flops: float, device_name: str,
                    measured: dict[str, float] | None = None) -> str:
    """The table of ``zoo-builder estimate``: per zoo its models, FLOPs per model (smallest,
    largest), total FLOPs and device-hours, then the sum next to the paper's compute."""
    header = (f"{'zoo':<22} {'preset':<8} {'models':>6} {'FLOPs/model min':>16} "
              f"{'max':>11} {'zoo FLOPs':>11} {'hours @device':>14}")
    if measured:
        header += f" {'hours @measured':>16}"
    lines = [header]
    total_flops = total_hours = total_measured = 0.0
    for cost in costs:
        per_model = [model.total for model in cost.models]
        hours = cost.total / device_flops / 3600
        row = (f"{cost.spec.name:<22} {cost.spec.preset:<8} {len(per_model):>6} "
               f"{format_flops(min(per_model)) + 'FLOP':>16} "
               f"{format_flops(max(per_model)) + 'FLOP':>11} "
               f"{format_flops(cost.total) + 'FLOP':>11} {hours:>14,.1f}")
        if measured:
            kind = str(cost.spec.model.get("type"))
            rate = measured.get(kind, measured.get("all"))
            if rate is None:
                row += f" {'(not measured)':>16}"
            else:
                measured_hours = cost.total / rate / 3600
                total_measured += measured_hours
                row += f" {measured_hours:>16,.1f}"
        lines.append(row)
        total_flops += cost.total
        total_hours += hours
    lines.append(f"{'total':<22} {'':<8} {sum(len(c.models) for c in costs):>6} {'':>16} "
                 f"{'':>11} {format_flops(total_flops) + 'FLOP':>11} {total_hours:>14,.1f}"
                 + (f" {total_measured:>16,.1f}" if measured else ""))
    paper_hours = PAPER_GPUS * PAPER_TRAIN_DAYS * 24
    lines += [
        "",
        f"hours @device: total FLOPs / {format_flops(device_flops)}FLOP/s ({device_name}); "
        "one device, perfectly busy",
        *([f"hours @measured: at the model FLOP/s measured per model type "
           f"({', '.join(f'{k} {format_flops(v)}FLOP/s' for k, v in measured.items())})"]
          if measured else []),
        f"paper, all 12 zoos: training on {PAPER_GPUS} DGX H100 GPUs x {PAPER_TRAIN_DAYS} days "
        f"= {paper_hours:,} GPU-hours (loss-landscape metrics: another "
        f"{PAPER_GPUS * PAPER_METRIC_DAYS * 24:,}); the paper gives no split per zoo",
    ]
    return "\n".join(lines)
