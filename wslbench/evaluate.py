"""Evaluate a predictor on a task, a zoo and a split; produce a result with full provenance."""

from __future__ import annotations

import functools
import json
import logging
import math
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import wslbench
from wslbench import zoo_format as fmt
from wslbench.intervals import (
    RESAMPLES,
    TestPart,
    bootstrap_info,
    degenerate_warning,
    grid_point_id,
    score_task,
)
from wslbench.isolation import CheckpointStage, check_predictions, running
from wslbench.predictor import ModelSample
from wslbench.splits import PARTS, Split
from wslbench.tasks import Score, TargetEpoch, Task, TaskKind
from wslbench.zoo import ModelRecord, Zoo

log = logging.getLogger(__name__)
#: 2: scores carry a value and a 95 % bootstrap interval over test grid points, and the
#: result records each test sample's grid point (see :mod:`wslbench.intervals`).
RESULT_SCHEMA_VERSION = 2


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
    """The result JSON: scores, per-model predictions, and where every input came from.

    ``scores`` maps each of the task's scores to ``{"value", "ci95", "std", "per_seed",
    "grid_point_means", "degenerate", "reason"}`` (:class:`wslbench.intervals.ScoreInterval`:
    the mean over seeds, its 95 % bootstrap interval over test grid points or null, ...);
    ``predictions`` maps each seed to ``{sample id: prediction}``, ``grid_points`` each
    sample id to its grid point's id, and ``bootstrap`` records the bootstrap's settings.
    """

    predictor: dict[str, Any]
    task: dict[str, Any]
    zoo: dict[str, Any]
    split: dict[str, Any]
    seeds: list[int]
    scores: dict[str, dict[str, Any]]
    predictions: dict[str, dict[str, float]]
    grid_points: dict[str, str]
    bootstrap: dict[str, Any]
    provenance: dict[str, Any]
    schema_version: int = RESULT_SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """The result as strict JSON data: a number that is undefined (NaN) or infinite is
        null, and the score's ``reason`` says why."""
        return _finite(asdict(self))

    def save(self, path: Path) -> None:
        text = json.dumps(self.to_json(), indent=2, sort_keys=True, allow_nan=False)
        fmt.atomic_write_bytes(Path(path), (text + "\n").encode())


