"""Standardized splits of a zoo into train / validation / test models.

Every split keeps the seeds and checkpoints of one grid point on one side, so a predictor is
never tested on a sibling of a model it was trained on. The kinds:

- ``iid``: 68/16/16 of the grid points at random (seeded; version 2, v1 was 70/15/15);
- ``ood-width``: test on the grid points of the largest load (width, model dim, or the PDE
  coefficient), train and validate on the smaller ones;
- ``ood-temperature``: test on the two extreme temperatures (smallest and largest batch size,
  or learning rate), train and validate on the rest;
- ``cross-zoo``: train and validate on one zoo, test on every model of another zoo of the same
  architecture family (digits -> another data set, CIFAR-10 -> SVHN);
- ``epochs``: the ``iid`` grid points, with train and validation at the early half of the
  checkpoints and test at the late half; only for tasks whose target exists at every
  checkpoint.

A split is stored as a JSON file whose sha256 every result records; a changed rule is a new
version, so a split file never changes under a result.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from wslbench import zoo_format as fmt
from wslbench.paths import cache_dir
from wslbench.registry import Registry
from wslbench.zoo import ModelRecord, Zoo

PARTS = ("train", "val", "test")

#: params.json keys of the load axis (width of the paper's zoos, model dim of the language
#: zoos, the convection coefficient of the PINN zoo) and of the temperature axis, in the order
#: they are looked for.
LOAD_KEYS = ("model::width", "model::embedding_dim", "model::model_dim", "dataset::beta")
TEMPERATURE_KEYS = ("training::batchsize", "optim::lr")


class SplitKind(str, Enum):
    IID = "iid"
    OOD_LOAD = "ood-load"
    OOD_TEMPERATURE = "ood-temperature"
    CROSS_ZOO = "cross-zoo"
    EPOCHS = "epochs"


@dataclass(frozen=True)
class SplitSpec:
    """How a split is made. ``fractions`` are train/val/test of the grid points the kind
    leaves to chance (for the OOD kinds, train/val of the in-distribution points)."""

    name: str
    version: int
    kind: SplitKind
    description: str
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0

    @property
    def needs_test_zoo(self) -> bool:
        return self.kind is SplitKind.CROSS_ZOO


@dataclass(frozen=True)
class Split:
    """Model names per part, for one zoo revision; ``sha256`` identifies it in results.

    ``test_zoo_revision`` and ``test_zoo_name`` are set when the test models come from
    another zoo (cross-zoo; the name as leaderboards show it, :attr:`Zoo.label`);
    ``epochs`` is set when a part uses given checkpoint epochs rather than each task's epoch
    (the epochs split).
    """

    name: str
    version: int
    zoo_revision: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    test_zoo_revision: str | None = None
    test_zoo_name: str | None = None
    epochs: dict[str, tuple[int, ...]] | None = None

    def content(self) -> dict[str, Any]:
        """The split as JSON data; optional fields appear only when set, so that adding one
        left the hash of every earlier split unchanged."""
        data = asdict(self)
        for key in ("test_zoo_revision", "test_zoo_name", "epochs"):
            if data[key] is None:
                data.pop(key)
        return data

    @property
    def sha256(self) -> str:
        return fmt.canonical_hash(self.content())

    def part(self, name: str) -> tuple[str, ...]:
        if name not in PARTS:
            raise ValueError(f"unknown split part {name!r}; choose from {PARTS}")
        return getattr(self, name)

    def part_epochs(self, name: str) -> tuple[int, ...] | None:
        """The checkpoint epochs of a part, or None when each task picks its own epoch."""
        return None if self.epochs is None else self.epochs[name]

    def sizes(self) -> dict[str, int]:
        return {part: len(self.part(part)) for part in PARTS}

    def to_json(self) -> dict[str, Any]:
        """What a split file holds: the content and its sha256."""
        return {**self.content(), "sha256": self.sha256}

    def save(self, path: Path) -> None:
        fmt.atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> "Split":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"'{path}' is not a split file ({type(err).__name__}: {err})") from err
        return cls.from_json(data, source=f"split file '{path}'")

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "split") -> "Split":
        """The split of :meth:`to_json`'s data; refused when it does not match its sha256."""
        try:
            data = dict(data)
            stored = data.pop("sha256", None)
            unknown = set(data) - {f.name for f in fields(cls)}
            if unknown:
                raise TypeError(f"unknown fields {sorted(unknown)}")
            for part in PARTS:
                data[part] = tuple(data[part])
            if data.get("epochs") is not None:
                data["epochs"] = {part: tuple(data["epochs"][part]) for part in PARTS}
            split = cls(**data)
        except (TypeError, KeyError) as err:
            raise ValueError(f"{source} is not a split ({type(err).__name__}: {err})") from err
        if stored is not None and stored != split.sha256:
            raise ValueError(f"{source} does not match its sha256: it was edited")
        return split


