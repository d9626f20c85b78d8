"""Evaluate a predictor on a task, a zoo and a split; produce a result with full provenance."""

from __future__ import annotations

import functools
import logging
import platform
import random
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

import wslbench
from wslbench import zoo_format as fmt
from wslbench.predictor import ModelSample, instantiate
from wslbench.splits import Split
from wslbench.tasks import Score, Task, TaskKind
from wslbench.zoo import ModelRecord, Zoo

log = logging.getLogger(__name__)
RESULT_SCHEMA_VERSION = 1


def score(name: Score, targets: np.ndarray, predictions: np.ndarray) -> float:
    """A score of predictions against targets (NaN when undefined)."""
    if name is Score.ACCURACY:
        return float(np.mean([str(t) == str(p) for t, p in zip(targets, predictions)]))
    if name is Score.MACRO_F1:
        from sklearn.metrics import f1_score

        return float(f1_score([str(t) for t in targets], [str(p) for p in predictions],
                              average="macro", zero_division=0))
    if len(targets) < 2:
        return float("nan")
    if name is Score.R2:
        from sklearn.metrics import r2_score

        return float(r2_score(targets, predictions))
    if name is Score.KENDALL_TAU:
        from scipy.stats import kendalltau

        return float(kendalltau(targets, predictions).statistic)
    raise ValueError(f"unknown score {name!r}")


@dataclass
class EvaluationResult:
    """The result JSON: scores, per-model predictions, and where every input came from."""

    predictor: dict[str, Any]
    task: dict[str, Any]
    zoo: dict[str, Any]
    split: dict[str, Any]
    seeds: list[int]
    scores: dict[str, dict[str, Any]]
    predictions: dict[str, dict[str, float]]
    provenance: dict[str, Any]
    schema_version: int = RESULT_SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        fmt.atomic_write_json(path, self.to_json())


def samples(zoo_models: Sequence[ModelRecord], task: Task) -> list[ModelSample]:
    """What a predictor may see of each model: its weights at the task's epoch, its
    architecture arguments, and its hyperparameters where the task allows them."""
    out = []
    for model in zoo_models:
        epoch = task.epoch_of(model)
        if epoch not in model.checkpoint_epochs:
            raise fmt.ZooFormatError(
                f"model '{model.path}' has no checkpoint at epoch {epoch}, where task "
                f"'{task.name}' takes its target (checkpoints at "
                f"{list(model.checkpoint_epochs) or 'none'})")
        out.append(ModelSample(
            name=model.name, epoch=epoch, model_args=model.model_args,
            hyperparameters=model.hyperparameters if task.sees_hyperparameters else None,
            # Only the checkpoint's path travels with the sample: no route back to the targets.
            _load=functools.partial(fmt.load_state_dict, model.path, epoch),
        ))
    return out


def evaluate(predictor_class: type, task: Task, zoo: Zoo, split: Split,
             seeds: Sequence[int] = (0,), predictor_name: str | None = None) -> EvaluationResult:
    """Fit a fresh predictor per seed on the split's train part, score it on the test part."""
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    by_name = {m.name: m for m in zoo.models}
    parts: dict[str, tuple[list[ModelRecord], np.ndarray]] = {}
    for part in ("train", "val", "test"):
        models = [by_name[name] for name in split.part(part)]
        targets = task.targets(models)
        keep = task.has_target(targets)
        if not keep.all():
            log.warning("%s: %d %s models have no %s target and are left out", zoo.name,
                        int((~keep).sum()), part, task.name)
        parts[part] = ([m for m, k in zip(models, keep) if k], targets[keep])
        if not parts[part][0]:
            raise ValueError(f"the {part} part of split '{split.name}' has no model with a "
                             f"'{task.name}' target in zoo '{zoo.root}'")
    inputs = {part: samples(models, task) for part, (models, _) in parts.items()}
    test_targets = parts["test"][1]

    per_seed: dict[str, list[float]] = {s.value: [] for s in task.scores}
    predictions: dict[str, dict[str, float]] = {}
    for seed in seeds:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        predictor = instantiate(predictor_class, seed)
        predictor.fit(inputs["train"], parts["train"][1], inputs["val"], parts["val"][1])
        predicted = np.asarray(predictor.predict(inputs["test"]),
                               dtype=object if task.kind is TaskKind.CLASSIFICATION
                               else np.float64).reshape(-1)
        if predicted.shape != test_targets.shape:
            raise ValueError(f"predict() returned {predicted.shape[0]} values for "
                             f"{len(test_targets)} test models")
        as_json = str if task.kind is TaskKind.CLASSIFICATION else float
        predictions[str(seed)] = {s.name: as_json(v) for s, v in zip(inputs["test"], predicted)}
        for name in task.scores:
            per_seed[name.value].append(score(name, test_targets, predicted))

    scores = {name: {"mean": float(np.mean(values)), "std": float(np.std(values)),
                     "per_seed": values} for name, values in per_seed.items()}
    return EvaluationResult(
        predictor={"name": predictor_name or getattr(predictor_class, "name", None)
                   or predictor_class.__name__,
                   "class": f"{predictor_class.__module__}:{predictor_class.__qualname__}"},
        task={"name": task.name, "version": task.version, "kind": task.kind.value,
              "main_score": task.main_score.value},
        zoo={"name": zoo.name, "path": str(zoo.root), "revision": zoo.revision,
             "n_models": len(zoo)},
        split={"name": split.name, "version": split.version, "sha256": split.sha256,
               "sizes": {part: len(models) for part, (models, _) in parts.items()}},
        seeds=list(seeds),
        scores=scores,
        predictions=predictions,
        provenance={
            "package_version": wslbench.__version__, "git_hash": git_hash(),
            "python": platform.python_version(), "torch": torch.__version__,
            "hardware": hardware(), "started": started.isoformat(timespec="seconds"),
            "wall_time_s": round(time.perf_counter() - clock, 3),
        },
    )


def git_hash() -> str | None:
    """The commit of the wslbench source tree, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def hardware() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
