"""The strict schema of entries and zoo references: dataclasses parsed field by field,
so a missing, unknown or mistyped field is named with its path."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import asdict, dataclass
from typing import Any

from wslbench import zoo_format as fmt
from wslbench.leaderboard.common import LeaderboardError


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
    optional = {f.name for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING}  # added by a later schema version
    missing = [n for n in names if n not in value and n not in optional]
    if missing:
        raise SchemaError(f"missing field '{_join(path, missing[0])}'"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    hints = typing.get_type_hints(cls)
    return cls(**{n: _parse(hints[n], value[n], _join(path, n)) for n in names if n in value})


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
    """One score of a task (:class:`wslbench.intervals.ScoreInterval` as JSON): ``value`` the
    mean over seeds, ``ci95`` its 95 % bootstrap interval over test grid points; null where
    ``reason`` says why."""

    value: float | None
    ci95: list[float] | None
    std: float | None
    per_seed: list[float | None]
    grid_point_means: bool
    degenerate: int
    reason: str | None


@dataclass(frozen=True)
class BootstrapInfo(_Record):
    """How the intervals were made (:func:`wslbench.intervals.bootstrap_info`)."""

    unit: str
    method: str
    resamples: int
    seed: int
    confidence: float
    n_grid_points: int
    targets_constant_within_grid_points: bool


@dataclass(frozen=True)
class TaskResult(_Record):
    """One task of an entry: claimed scores and the predictions they must follow from.

    ``grid_points`` maps each sample id to its grid point's id. ``grid_points`` and
    ``bootstrap`` are None only for a task read from an entry of schema 1 (see
    :meth:`LegacyTaskResult.upgraded`)."""

    version: int
    main_score: str
    seeds: list[int]
    scores: dict[str, ScoreStats]
    predictions: dict[str, dict[str, float | str]]
    grid_points: dict[str, str] | None
    bootstrap: BootstrapInfo | None
    wall_time_s: float
    date: str
    #: Which code made the predictions (:func:`wslbench.identity.predictor_identity`): what
    #: ``wslbench leaderboard reproduce`` runs again; null in entries made before it existed.
    predictor: dict[str, Any] | None = None


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
    """One method on one zoo revision and split: ``entries/<zoo>/<revision>/<split>/<method>.json``.

    An entry of schema 1 (scores as mean, std and per_seed, no grid points) parses as
    :class:`LegacyEntry` and is returned upgraded: values without intervals, ``schema_version``
    still 1. Entries are only ever written in the current schema."""

    schema_version: int
    method: Method
    zoo: ZooRef
    split: SplitRef
    tasks: dict[str, TaskResult]
    provenance: Provenance

    @classmethod
    def from_json(cls, data: Any) -> "Entry":
        if isinstance(data, dict) and data.get("schema_version") == 1:
            return LegacyEntry.from_json(data).upgraded()
        return _parse_dataclass(cls, data, "")


#: Why a score of a schema-1 entry has no interval.
LEGACY_REASON = "entry schema 1: no grid points, so no interval"


@dataclass(frozen=True)
class LegacyScoreStats(_Record):
    """A score of entry schema 1: mean and population std over seeds, NaN where undefined."""

    mean: float
    std: float
    per_seed: list[float]

    def upgraded(self) -> ScoreStats:
        def number(x: float) -> float | None:
            return None if math.isnan(x) else x

        return ScoreStats(value=number(self.mean), ci95=None, std=number(self.std),
                          per_seed=[number(x) for x in self.per_seed], grid_point_means=False,
                          degenerate=0, reason=LEGACY_REASON)


@dataclass(frozen=True)
class LegacyTaskResult(_Record):
    """A task of entry schema 1: no grid points, no intervals."""

    version: int
    main_score: str
    seeds: list[int]
    scores: dict[str, LegacyScoreStats]
    predictions: dict[str, dict[str, float | str]]
    wall_time_s: float
    date: str

    def upgraded(self) -> TaskResult:
        return TaskResult(version=self.version, main_score=self.main_score, seeds=self.seeds,
                          scores={k: v.upgraded() for k, v in self.scores.items()},
                          predictions=self.predictions, grid_points=None, bootstrap=None,
                          wall_time_s=self.wall_time_s, date=self.date)


@dataclass(frozen=True)
class LegacyEntry(_Record):
    """An entry of schema 1, as the leaderboard held them before scores had intervals."""

    schema_version: int
    method: Method
    zoo: ZooRef
    split: SplitRef
    tasks: dict[str, LegacyTaskResult]
    provenance: Provenance

    def upgraded(self) -> Entry:
        return Entry(schema_version=self.schema_version, method=self.method, zoo=self.zoo,
                     split=self.split, tasks={k: v.upgraded() for k, v in self.tasks.items()},
                     provenance=self.provenance)


@dataclass(frozen=True)
class ZooInfo(_Record):
    name: str
    revision: str
    n_models: int


@dataclass(frozen=True)
class Reference(_Record):
    """The true test targets of one zoo revision: ``zoos/<zoo>/<revision[:16]>.json``.

    ``splits`` holds each split file's JSON (with its sha256) by split name; ``targets`` the
    test targets by ``"<task>@v<version>"``, then split name, then sample id;
    ``grid_points`` (schema 2; absent from schema 1) the grid point id of each test model by
    split name, then model name. ``sha256`` is the canonical hash of everything else.
    """

    schema_version: int
    zoo: ZooInfo
    splits: dict[str, dict[str, Any]]
    targets: dict[str, dict[str, dict[str, float | str]]]
    sha256: str
    grid_points: dict[str, dict[str, str]] | None = None

    def to_json(self) -> dict[str, Any]:
        """As stored: without ``grid_points`` where there are none (schema 1), so that the
        hash of a schema-1 reference stays what it was."""
        data = asdict(self)
        if data["grid_points"] is None:
            data.pop("grid_points")
        return data

    def content_hash(self) -> str:
        content = self.to_json()
        content.pop("sha256")
        return fmt.canonical_hash(content)