SPLITS: Registry[SplitSpec] = Registry("split")

#: train/val/test fractions of the grid points in the iid and epochs splits (version 2).
IID_FRACTIONS = (0.68, 0.16, 0.16)
for _spec in (
    # Version 2 (68/16/16; version 1 was 70/15/15): on the released bench zoo's 64 grid points
    # v1 tested on 9 of them (27 models), v2 on 10 (30 models).
    SplitSpec("iid", 2, SplitKind.IID,
              "68/16/16 of the grid points at random (seed 0), all seeds of a point together",
              fractions=IID_FRACTIONS),
    SplitSpec("ood-width", 1, SplitKind.OOD_LOAD,
              "test: the largest load (width, model dim or PDE beta); train/val: 82/18 of the "
              "other grid points"),
    SplitSpec("ood-temperature", 1, SplitKind.OOD_TEMPERATURE,
              "test: the smallest and largest temperature (batch size or learning rate); "
              "train/val: 82/18 of the other grid points"),
    SplitSpec("cross-zoo", 1, SplitKind.CROSS_ZOO,
              "train/val: 82/18 of the grid points of --zoo; test: every model of --test-zoo "
              "(same architecture family)"),
    SplitSpec("epochs", 2, SplitKind.EPOCHS,
              "the iid grid points; train/val at the early half of the checkpoints, test at "
              "the late half (tasks with per-checkpoint targets only)", fractions=IID_FRACTIONS),
):
    SPLITS.register(_spec.name, _spec)


# --------------------------------------------------------------------------- making splits


def _assign(keys: list[str], fractions: tuple[float, ...], seed: int) -> list[list[str]]:
    """Shuffle ``keys`` (seeded) and cut them in the given fractions; with at least as many
    keys as parts, every part gets one."""
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    total = sum(fractions)
    counts = [int(round(f / total * len(keys))) for f in fractions[:-1]]
    if len(keys) >= len(fractions):
        for i in range(len(counts)):
            counts[i] = max(counts[i], 1)
        while sum(counts) > len(keys) - 1:  # leave the last part one key at least
            counts[counts.index(max(counts))] -= 1
    cuts = np.cumsum([0, *counts, len(keys) - sum(counts)])
    return [order[cuts[i]:cuts[i + 1]] for i in range(len(fractions))]


def axis_key(zoo: Zoo, candidates: tuple[str, ...], axis: str) -> str:
    """The first params.json key among ``candidates`` whose value varies across the zoo."""
    for key in candidates:
        values = {json.dumps(m.params.get(key)) for m in zoo.models}
        if len(values) > 1:
            return key
    raise ValueError(f"zoo '{zoo.root}' varies none of the {axis} keys {list(candidates)}; "
                     f"an ood-{axis} split needs a grid over one of them")


def _axis_value(model: ModelRecord, key: str) -> float:
    value = model.params.get(key)
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"model '{model.name}' has {key}={value!r}, not a number") from err


def _names(groups: dict[str, list[ModelRecord]], keys: list[str]) -> tuple[str, ...]:
    return tuple(sorted(m.name for key in keys for m in groups[key]))


def architecture_family(model: ModelRecord) -> str:
    """``resnet18`` for ``resnet18`` and the published ``Resnet18_width``, and so on."""
    kind = str(model.model_args.get("type", "unknown")).lower()
    return re.sub(r"_width$", "", kind)