def _finite(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by None (JSON has neither)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        finite = {k: _finite(v) for k, v in data.items()}
        if "reason" in finite and finite.get("reason") is None and any(
                isinstance(v, float) and not math.isfinite(v) for v in data.values()):
            finite["reason"] = "undefined (not a finite number)"
        return finite
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


@dataclass(frozen=True)
class TaskItem:
    """One model at one epoch in a part of a split, with its true target."""

    model: ModelRecord
    epoch: int
    sample_id: str
    target: float | str | None


def task_items(task: Task, zoo: Zoo, split: Split, part: str,
               test_zoo: Zoo | None = None) -> list[TaskItem]:
    """The (model, epoch) pairs of a split part that carry the task's target.

    Sample ids are model names, or ``name@epoch`` where the split sets the epochs (several
    checkpoints of a model can then be in one part)."""
    source = test_zoo if part == "test" and split.test_zoo_revision is not None else zoo
    if source is None:
        raise ValueError(f"split '{split.name}' tests on another zoo (revision "
                         f"{split.test_zoo_revision[:12]}); pass it as the test zoo")
    if source.revision != (split.test_zoo_revision if source is test_zoo else split.zoo_revision):
        raise ValueError(f"split '{split.name}' was made for another revision of zoo "
                         f"'{source.root}'; make the split again for this zoo")
    epochs = split.part_epochs(part)
    if epochs is not None and not task.per_checkpoint:
        raise ValueError(f"task '{task.name}' has targets only at {task.epoch.value} epochs, "
                         f"so split '{split.name}' (given checkpoint epochs) cannot use it; "
                         "use a task with per-checkpoint targets, e.g. test_acc or ggap")
    by_name = {m.name: m for m in source.models}
    items = []
    for name in split.part(part):
        if name not in by_name:
            raise ValueError(f"split '{split.name}' lists model '{name}', which zoo "
                             f"'{source.root}' does not have")
        model = by_name[name]
        if epochs is None:
            chosen = [(task.epoch_of(model), name)]
        else:
            chosen = [(e, f"{name}@{e}") for e in epochs if e in model.checkpoint_epochs]
        for epoch, sample_id in chosen:
            if epoch is None:
                continue
            target = task.target(model, epoch)
            if task.has_target(task.as_array([target]))[0]:
                items.append(TaskItem(model, epoch, sample_id, target))
    return items


class TaskDoesNotApplyError(ValueError):
    """No model of the zoo records the task's target in its training log (e.g. a PINN's
    relative L2 error on an image zoo): the task is not one of this zoo's, as opposed to a
    landscape or downstream target that annotation has not yet added."""


def check_task_applies(task: Task, zoo: Zoo) -> None:
    """Raise :class:`TaskDoesNotApplyError` where the task's target comes from the training
    log (not from annotation) and no row of any model's result.json records it."""
    if task.epoch is TargetEpoch.ANNOTATED:
        return  # absent until `zoo-builder annotate` adds it: task_items' errors say so
    keys = {task.target_key} | ({task.subtract_key} if task.subtract_key else set())
    if any(keys <= row.keys() for model in zoo.models for row in model.results):
        return
    raise TaskDoesNotApplyError(
        f"task '{task.name}' does not apply to zoo '{zoo.name}': none of its {len(zoo)} models "
        f"records {' and '.join(sorted(keys))} in its training log ({task.description}). "
        "Choose another task (`wslbench ls tasks` lists them)")


def split_targets(task: Task, zoo: Zoo, split: Split, part: str = "test",
                  test_zoo: Zoo | None = None) -> dict[str, float | str]:
    """The true targets of a split part, keyed by sample id (what result predictions use)."""
    return {item.sample_id: item.target for item in task_items(task, zoo, split, part, test_zoo)}


def samples(items: Sequence[TaskItem], task: Task, zoo_revision: str = "",
            stage: CheckpointStage | None = None) -> list[ModelSample]:
    """What a predictor may see of each item: its weights at the item's epoch, and the
    architecture arguments and hyperparameters where the task allows them.

    With a ``stage`` (as :func:`evaluate` uses), samples get opaque names and load from the
    stage; without, they keep their sample ids and load from the zoo (for trusted code)."""
    out = []
    for item in items:
        model = item.model
        if item.epoch not in model.checkpoint_epochs:
            raise fmt.ZooFormatError(
                f"model '{model.path}' has no checkpoint at epoch {item.epoch}, where task "
                f"'{task.name}' takes its target (checkpoints at "
                f"{list(model.checkpoint_epochs) or 'none'})")
        name, folder, fingerprint = item.sample_id, model.path, None
        if stage is not None:
            name = stage.opaque_name(zoo_revision, item.sample_id)
            folder = stage.add(model.path, item.epoch, name)
            fingerprint = stage.fingerprints.get(name)
        out.append(ModelSample(
            name=name, epoch=item.epoch,
            model_args=model.model_args if task.sees_architecture else None,
            hyperparameters=model.hyperparameters if task.sees_hyperparameters else None,
            _load=functools.partial(fmt.load_state_dict, folder, item.epoch),
            zoo_revision=zoo_revision,
            fingerprint=fingerprint or fmt.file_fingerprint(fmt.checkpoint_file(folder,
                                                                                 item.epoch)),
        ))
    return out


def evaluate(predictor: type | str, task: Task, zoo: Zoo, split: Split,
             seeds: Sequence[int] = (0,), predictor_name: str | None = None,
             test_zoo: Zoo | None = None, device: str | None = None) -> EvaluationResult:
    """Fit a fresh predictor per seed on the split's train part, score it on the test part.

    ``predictor`` is a predictor class (importable by its module, or defined in a .py file)
    or a reference as ``wslbench evaluate`` takes it (a registered name, entry point,
    ``file.py[:Class]`` or ``module[:Class]``). It runs in a separate process that gets the
    weights as read-only copies and never the targets of test models (see
    :mod:`wslbench.isolation`); this process keeps the targets and scores the predictions.
    ``device`` is passed to predictors whose constructor takes one."""
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    zoos = (zoo,) if test_zoo is None else (zoo, test_zoo)
    with running(predictor, [z.root for z in zoos], device) as process:
        for source in zoos:  # checkpoints, params and results as the manifest records them
            source.check_integrity()
            check_task_applies(task, source)
        items: dict[str, list[TaskItem]] = {}
        for part in PARTS:
            items[part] = task_items(task, zoo, split, part, test_zoo)
            missing = len(split.part(part)) - len({i.model.name for i in items[part]})
            if missing:
                log.warning("%s: %d %s models have no %s target and are left out", zoo.name,
                            missing, part, task.name)
            if not items[part]:
                raise ValueError(f"the {part} part of split '{split.name}' has no model with "
                                 f"a '{task.name}' target in zoo '{zoo.root}'")
        targets = {part: task.as_array(i.target for i in items[part]) for part in PARTS}
        with CheckpointStage(process.stage_base) as stage:
            job = {"task": task.reference, "seeds": [int(s) for s in seeds], "parts": {}}
            for part in PARTS:
                revision = (test_zoo if part == "test" and test_zoo else zoo).revision
                described = [_described(sample) for sample in
                             samples(items[part], task, revision, stage)]
                job["parts"][part] = {"samples": described}
                if part != "test":  # the child never gets the targets of test models
                    job["parts"][part]["targets"] = [_json_target(t) for t in targets[part]]
            answer = process.run(job, stage)
        label = process.label

    test_ids = [item.sample_id for item in items["test"]]
    classification = task.kind is TaskKind.CLASSIFICATION
    predicted_by_seed: dict[int, np.ndarray] = {}
    predictions: dict[str, dict[str, float | str]] = {}
    for seed in seeds:
        values = check_predictions(answer["predictions"][str(seed)], test_ids, classification,
                                   label, seed)
        predictions[str(seed)] = dict(zip(test_ids, values))
        predicted_by_seed[seed] = task.as_array(values)

    grid_points = {item.sample_id: grid_point_id(item.model.grid_point)
                   for item in items["test"]}
    part = TestPart(test_ids, list(targets["test"]), [grid_points[i] for i in test_ids])
    scores = {name: stats.to_json() for name, stats in
              score_task(task.scores, part, predicted_by_seed).items()}
    _warn_about(scores, task, split)
    zoo_info = {"name": zoo.name, "path": str(zoo.root), "revision": zoo.revision,
                "n_models": len(zoo)}
    if test_zoo is not None:
        zoo_info["test_zoo"] = {"name": test_zoo.name, "path": str(test_zoo.root),
                                "revision": test_zoo.revision, "n_models": len(test_zoo)}
    identity = answer["identity"]
    return EvaluationResult(
        predictor={"name": predictor_name or identity.get("name") or
                   identity["class"].rpartition(":")[2],
                   "class": identity["class"], "identity": identity},
        task={"name": task.name, "version": task.version, "kind": task.kind.value,
              "main_score": task.main_score.value},
        zoo=zoo_info,
        split={"name": split.name, "version": split.version, "sha256": split.sha256,
               "sizes": {part: len(items[part]) for part in PARTS}},
        seeds=list(seeds),
        scores=scores,
        predictions=predictions,
        grid_points=grid_points,
        bootstrap=bootstrap_info(part),
        provenance={
            "package_version": wslbench.__version__, "git_hash": git_hash(),
            "python": platform.python_version(), "torch": answer["torch"],
            "hardware": answer["hardware"], "started": started.isoformat(timespec="seconds"),
            "wall_time_s": round(time.perf_counter() - clock, 3),
        },
    )


def _described(sample: ModelSample) -> dict[str, Any]:
    """A staged sample as the predictor's process rebuilds it (no path: the process loads
    ``<stage>/<name>``)."""
    return {"name": sample.name, "epoch": sample.epoch, "model_args": sample.model_args,
            "hyperparameters": sample.hyperparameters, "zoo_revision": sample.zoo_revision,
            "fingerprint": sample.fingerprint}


def _json_target(value: Any) -> float | str:
    return value if isinstance(value, str) else float(value)


def _warn_about(scores: dict[str, dict[str, Any]], task: Task, split: Split) -> None:
    """Log the scores without a value or interval, and those with many degenerate resamples."""
    for name, stats in scores.items():
        if stats["reason"] is not None:
            log.warning("%s on split '%s': %s %s", task.name, split.name, name, stats["reason"])
        if degenerate_warning(stats):
            log.warning("%s on split '%s': %s: %d of %d bootstrap resamples were degenerate "
                        "and skipped", task.name, split.name, name, stats["degenerate"],
                        RESAMPLES)


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


def hardware(device: str | None = None) -> str:
    """The device the predictor ran on, as far as the run can tell (the predictor's process
    reports it)."""
    import torch

    if torch.cuda.is_available() and (device is None or str(device).startswith("cuda")):
        return f"cuda: {torch.cuda.get_device_name(torch.device(device or 'cuda'))}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
