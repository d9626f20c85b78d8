"""Train one model of a zoo, top to bottom, writing its trial folder as it goes.

One loop serves every zoo; what differs between image classification, language modelling
and PINNs (batches, loss, metrics) comes from the model's workload (zoo_builder.building.workloads).
The recipe is the paper's: SGD or AdamW with OneCycleLR (cosine, max_lr = lr) stepped per
optimizer step, or L-BFGS with a strong-Wolfe line search for PINNs. The data stay on the
device as tensors, and image batches are augmented in one batched call. Metrics are measured
in eval mode before training (epoch 0) and after every epoch; line n of result.json is epoch
n; each line also records ``time_this_iter_s`` (the epoch's training steps),
``time_eval_s`` and ``lr_last_step``. Checkpoints are saved at the spec's epochs (always the
first and last).

How a model is run (device, precision, compilation, micro-batches) is a :class:`RunOptions`,
not part of the model's params: on a GPU the same code runs under bf16 autocast with
channels_last images, and a batch that does not fit in memory is split into micro-batches
whose gradients are accumulated (the effective batch size stays the one of the grid).

Run one model by hand with ``zoo-builder build SPEC --preset tiny --out DIR``;
:func:`train_trial` is what every executor runs for one model (see zoo_builder.building.build).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from wslbench import zoo_format as fmt
from zoo_builder.data import dataset_options, load_dataset
from zoo_builder.models import build_model
from zoo_builder.building.workloads import Workload, make_workload

log = logging.getLogger(__name__)


class TrialAborted(RuntimeError):
    """Training stopped before the end (the build that started it is gone)."""


@dataclass(frozen=True)
class RunOptions:
    """How to run training; nothing here changes which model the grid asks for.

    ``precision``: "auto" is bf16 autocast on CUDA and fp32 elsewhere; "fp32" or "bf16"
    force one. ``channels_last``: "auto" uses it for convolutional image models on CUDA.
    ``max_micro_batch`` splits larger batches into micro-batches whose gradients are
    accumulated; without it, a CUDA out-of-memory error halves the micro-batch and redoes the
    step. ``compile`` wraps the model in torch.compile. ``data_root`` is where the data sets
    lie (default $WSLBENCH_DATA or ~/.cache/wslbench/data). ``plugins`` are Python files or
    modules to import before training (they register the models, data and specs of new
    domains, see docs/new_domain.md). ``seed_batch`` trains the seeds of a grid point together
    as one vmapped model (zoo_builder.building.batched; same weights up to float rounding);
    off by default for now.
    """

    device: str = "cpu"
    precision: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    max_micro_batch: int | None = None
    data_root: str | None = None
    plugins: tuple[str, ...] = ()
    cpu_threads: int = 1
    seed_batch: bool = False

    def __post_init__(self):
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, not {self.precision!r}")
        if self.channels_last not in ("auto", "on", "off"):
            raise ValueError(f"channels_last must be auto, on or off, not {self.channels_last!r}")
        if self.max_micro_batch is not None and self.max_micro_batch < 1:
            raise ValueError(f"max_micro_batch must be positive, not {self.max_micro_batch}")
        if self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be at least 1, not {self.cpu_threads}")

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        if self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda"):
            return torch.bfloat16
        return None

    def use_channels_last(self, device: torch.device) -> bool:
        return self.channels_last == "on" or (self.channels_last == "auto"
                                              and device.type == "cuda")

    def describe(self) -> dict[str, Any]:
        return {key: value for key, value in dataclasses.asdict(self).items()
                if key not in ("data_root", "plugins")}


def build_optimizer(params: dict[str, Any], model: nn.Module, workload: Workload,
                    tensors: dict[str, torch.Tensor] | None = None
                    ) -> tuple[torch.optim.Optimizer, Any]:
    """The optimizer of ``optim::optimizer`` and its per-step scheduler (or None).

    ``tensors`` (name -> tensor) are optimized in place of ``model``'s parameters of the same
    names; seed-batched training passes the models' stacked weights (see
    zoo_builder.building.batched). ``model`` still says which are matrices.
    """
    kind = params.get("optim::optimizer", "sgd")
    lr, wd = float(params["optim::lr"]), float(params.get("optim::wd", 0.0))
    named = dict(model.named_parameters())
    tensors = named if tensors is None else tensors
    if kind == "sgd":
        optimizer = torch.optim.SGD(list(tensors.values()), lr=lr,
                                    momentum=float(params.get("optim::momentum", 0.0)),
                                    weight_decay=wd)
    elif kind == "adamw":
        # Decay matrices and kernels only, not biases, norms and embeddings' 1-D companions
        # (nanoGPT's convention, also the usual one for ViTs).
        decay = [tensors[name] for name, p in named.items() if p.dim() >= 2]
        no_decay = [tensors[name] for name, p in named.items() if p.dim() < 2]
        betas = tuple(params.get("optim::betas", (0.9, 0.999)))
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=lr, betas=betas)
    elif kind == "lbfgs":
        optimizer = torch.optim.LBFGS(
            list(tensors.values()), lr=lr, max_iter=int(params.get("optim::max_iter", 20)),
            history_size=int(params.get("optim::history_size", 50)),
            line_search_fn=params.get("optim::line_search", "strong_wolfe"),
            tolerance_grad=float(params.get("optim::tolerance_grad", 1e-9)),
            tolerance_change=float(params.get("optim::tolerance_change", 1e-12)))
        return optimizer, None
    else:
        raise ValueError(f"unknown optim::optimizer {kind!r}; known: sgd, adamw, lbfgs")
    scheduler = None
    if params.get("optim::scheduler") == "onecycle":
        total_steps = int(params["training::epochs_train"]) * workload.steps_per_epoch
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=max(total_steps, 1), anneal_strategy="cos")
    return optimizer, scheduler


class StepRunner:
    """One optimizer step on a batch, with gradient accumulation over micro-batches.

    With ``micro_batch`` None the batch runs whole; on a CUDA out-of-memory error the
    micro-batch halves and the step is redone from the same weights (gradients are zeroed
    first, so nothing of the failed attempt counts). Micro-batch losses are weighted by their
    share of the batch, so the accumulated gradient is the batch mean's.
    """

    def __init__(self, model: nn.Module, workload: Workload, optimizer: torch.optim.Optimizer,
                 micro_batch: int | None):
        self.model, self.workload, self.optimizer = model, workload, optimizer
        self.micro_batch = micro_batch

    def step(self, batch: Any) -> None:
        if isinstance(self.optimizer, torch.optim.LBFGS):
            self.optimizer.step(lambda: self._accumulate(batch))
            return
        while True:
            try:
                self._accumulate(batch)
                break
            except torch.OutOfMemoryError:
                size = self.micro_batch or self.workload.batch_length(batch)
                if size <= 1:
                    raise
                self.micro_batch = size // 2
                self.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                log.warning("out of memory: gradient accumulation over micro-batches of %d",
                            self.micro_batch)
        self.optimizer.step()

    def _accumulate(self, batch: Any) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        parts = [batch] if self.micro_batch is None else self.workload.split(batch, self.micro_batch)
        total = sum(self.workload.batch_length(part) for part in parts)
        loss_sum = 0.0
        for part in parts:
            loss = self.workload.loss(self.model, part)
            (loss * (self.workload.batch_length(part) / total)).backward()
            loss_sum += loss.detach() * (self.workload.batch_length(part) / total)
        return loss_sum


def train_trial(
    params: dict[str, Any],
    trial_dir: os.PathLike,
    data: Any = None,
    options: RunOptions = RunOptions(),
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Train the model that ``params`` (a flat params.json) describes into ``trial_dir``.

    ``data`` is the loaded data set (loaded from ``options.data_root`` if None).
    ``should_stop`` is asked after every epoch; when it says yes the trial stops unfinished
    (its folder has no completion marker, so a resumed build redoes it).
    """
    device = torch.device(options.device)
    _train(params, Path(trial_dir), data, options, device, should_stop)


