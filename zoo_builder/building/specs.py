"""Zoo specs: a zoo described as data (model, data, fixed hyperparameters, grid, presets).

A spec names a load axis (the model's capacity, e.g. ResNet width) and a temperature axis
(the noise of training, e.g. batch size); the zoo trains every load x temperature x seed.
Presets swap in smaller grids or fewer epochs under the same name, e.g. ``tiny`` for tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wslbench.zoo_format import flatten_params


@dataclass(frozen=True)
class Axis:
    """One axis of the grid: the params.json key it sets and its values in paper order."""

    key: str
    label: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Preset:
    """A named variant of a spec: a smaller grid, a shorter schedule, smaller settings.

    Fields left as None keep the spec's; ``overrides`` update single settings of a section,
    e.g. ``{"model": {"n_layer": 2}, "training": {"steps_per_epoch": 5}}``.
    """

    description: str
    load_values: tuple[Any, ...] | None = None
    temperature_values: tuple[Any, ...] | None = None
    seeds: tuple[int, ...] | None = None
    epochs: int | None = None
    checkpoint_epochs: tuple[int, ...] | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    average_window: int | None = None


#: The sections of a spec that a preset's ``overrides`` may update.
SECTIONS = ("model", "optim", "augment", "training", "data")


@dataclass(frozen=True)
class ZooSpec:
    """A zoo as data: every model's params.json follows from it (see :meth:`trials`).

    ``training`` holds further ``training::`` settings (e.g. the workload, steps per epoch);
    ``data`` holds the data set's options (``dataset::`` keys, e.g. the PDE coefficient).
    ``notes`` say where a setting departs from, or fills a gap of, the paper.
    ``curve_steps`` is the Bezier curve-training budget of mode connectivity for this zoo, in
    optimizer steps (None: the reference's 3,900); set it only where the curve loss was shown
    to converge within it. ``average_window`` is the epoch window of the weight-averaging
    downstream method (None: the annotation default, 5 epochs); set it where the checkpoint
    schedule needs a wider one to hold two checkpoints. ``zoo-builder annotate`` takes both
    from the spec, so that annotating a rebuild needs no flags to match a release.
    """

    name: str
    version: int
    description: str
    dataset: str
    model: dict[str, Any]
    optim: dict[str, Any]
    load: Axis
    temperature: Axis
    seeds: tuple[int, ...]
    epochs: int
    checkpoint_epochs: tuple[int, ...]
    augment: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, Preset] = field(default_factory=dict)
    notes: str = ""
    curve_steps: int | None = None
    average_window: int | None = None
    preset: str = "default"

    def with_preset(self, name: str) -> "ZooSpec":
        """The spec with preset ``name`` applied (``default`` is the spec itself)."""
        if name == "default":
            return self
        if name not in self.presets:
            raise ValueError(
                f"spec '{self.name}' has no preset '{name}'; presets: "
                f"{['default', *sorted(self.presets)]}"
            )
        preset = self.presets[name]
        unknown = set(preset.overrides) - set(SECTIONS)
        if unknown:
            raise ValueError(f"preset '{name}' of spec '{self.name}' overrides unknown "
                             f"sections {sorted(unknown)}; sections: {list(SECTIONS)}")
        sections = {section: {**getattr(self, section), **preset.overrides.get(section, {})}
                    for section in SECTIONS}
        return dataclasses.replace(
            self,
            preset=name,
            load=dataclasses.replace(self.load, values=preset.load_values or self.load.values),
            temperature=dataclasses.replace(
                self.temperature, values=preset.temperature_values or self.temperature.values),
            seeds=preset.seeds or self.seeds,
            epochs=preset.epochs or self.epochs,
            checkpoint_epochs=preset.checkpoint_epochs or self.checkpoint_epochs,
            average_window=preset.average_window or self.average_window,
            **sections,
        )

    @property
    def num_models(self) -> int:
        return len(self.load.values) * len(self.temperature.values) * len(self.seeds)

    @property
    def saved_epochs(self) -> tuple[int, ...]:
        """Epochs with a checkpoint: the asked ones within range, always the first and last."""
        return tuple(sorted({0, self.epochs, *(e for e in self.checkpoint_epochs
                                               if 0 <= e <= self.epochs)}))

    @property
    def grid(self) -> dict[str, list[Any]]:
        return {self.load.key: list(self.load.values),
                self.temperature.key: list(self.temperature.values), "seed": list(self.seeds)}

    def trials(self) -> list["TrialPlan"]:
        """Every model of the zoo, in a fixed order: load, then temperature, then seed."""
        points = itertools.product(self.load.values, self.temperature.values, self.seeds)
        return [TrialPlan(index, self._params(load, temperature, seed))
                for index, (load, temperature, seed) in enumerate(points)]

    def _params(self, load: Any, temperature: Any, seed: int) -> dict[str, Any]:
        nested = {
            "model": dict(self.model),
            "optim": dict(self.optim),
            "training": {"epochs_train": self.epochs,
                         "checkpoint_epochs": list(self.saved_epochs), **self.training},
            "augment": dict(self.augment),
            "dataset": {"name": self.dataset, **self.data},
            "seed": seed,
        }
        params = flatten_params(nested)
        params[self.load.key] = load
        params[self.temperature.key] = temperature
        return params


@dataclass(frozen=True)
class TrialPlan:
    """One model to train: its index in the grid and its flat params.json."""

    index: int
    params: dict[str, Any]

    #: params.json key -> tag in the trial folder name (Ray Tune's style, published names).
    FOLDER_TAGS = {"model::width": "model_width", "model::embedding_dim": "model_embedding_dim",
                   "model::model_dim": "model_model_dim", "dataset::beta": "dataset_beta",
                   "optim::lr": "optim_lr", "optim::wd": "optim_wd", "seed": "seed",
                   "training::batchsize": "training_batchsize"}

    def folder_name(self, zoo_id: str) -> str:
        """A Ray-Tune-style trial folder name, stable across runs so that a build can resume."""
        tags = ",".join(f"{tag}={self.params[key]}" for key, tag in self.FOLDER_TAGS.items()
                        if key in self.params)
        return f"NN_tune_trainable_{zoo_id}_{self.index:05d}_{self.index}_{tags}"


def load_plugin(target: str) -> None:
    """Import a plugin: a Python file (``my_zoo.py``) or a module (``mypkg.zoos``) that
    registers zoo specs, model factories, data sets or workloads of a new domain.

    Importing twice does nothing, so build workers can import what the command line named.
    """
    if target.endswith(".py") or Path(target).is_file():
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"plugin file '{path}' does not exist")
        name = f"wslbench_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
        if name in sys.modules:
            return
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    else:
        importlib.import_module(target)
