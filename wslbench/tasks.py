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


@dataclass(frozen=True)
class Task:
    """Predict ``target_key`` (minus ``subtract_key``, if set) at a model's final epoch.

    The predictor sees the final checkpoint's weights and the architecture arguments; it sees
    the training hyperparameters only when ``sees_hyperparameters`` is set.
    """

    name: str
    version: int
    description: str
    target_key: str
    subtract_key: str | None = None
    epoch: str = "final"
    main_score: Score = Score.R2
    scores: tuple[Score, ...] = (Score.R2, Score.KENDALL_TAU)
    higher_is_better: bool = True
    sees_hyperparameters: bool = False

    def target(self, model: ModelRecord) -> float:
        """The model's true target at the task's epoch, NaN when the zoo does not have it."""
        value = model.metric(self.target_key)
        if value is None:
            return float("nan")
        if self.subtract_key is not None:
            other = model.metric(self.subtract_key)
            return float("nan") if other is None else value - other
        return value

    def targets(self, models: list[ModelRecord]) -> np.ndarray:
        return np.array([self.target(m) for m in models], dtype=np.float64)


TASKS: Registry[Task] = Registry("task")
TASKS.register("test_acc", Task(
    name="test_acc", version=1, target_key="test_acc",
    description="test accuracy at the final epoch, from the final weights",
))
TASKS.register("ggap", Task(
    name="ggap", version=1, target_key="train_acc", subtract_key="test_acc",
    description="generalization gap (train_acc - test_acc) at the final epoch",
))
