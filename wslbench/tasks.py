"""Benchmark tasks as strict metadata: what to predict, at which epoch, and how it is scored.

A released task never changes meaning; a change gets a new version (and a new entry).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from wslbench.registry import Registry
from wslbench.zoo import ModelRecord


class Score(str, Enum):
    R2 = "r2"
    KENDALL_TAU = "kendall_tau"
    ACCURACY = "accuracy"
    MACRO_F1 = "macro_f1"


class TaskKind(str, Enum):
    REGRESSION = "regression"
    CLASSIFICATION = "classification"


class TargetEpoch(str, Enum):
    """Which epoch of a model a task looks at (weights and target from the same epoch)."""

    #: the model's last result line, i.e. the end of training
    FINAL = "final"
    #: the last epoch that has both a checkpoint and the target: landscape metrics are
    #: computed at checkpointed epochs, and some published zoos hold them before the last one
    ANNOTATED = "annotated"


@dataclass(frozen=True)
class Task:
    """Predict ``target_key`` (minus ``subtract_key``, if set) from a model's weights.

    The predictor sees the weights at the task's epoch and the architecture arguments; it
    sees the training hyperparameters only when ``sees_hyperparameters`` is set. Regression
    targets are floats (NaN where missing); classification targets are strings (None where
    missing). Models without a target are left out of the task.
    """

    name: str
    version: int
    description: str
    target_key: str
    subtract_key: str | None = None
    kind: TaskKind = TaskKind.REGRESSION
    epoch: TargetEpoch = TargetEpoch.FINAL
    main_score: Score = Score.R2
    scores: tuple[Score, ...] = (Score.R2, Score.KENDALL_TAU)
    higher_is_better: bool = True
    sees_hyperparameters: bool = False

    @property
    def missing(self) -> float | None:
        return None if self.kind is TaskKind.CLASSIFICATION else float("nan")

    def epoch_of(self, model: ModelRecord) -> int | None:
        """The epoch whose weights and target the task uses for ``model``, if any."""
        if self.epoch is TargetEpoch.FINAL:
            return model.last_epoch if model.results else None
        annotated = [e for e in model.checkpoint_epochs
                     if e < len(model.results) and model.results[e].get(self.target_key) is not None]
        return annotated[-1] if annotated else None

    def target(self, model: ModelRecord) -> float | str | None:
        """The model's true target at the task's epoch (NaN or None when the zoo lacks it)."""
        epoch = self.epoch_of(model)
        value = None if epoch is None else model.results[epoch].get(self.target_key)
        if value is None:
            return self.missing
        if self.kind is TaskKind.CLASSIFICATION:
            return str(value)
        value = float(value)
        if self.subtract_key is not None:
            other = model.results[epoch].get(self.subtract_key)
            return float("nan") if other is None else value - float(other)
        return value

    def targets(self, models: list[ModelRecord]) -> np.ndarray:
        values = [self.target(m) for m in models]
        if self.kind is TaskKind.CLASSIFICATION:
            return np.array(values, dtype=object)
        return np.array(values, dtype=np.float64)

    def has_target(self, targets: np.ndarray) -> np.ndarray:
        """Mask of the entries that carry a target."""
        if self.kind is TaskKind.CLASSIFICATION:
            return np.array([t is not None for t in targets], dtype=bool)
        return ~np.isnan(targets)


def _landscape(name: str, key: str, description: str) -> Task:
    return Task(name=name, version=1, target_key=key, epoch=TargetEpoch.ANNOTATED,
                description=description)


TASKS: Registry[Task] = Registry("task")
TASKS.register("test_acc", Task(
    name="test_acc", version=1, target_key="test_acc",
    description="test accuracy at the final epoch, from the final weights",
))
TASKS.register("ggap", Task(
    name="ggap", version=1, target_key="train_acc", subtract_key="test_acc",
    description="generalization gap (train_acc - test_acc) at the final epoch",
))
TASKS.register("cka", _landscape(
    "cka", "representation_similarity",
    "mean linear CKA of the logits between the seeds of the model's grid point"))
TASKS.register("hessian", _landscape(
    "hessian", "log_hessian_trace_train", "log of the Hessian trace on training data"))
TASKS.register("hessian_top_ev", _landscape(
    "hessian_top_ev", "log_hessian_top_ev_val",
    "log of the top Hessian eigenvalue on held-out data (the published key)"))
TASKS.register("mode_connectivity", _landscape(
    "mode_connectivity", "curve_mc_train_error",
    "Bezier mode connectivity on train error (%) between the seeds of the grid point"))
TASKS.register("phase", Task(
    name="phase", version=1, target_key="phase", kind=TaskKind.CLASSIFICATION,
    epoch=TargetEpoch.ANNOTATED, main_score=Score.MACRO_F1,
    scores=(Score.ACCURACY, Score.MACRO_F1),
    description="phase label (I, II, III, IV-A, IV-B) from the landscape metrics",
))
