"""A PyTorch ``Dataset`` over a zoo: one item per model and checkpoint epoch, loaded lazily.

The dataset object holds paths and small metadata only, so it pickles in a few kilobytes and
works with a ``DataLoader`` with worker processes; each item's weights are read from disk in
``__getitem__``. Weights come as a dict of tensors, or flattened into one float32 vector::

    from torch.utils.data import DataLoader
    from wslbench.dataset import ZooDataset, collate_models

    data = ZooDataset("zoos/digits-mini", epochs="all", task="test_acc", flatten=True)
    loader = DataLoader(data, batch_size=8, num_workers=2, collate_fn=collate_models)

Tensors are ordered by their names in natural order (``layer2`` before ``layer10``), whatever
order the checkpoint file stores them in, so the flat vectors of one architecture line up
across checkpoints, zoos of ours (safetensors) and published zoos (torch files) alike.
A flat vector holds the weights and biases only (BatchNorm running statistics and counters
are buffers, not parameters), so its length is the model's parameter count.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from wslbench import zoo_format as fmt
from wslbench.zoo import ModelRecord, Zoo

#: Which checkpoints to take: the last one, every one, the task's epoch, or given epochs.
EPOCH_CHOICES = ("final", "all", "task")

#: Names and shapes of the tensors of a flat vector, in their order in it.
Layout = tuple[tuple[str, tuple[int, ...]], ...]


# --------------------------------------------------------------------------- weights


def natural_key(name: str) -> list:
    """Sort key that compares digit runs as numbers: ``h.2`` < ``h.10``."""
    # re.split with a group alternates text and digits, starting with text, so equal
    # positions of two keys always hold values of one type.
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name))]


def ordered_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors, keys in natural order (independent of how the file stored them)."""
    return {key: state_dict[key] for key in sorted(state_dict, key=natural_key)}


def weight_layout(state_dict: Mapping[str, torch.Tensor]) -> Layout:
    """Names and shapes of the weights of a state_dict, in flat-vector order."""
    ordered = ordered_state_dict(state_dict)
    return tuple((key, tuple(t.shape)) for key, t in ordered.items() if fmt.is_weight(key, t))


def flatten_weights(state_dict: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, Layout]:
    """All weights concatenated into one float32 vector, and the layout that undoes it."""
    ordered = ordered_state_dict(state_dict)
    layout = weight_layout(ordered)
    if not layout:
        return torch.zeros(0, dtype=torch.float32), layout
    flat = torch.cat([ordered[key].detach().reshape(-1).to(torch.float32) for key, _ in layout])
    return flat, layout


def unflatten_weights(flat: torch.Tensor, layout: Layout) -> dict[str, torch.Tensor]:
    """The tensors of a flat vector, by the layout :func:`flatten_weights` returned."""
    expected = sum(math.prod(shape) for _, shape in layout)
    if flat.ndim != 1 or flat.numel() != expected:
        raise ValueError(f"a flat vector of shape {list(flat.shape)} does not fit a layout of "
                         f"{expected} weights; pass the layout of the item it came from")
    out, start = {}, 0
    for key, shape in layout:
        size = math.prod(shape)
        out[key] = flat[start:start + size].reshape(shape)
        start += size
    return out


# --------------------------------------------------------------------------- selection


def resolve_task(task: Any):
    """A task object from a Task or a task name (``name`` or ``name@vN``)."""
    from wslbench.tasks import Task, get_task

    if task is None or isinstance(task, Task):
        return task
    if isinstance(task, str):
        return get_task(task)
    raise TypeError(f"task must be a wslbench Task or a task name, got {type(task).__name__}")


