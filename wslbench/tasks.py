"""Benchmark tasks as strict metadata: what to predict, at which epoch, how it is scored, and
what a predictor may see.

A released task never changes meaning. Every registered version is kept: ``TASKS.get("ggap")``
gives the newest version, ``get_task("ggap@v1")`` a given one, and results record the version.
``tests/released_tasks.json`` holds a fingerprint of every released version, so that editing a
released task's metadata fails the tests: a change must be a new version.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from enum import Enum

import numpy as np

from wslbench import zoo_format as fmt
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


class Input(str, Enum):
    """What a predictor may be given besides nothing at all."""

    WEIGHTS = "weights"
    #: the ``model::`` entries of params.json (type, width, ...)
    ARCHITECTURE = "architecture"
    #: every other params.json entry (batch size, learning rate, seed, ...): often enough on
    #: its own to place a model in the phase diagram, so tasks withhold it by default
    HYPERPARAMETERS = "hyperparameters"


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_REFERENCE = re.compile(r"^(?P<name>[a-z][a-z0-9_]*)@v(?P<version>\d+)$")


@dataclass(frozen=True)
class Task:
    """Predict ``target_key`` (minus ``subtract_key``, if set) from a model's weights.

    Regression targets are floats (NaN where missing); classification targets are strings
    (None where missing). Models without a target are left out of the task.
    ``per_checkpoint`` says that the target exists at every checkpoint (it comes from the
    training log), which the ``epochs`` split needs.
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
    inputs: frozenset[Input] = frozenset({Input.WEIGHTS, Input.ARCHITECTURE})
    per_checkpoint: bool = False

    def __post_init__(self) -> None:
        problems = []
        if not _NAME.match(self.name):
            problems.append(f"name {self.name!r} must be lower_snake_case")
        if not isinstance(self.version, int) or self.version < 1:
            problems.append(f"version {self.version!r} must be an integer >= 1")
        for field_name, enum in (("kind", TaskKind), ("epoch", TargetEpoch),
                                 ("main_score", Score)):
            if not isinstance(getattr(self, field_name), enum):
                problems.append(f"{field_name} must be a {enum.__name__}")
        if not all(isinstance(s, Score) for s in self.scores) or self.main_score not in self.scores:
            problems.append(f"scores {self.scores} must be Scores and include main_score")
        if not all(isinstance(i, Input) for i in self.inputs) or Input.WEIGHTS not in self.inputs:
            problems.append(f"inputs {sorted(self.inputs)} must be Inputs and include weights")
        classification_scores = {Score.ACCURACY, Score.MACRO_F1}
        is_classification = self.kind is TaskKind.CLASSIFICATION
        if is_classification != (set(self.scores) <= classification_scores):
            problems.append(f"scores {[s.value for s in self.scores]} do not fit a "
                            f"{self.kind.value} task")
        if problems:
            raise ValueError(f"task {self.name!r}: " + "; ".join(problems))

    @property
    def reference(self) -> str:
        """The versioned name, e.g. ``ggap@v1``."""
        return f"{self.name}@v{self.version}"

    @property
    def sees_architecture(self) -> bool:
        return Input.ARCHITECTURE in self.inputs

    @property
    def sees_hyperparameters(self) -> bool:
        return Input.HYPERPARAMETERS in self.inputs

    @property
    def missing(self) -> float | None:
        return None if self.kind is TaskKind.CLASSIFICATION else float("nan")

    def metadata(self) -> dict:
        """The task as plain JSON data (enums as their values, sets sorted)."""
        data = asdict(self)
        data["inputs"] = sorted(i.value for i in self.inputs)
        data["scores"] = [s.value for s in self.scores]
        for key in ("kind", "epoch", "main_score"):
            data[key] = data[key].value
        return data

    def fingerprint(self) -> str:
        """A hash of what the task means (all metadata but the wording of its description),
        recorded when a task is released."""
        meaning = self.metadata()
        meaning.pop("description")
        return fmt.canonical_hash(meaning)

    def epoch_of(self, model: ModelRecord) -> int | None:
        """The epoch whose weights and target the task uses for ``model``, if any."""
        if self.epoch is TargetEpoch.FINAL:
            return model.last_epoch if model.results else None
        annotated = [e for e in model.checkpoint_epochs
                     if e < len(model.results) and model.results[e].get(self.target_key) is not None]
        return annotated[-1] if annotated else None

    def target(self, model: ModelRecord, epoch: int | None = None) -> float | str | None:
        """The model's true target at ``epoch`` (default: the task's epoch); NaN or None when
        the zoo lacks it."""
        epoch = self.epoch_of(model) if epoch is None else epoch
        if epoch is None or not 0 <= epoch < len(model.results):
            return self.missing
        value = model.results[epoch].get(self.target_key)
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
        return self.as_array([self.target(m) for m in models])

    def as_array(self, values) -> np.ndarray:
        """Targets or predictions as the array type of the task (object for labels)."""
        if self.kind is TaskKind.CLASSIFICATION:
            return np.array(list(values), dtype=object)
        return np.array(list(values), dtype=np.float64)

    def has_target(self, targets: np.ndarray) -> np.ndarray:
        """Mask of the entries that carry a target."""
        if self.kind is TaskKind.CLASSIFICATION:
            return np.array([t is not None for t in targets], dtype=bool)
        return ~np.isnan(targets)


