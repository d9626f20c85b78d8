"""Data sets for zoo training, by name. Each loader returns an :class:`ImageData`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable

from zoo_builder.data.images import ImageData
from zoo_builder.data.digits import load_digits

#: dataset::name -> loader(data_root) returning the train and test tensors.
DATASETS: dict[str, Callable[[Path | None], ImageData]] = {"digits": load_digits}


def load_dataset(name: str, data_root: str | Path | None = None) -> ImageData:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name](Path(data_root) if data_root is not None else None)


@lru_cache(maxsize=4)
def cached_dataset(name: str) -> ImageData:
    """:func:`load_dataset` once per process (workers train many models on the same data)."""
    return load_dataset(name)


__all__ = ["DATASETS", "ImageData", "cached_dataset", "load_dataset"]