def _train(params: dict[str, Any], trial_dir: Path, data: Any, options: RunOptions,
           device: torch.device, should_stop: Callable[[], bool]) -> None:
    fmt.write_params(trial_dir, params)
    seed = int(params["seed"])
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    if data is None:
        data = load_dataset(params["dataset::name"], options.data_root, **dataset_options(params))
    workload = make_workload(params, data.to(device), device)
    workload.use_autocast(options.autocast_dtype(device))

    model_args = fmt.params_section(params, "model")
    model = workload.prepare_model(build_model(model_args), options.use_channels_last(device))
    trained = torch.compile(model) if options.compile else model
    optimizer, scheduler = build_optimizer(params, model, workload)
    runner = StepRunner(trained, workload, optimizer, options.max_micro_batch)
    epochs = int(params["training::epochs_train"])
    saved_epochs = set(params.get("training::checkpoint_epochs", ())) | {0, epochs}
    log.info("run options %s; %d steps per epoch", options.describe(), workload.steps_per_epoch)

    rows: list[dict[str, Any]] = []
    hashes: dict[str, str] = {}

    def finish_epoch(epoch: int, seconds: float) -> None:
        started = time.perf_counter()
        metrics = workload.metrics(model)
        rows.append({"epoch": epoch, "training_iteration": epoch, **metrics,
                     "time_this_iter_s": seconds, "time_eval_s": time.perf_counter() - started,
                     "lr_last_step": optimizer.param_groups[0]["lr"]})
        if runner.micro_batch is not None:
            rows[-1]["micro_batchsize"] = runner.micro_batch
        fmt.write_results(trial_dir, rows)
        if epoch in saved_epochs:
            hashes.update(fmt.save_checkpoint(trial_dir, epoch, model.state_dict(), model_args))
        log.info("epoch %d: %s (%.1fs)", epoch, ", ".join(
            f"{key} {value:.4f}" for key, value in metrics.items()), seconds)

    finish_epoch(0, 0.0)
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        trained.train()
        for batch in workload.epoch_batches(generator):
            runner.step(batch)
            if scheduler is not None:
                scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        finish_epoch(epoch, time.perf_counter() - started)
        if should_stop():
            raise TrialAborted(f"stopped after epoch {epoch} of {epochs}")
    fmt.mark_trial_complete(trial_dir, hashes)
