"""The predictor interface: what a weight-space model gets and must return.

A predictor is fit on training models with their targets (and validation models with theirs,
for model selection or early stopping), then predicts for test models, which carry no
targets. Subclass :class:`Predictor`, or write any class with the same ``fit`` and ``predict``.
"""

from __future__ import annotations

import abc
import difflib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from wslbench.registry import Registry


@dataclass(frozen=True)
class ModelSample:
    """One model as a predictor sees it: weights (loaded on demand) and its configuration.

    ``model_args`` is None unless the task lets predictors see the architecture arguments,
    ``hyperparameters`` None unless it lets them see the training hyperparameters. Targets
    are never here. ``key`` identifies the checkpoint (zoo revision, model, epoch, and the
    ``fingerprint`` of its file where the sample has one: size and content hash, see
    :func:`wslbench.zoo_format.file_fingerprint`), e.g. for caching features, so that a
    changed file gets a new key; it leads to no target.
    """

    name: str
    epoch: int
    model_args: dict[str, Any] | None
    hyperparameters: dict[str, Any] | None
    _load: Callable[[], dict[str, torch.Tensor]] = field(repr=False, compare=False)
    zoo_revision: str = ""
    fingerprint: str = ""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._load()

    @property
    def key(self) -> str:
        key = f"{self.zoo_revision}/{self.name}@{self.epoch}"
        return f"{key}#{self.fingerprint}" if self.fingerprint else key


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
PREDICTORS.register("probegen", "baselines.probegen:ProbeGen")
PREDICTORS.register("nfn", "baselines.nfn:NFN")
PREDICTORS.register("spectral-mlp", "baselines.spectral:SpectralMLP")
PREDICTORS.register("spectral-free", "baselines.spectral:SpectralFree")


#: Installed packages register predictors under this entry point group, e.g. in pyproject.toml:
#: ``[project.entry-points."wslbench.models"] my-model = "my_package.predictor:MyPredictor"``.
ENTRY_POINT_GROUP = "wslbench.models"


def entry_points() -> dict[str, Any]:
    """Predictors that installed packages register under :data:`ENTRY_POINT_GROUP`."""
    from importlib.metadata import entry_points as installed

    return {ep.name: ep for ep in installed(group=ENTRY_POINT_GROUP)}


def load_predictor_class(reference: str) -> type:
    """The predictor class that ``reference`` names, looked up in this order:

    - a registered name (``wslbench ls models``);
    - an installed entry point of the ``wslbench.models`` group;
    - a Python file, ``path/to/file.py`` or ``path/to/file.py:Class``;
    - a module path, ``package.module`` or ``package.module:Class``.

    Without ``:Class``, the module must define exactly one predictor class.
    """
    if reference in PREDICTORS:
        return PREDICTORS.get(reference)
    installed = entry_points()
    if reference in installed:
        try:
            return installed[reference].load()
        except Exception as err:
            raise ImportError(f"entry point {reference!r} of group {ENTRY_POINT_GROUP!r} "
                              f"({installed[reference].value}) does not load: {err}") from err
    location, attr = _split_reference(reference)
    if location.endswith(".py"):
        module = _import_file(Path(location))
    elif re.fullmatch(r"[A-Za-z_][\w.]*", location):
        try:
            module = importlib.import_module(location)
        except ModuleNotFoundError as err:
            if err.name != location.split(".")[0]:
                raise
            raise _unknown(reference, installed) from err
    else:
        raise _unknown(reference, installed)
    return _predictor_in(module, attr, reference)


def _unknown(reference: str, installed: dict[str, Any]) -> ImportError:
    names = PREDICTORS.names() + sorted(installed)
    close = difflib.get_close_matches(reference, names, n=3)
    hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
    return ImportError(f"no predictor {reference!r}: not a registered name or entry point, "
                       f"not a .py file, not an importable module; {hint}known: {', '.join(names)}")


def _split_reference(reference: str) -> tuple[str, str]:
    """``("path/file.py" or "package.module", "Class" or "")``."""
    if ".py:" in reference:
        path, _, attr = reference.rpartition(".py:")
        return path + ".py", attr
    if reference.endswith(".py"):
        return reference, ""
    location, _, attr = reference.partition(":")
    return location, attr


def _import_file(path: Path):
    path = path.expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"predictor file '{path}' does not exist")
    module_name = f"wslbench_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        sys.modules.pop(module_name, None)
        raise ImportError(f"predictor file '{err.filename or path}' line {err.lineno} has a "
                          f"syntax error: {err.msg}; fix the file") from err
    return module


def is_predictor_class(obj: Any) -> bool:
    return (inspect.isclass(obj) and not inspect.isabstract(obj)
            and callable(getattr(obj, "fit", None)) and callable(getattr(obj, "predict", None)))


def _predictor_in(module, attr: str, reference: str) -> type:
    """``module.attr``, or the one predictor class that ``module`` defines."""
    if attr:
        obj = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ImportError(f"{reference!r}: '{module.__name__}' defines no {attr!r}")
            obj = getattr(obj, part)
        return obj
    found = [obj for obj in vars(module).values()
             if is_predictor_class(obj) and obj.__module__ == module.__name__]
    if len(found) != 1:
        listing = ", ".join(c.__name__ for c in found) or "none"
        raise ImportError(f"{reference!r} defines {len(found)} predictor classes ({listing}); "
                          f"name one as '{reference}:ClassName'")
    return found[0]


def instantiate(predictor_class: type, seed: int, device: str | None = None):
    """Make a predictor, passing ``seed`` and ``device`` where its constructor takes them."""
    parameters = inspect.signature(predictor_class).parameters
    kwargs: dict[str, Any] = {}
    if "seed" in parameters:
        kwargs["seed"] = seed
    if device is not None:
        if "device" not in parameters:
            raise ValueError(f"{predictor_class.__name__} takes no device argument; leave out "
                             "--device, or add `device` to its constructor")
        kwargs["device"] = device
    instance = predictor_class(**kwargs)
    for method in ("fit", "predict"):
        if not callable(getattr(instance, method, None)):
            raise ValueError(f"{predictor_class.__name__} has no {method}() method; see "
                            "wslbench.predictor.Predictor for the interface")
    return instance
