"""Data sets for zoo training, by name.

Each loader takes the data root (where the official files of the data set lie; None for the
embedded data sets that install with a package) and the data set's options from params.json
(``dataset::<option>``, e.g. the convection coefficient ``beta``), and returns the data object
its workload trains on: :class:`ImageData` for image classification, ``TokenData`` for
language modelling, ``ConvectionProblem`` for the PINN. Loaders are registered as lazy
``module:function`` strings so that listing data sets imports nothing heavy.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from wslbench.registry import Registry
from zoo_builder.data.common import DatasetNotFoundError, default_data_root
from zoo_builder.data.images import ImageData

#: dataset::name -> loader(data_root, **options).
DATASETS: Registry[Callable[..., Any]] = Registry("dataset")
DATASETS.register("digits", "zoo_builder.data.digits:load_digits")
DATASETS.register("digits-rotated", "zoo_builder.data.digits:load_digits_rotated")
DATASETS.register("cifar10", "zoo_builder.data.cifar:load_cifar10")
DATASETS.register("cifar100", "zoo_builder.data.cifar:load_cifar100")
DATASETS.register("svhn", "zoo_builder.data.svhn:load_svhn")
DATASETS.register("tinyimagenet", "zoo_builder.data.tinyimagenet:load_tinyimagenet")
DATASETS.register("stl10", "zoo_builder.data.stl10:load_stl10")
DATASETS.register("openwebtext", "zoo_builder.data.text:load_openwebtext")
DATASETS.register("shakespeare", "zoo_builder.data.text:load_shakespeare")
DATASETS.register("convection", "zoo_builder.data.convection:load_convection")


def load_dataset(name: str, data_root: str | os.PathLike | None = None, **options: Any) -> Any:
    """Load data set ``name`` from ``data_root`` (default: $WSLBENCH_DATA or
    ~/.cache/wslbench/data); ``options`` are its ``dataset::`` params."""
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    return DATASETS.get(name)(root, **options)


def dataset_options(params: dict[str, Any]) -> dict[str, Any]:
    """The loader options a flat params.json carries: every ``dataset::`` key but the name."""
    prefix = "dataset::"
    return {key[len(prefix):]: value for key, value in params.items()
            if key.startswith(prefix) and key != "dataset::name"}


@lru_cache(maxsize=4)
def _cached(name: str, data_root: str | None, options_json: str) -> Any:
    return load_dataset(name, data_root, **json.loads(options_json))


def cached_dataset(name: str, data_root: str | os.PathLike | None = None, **options: Any) -> Any:
    """:func:`load_dataset` once per process (workers train many models on the same data)."""
    root = str(data_root) if data_root is not None else None
    return _cached(name, root, json.dumps(options, sort_keys=True))


__all__ = ["DATASETS", "DatasetNotFoundError", "ImageData", "cached_dataset", "dataset_options",
           "default_data_root", "load_dataset"]