def make_split(zoo: Zoo, spec: SplitSpec, test_zoo: Zoo | None = None) -> Split:
    """Make the split ``spec`` describes for ``zoo`` (and ``test_zoo`` for cross-zoo)."""
    if spec.needs_test_zoo != (test_zoo is not None):
        raise ValueError(f"split '{spec.name}' needs a second zoo (--test-zoo) to test on"
                         if spec.needs_test_zoo else
                         f"split '{spec.name}' takes one zoo; --test-zoo is for cross-zoo")
    groups = zoo.grid_points()
    keys = list(groups)
    common = dict(name=spec.name, version=spec.version, zoo_revision=zoo.revision)
    if spec.kind in (SplitKind.IID, SplitKind.EPOCHS):
        parts = _assign(keys, spec.fractions, spec.seed)
        split = Split(**common, **{p: _names(groups, k) for p, k in zip(PARTS, parts)})
        return _with_epoch_halves(zoo, split) if spec.kind is SplitKind.EPOCHS else split
    if spec.kind is SplitKind.CROSS_ZOO:
        families = {architecture_family(m) for m in zoo.models}
        test_families = {architecture_family(m) for m in test_zoo.models}
        if families != test_families:
            raise ValueError(f"cross-zoo needs zoos of one architecture family: '{zoo.root}' "
                             f"has {sorted(families)}, '{test_zoo.root}' has {sorted(test_families)}")
        train, val = _assign(keys, spec.fractions[:2], spec.seed)
        return Split(**common, train=_names(groups, train), val=_names(groups, val),
                     test=tuple(sorted(m.name for m in test_zoo.models)),
                     test_zoo_revision=test_zoo.revision, test_zoo_name=test_zoo.label)
    if spec.kind is SplitKind.OOD_LOAD:
        key = axis_key(zoo, LOAD_KEYS, "load")
        largest = max(_axis_value(groups[k][0], key) for k in keys)
        held_out = [k for k in keys if _axis_value(groups[k][0], key) == largest]
    elif spec.kind is SplitKind.OOD_TEMPERATURE:
        key = axis_key(zoo, TEMPERATURE_KEYS, "temperature")
        values = [_axis_value(groups[k][0], key) for k in keys]
        if len(set(values)) < 3:
            raise ValueError(f"zoo '{zoo.root}' has {len(set(values))} values of {key}; the "
                             "ood-temperature split holds out the smallest and the largest, "
                             "so it needs at least 3")
        held_out = [k for k, v in zip(keys, values) if v in (min(values), max(values))]
    else:
        raise ValueError(f"unknown split kind {spec.kind!r}")
    rest = [k for k in keys if k not in held_out]
    if not rest:
        raise ValueError(f"split '{spec.name}' leaves nothing to train on in zoo '{zoo.root}'")
    train, val = _assign(rest, spec.fractions[:2], spec.seed)
    return Split(**common, train=_names(groups, train), val=_names(groups, val),
                 test=_names(groups, held_out))


def _with_epoch_halves(zoo: Zoo, split: Split) -> Split:
    """Train/val at the early half of the checkpoint epochs the models share, test at the rest."""
    shared = sorted(set.intersection(*(set(m.checkpoint_epochs) for m in zoo.models)))
    if len(shared) < 2:
        raise ValueError(f"zoo '{zoo.root}' has {len(shared)} checkpoint epoch(s) common to all "
                         "models; the epochs split needs at least 2")
    early, late = tuple(shared[:len(shared) // 2]), tuple(shared[len(shared) // 2:])
    return Split(name=split.name, version=split.version, zoo_revision=split.zoo_revision,
                 train=split.train, val=split.val, test=split.test,
                 epochs={"train": early, "val": early, "test": late})


# --------------------------------------------------------------------------- resolving


def resolve_split(zoo: Zoo, split: str, test_zoo: Zoo | None = None) -> tuple[Split, Path]:
    """A registered split name (made and stored in the cache) or a split file's path."""
    if split not in SPLITS and Path(split).suffix == ".json":
        loaded = Split.load(Path(split))
        if loaded.zoo_revision != zoo.revision:
            raise ValueError(f"split file '{split}' was made for zoo revision "
                             f"{loaded.zoo_revision[:12]}, not this zoo ({zoo.revision[:12]})")
        wanted = test_zoo.revision if test_zoo is not None else None
        if loaded.test_zoo_revision != wanted:
            raise ValueError(f"split file '{split}' tests on zoo revision "
                             f"{(loaded.test_zoo_revision or 'none')[:12]}, but the test zoo "
                             f"given is {(wanted or 'none')[:12]}")
        return loaded, Path(split)
    spec = SPLITS.get(split)
    made = make_split(zoo, spec, test_zoo)
    folder = zoo.revision[:16]
    if test_zoo is not None:
        folder += f"-to-{test_zoo.revision[:16]}"
    path = cache_dir() / "splits" / folder / f"{spec.name}-v{spec.version}.json"
    if not path.is_file() or Split.load(path) != made:
        made.save(path)
    return made, path
