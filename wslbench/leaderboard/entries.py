"""Checking entries (every score and its interval re-computed from the stored predictions)
and validating a whole leaderboard folder."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from wslbench.intervals import (
    CONFIDENCE,
    RESAMPLES,
    SEED,
    Bootstrap,
    ScoreInterval,
    TestPart,
    bootstrap_info,
    score_task,
)
from wslbench.leaderboard.common import (
    ENTRY_SCHEMA_VERSION,
    REPO_PATH,
    URL,
    LeaderboardError,
)
from wslbench.leaderboard.layout import (
    entry_path,
    first_few,
    read_json,
    sample_model,
    scores_agree,
    slug,
    task_key,
)
from wslbench.leaderboard.references import check_reference, load_reference
from wslbench.leaderboard.schema import (
    Entry,
    LegacyEntry,
    LegacyTaskResult,
    Method,
    Reference,
    SchemaError,
    TaskResult,
)
from wslbench.tasks import TASK_VERSIONS, Score, get_task

#: What ``validate`` says of an entry of schema 1 that passes its checks.
LEGACY_NOTE = ("old entry schema 1: no grid points, so no 95% intervals; rerun and resubmit "
               "for them")


def check_entry(data: Any, references: Mapping[str, Reference],
                location: Path | None = None, root: Path | None = None) -> list[str]:
    """Problems of one entry (parsed JSON): schema, place, hashes, and every score re-scored
    from the predictions against the reference's targets. ``references`` by zoo revision."""
    legacy = isinstance(data, dict) and data.get("schema_version") == 1
    try:
        entry = LegacyEntry.from_json(data) if legacy else Entry.from_json(data)
    except SchemaError as err:
        return [str(err)]
    problems = []
    if entry.schema_version not in (1, ENTRY_SCHEMA_VERSION):
        problems.append(f"schema_version {entry.schema_version} is not {ENTRY_SCHEMA_VERSION}")
    problems += _check_method(entry.method)
    if location is not None and root is not None:
        try:
            expected = entry_path(root, entry.zoo.name, entry.zoo.revision,
                                  entry.split.name, entry.method.name)
            if Path(location).resolve() != expected.resolve():
                problems.append(f"the entry of method '{entry.method.name}' on zoo "
                                f"'{entry.zoo.name}', split '{entry.split.name}' belongs at "
                                f"'{expected.relative_to(root)}'")
        except LeaderboardError as err:
            problems.append(str(err))
    for field_path, value in [("provenance.date", entry.provenance.date)] + [
            (f"tasks.{name}.date", task.date) for name, task in entry.tasks.items()]:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            problems.append(f"{field_path} {value!r} is not an ISO date")

    reference = references.get(entry.zoo.revision)
    if reference is None:
        return problems + [
            f"zoo revision {entry.zoo.revision[:16]} has no valid reference under zoos/; run "
            "`wslbench leaderboard add-zoo ZOO_PATH` where the zoo is"]
    if reference.zoo.name != entry.zoo.name:
        problems.append(f"zoo name '{entry.zoo.name}' is not the reference's "
                        f"'{reference.zoo.name}' for revision {entry.zoo.revision[:16]}")
    split = reference.splits.get(entry.split.name)
    if split is None:
        return problems + [f"the reference of zoo '{reference.zoo.name}' has no split "
                           f"'{entry.split.name}' (it has {', '.join(reference.splits)})"]
    if entry.split.sha256 != split["sha256"]:
        problems.append(f"split sha256 {entry.split.sha256[:12]} does not match the reference's "
                        f"split '{entry.split.name}' ({split['sha256'][:12]}): the predictions "
                        "were made on another split")
        return problems
    if entry.split.version != split.get("version"):
        problems.append(f"split version {entry.split.version} is not the reference's "
                        f"{split.get('version')}")
    if not entry.tasks:
        problems.append("the entry has no task")
    for name, task in entry.tasks.items():
        problems += [f"task '{name}': {p}" for p in
                     _check_task(name, task, reference, entry.split.name)]
    return problems


def rescore(task: TaskResult, targets: Mapping[str, float | str],
            grid_points: Mapping[str, str], scores: Sequence[str] | None = None
            ) -> dict[str, ScoreInterval]:
    """The scores of ``task`` (default: all) with their intervals, recomputed from its stored
    predictions, the true ``targets`` and the ``grid_points`` of the samples (both by sample
    id). Each keeps its bootstrap replicates, for paired tests."""
    part = scored_part(targets, grid_points)
    predictions = {seed: np.array([task.predictions[str(seed)][i] for i in part.ids],
                                  dtype=object if part.labels else np.float64)
                   for seed in task.seeds}
    return score_task([Score(s) for s in (task.scores if scores is None else scores)], part,
                      predictions)


