"""Checking entries (every score re-computed from the stored predictions) and validating
a whole leaderboard folder."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

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
    scores_agree,
    slug,
    task_key,
)
from wslbench.leaderboard.references import check_reference, load_reference
from wslbench.leaderboard.schema import (
    Entry,
    Method,
    Reference,
    SchemaError,
    TaskResult,
)
from wslbench.tasks import TASK_VERSIONS, Score, get_task


def check_entry(data: Any, references: Mapping[str, Reference],
                location: Path | None = None, root: Path | None = None) -> list[str]:
    """Problems of one entry (parsed JSON): schema, place, hashes, and every score re-scored
    from the predictions against the reference's targets. ``references`` by zoo revision."""
    try:
        entry = Entry.from_json(data)
    except SchemaError as err:
        return [str(err)]
    problems = []
    if entry.schema_version != ENTRY_SCHEMA_VERSION:
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


def _check_task(name: str, task: TaskResult, reference: Reference, split: str) -> list[str]:
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
    recomputed: dict[str, list[float | None]] = {s: [] for s in task.scores}
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
        if broken:
            continue
        ids = sorted(targets)
        dtype = object if labels else np.float64
        y_true = np.array([targets[i] for i in ids], dtype=dtype)
        y_pred = np.array([predicted[i] for i in ids], dtype=dtype)
        for score_name in task.scores:
            recomputed[score_name].append(_score(score_name, y_true, y_pred))
    if broken:
        return problems + broken

    for score_name, stats in task.scores.items():
        values = recomputed[score_name]
        if any(v is None for v in values):
            problems.append(f"'{score_name}' is not a known score "
                            f"({', '.join(s.value for s in Score)})")
            continue
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
        problems = check_reference(path, root, zoos)
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
                       else "sha256 checked (no zoo of this revision given)"))
        checked.append(Checked(path, "reference", problems, note))
    for path in sorted((root / "entries").rglob("*.json")):
        try:
            data = read_json(path)
        except LeaderboardError as err:
            checked.append(Checked(path, "entry", [str(err)]))
            continue
        problems = check_entry(data, references, location=path, root=root)
        note = "" if problems else f"{len(data['tasks'])} task(s) re-scored"
        checked.append(Checked(path, "entry", problems, note))
    return checked


def load_entries(root: Path) -> list[Entry]:
    """Every entry under ``root``, after validation; any problem raises, listing them all."""
    checked = validate(root)
    failed = [f"{c.path}: {p}" for c in checked for p in c.problems]
    if failed:
        raise LeaderboardError("the leaderboard does not validate:\n  " + "\n  ".join(failed))
    return [Entry.from_json(read_json(c.path)) for c in checked if c.kind == "entry"]
