"""The leaderboard as files: entries, zoo references, validation that re-scores, rendering.

Layout of a leaderboard folder (``leaderboards/`` in the repository)::

    zoos/<zoo>/<revision[:16]>.json        reference: the splits and the true test targets of
                                           one zoo revision (zoos are not in git, so CI checks
                                           entries against these)
    entries/<zoo>/<revision[:16]>/<split>/<method>.json
                                           entry: one method on one zoo revision and split,
                                           every task submitted for it, with its per-model
                                           predictions
    README.md, index.html                  the rendered tables

Validation trusts no claimed number: it recomputes every score of every seed from the stored
predictions and the reference's targets. A reference is checked against its own sha256, and
against the zoo itself when a zoo of that revision is at hand. Every check returns a list of
problems (strings that name the file, the field and the fix) rather than raising, so that one
run reports everything that is wrong.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
import types
import typing
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from wslbench import zoo_format as fmt
from wslbench.splits import Split
from wslbench.tasks import TASK_VERSIONS, TASKS, Score, Task, get_task

ENTRY_SCHEMA_VERSION = 1
REFERENCE_SCHEMA_VERSION = 1
#: Stored and recomputed scores agree to this relative tolerance (plus a tiny absolute one,
#: for scores that are exactly zero).
REL_TOL, ABS_TOL = 1e-9, 1e-12
#: How many unknown or missing sample ids a message names.
SHOW = 3
URL = re.compile(r"^https?://[^\s<>\"'`()|]+$")
REPO_PATH = re.compile(r"^(?!/)(?!.*(?:^|/)\.\.(?:/|$))[\w.\-/]+$")
SCORE_LABELS = {"r2": "R²", "kendall_tau": "Kendall τ", "accuracy": "accuracy",
                "macro_f1": "macro-F1"}


class LeaderboardError(ValueError):
    """A submission or a leaderboard file cannot be used; the message says why and what to do."""


# --------------------------------------------------------------------------- strict schema


class SchemaError(LeaderboardError):
    """A JSON document does not match a schema dataclass; the message names the field path."""


def _join(path: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_][\w\-]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return "a list"
    if typing.get_origin(tp) is dict or dataclasses.is_dataclass(tp):
        return "an object"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _parse(tp: Any, value: Any, path: str) -> Any:
    """``value`` (parsed JSON) as type ``tp``, or a SchemaError naming ``path``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _parse_dataclass(tp, value, path)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _parse(option, value, path)
            except SchemaError:
                continue
    elif origin is list and isinstance(value, list):
        (item,) = typing.get_args(tp)
        return [_parse(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    elif origin is dict and isinstance(value, dict):
        _, item = typing.get_args(tp)
        return {k: _parse(item, v, _join(path, k)) for k, v in value.items()}
    elif tp is bool and isinstance(value, bool):
        return value
    elif tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif tp is str and isinstance(value, str):
        return value
    shown = json.dumps(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise SchemaError(f"field '{path}' must be {_type_name(tp)}, not {shown}")


def _parse_dataclass(cls: type, value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        raise SchemaError(f"field '{path or '(top level)'}' must be an object, "
                          f"not {type(value).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in value if k not in names]
    if unknown:
        raise SchemaError(f"unknown field '{_join(path, unknown[0])}' (allowed at "
                          f"'{path or '(top level)'}': {', '.join(names)})")
    missing = [n for n in names if n not in value]
    if missing:
        raise SchemaError(f"missing field '{_join(path, missing[0])}'"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    hints = typing.get_type_hints(cls)
    return cls(**{n: _parse(hints[n], value[n], _join(path, n)) for n in names})


class _Record:
    """Strict JSON round trip for the schema dataclasses below."""

    @classmethod
    def from_json(cls, data: Any):
        """Parse ``data``; unknown, missing and mistyped fields raise with their path."""
        return _parse_dataclass(cls, data, "")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Method(_Record):
    """Who and what: shown in the table; ``predictor`` is the class that made the predictions."""

    name: str
    description: str | None
    paper: str | None
    code: str | None
    parameters: int | None
    baseline: bool
    predictor: str


@dataclass(frozen=True)
class ZooRef(_Record):
    name: str
    revision: str


@dataclass(frozen=True)
class SplitRef(_Record):
    name: str
    version: int
    sha256: str


@dataclass(frozen=True)
class ScoreStats(_Record):
    mean: float
    std: float
    per_seed: list[float]


@dataclass(frozen=True)
class TaskResult(_Record):
    """One task of an entry: claimed scores and the predictions they must follow from."""

    version: int
    main_score: str
    seeds: list[int]
    scores: dict[str, ScoreStats]
    predictions: dict[str, dict[str, float | str]]
    wall_time_s: float
    date: str


@dataclass(frozen=True)
class Provenance(_Record):
    package_version: str
    git_hash: str | None
    python: str
    torch: str
    hardware: str
    date: str
    wall_time_s: float


@dataclass(frozen=True)
class Entry(_Record):
    """One method on one zoo revision and split: ``entries/<zoo>/<revision>/<split>/<method>.json``."""

    schema_version: int
    method: Method
    zoo: ZooRef
    split: SplitRef
    tasks: dict[str, TaskResult]
    provenance: Provenance


@dataclass(frozen=True)
class ZooInfo(_Record):
    name: str
    revision: str
    n_models: int


@dataclass(frozen=True)
class Reference(_Record):
    """The true test targets of one zoo revision: ``zoos/<zoo>/<revision[:16]>.json``.

    ``splits`` holds each split file's JSON (with its sha256) by split name; ``targets`` the
    test targets by ``"<task>@v<version>"``, then split name, then sample id. ``sha256`` is
    the canonical hash of everything else.
    """

    schema_version: int
    zoo: ZooInfo
    splits: dict[str, dict[str, Any]]
    targets: dict[str, dict[str, dict[str, float | str]]]
    sha256: str

    def content_hash(self) -> str:
        content = self.to_json()
        content.pop("sha256")
        return fmt.canonical_hash(content)


# --------------------------------------------------------------------------- files


def default_root() -> Path:
    """The repository's ``leaderboards/`` in a source checkout, else ``./leaderboards``."""
    repo = Path(__file__).resolve().parents[1]
    if (repo / "pyproject.toml").is_file() and (repo / "leaderboards").is_dir():
        return repo / "leaderboards"
    return Path("leaderboards")


def slug(name: str) -> str:
    """The file name stem of a method: lower case, runs of other characters as one '-'."""
    out = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not out:
        raise LeaderboardError(f"method name {name!r} has no letter or digit to name its "
                               "entry file by; pass --name")
    return out


def task_key(name: str, version: int) -> str:
    return f"{name}@v{version}"


def zoo_label(zoo) -> str:
    """The leaderboard's name of a zoo: spec and preset for our zoos (``digits-resnet18-mini``,
    ``shakespeare-gpt2`` for the default preset), the folder name for published zoos."""
    if zoo.manifest is None:
        return zoo.name
    preset = zoo.manifest.preset
    return zoo.manifest.spec if preset in ("default", "") else f"{zoo.manifest.spec}-{preset}"


def reference_path(root: Path, zoo_name: str, revision: str) -> Path:
    return Path(root) / "zoos" / zoo_name / f"{revision[:16]}.json"


def entry_path(root: Path, zoo_name: str, revision: str, split_name: str,
               method_name: str) -> Path:
    """Beside the zoo reference it is scored against: one folder per zoo revision, so that a
    new release of a zoo starts new tables and the entries of the old one stay valid."""
    for what, value in (("zoo", zoo_name), ("split", split_name)):
        if not re.fullmatch(r"[\w][\w.\-]*", value):
            raise LeaderboardError(f"{what} name {value!r} cannot name a folder of the "
                                   "leaderboard (letters, digits, '.', '-', '_' only)")
    return (Path(root) / "entries" / zoo_name / revision[:16] / split_name
            / f"{slug(method_name)}.json")


def read_json(path: Path) -> Any:
    """Parsed JSON, or a LeaderboardError that says where it stops being JSON."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LeaderboardError(f"cannot read '{path}': {err}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise LeaderboardError(f"malformed JSON at line {err.lineno} col {err.colno}: "
                               f"{err.msg}") from err


def true_targets(task: Task, zoo, split, test_zoo=None) -> dict[str, float | str]:
    """The true targets of the split's test samples that have one, keyed as predictions are
    (``test_zoo``: where a cross-zoo split's test models live)."""
    from wslbench.evaluate import split_targets

    return {k: (v if isinstance(v, str) else float(v))
            for k, v in split_targets(task, zoo, split, "test", test_zoo).items()}


def _applies(task: Task, split) -> bool:
    """Whether the task can be scored on the split at all (the epochs split needs targets
    at every checkpoint)."""
    return split.part_epochs("test") is None or task.per_checkpoint


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def _few(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(f"'{n}'" for n in names[:SHOW])
    return shown + (f" and {len(names) - SHOW} more" if len(names) > SHOW else "")


# --------------------------------------------------------------------------- references


def load_reference(path: Path) -> Reference:
    """A reference file that parses and matches its schema (no further checks)."""
    return Reference.from_json(read_json(path))


def find_references(root: Path) -> dict[str, Path]:
    """Reference files by full zoo revision (as their content says; unreadable ones left out)."""
    found = {}
    for path in sorted((Path(root) / "zoos").glob("*/*.json")):
        try:
            found[load_reference(path).zoo.revision] = path
        except LeaderboardError:
            continue
    return found


def add_zoo(root: Path, zoo, splits: Sequence[str] = ("iid",),
            tasks: Sequence[str] | None = None, test_zoo=None) -> Path:
    """Write (or extend) the reference of ``zoo``: its splits and true test targets.

    ``splits`` are split names or split files (``test_zoo`` for cross-zoo ones); ``tasks``
    are names (newest version) or ``name@vN``. ``tasks=None`` takes the newest version of
    every task the zoo has test targets for; a task named explicitly without targets is an
    error. Targets already stored must equal the zoo's (a task that changed meaning needs a
    new version, not a new reference).
    """
    from wslbench.splits import resolve_split

    existing_path = find_references(root).get(zoo.revision)
    if existing_path is not None:
        existing = load_reference(existing_path)
        if existing.content_hash() != existing.sha256:
            raise LeaderboardError(f"reference '{existing_path}' does not match its sha256; "
                                   "delete it and run add-zoo again")
        stored_splits, stored_targets = dict(existing.splits), {
            k: dict(v) for k, v in existing.targets.items()}
        name = existing.zoo.name
    else:
        stored_splits, stored_targets, name = {}, {}, zoo_label(zoo)

    for split_name in splits:
        split, _ = resolve_split(zoo, split_name, test_zoo)
        data = split.to_json()
        if split.name in stored_splits and stored_splits[split.name]["sha256"] != split.sha256:
            raise LeaderboardError(
                f"the reference of zoo '{name}' already holds a different split named "
                f"'{split.name}' (sha256 {stored_splits[split.name]['sha256'][:12]}, this one "
                f"{split.sha256[:12]}); give the new split file another name")
        stored_splits[split.name] = data
        for task_name in tasks if tasks is not None else TASKS.names():
            task = get_task(task_name)
            if tasks is None and not _applies(task, split):
                continue
            targets = true_targets(task, zoo, split, test_zoo)
            if not targets:
                if tasks is not None:
                    raise LeaderboardError(f"zoo '{zoo.root}' has no '{task.name}' target for "
                                           f"any test model of split '{split.name}'")
                continue
            key = task.reference
            old = stored_targets.get(key, {}).get(split.name)
            if old is not None and (old.keys() != targets.keys() or any(
                    not _same_target(old[k], targets[k]) for k in targets)):
                raise LeaderboardError(
                    f"the stored targets of {key} on split '{split.name}' in '{existing_path}' "
                    f"differ from zoo '{zoo.root}': the task changed without a new version")
            stored_targets.setdefault(key, {})[split.name] = targets

    reference = Reference(schema_version=REFERENCE_SCHEMA_VERSION,
                          zoo=ZooInfo(name=name, revision=zoo.revision, n_models=len(zoo)),
                          splits=stored_splits, targets=stored_targets, sha256="")
    reference = dataclasses.replace(reference, sha256=reference.content_hash())
    path = existing_path or reference_path(root, name, zoo.revision)
    fmt.atomic_write_json(path, reference.to_json())
    return path


def _same_target(a: float | str, b: float | str) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return _close(float(a), float(b))


def check_reference(path: Path, root: Path, zoos: Sequence[Any] = ()) -> list[str]:
    """Problems of one reference file; with a zoo of its revision in ``zoos``, its splits and
    targets are recomputed from the zoo, else checked against the file's own sha256."""
    try:
        reference = load_reference(path)
    except LeaderboardError as err:
        return [str(err)]
    problems = []
    if reference.schema_version != REFERENCE_SCHEMA_VERSION:
        problems.append(f"schema_version {reference.schema_version} is not "
                        f"{REFERENCE_SCHEMA_VERSION}")
    expected = reference_path(root, reference.zoo.name, reference.zoo.revision)
    if Path(path).resolve() != expected.resolve():
        problems.append(f"a reference of zoo '{reference.zoo.name}' revision "
                        f"{reference.zoo.revision[:16]} belongs at "
                        f"'{expected.relative_to(root)}'")
    if reference.content_hash() != reference.sha256:
        problems.append("sha256 does not match the content: the reference was edited; "
                        "rebuild it with `wslbench leaderboard add-zoo ZOO`")
    splits = {}
    for name, data in reference.splits.items():
        try:
            split = Split.from_json(data, source=f"split '{name}'")
        except (ValueError, TypeError) as err:
            problems.append(f"split '{name}': {err}")
            continue
        if split.name != name:
            problems.append(f"split stored under '{name}' is named '{split.name}'")
        if split.zoo_revision != reference.zoo.revision:
            problems.append(f"split '{name}' was made for zoo revision "
                            f"{split.zoo_revision[:12]}, not {reference.zoo.revision[:12]}")
        splits[name] = split
    for key, by_split in reference.targets.items():
        if key not in TASK_VERSIONS:
            problems.append(f"targets key '{key}' is not a released task version "
                            "('<task>@v<version>', see `wslbench ls tasks`)")
        for split_name, targets in by_split.items():
            if split_name not in reference.splits:
                problems.append(f"targets of {key} for split '{split_name}', which the "
                                "reference does not hold")
            if not targets:
                problems.append(f"targets of {key} on split '{split_name}' are empty")
            elif len({isinstance(v, str) for v in targets.values()}) > 1:
                problems.append(f"targets of {key} on split '{split_name}' mix labels and "
                                "numbers")
    if not problems and _zoo_of(zoos, reference.zoo.revision) is not None:
        problems += _against_zoo(reference, splits, zoos)
    return problems


def _zoo_of(zoos: Sequence[Any], revision: str | None):
    return next((z for z in zoos if z.revision == revision), None)


def _against_zoo(reference: Reference, splits: Mapping[str, Any], zoos: Sequence[Any]
                 ) -> list[str]:
    """Recompute a reference's registered splits and its targets from its zoo (and, for a
    cross-zoo split, its test zoo; a split whose test zoo is not given is left to its sha256)."""
    from wslbench.splits import SPLITS, resolve_split

    zoo = _zoo_of(zoos, reference.zoo.revision)
    problems = []
    if len(zoo) != reference.zoo.n_models:
        problems.append(f"n_models is {reference.zoo.n_models}, the zoo at '{zoo.root}' has "
                        f"{len(zoo)}")
    test_zoos = {name: _zoo_of(zoos, split.test_zoo_revision) for name, split in splits.items()}
    usable = {name: split for name, split in splits.items()
              if split.test_zoo_revision is None or test_zoos[name] is not None}
    for name, split in usable.items():
        if name in SPLITS and SPLITS.get(name).version == split.version:
            made, _ = resolve_split(zoo, name, test_zoos[name])
            if made.sha256 != split.sha256:
                problems.append(f"split '{name}' is not the registered split made from the "
                                f"zoo at '{zoo.root}' (sha256 {split.sha256[:12]}, made "
                                f"{made.sha256[:12]})")
    for key, by_split in reference.targets.items():
        for split_name, stored in by_split.items():
            if split_name not in usable:
                continue
            actual = true_targets(get_task(key), zoo, usable[split_name], test_zoos[split_name])
            wrong = [k for k in stored if k in actual and not _same_target(stored[k], actual[k])]
            if stored.keys() != actual.keys() or wrong:
                differing = sorted(set(stored) ^ set(actual)) + wrong
                problems.append(f"targets of {key} on split '{split_name}' differ from the zoo "
                                f"at '{zoo.root}' for {len(differing)} samples, e.g. "
                                f"{_few(differing)}")
    return problems


# --------------------------------------------------------------------------- entries


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
                          f"(not test samples of split '{split}'): {_few(unknown)}")
        if missing:
            broken.append(f"seed {seed}: no prediction for {len(missing)} test models: "
                          f"{_few(missing)}")
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
            if not _close(claimed, actual):
                problems.append(f"seed {seed}: stored {score_name} {claimed!r} differs from "
                                f"{actual!r} recomputed from the predictions")
        if not _close(stats.mean, float(np.mean(stats.per_seed))):
            problems.append(f"{score_name}.mean {stats.mean!r} is not the mean of per_seed "
                            f"({float(np.mean(stats.per_seed))!r})")
        if not _close(stats.std, float(np.std(stats.per_seed))):
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


# --------------------------------------------------------------------------- validate


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


# --------------------------------------------------------------------------- submit


def load_result(path: Path) -> dict[str, Any]:
    """A result JSON as ``wslbench evaluate --output`` writes it, with the fields submit needs."""
    data = read_json(path)
    needed = {"predictor": ("name", "class"), "task": ("name", "version", "main_score"),
              "zoo": ("name", "path", "revision"), "split": ("name", "version", "sha256"),
              "provenance": ("package_version", "git_hash", "python", "torch", "hardware",
                             "started", "wall_time_s")}
    for section, keys in needed.items():
        for key in keys:
            if not isinstance(data, dict) or key not in (data.get(section) or {}):
                raise LeaderboardError(f"result '{path}' has no {section}.{key}; is it a file "
                                       "that `wslbench evaluate --output` wrote?")
    for key in ("seeds", "scores", "predictions"):
        if key not in data:
            raise LeaderboardError(f"result '{path}' has no {key}")
    return data


def _task_result(result: Mapping[str, Any]) -> TaskResult:
    return TaskResult.from_json({
        "version": result["task"]["version"], "main_score": result["task"]["main_score"],
        "seeds": result["seeds"], "scores": result["scores"],
        "predictions": result["predictions"],
        "wall_time_s": result["provenance"]["wall_time_s"],
        "date": result["provenance"]["started"]})


def _reference_for(root: Path, result: Mapping[str, Any], task_keys: Sequence[str]
                   ) -> Reference:
    """The reference covering the result's zoo revision, split and task versions; made from
    the zoo (at the result's zoo path) where it is missing or lacks them."""
    from wslbench.splits import SPLITS

    revision, split_name = result["zoo"]["revision"], result["split"]["name"]
    path = find_references(root).get(revision)
    reference = load_reference(path) if path else None
    if reference is not None and split_name in reference.splits and all(
            split_name in reference.targets.get(key, {}) for key in task_keys):
        return reference
    fix = (f"run `wslbench leaderboard add-zoo ZOO_PATH --split {split_name} --task "
           f"{' '.join(task_keys)}` where the zoo is")
    if split_name not in SPLITS:
        raise LeaderboardError(
            f"no reference under '{Path(root) / 'zoos'}' holds split '{split_name}' of zoo "
            f"revision {revision[:16]}, and submit only makes registered splits; run `wslbench "
            "leaderboard add-zoo ZOO_PATH --split SPLIT_FILE.json` where the zoo is")
    zoo = _open_recorded(result["zoo"], fix)
    test_zoo = _open_recorded(result["zoo"]["test_zoo"], fix) if "test_zoo" in result["zoo"] \
        else None
    return load_reference(add_zoo(root, zoo, splits=[split_name], tasks=task_keys,
                                  test_zoo=test_zoo))


def _open_recorded(info: Mapping[str, Any], fix: str):
    """The zoo a result records (path and revision), if it is still there unchanged."""
    from wslbench.zoo import Zoo

    path = Path(info["path"])
    zoo = Zoo.open(path) if path.is_dir() else None
    if zoo is None or zoo.revision != info["revision"]:
        where = "is not there" if zoo is None else f"now holds revision {zoo.revision[:12]}"
        raise LeaderboardError(f"no reference covers zoo revision {info['revision'][:16]} "
                               f"for this result, and the zoo path it records, '{path}', "
                               f"{where}; {fix}")
    return zoo


def submit(results: Sequence[Mapping[str, Any]], root: Path, *, name: str | None = None,
           description: str | None = None, paper: str | None = None, code: str | None = None,
           parameters: int | None = None, baseline: bool = False) -> list[Path]:
    """Merge results (from ``load_result``) into entries, one per method, zoo and split.

    Results of one method, zoo revision and split go into one entry, adding or replacing
    tasks. Each entry is validated (re-scored) before it is written, atomically. Options
    given here override the stored method fields; omitted ones keep them.
    """
    root = Path(root)
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for result in results:
        method = name or result["predictor"]["name"]
        key = (method, result["zoo"]["revision"], result["split"]["name"])
        groups.setdefault(key, []).append(result)
    classes = sorted({r["predictor"]["class"] for r in results})
    if name is not None and len(classes) > 1:
        raise LeaderboardError(f"--name {name!r} was given for results of several predictors "
                               f"({', '.join(classes)}); submit them separately")
    entries: dict[Path, Entry] = {}
    for (method_name, revision, split_name), members in groups.items():
        classes = {r["predictor"]["class"] for r in members}
        splits = {r["split"]["sha256"] for r in members}
        if len(classes) > 1 or len(splits) > 1:
            raise LeaderboardError(f"results of '{method_name}' on split '{split_name}' come "
                                   f"from {len(classes)} predictor classes and {len(splits)} "
                                   "split files; submit each separately")
        tasks = [r["task"]["name"] for r in members]
        duplicated = sorted({t for t in tasks if tasks.count(t) > 1})
        if duplicated:
            raise LeaderboardError(f"two results for task(s) {', '.join(duplicated)} of "
                                   f"'{method_name}'; submit one per task")
        newest = max(members, key=lambda r: r["provenance"]["started"])
        reference = _reference_for(root, newest, [task_key(r["task"]["name"],
                                                           r["task"]["version"])
                                                  for r in members])
        path = entry_path(root, reference.zoo.name, revision, split_name, method_name)
        old = _existing_entry(path, method_name, revision, newest)
        method = Method(
            name=method_name,
            description=description if description is not None else (
                old.method.description if old else None),
            paper=paper if paper is not None else (old.method.paper if old else None),
            code=code if code is not None else (old.method.code if old else None),
            parameters=parameters if parameters is not None else (
                old.method.parameters if old else None),
            baseline=baseline or (old.method.baseline if old else False),
            predictor=newest["predictor"]["class"])
        task_results = dict(old.tasks) if old else {}
        task_results.update({r["task"]["name"]: _task_result(r) for r in members})
        provenance = Provenance(
            **{k: newest["provenance"][k] for k in ("package_version", "git_hash", "python",
                                                    "torch", "hardware")},
            date=newest["provenance"]["started"],
            wall_time_s=round(sum(t.wall_time_s for t in task_results.values()), 3))
        entry = Entry(schema_version=ENTRY_SCHEMA_VERSION, method=method,
                      zoo=ZooRef(name=reference.zoo.name, revision=revision),
                      split=SplitRef(name=split_name, version=newest["split"]["version"],
                                     sha256=newest["split"]["sha256"]),
                      tasks=dict(sorted(task_results.items())), provenance=provenance)
        problems = check_entry(entry.to_json(), {revision: reference}, location=path, root=root)
        if problems:
            raise LeaderboardError(f"the entry for '{method_name}' does not validate, nothing "
                                   "written:\n  " + "\n  ".join(problems))
        entries[path] = entry
    for path, entry in entries.items():  # only once every entry validates
        fmt.atomic_write_json(path, entry.to_json())
    return list(entries)


def _existing_entry(path: Path, method_name: str, revision: str,
                    result: Mapping[str, Any]) -> Entry | None:
    if not path.is_file():
        return None
    try:
        old = Entry.from_json(read_json(path))
    except LeaderboardError as err:
        raise LeaderboardError(f"the existing entry '{path}' is invalid ({err}); fix or delete "
                               "it before submitting to it") from err
    if old.method.name != method_name:
        raise LeaderboardError(f"'{path}' holds method '{old.method.name}', whose file name "
                               f"'{method_name}' shares; choose another --name")
    if old.zoo.revision != revision or old.split.sha256 != result["split"]["sha256"]:
        raise LeaderboardError(
            f"'{path}' holds results on zoo revision {old.zoo.revision[:12]}, split sha256 "
            f"{old.split.sha256[:12]}; this result is on {revision[:12]}, "
            f"{result['split']['sha256'][:12]}. Entries do not mix zoo revisions: delete the "
            "old entry to replace it, or submit under another --name")
    if old.method.predictor != result["predictor"]["class"]:
        raise LeaderboardError(f"'{path}' was made by predictor {old.method.predictor}, this "
                               f"result by {result['predictor']['class']}; use another --name")
    return old


# --------------------------------------------------------------------------- render


@dataclass(frozen=True)
class Row:
    rank: int
    entry: Entry
    task: TaskResult


Tables = dict[tuple[str, str], dict[str, dict[str, list[Row]]]]


def _tables(entries: Sequence[Entry]) -> Tables:
    """(zoo name, revision) -> split -> task version -> rows sorted by the main score (better
    first, NaN last). Different zoo revisions or task versions never share a table; a zoo's
    newest revision comes first."""
    grouped: dict[tuple[str, str], dict[str, dict[str, list[tuple[Entry, TaskResult]]]]] = {}
    for entry in entries:
        for name, task in entry.tasks.items():
            grouped.setdefault((entry.zoo.name, entry.zoo.revision), {}) \
                .setdefault(entry.split.name, {}) \
                .setdefault(task_key(name, task.version), []).append((entry, task))
    # Zoos by name; the revisions of one zoo newest first (by their newest entry).
    newest = {}
    for entry in entries:
        key = (entry.zoo.name, entry.zoo.revision)
        newest[key] = max(newest.get(key, ""), entry.provenance.date)
    order = sorted(sorted(grouped, key=lambda k: newest[k], reverse=True), key=lambda k: k[0])
    tables: Tables = {}
    for zoo in order:
        for split in sorted(grouped[zoo]):
            for key in sorted(grouped[zoo][split]):
                higher = get_task(key).higher_is_better
                ranked = sorted(grouped[zoo][split][key],
                                key=lambda pair: _rank_key(*pair, higher))
                tables.setdefault(zoo, {}).setdefault(split, {})[key] = [
                    Row(i + 1, entry, task) for i, (entry, task) in enumerate(ranked)]
    return tables


def _rank_key(entry: Entry, task: TaskResult, higher_is_better: bool) -> tuple:
    mean = task.scores[task.main_score].mean
    return (math.isnan(mean), -mean if higher_is_better else mean, entry.method.name)


def _stats(stats: ScoreStats) -> str:
    if math.isnan(stats.mean):
        return "nan"
    return f"{stats.mean:.3f} ± {stats.std:.3f}"


def _score_names(key: str) -> list[str]:
    return [s.value for s in get_task(key).scores]


def _link(target: str) -> str:
    """Where a method's code or paper link points, seen from the leaderboard folder."""
    return target if URL.match(target) else f"../{target}"


def _md(text: str) -> str:
    return re.sub(r"([\\`*\[\]<>|])", r"\\\1", text)


def _task_about(key: str, rows: Sequence[Row]) -> str:
    """The line under a task's heading: what it predicts and how the table is ranked."""
    task = get_task(key)
    main = task.main_score.value
    n_test = len(next(iter(rows[0].task.predictions.values())))
    return (f"{task.description}. Ranked by {SCORE_LABELS.get(main, main)} "
            f"({'higher' if task.higher_is_better else 'lower'} is better) on {n_test} test "
            "samples; mean ± std over seeds.")


def _zoo_heading(zoo: str, revision: str, tables: Tables) -> str:
    """The zoo's name, and which revision where the leaderboard holds several of it."""
    revisions = [r for name, r in tables if name == zoo]
    if len(revisions) == 1:
        return zoo
    which = "newest" if revisions[0] == revision else "an earlier"
    return f"{zoo} ({which} revision, {revision[:8]})"


def render_markdown(entries: Sequence[Entry], references: Mapping[str, Reference]) -> str:
    """leaderboards/README.md: how to submit, then a sorted table per zoo, split and task."""
    lines = [
        "# Leaderboards", "",
        "Results of weight-space predictors on the zoos, one table per zoo, split and task, "
        "ranked by the task's main score. Every number here is recomputed by "
        "`wslbench leaderboard validate` from the entry's stored per-model predictions and "
        "the zoo's true targets. *baseline* marks the predictors of this repository. "
        "The same tables as a web page: [index.html](index.html).", "",
        "Add a result:", "",
        "```bash",
        "wslbench evaluate MODEL --task TASK --zoo ZOO --output result.json",
        "wslbench submit result.json --name NAME --paper URL --code URL --parameters N",
        "wslbench leaderboard validate      # what CI runs",
        "wslbench leaderboard render        # rewrites this file and index.html",
        "```", "",
        "Files: `entries/<zoo>/<revision>/<split>/<method>.json` (one per method, zoo and split), "
        "`zoos/<zoo>/<revision>.json` (a zoo revision's splits and true test targets). "
        "See [docs/leaderboard.md](../docs/leaderboard.md).", "",
    ]
    tables = _tables(entries)
    for (zoo, revision), splits in tables.items():
        reference = references[revision]
        lines += [f"## {_md(_zoo_heading(zoo, revision, tables))}", "",
                  f"{reference.zoo.n_models} models, zoo revision "
                  f"`{reference.zoo.revision[:16]}`.", ""]
        for split, tasks in splits.items():
            split_data = reference.splits[split]
            lines += [f"### {_md(zoo)} · split {_md(split)}", "",
                      f"Split version {split_data['version']}, sha256 "
                      f"`{split_data['sha256'][:16]}`.", ""]
            for key, rows in tasks.items():
                scores, main = _score_names(key), get_task(key).main_score.value
                header = ["rank", "method"] + [
                    f"**{SCORE_LABELS.get(s, s)}**" if s == main else SCORE_LABELS.get(s, s)
                    for s in scores] + ["seeds", "parameters", "date"]
                lines += [f"#### {_md(key)}", "", _md(_task_about(key, rows)), "",
                          "| " + " | ".join(header) + " |",
                          "|" + "|".join(["---:", "---"] + ["---:"] * len(scores)
                                         + ["---:", "---:", "---"]) + "|"]
                for row in rows:
                    cells = [str(row.rank), _md_method(row.entry.method)]
                    lines.append("| " + " | ".join(cells + _cells(row, scores)) + " |")
                lines.append("")
    return "\n".join(lines)


def _cells(row: Row, scores: Sequence[str]) -> list[str]:
    """A row's cells after the method, as plain text: scores, seeds, parameters, date."""
    parameters = row.entry.method.parameters
    return [_stats(row.task.scores[s]) for s in scores] + [
        str(len(row.task.seeds)), "–" if parameters is None else f"{parameters:,}",
        row.task.date[:10]]


def _md_method(method: Method) -> str:
    name = _md(method.name)
    cell = f"[{name}]({_link(method.code)})" if method.code else name
    if method.paper:
        cell += f" ([paper]({method.paper}))"
    if method.baseline:
        cell += " *baseline*"
    return cell


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #1d2328; line-height: 1.45; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #d6dbe0; }
h3 { margin-top: 1.6rem; } h4 { margin: 1.4rem 0 .2rem; }
p.about, p.meta { margin: .2rem 0 .6rem; color: #4a545e; }
table { border-collapse: collapse; margin-bottom: 1rem; font-variant-numeric: tabular-nums; }
th, td { padding: .3rem .7rem; border-bottom: 1px solid #e3e7eb; text-align: right; }
th { background: #f3f5f7; } td.method, th.method, td.date { text-align: left; }
th.main { background: #e3eefb; } td.main { background: #f6f9fd; }
tr.rank-1 td { font-weight: 600; }
span.baseline { font-size: .75rem; color: #5b6670; border: 1px solid #c3cad1;
                border-radius: .6rem; padding: 0 .4rem; margin-left: .3rem; font-weight: 400; }
code { background: #f3f5f7; padding: 0 .25rem; border-radius: .2rem; }
"""


def render_html(entries: Sequence[Entry], references: Mapping[str, Reference]) -> str:
    """leaderboards/index.html: the same tables, one self-contained page (inline CSS, no JS)."""
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>wslbench leaderboard</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
           "<h1>wslbench leaderboard</h1>",
           '<p class="about">Weight-space predictors on phase-transition model zoos, ranked by '
           "each task's main score. Every number is recomputed by <code>wslbench leaderboard "
           "validate</code> from the stored per-model predictions and the zoo's true targets. "
           "Submit with <code>wslbench submit result.json</code>.</p>"]
    tables = _tables(entries)
    for (zoo, revision), splits in tables.items():
        reference = references[revision]
        out += [f'<section class="zoo" id="{esc(zoo)}-{esc(revision[:16])}">',
                f"<h2>{esc(_zoo_heading(zoo, revision, tables))}</h2>",
                f'<p class="meta">{reference.zoo.n_models} models, zoo revision '
                f"<code>{esc(reference.zoo.revision[:16])}</code></p>"]
        for split, tasks in splits.items():
            split_data = reference.splits[split]
            out += [f"<h3>{esc(zoo)} · split {esc(split)}</h3>",
                    f'<p class="meta">split version {esc(str(split_data["version"]))}, sha256 '
                    f"<code>{esc(split_data['sha256'][:16])}</code></p>"]
            for key, rows in tasks.items():
                scores, main = _score_names(key), get_task(key).main_score.value
                out += [f"<h4>{esc(key)}</h4>",
                        f'<p class="about">{esc(_task_about(key, rows))}</p>',
                        f'<table class="leaderboard" data-zoo="{esc(zoo)}" '
                        f'data-split="{esc(split)}" data-task="{esc(key)}">',
                        "<thead><tr><th>rank</th><th class=\"method\">method</th>"
                        + "".join(f'<th class="{"main" if s == main else "score"}">'
                                  f"{esc(SCORE_LABELS.get(s, s))}</th>" for s in scores)
                        + "<th>seeds</th><th>parameters</th><th class=\"date\">date</th>"
                          "</tr></thead>", "<tbody>"]
                for row in rows:
                    classes = [f'score{" main" if s == main else ""}" data-score="{esc(s)}'
                               for s in scores] + ["seeds", "parameters", "date"]
                    cells = [f'<td class="rank">{row.rank}</td>',
                             f'<td class="method">{_html_method(row.entry.method)}</td>']
                    cells += [f'<td class="{c}">{esc(text)}</td>'
                              for c, text in zip(classes, _cells(row, scores))]
                    out.append(f'<tr class="entry rank-{row.rank}">' + "".join(cells) + "</tr>")
                out += ["</tbody>", "</table>"]
        out.append("</section>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _html_method(method: Method) -> str:
    esc = html.escape
    cell = (f'<a href="{esc(_link(method.code))}">{esc(method.name)}</a>' if method.code
            else esc(method.name))
    if method.paper:
        cell += f' (<a href="{esc(method.paper)}">paper</a>)'
    if method.description:
        cell = f'<span title="{esc(method.description)}">{cell}</span>'
    if method.baseline:
        cell += '<span class="baseline">baseline</span>'
    return cell


def render(root: Path) -> dict[Path, str]:
    """The rendered files (README.md, index.html) of a leaderboard that validates."""
    root = Path(root)
    entries = load_entries(root)
    references = {}
    for path in (root / "zoos").rglob("*.json"):
        reference = load_reference(path)
        references[reference.zoo.revision] = reference
    return {root / "README.md": render_markdown(entries, references) + "\n",
            root / "index.html": render_html(entries, references)}


def write_rendered(root: Path) -> list[Path]:
    """Render the leaderboard and write README.md and index.html (atomically)."""
    written = []
    for path, text in render(root).items():
        fmt.atomic_write_bytes(path, text.encode("utf-8"))
        written.append(path)
    return written
