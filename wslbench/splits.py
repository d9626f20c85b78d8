"""Deterministic splits of a zoo into train / validation / test models.

Every seed and checkpoint of one grid point lands on the same side, so a predictor is never
tested on a sibling of a model it was trained on. A split is stored as a JSON file whose
sha256 every result records.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from wslbench import zoo_format as fmt
from wslbench.registry import Registry
from wslbench.zoo import Zoo

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitSpec:
    name: str
    version: int
    description: str
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0


@dataclass(frozen=True)
class Split:
    """Model names per part, for one zoo revision; ``sha256`` identifies it in results."""

    name: str
    version: int
    zoo_revision: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def sha256(self) -> str:
        return fmt.canonical_hash(asdict(self))

    def part(self, name: str) -> tuple[str, ...]:
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {part: len(self.part(part)) for part in PARTS}

    def save(self, path: Path) -> None:
        fmt.atomic_write_json(path, {**asdict(self), "sha256": self.sha256})

    @classmethod
    def load(cls, path: Path) -> "Split":
        try:
            data = json.loads(Path(path).read_text())
            stored = data.pop("sha256", None)
            split = cls(**{k: tuple(v) if k in PARTS else v for k, v in data.items()})
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"'{path}' is not a split file ({err})") from err
        if stored is not None and stored != split.sha256:
            raise ValueError(f"split file '{path}' does not match its sha256: it was edited")
        return split


SPLITS: Registry[SplitSpec] = Registry("split")
SPLITS.register("iid", SplitSpec(
    name="iid", version=1,
    description="70/15/15 of the grid points at random (seed 0), all seeds of a point together",
))


def make_split(zoo: Zoo, spec: SplitSpec) -> Split:
    """Assign whole grid points to train/val/test at random (seeded), in the spec's fractions."""
    groups: dict[str, list[str]] = {}
    for model in zoo.models:
        groups.setdefault(model.grid_point, []).append(model.name)
    keys = sorted(groups)
    order = np.random.default_rng(spec.seed).permutation(len(keys))
    n = len(keys)
    n_train = int(round(spec.fractions[0] * n))
    n_val = int(round(spec.fractions[1] * n))
    if n >= 3:  # every part gets at least one grid point
        n_val = max(n_val, 1)
        n_train = min(max(n_train, 1), n - n_val - 1)
    bounds = {"train": order[:n_train], "val": order[n_train:n_train + n_val],
              "test": order[n_train + n_val:]}
    parts = {part: tuple(sorted(name for i in index for name in groups[keys[i]]))
             for part, index in bounds.items()}
    return Split(name=spec.name, version=spec.version, zoo_revision=zoo.revision, **parts)


def cache_dir() -> Path:
    return Path(os.environ.get("WSLBENCH_CACHE", Path.home() / ".cache" / "wslbench"))


def resolve_split(zoo: Zoo, split: str) -> tuple[Split, Path]:
    """A registered split name (made and stored in the cache) or a split file's path."""
    if split not in SPLITS and Path(split).suffix == ".json":
        loaded = Split.load(Path(split))
        if loaded.zoo_revision != zoo.revision:
            raise ValueError(f"split file '{split}' was made for zoo revision "
                             f"{loaded.zoo_revision[:12]}, not this zoo ({zoo.revision[:12]})")
        return loaded, Path(split)
    spec = SPLITS.get(split)
    made = make_split(zoo, spec)
    path = cache_dir() / "splits" / zoo.revision[:16] / f"{spec.name}-v{spec.version}.json"
    if not path.is_file() or Split.load(path) != made:
        made.save(path)
    return made, path