def scored_part(targets: Mapping[str, float | str], grid_points: Mapping[str, str]) -> TestPart:
    """The test part of a task on a split: samples in sorted order of their ids."""
    ids = sorted(targets)
    return TestPart(ids, [targets[i] for i in ids], [grid_points[i] for i in ids])


def _check_method(method: Method) -> list[str]:
    problems = []
    try:
        slug(method.name)
    except LeaderboardError as err:
        problems.append(str(err))
    if method.paper is not None and not URL.match(method.paper):
        problems.append(f"method.paper {method.paper!r} is not an http(s) URL")
    if method.code is not None and not (URL.match(method.code) or REPO_PATH.match(method.code)):
        problems.append(f"method.code {method.code!r} is neither an http(s) URL nor a path "
                        "inside the repository")
    if method.parameters is not None and method.parameters < 0:
        problems.append(f"method.parameters {method.parameters} is negative")
    if ":" not in method.predictor:
        problems.append(f"method.predictor {method.predictor!r} is not 'module:Class'")
    return problems


def _check_task(name: str, task: TaskResult | LegacyTaskResult, reference: Reference,
                split: str) -> list[str]:
    key = task_key(name, task.version)
    if key not in TASK_VERSIONS:
        released = [k for k in TASK_VERSIONS.names() if k.startswith(f"{name}@v")]
        return [f"{key} is not a released task version (released: "
                f"{', '.join(released) or 'none of that name'}; see `wslbench ls tasks`)"]
    released_task = get_task(key)
    targets = reference.targets.get(key, {}).get(split)
    if targets is None:
        return [f"the reference of zoo '{reference.zoo.name}' has no targets of {key} on split "
                f"'{split}'; run `wslbench leaderboard add-zoo ZOO --split {split} --task "
                f"{key}` where the zoo is"]

    problems = []
    if task.main_score != released_task.main_score.value:
        problems.append(f"main_score '{task.main_score}' is not {key}'s "
                        f"'{released_task.main_score.value}'")
    expected = {s.value for s in released_task.scores}
    if set(task.scores) != expected:
        problems.append(f"scores {sorted(task.scores)} are not {key}'s {sorted(expected)}")
    if task.main_score not in task.scores:
        problems.append(f"main_score '{task.main_score}' is not among the scores")
    if len(set(task.seeds)) != len(task.seeds) or not task.seeds:
        return problems + [f"seeds {task.seeds} must be distinct and at least one"]
    if set(task.predictions) != {str(s) for s in task.seeds}:
        return problems + [f"predictions are given for seeds {sorted(task.predictions)}, the "
                           f"seeds are {task.seeds}"]

    broken = []
    labels = all(isinstance(v, str) for v in targets.values())
    for seed in task.seeds:
        predicted = task.predictions[str(seed)]
        unknown, missing = set(predicted) - set(targets), set(targets) - set(predicted)
        if unknown:
            broken.append(f"seed {seed}: predictions for {len(unknown)} unknown models "
                          f"(not test samples of split '{split}'): {first_few(unknown)}")
        if missing:
            broken.append(f"seed {seed}: no prediction for {len(missing)} test models: "
                          f"{first_few(missing)}")
        mistyped = [k for k, v in predicted.items() if isinstance(v, str) != labels]
        if mistyped:
            broken.append(f"seed {seed}: predictions must be "
                          f"{'labels (strings)' if labels else 'numbers'}, e.g. for "
                          f"'{mistyped[0]}'")
        elif not labels:
            infinite = [k for k, v in predicted.items() if not math.isfinite(v)]
            if infinite:
                broken.append(f"seed {seed}: {len(infinite)} predictions are not finite "
                              f"numbers (NaN or infinite), e.g. for '{infinite[0]}'; an entry "
                              "holds finite predictions only")
    unknown_scores = [s for s in task.scores if s not in {x.value for x in Score}]
    if unknown_scores:
        broken.append(f"'{unknown_scores[0]}' is not a known score "
                      f"({', '.join(s.value for s in Score)})")
    if broken:
        return problems + broken
    if isinstance(task, LegacyTaskResult):
        return problems + _check_legacy_scores(task, targets, labels)
    return problems + _check_scores(task, targets, reference, split)


