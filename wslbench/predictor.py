"""The predictor interface: what a weight-space model gets and must return.

A predictor is fit on training models with their targets (and validation models with theirs,
for model selection or early stopping), then predicts for test models, which carry no
targets. Subclass :class:`Predictor`, or write any class with the same ``fit`` and ``predict``.
"""

from __future__ import annotations

import abc
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from wslbench.registry import Registry, import_object


@dataclass(frozen=True)
class ModelSample:
    """One model as a predictor sees it: weights (loaded on demand) and its configuration.

    ``hyperparameters`` is None unless the task lets predictors see them. Targets are never here.
    """

    name: str
    epoch: int
    model_args: dict[str, Any]
    hyperparameters: dict[str, Any] | None
    _load: Callable[[], dict[str, torch.Tensor]] = field(repr=False, compare=False)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._load()


class NotApplicableError(ValueError):
    """A predictor cannot handle this zoo (e.g. flattened weights of models of mixed widths);
    the message says why and which predictor to use instead."""


class Predictor(abc.ABC):
    """Base class for predictors; ``seed`` makes a training run reproducible."""

    name: str = "predictor"

    def __init__(self, seed: int = 0):
        self.seed = seed

    @abc.abstractmethod
    def fit(self, train: Sequence[ModelSample], train_targets: np.ndarray,
            val: Sequence[ModelSample], val_targets: np.ndarray) -> None:
        """Learn from the training models; use the validation models to choose settings."""

    @abc.abstractmethod
    def predict(self, models: Sequence[ModelSample]) -> np.ndarray:
        """One prediction per model, in order."""


PREDICTORS: Registry[type] = Registry("predictor")
PREDICTORS.register("linear-probe", "baselines.linear_probe:LinearProbe")
PREDICTORS.register("stat-gbm", "baselines.stat_gbm:StatGBM")
PREDICTORS.register("stat-mlp", "baselines.stat_mlp:StatMLP")
PREDICTORS.register("flat-mlp", "baselines.flat_mlp:FlatMLP")
PREDICTORS.register("gmn", "baselines.gmn:GMN")


def load_predictor_class(reference: str) -> type:
    """A registered name, ``path/to/file.py:Class`` or ``package.module:Class``."""
    if reference in PREDICTORS:
        return PREDICTORS.get(reference)
    if ":" not in reference:
        PREDICTORS.get(reference)  # raises "unknown predictor ... did you mean"
    location, _, attr = reference.rpartition(":")
    if location.endswith(".py"):
        path = Path(location).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"predictor file '{path}' does not exist")
        module_name = f"wslbench_user_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        if not hasattr(module, attr):
            raise ImportError(f"'{path}' defines no {attr!r}")
        return getattr(module, attr)
    return import_object(reference)


def instantiate(predictor_class: type, seed: int):
    """Make a predictor, passing ``seed`` where its constructor takes one."""
    parameters = inspect.signature(predictor_class).parameters
    instance = predictor_class(seed=seed) if "seed" in parameters else predictor_class()
    for method in ("fit", "predict"):
        if not callable(getattr(instance, method, None)):
            raise ValueError(f"{predictor_class.__name__} has no {method}() method; see "
                            "wslbench.predictor.Predictor for the interface")
    return instance