def select_checkpoints(models: Sequence[ModelRecord], epochs: str | Iterable[int] = "final",
                       task: Any = None) -> list[tuple[ModelRecord, int]]:
    """The (model, epoch) pairs that ``epochs`` picks, every pair a checkpoint on disk.

    ``"final"``: each model's last checkpoint; ``"all"``: every checkpoint; ``"task"``: the
    epoch ``task`` takes weights and target from (models without it are left out); a list of
    ints: those epochs where a model has them (an epoch that no model has is an error).
    """
    if isinstance(epochs, str):
        if epochs not in EPOCH_CHOICES:
            raise ValueError(f"epochs={epochs!r} is not one of {', '.join(EPOCH_CHOICES)} "
                             "or a list of epoch numbers")
        if epochs == "final":
            return [(m, m.checkpoint_epochs[-1]) for m in models if m.checkpoint_epochs]
        if epochs == "all":
            return [(m, e) for m in models for e in m.checkpoint_epochs]
        if task is None:
            raise ValueError("epochs='task' needs a task (e.g. task='test_acc'), whose epoch "
                             "it takes for every model")
        pairs = []
        for model in models:
            epoch = task.epoch_of(model)
            if epoch is None:
                continue
            if epoch not in model.checkpoint_epochs:
                raise fmt.ZooFormatError(
                    f"model '{model.path}' has no checkpoint at epoch {epoch}, where task "
                    f"'{task.name}' takes its weights (checkpoints: "
                    f"{list(model.checkpoint_epochs) or 'none'}); choose epochs='final' or 'all'")
            pairs.append((model, epoch))
        return pairs
    wanted = list(epochs)
    if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in wanted):
        raise ValueError(f"epochs must be 'final', 'all', 'task' or non-negative ints, got "
                         f"{wanted!r}")
    have = {e for m in models for e in m.checkpoint_epochs}
    absent = sorted(set(wanted) - have)
    if absent:
        raise ValueError(f"no model has a checkpoint at epoch(s) {absent}; checkpointed "
                         f"epochs: {sorted(have) or 'none'}")
    return [(m, e) for m in models for e in sorted(set(wanted)) if e in m.checkpoint_epochs]


