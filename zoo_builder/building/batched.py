"""Seed-batched training: the seeds of one grid point trained together as one vmapped model.

The models of a grid point differ only in their seed, so they share every shape and the whole
schedule (same batch size, same steps, same learning rates). Here they train in one loop: their
weights are stacked along a new first dimension (``torch.func.stack_module_state``), one
``torch.func.vmap`` of ``functional_call`` runs every model on its own batch at once (a
convolution becomes one grouped convolution, a matmul one batched matmul), and one optimizer
steps the stacked tensors. Nothing is shared between the models but the kernels:

- each model is initialised from its own seed (``torch.manual_seed(seed)`` before building it,
  as :func:`zoo_builder.building.train.train_trial` does), and draws its data order and
  augmentation from its own generator seeded the same way, so it sees exactly the batches it
  would see alone;
- the loss is the sum of the models' mean losses, so each model's gradient is its own;
- SGD and AdamW act element by element, so the optimizer state (momentum, Adam moments) of
  the stacked tensors is every model's own state, stacked;
- BatchNorm's running statistics are stacked buffers, updated per model inside the vmap.

Each model therefore ends with the weights of training it alone, up to float rounding (the
grouped kernels sum in another order); tests/test_seed_batch.py checks this after a few steps
and on the final metrics of a tiny build. Each model writes its own trial folder in the usual
format (params.json, one result.json line per epoch, checkpoints, trial_complete.json last),
so a zoo reads the same whichever way it was built, and a stopped build resumes the same way
(only unfinished trials are redone, batched again by grid point). ``time_this_iter_s`` is the
epoch's training time of the whole batch of models (they train at once).

Not batched (they train one at a time, the build says why): L-BFGS (its line search couples
all weights of a model), physics-informed workloads (input derivatives under vmap), models
with dropout (its draws would differ from a model trained alone). ``channels_last`` has no
effect here (stacked batches are 5-D).

Use it with ``zoo-builder build SPEC --seed-batch`` or ``RunOptions(seed_batch=True)``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from wslbench import zoo_format as fmt
from zoo_builder.building.train import (RunOptions, StepRunner, TrialAborted, build_optimizer)
from zoo_builder.building.workloads import Workload, make_workload
from zoo_builder.data import dataset_options, load_dataset
from zoo_builder.models import build_model

log = logging.getLogger("zoo_builder.building.train")


def seed_batch_blocker(params: dict[str, Any]) -> str | None:
    """Why the model of ``params`` cannot train seed-batched (None: it can)."""
    if params.get("optim::optimizer", "sgd") not in ("sgd", "adamw"):
        return (f"optim::optimizer {params.get('optim::optimizer')!r} is not element-wise "
                "(only sgd and adamw batch)")
    if params.get("training::workload", "image_classification") == "physics_informed":
        return "physics-informed losses take input derivatives, which do not run under vmap"
    if float(params.get("model::dropout", 0.0) or 0.0) > 0:
        return "dropout draws would differ from those of the model trained alone"
    return None


def grid_point_key(params: dict[str, Any]) -> str:
    """The grid point of a model: its params without the seed."""
    return json.dumps({key: value for key, value in params.items() if key != "seed"},
                      sort_keys=True, default=str)


def group_by_grid_point(items: Sequence[Any], params_of: Callable[[Any], dict[str, Any]]
                        ) -> list[list[Any]]:
    """``items`` in groups that may train together: one group per grid point (in order of
    first appearance), and a group of one for every model that cannot be batched."""
    groups: dict[str, list[Any]] = {}
    for position, item in enumerate(items):
        params = params_of(item)
        key = (grid_point_key(params) if seed_batch_blocker(params) is None
               else f"alone:{position}")
        groups.setdefault(key, []).append(item)
    return list(groups.values())


@dataclass
class StackedModels:
    """M models of one architecture as stacked tensors: ``params`` and ``buffers`` map each
    name of the module's state to a tensor of shape (M, *shape); ``template`` is the module
    (on the meta device) that ``functional_call`` runs with one model's slice."""

    template: nn.Module
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]

    @classmethod
    def stack(cls, models: Sequence[nn.Module]) -> "StackedModels":
        params, buffers = stack_module_state(list(models))
        return cls(copy.deepcopy(models[0]).to("meta"), params, buffers)

    def __len__(self) -> int:
        return len(next(iter(self.params.values())))

    def train(self, mode: bool = True) -> "StackedModels":
        self.template.train(mode)
        return self

    @torch.no_grad()
    def copy_into(self, index: int, model: nn.Module) -> nn.Module:
        """Write model ``index``'s slice into ``model`` (same architecture)."""
        for name, tensor in model.named_parameters():
            tensor.copy_(self.params[name][index])
        for name, tensor in model.named_buffers():
            tensor.copy_(self.buffers[name][index])
        return model


