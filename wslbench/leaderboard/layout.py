"""Where leaderboard files live, reading them, and small helpers the checks share."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

from wslbench.leaderboard.common import ABS_TOL, REL_TOL, SHOW, LeaderboardError
from wslbench.tasks import Task


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
        return json.loads(text, parse_constant=_bare_constant)
    except json.JSONDecodeError as err:
        raise LeaderboardError(f"malformed JSON at line {err.lineno} col {err.colno}: "
                               f"{err.msg}") from err
    except ValueError as err:  # a bare NaN or Infinity
        line = next((n for n, row in enumerate(text.splitlines(), start=1)
                     if re.search(r"(?<![\w\"])-?(NaN|Infinity)\b", row)), None)
        raise LeaderboardError(f"not JSON: {err} at line {line}; JSON has no NaN or Infinity "
                               "(a score that is undefined is null, with its reason; a "
                               "prediction must be a finite number)") from err


def _bare_constant(name: str) -> Any:
    raise ValueError(f"bare {name}")


def true_targets(task: Task, zoo, split, test_zoo=None) -> dict[str, float | str]:
    """The true targets of the split's test samples that have one, keyed as predictions are
    (``test_zoo``: where a cross-zoo split's test models live)."""
    from wslbench.evaluate import split_targets

    return {k: (v if isinstance(v, str) else float(v))
            for k, v in split_targets(task, zoo, split, "test", test_zoo).items()}


def task_applies(task: Task, split) -> bool:
    """Whether the task can be scored on the split at all (the epochs split needs targets
    at every checkpoint)."""
    return split.part_epochs("test") is None or task.per_checkpoint


def sample_model(sample_id: str, split_data: dict[str, Any]) -> str:
    """The model a sample id of a split's test part belongs to: the id itself, or ``name``
    of ``name@epoch`` on a split with given checkpoint epochs (the epochs split)."""
    return sample_id.rpartition("@")[0] if split_data.get("epochs") else sample_id


def test_grid_points(split, source) -> dict[str, str]:
    """The grid point id of each test model of ``split``, from ``source`` (the zoo its test
    models are in), by model name."""
    from wslbench.intervals import grid_point_id

    by_name = {m.name: m for m in source.models}
    missing = [name for name in split.test if name not in by_name]
    if missing:
        raise LeaderboardError(f"split '{split.name}' tests on {len(missing)} models that zoo "
                               f"'{source.root}' does not have, e.g. '{missing[0]}'")
    return {name: grid_point_id(by_name[name].grid_point) for name in split.test}


def scores_agree(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def first_few(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(f"'{n}'" for n in names[:SHOW])
    return shown + (f" and {len(names) - SHOW} more" if len(names) > SHOW else "")