def select_models(zoo: Zoo, names: Iterable[str] | None) -> list[ModelRecord]:
    """The zoo's models, or those named (in zoo order), with a clear error for unknown names."""
    if names is None:
        return list(zoo.models)
    names = {names} if isinstance(names, str) else set(names)
    known = {m.name for m in zoo.models}
    unknown = sorted(names - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise KeyError(f"zoo '{zoo.root}' has no model(s) {unknown[:3]}"
                       f"{' ...' if len(unknown) > 3 else ''}{hint} (models are trial folder "
                       "names, e.g. a split part's names)")
    return [m for m in zoo.models if m.name in names]


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class _Model:
    """What an item needs of its model: where it is and its (small) configuration."""

    name: str
    path: str
    model_args: dict[str, Any]
    hyperparameters: dict[str, Any]


class ZooDataset(Dataset):
    """One item per (model, checkpoint epoch) of a zoo; weights read from disk per item.

    An item is a dict: ``name``, ``epoch``, ``weights`` (a dict of tensors in natural key
    order, or with ``flatten=True`` one float32 vector of the weights, plus its ``layout``),
    ``model_args``, ``hyperparameters``, ``target`` (the task's target at that epoch: NaN for
    regression or None for labels where the zoo lacks it; None without a task) and, only with
    ``include_metrics=True``, ``metrics`` (that epoch's result.json row). Metrics are off by
    default because they hold every task's target.

    Args:
        zoo: a :class:`~wslbench.zoo.Zoo` or the path of a zoo root.
        epochs: ``"final"`` (last checkpoint), ``"all"``, ``"task"`` (the task's epoch) or a
            list of epochs.
        models: restrict to these model names (e.g. a split part); default all.
        task: a Task or task name that sets ``target``.
        flatten: flat float32 weight vectors instead of dicts.
        include_metrics: add the epoch's result.json row.
    """

    def __init__(self, zoo: Zoo | str | Path, epochs: str | Iterable[int] = "final", *,
                 models: Iterable[str] | None = None, task: Any = None, flatten: bool = False,
                 include_metrics: bool = False):
        zoo = zoo if isinstance(zoo, Zoo) else Zoo.open(zoo)
        self.task = resolve_task(task)
        self.flatten = flatten
        self.include_metrics = include_metrics
        self.zoo_root = str(zoo.root)
        self.zoo_revision = zoo.revision
        pairs = select_checkpoints(select_models(zoo, models), epochs, self.task)
        if not pairs:
            raise ValueError(f"no checkpoint of zoo '{zoo.root}' matches epochs={epochs!r}"
                             + (f" and task '{self.task.name}'" if self.task else "")
                             + "; check that the models have checkpoints (and the task's target)")
        index: dict[str, int] = {}
        self._models: list[_Model] = []
        # Per item: (model index, epoch, target, metrics row or None). Targets are computed
        # here from results already in memory, so workers never read result.json.
        self._items: list[tuple[int, int, Any, dict | None]] = []
        for model, epoch in pairs:
            if model.name not in index:
                index[model.name] = len(self._models)
                self._models.append(_Model(model.name, str(model.path), model.model_args,
                                           model.hyperparameters))
            target = None if self.task is None else self.task.target(model, epoch)
            metrics = None
            if include_metrics:
                metrics = dict(model.results[epoch]) if epoch < len(model.results) else {}
            self._items.append((index[model.name], epoch, target, metrics))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        model_index, epoch, target, metrics = self._items[index]
        model = self._models[model_index]
        state = ordered_state_dict(fmt.load_state_dict(Path(model.path), epoch))
        item: dict[str, Any] = {"name": model.name, "epoch": epoch}
        if self.flatten:
            item["weights"], item["layout"] = flatten_weights(state)
        else:
            item["weights"] = state
        item["model_args"] = dict(model.model_args)
        item["hyperparameters"] = dict(model.hyperparameters)
        item["target"] = target
        if self.include_metrics:
            item["metrics"] = dict(metrics)
        return item

    def __repr__(self) -> str:
        task = f", task={self.task.name!r}" if self.task else ""
        return (f"ZooDataset('{self.zoo_root}', {len(self)} checkpoints of "
                f"{len(self._models)} models{task}, flatten={self.flatten})")

    @property
    def names(self) -> list[str]:
        """The model name of every item, in item order."""
        return [self._models[m].name for m, *_ in self._items]

    @property
    def epochs(self) -> list[int]:
        """The epoch of every item, in item order."""
        return [epoch for _, epoch, *_ in self._items]

    def layout(self, index: int = 0) -> Layout:
        """Names and shapes of item ``index``'s weights in flat-vector order (reads it)."""
        model_index, epoch, *_ = self._items[index]
        return weight_layout(fmt.load_state_dict(Path(self._models[model_index].path), epoch))

    def keys(self, index: int = 0) -> list[str]:
        """The weight names of item ``index`` in flat-vector order."""
        return [key for key, _ in self.layout(index)]


# --------------------------------------------------------------------------- collate


def collate_models(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A ``DataLoader`` collate function for :class:`ZooDataset` items.

    Flat weights of one layout are stacked into a ``(batch, n)`` tensor (and ``layout`` is
    kept once); dict weights, configs, metrics and names stay lists; epochs become a long
    tensor and numeric targets a float64 tensor (label targets stay a list). Flat weights of
    different layouts (e.g. models of different widths) cannot be stacked: that raises,
    naming both items.
    """
    if not items:
        raise ValueError("collate_models got an empty batch")
    batch: dict[str, Any] = {key: [item[key] for item in items] for key in items[0]}
    batch["epoch"] = torch.tensor(batch["epoch"], dtype=torch.long)
    if "layout" in batch:
        first = items[0]
        for item in items[1:]:
            if item["layout"] != first["layout"]:
                raise ValueError(
                    f"cannot stack flat weights of '{first['name']}' (epoch {first['epoch']}, "
                    f"{first['weights'].numel()} weights) and '{item['name']}' (epoch "
                    f"{item['epoch']}, {item['weights'].numel()} weights): "
                    f"{_layout_difference(first['layout'], item['layout'])}. Batch models of "
                    "one architecture and width (ZooDataset(models=...)), use batch_size=1, "
                    "or flatten=False")
        batch["weights"] = torch.stack(batch["weights"])
        batch["layout"] = first["layout"]
    targets = batch["target"]
    if all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in targets):
        batch["target"] = torch.tensor(targets, dtype=torch.float64)
    return batch


def _layout_difference(a: Layout, b: Layout) -> str:
    for (key_a, shape_a), (key_b, shape_b) in zip(a, b):
        if key_a != key_b:
            return f"tensor '{key_b}' stands where the first has '{key_a}'"
        if shape_a != shape_b:
            return f"tensor '{key_a}' has shape {list(shape_b)}, the first's {list(shape_a)}"
    return f"the first holds {len(a)} weight tensors, the other {len(b)}"