class StackedWorkload:
    """A workload seen through stacked models, as :class:`StepRunner` uses it: a batch is the
    models' batches stacked (every tensor (M, B, ...)), and the loss is the sum over models of
    each model's mean loss, computed by the workload's own ``loss`` under vmap."""

    def __init__(self, workload: Workload):
        self.workload = workload
        self.batch_size = workload.batch_size

    def loss(self, stacked: StackedModels, batch: Any) -> torch.Tensor:
        def one_model(params, buffers, part):
            def model(inputs):
                return functional_call(stacked.template, (params, buffers), (inputs,))

            return self.workload.loss(model, part)

        in_dims = (0, 0, None if batch is None else 0)
        return vmap(one_model, in_dims=in_dims, randomness="error")(
            stacked.params, stacked.buffers, batch).sum()

    def split(self, batch: Any, size: int) -> list[Any]:
        """The stacked batch cut along the batch dimension (dimension 1)."""
        return list(zip(*(tensor.split(size, dim=1) for tensor in batch)))

    @staticmethod
    def batch_length(batch: Any) -> int:
        return batch[0].shape[1]


def stack_batches(batches: Sequence[Any]) -> Any:
    """The models' batches of one step as one batch: tensors stacked on a new dimension 0."""
    first = batches[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.stack(batches)
    return tuple(stack_batches(parts) for parts in zip(*batches))


def train_seed_batch(
    trials: Sequence[tuple[dict[str, Any], os.PathLike]],
    data: Any = None,
    options: RunOptions = RunOptions(),
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Train the models of one grid point together, each into its own trial folder.

    ``trials`` are (flat params.json, trial folder) pairs whose params differ only in
    ``seed``; the result in every folder is that of
    :func:`zoo_builder.building.train.train_trial` for it, up to float rounding.
    """
    if not trials:
        return
    keys = {grid_point_key(params) for params, _ in trials}
    if len(keys) != 1:
        raise ValueError(f"seed-batched trials must differ only in their seed; got "
                         f"{len(keys)} grid points in {[str(d) for _, d in trials]}")
    first = trials[0][0]
    blocker = seed_batch_blocker(first)
    if blocker is not None:
        raise ValueError(f"cannot seed-batch {first.get('model::type')} models: {blocker}")
    device = torch.device(options.device)
    dirs = [Path(trial_dir) for _, trial_dir in trials]
    for (params, _), trial_dir in zip(trials, dirs):
        fmt.write_params(trial_dir, params)
    if data is None:
        data = load_dataset(first["dataset::name"], options.data_root, **dataset_options(first))
    data = data.to(device)
    model_args = fmt.params_section(first, "model")

    models, workloads, generators = [], [], []
    for params, _ in trials:
        seed = int(params["seed"])
        torch.manual_seed(seed)
        generators.append(torch.Generator(device=device).manual_seed(seed))
        workload = make_workload(params, data, device)
        workload.use_autocast(options.autocast_dtype(device))
        workloads.append(workload)
        models.append(workload.prepare_model(build_model(model_args), channels_last=False))
    stacked = StackedModels.stack(models)
    optimizer, scheduler = build_optimizer(first, models[0], workloads[0],
                                           tensors=stacked.params)
    runner = StepRunner(stacked, StackedWorkload(workloads[0]), optimizer,
                        options.max_micro_batch)
    epochs = int(first["training::epochs_train"])
    saved_epochs = set(first.get("training::checkpoint_epochs", ())) | {0, epochs}
    log.info("seed-batched training of %d models (seeds %s); run options %s; %d steps per "
             "epoch", len(trials), [params["seed"] for params, _ in trials],
             options.describe(), workloads[0].steps_per_epoch)

    rows: list[list[dict[str, Any]]] = [[] for _ in trials]
    hashes: list[dict[str, str]] = [{} for _ in trials]

    def finish_epoch(epoch: int, seconds: float) -> None:
        for index, (model, workload, trial_dir) in enumerate(zip(models, workloads, dirs)):
            started = time.perf_counter()
            stacked.copy_into(index, model)
            metrics = workload.metrics(model)
            rows[index].append({"epoch": epoch, "training_iteration": epoch, **metrics,
                                "time_this_iter_s": seconds,
                                "time_eval_s": time.perf_counter() - started,
                                "lr_last_step": optimizer.param_groups[0]["lr"]})
            if runner.micro_batch is not None:
                rows[index][-1]["micro_batchsize"] = runner.micro_batch
            fmt.write_results(trial_dir, rows[index])
            if epoch in saved_epochs:
                hashes[index].update(fmt.save_checkpoint(trial_dir, epoch, model.state_dict(),
                                                         model_args))
        log.info("epoch %d: train_loss %s (%.1fs)", epoch, ", ".join(
            f"{row[-1]['train_loss']:.4f}" for row in rows), seconds)

    finish_epoch(0, 0.0)
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        stacked.train()
        streams = [workload.epoch_batches(generator)
                   for workload, generator in zip(workloads, generators)]
        for batches in zip(*streams):
            runner.step(stack_batches(batches))
            if scheduler is not None:
                scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        finish_epoch(epoch, time.perf_counter() - started)
        if should_stop():
            raise TrialAborted(f"stopped after epoch {epoch} of {epochs}")
    for trial_dir, trial_hashes in zip(dirs, hashes):
        fmt.mark_trial_complete(trial_dir, trial_hashes)