def _check_scores(task: TaskResult, targets: Mapping[str, float | str], reference: Reference,
                  split: str) -> list[str]:
    """Grid points against the reference's, then every score and its interval recomputed
    from the predictions (schema 2)."""
    if task.grid_points is None or task.bootstrap is None:
        return [f"grid_points and bootstrap must be given (entry schema {ENTRY_SCHEMA_VERSION})"]
    stored = (reference.grid_points or {}).get(split)
    if stored is None:
        return [f"the reference of zoo '{reference.zoo.name}' holds no grid points of split "
                f"'{split}' (reference schema {reference.schema_version}) to check the "
                f"entry's against; run `wslbench leaderboard add-zoo ZOO_PATH --split {split}` "
                "where the zoo is"]
    if set(task.grid_points) != set(targets):
        odd = set(task.grid_points) ^ set(targets)
        return [f"grid_points must name exactly the test samples; {len(odd)} differ: "
                f"{first_few(odd)}"]
    split_data = reference.splits[split]
    truth = {i: stored.get(sample_model(i, split_data)) for i in targets}
    wrong = [i for i in targets if task.grid_points[i] != truth[i]]
    if wrong:
        return [f"grid_points of {len(wrong)} samples are not the reference's: "
                f"{first_few(wrong)}"]
    settings = (task.bootstrap.unit, task.bootstrap.method, task.bootstrap.resamples,
                task.bootstrap.seed, task.bootstrap.confidence)
    standard = Bootstrap()
    if settings != ("grid_point", "percentile", standard.resamples, standard.seed,
                    standard.confidence):
        return [f"bootstrap settings {settings} are not the benchmark's ('grid_point', "
                f"'percentile', {RESAMPLES}, {SEED}, {CONFIDENCE}); evaluate with the "
                "default bootstrap"]

    problems = []
    info = bootstrap_info(scored_part(targets, truth))
    for field_name in ("n_grid_points", "targets_constant_within_grid_points"):
        claimed = getattr(task.bootstrap, field_name)
        if claimed != info[field_name]:
            problems.append(f"bootstrap.{field_name} is {claimed!r}; the reference's grid "
                            f"points give {info[field_name]!r}")
    recomputed = rescore(task, targets, truth)
    for score_name, stats in task.scores.items():
        actual = recomputed[score_name]
        problems += [f"{score_name}.{p}" for p in _compare(stats, actual, task.seeds)]
    return problems


def _compare(stats, actual: ScoreInterval, seeds: list[int]) -> list[str]:
    """Where a stored score differs from the one recomputed from the predictions."""
    def same(a, b) -> bool:
        if a is None or b is None:
            return a is None and b is None
        return scores_agree(float(a), float(b))

    problems = []
    if len(stats.per_seed) != len(seeds):
        return [f"per_seed has {len(stats.per_seed)} values for {len(seeds)} seeds"]
    for seed, claimed, value in zip(seeds, stats.per_seed, actual.per_seed):
        if not same(claimed, value):
            problems.append(f"per_seed: seed {seed}: stored {claimed!r} differs from {value!r} "
                            "recomputed from the predictions")
    for field_name in ("value", "std"):
        claimed, value = getattr(stats, field_name), getattr(actual, field_name)
        if not same(claimed, value):
            problems.append(f"{field_name} {claimed!r} differs from {value!r} recomputed from "
                            "the predictions")
    if stats.ci95 is not None and len(stats.ci95) != 2:
        problems.append(f"ci95 {stats.ci95!r} must be [low, high]")
    elif (stats.ci95 is None) != (actual.ci95 is None) or (
            stats.ci95 is not None and not all(map(same, stats.ci95, actual.ci95))):
        shown = None if actual.ci95 is None else list(actual.ci95)
        problems.append(f"ci95 {stats.ci95!r} differs from {shown!r}, the 95% bootstrap "
                        "interval over grid points recomputed from the predictions")
    for field_name in ("grid_point_means", "degenerate", "reason"):
        claimed, value = getattr(stats, field_name), getattr(actual, field_name)
        if claimed != value:
            problems.append(f"{field_name} {claimed!r} differs from {value!r} recomputed from "
                            "the predictions")
    return problems


