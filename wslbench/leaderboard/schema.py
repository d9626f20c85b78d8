"""The strict schema of entries and zoo references: dataclasses parsed field by field,
so a missing, unknown or mistyped field is named with its path."""

from __future__ import annotations

import dataclasses
import json
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