#: Every released version, under ``name@vN``; never edit one, register a new version.
TASK_VERSIONS: Registry[Task] = Registry("task version")
#: The newest version of each task, by plain name.
TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    """Register a task version; the newest version of a name is what ``TASKS`` returns."""
    if task.name in TASKS and task.version <= TASKS.get(task.name).version:
        raise ValueError(f"task {task.reference}: versions of a task must be registered in "
                         f"increasing order (have v{TASKS.get(task.name).version})")
    TASK_VERSIONS.register(task.reference, task)
    TASKS.register(task.name, task, replace=task.name in TASKS)
    return task


def get_task(reference: str) -> Task:
    """A task by name (newest version) or by ``name@vN`` (that version)."""
    if "@" in reference:
        if not _REFERENCE.match(reference):
            raise ValueError(f"task reference {reference!r} is not of the form 'name@vN', "
                             "e.g. 'ggap@v1'")
        return TASK_VERSIONS.get(reference)
    return TASKS.get(reference)


def _annotated(name: str, key: str, description: str) -> Task:
    return Task(name=name, version=1, target_key=key, epoch=TargetEpoch.ANNOTATED,
                description=description)


register_task(Task(
    name="test_acc", version=1, target_key="test_acc", per_checkpoint=True,
    description="test accuracy at the final epoch, from the final weights",
))
register_task(Task(
    name="ggap", version=1, target_key="train_acc", subtract_key="test_acc", per_checkpoint=True,
    description="generalization gap (train_acc - test_acc) at the final epoch",
))
register_task(_annotated(
    "cka", "representation_similarity",
    "mean linear CKA of the logits between the seeds of the model's grid point"))
register_task(_annotated(
    "hessian", "log_hessian_trace_train", "log of the Hessian trace on training data"))
register_task(_annotated(
    "hessian_top_ev", "log_hessian_top_ev_val",
    "log of the top Hessian eigenvalue on held-out data (the published key)"))
register_task(_annotated(
    "mode_connectivity", "curve_mc_train_error",
    "Bezier mode connectivity on train error (%) between the seeds of the grid point"))
register_task(Task(
    name="phase", version=1, target_key="phase", kind=TaskKind.CLASSIFICATION,
    epoch=TargetEpoch.ANNOTATED, main_score=Score.MACRO_F1,
    scores=(Score.ACCURACY, Score.MACRO_F1),
    description="phase label (I, II, III, IV-A, IV-B) from the landscape metrics",
))
# Phase rules v2 (zoo_builder.annotating.phases.RULES_V2) store their label under their own key,
# so phase@v1 keeps reading the v1 labels of key ``phase``; ``--task phase`` means v2.
register_task(Task(
    name="phase", version=2, target_key="phase_v2", kind=TaskKind.CLASSIFICATION,
    epoch=TargetEpoch.ANNOTATED, main_score=Score.MACRO_F1,
    scores=(Score.ACCURACY, Score.MACRO_F1),
    description="phase label (I, II, III, IV-A, IV-B) under phase rules wslbench-phases-v2",
))
# Rules per domain (zoo_builder.annotating.phases.DOMAIN_RULES): image classifiers keep v2's
# thresholds, language and PINN zoos get their own; ``--task phase`` means v3.
register_task(Task(
    name="phase", version=3, target_key="phase_v3", kind=TaskKind.CLASSIFICATION,
    epoch=TargetEpoch.ANNOTATED, main_score=Score.MACRO_F1,
    scores=(Score.ACCURACY, Score.MACRO_F1),
    description="phase label (I, II, III, IV-A, IV-B) under the rules of the zoo's domain "
                "(images: wslbench-phases-v2; language: wslbench-phases-language-v1; PINNs: "
                "wslbench-phases-pinn-v1)",
))
register_task(_annotated(
    "mode_connectivity_loss", "curve_mc_train_loss",
    "Bezier mode connectivity on the train loss between the seeds of the grid point (nats "
    "for classifiers and language models, the training objective for PINNs)"))
register_task(Task(
    name="test_rel_l2", version=1, target_key="test_rel_l2_error", per_checkpoint=True,
    description="relative L2 error of a PINN's solution on the test grid at the final epoch",
))

# Downstream results (zoo-builder annotate --metrics downstream): how a method behaves on the
# model, which the paper ties to its phase.
register_task(_annotated(
    "wiseft_gain", "wiseft_acc_test_delta",
    "test-accuracy gain of averaging the model's last checkpoints (BatchNorm re-estimated)"))
register_task(_annotated(
    "rebasin_gain", "gitrebasin_acc_test_delta",
    "test-accuracy gain of averaging the grid point's seeds after git re-basin alignment"))
register_task(_annotated(
    "prune_acc_50", "prune_acc_test_50",
    "test accuracy after global magnitude pruning of half the conv and linear weights"))
register_task(_annotated(
    "prune_acc_90", "prune_acc_test_90",
    "test accuracy after global magnitude pruning of 90% of the conv and linear weights"))
register_task(_annotated(
    "ensemble_gain", "ensemble_gain",
    "test-accuracy gain of the seeds' ensemble (averaged softmax) over its mean member"))
register_task(_annotated(
    "transfer_acc", "transfer_acc",
    "test accuracy on the transfer data set after fine-tuning the whole model on it"))