def _check_legacy_scores(task: LegacyTaskResult, targets: Mapping[str, float | str],
                         labels: bool) -> list[str]:
    """Each seed's score, and mean and std over seeds, as entries of schema 1 store them."""
    problems = []
    recomputed: dict[str, list[float | None]] = {s: [] for s in task.scores}
    ids = sorted(targets)
    dtype = object if labels else np.float64
    y_true = np.array([targets[i] for i in ids], dtype=dtype)
    for seed in task.seeds:
        y_pred = np.array([task.predictions[str(seed)][i] for i in ids], dtype=dtype)
        for score_name in task.scores:
            recomputed[score_name].append(_score(score_name, y_true, y_pred))
    for score_name, stats in task.scores.items():
        values = recomputed[score_name]
        if len(stats.per_seed) != len(task.seeds):
            problems.append(f"{score_name}.per_seed has {len(stats.per_seed)} values for "
                            f"{len(task.seeds)} seeds")
            continue
        for seed, claimed, actual in zip(task.seeds, stats.per_seed, values):
            if not scores_agree(claimed, actual):
                problems.append(f"seed {seed}: stored {score_name} {claimed!r} differs from "
                                f"{actual!r} recomputed from the predictions")
        if not scores_agree(stats.mean, float(np.mean(stats.per_seed))):
            problems.append(f"{score_name}.mean {stats.mean!r} is not the mean of per_seed "
                            f"({float(np.mean(stats.per_seed))!r})")
        if not scores_agree(stats.std, float(np.std(stats.per_seed))):
            problems.append(f"{score_name}.std {stats.std!r} is not the (population) std of "
                            f"per_seed ({float(np.std(stats.per_seed))!r})")
    return problems


def _score(name: str, y_true: np.ndarray, y_pred: np.ndarray) -> float | None:
    from wslbench.evaluate import score

    try:
        which = Score(name)
    except ValueError:
        return None
    return score(which, y_true, y_pred)




@dataclass
class Checked:
    """The outcome of one file: where, what kind, and its problems (none: ok)."""

    path: Path
    kind: str
    problems: list[str]
    note: str = ""


def validate(root: Path, zoos: Sequence[Any] = ()) -> list[Checked]:
    """Check every reference, then every entry against the references that passed.

    ``zoos`` are opened zoos (``Zoo.open``); a reference of the same revision is recomputed
    from its zoo.
    """
    root = Path(root)
    checked, references = [], {}
    for path in sorted((root / "zoos").rglob("*.json")):
        try:
            problems = check_reference(path, root, zoos)
        except Exception as err:  # noqa: BLE001 - report it and check the rest
            problems = [f"could not be checked: {type(err).__name__}: {err}"]
        note = ""
        if not problems:
            reference = load_reference(path)
            if reference.zoo.revision in references:
                problems.append(f"a second reference for zoo revision "
                                f"{reference.zoo.revision[:16]}")
            references[reference.zoo.revision] = reference
            zoo = next((z for z in zoos if z.revision == reference.zoo.revision), None)
            note = (f"{len(reference.splits)} split(s), {len(reference.targets)} task(s); "
                    + (f"targets recomputed from '{zoo.root}'" if zoo is not None
                       else "sha256 checked (no zoo of this revision given)")
                    + ("; old reference schema 1: no grid points, add them with `wslbench "
                       "leaderboard add-zoo ZOO_PATH`" if reference.grid_points is None else ""))
        checked.append(Checked(path, "reference", problems, note))
    for path in sorted((root / "entries").rglob("*.json")):
        try:
            data = read_json(path)
        except LeaderboardError as err:
            checked.append(Checked(path, "entry", [str(err)]))
            continue
        try:
            problems = check_entry(data, references, location=path, root=root)
        except Exception as err:  # noqa: BLE001 - one broken entry never stops the others
            problems = [f"could not be checked: {type(err).__name__}: {err}"]
        note = "" if problems else (
            f"{len(data['tasks'])} task(s) re-scored; {LEGACY_NOTE}"
            if data.get("schema_version") == 1 else
            f"{len(data['tasks'])} task(s) re-scored with their 95% intervals")
        copied = [] if problems else _copied_tasks(Entry.from_json(data), references)
        if copied:
            note += (f"; the predictions of {', '.join(copied)} are the reference's true test "
                     "targets exactly: only `wslbench leaderboard reproduce` can tell whether "
                     "code made them")
        checked.append(Checked(path, "entry", problems, note))
    return checked


def _copied_tasks(entry: Entry, references: Mapping[str, Reference]) -> list[str]:
    """The tasks of a valid entry whose every seed predicts exactly the true test targets."""
    reference = references[entry.zoo.revision]
    return [name for name, task in entry.tasks.items()
            if (targets := reference.targets.get(task_key(name, task.version), {})
                .get(entry.split.name))
            and all(task.predictions[str(s)] == targets for s in task.seeds)]


def load_entries(root: Path) -> list[Entry]:
    """Every entry under ``root``, after validation; any problem raises, listing them all."""
    checked = validate(root)
    failed = [f"{c.path}: {p}" for c in checked for p in c.problems]
    if failed:
        raise LeaderboardError("the leaderboard does not validate:\n  " + "\n  ".join(failed))
    return [Entry.from_json(read_json(c.path)) for c in checked if c.kind == "entry"]
