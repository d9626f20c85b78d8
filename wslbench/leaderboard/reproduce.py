"""``wslbench leaderboard reproduce``: run an entry's predictor again and compare predictions.

Validation proves that an entry's scores follow from its stored predictions; it cannot tell
whether code made those predictions (copying the reference's true targets into an entry
validates). Reproduction runs the predictor each task records (its reference, or the source
stored with a predictor file) on the entry's zoo revision, split and seeds, and compares every
prediction with the stored one: numbers within ``atol + rtol * |stored|``, labels exactly.
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from wslbench.leaderboard.common import LeaderboardError
from wslbench.leaderboard.entries import check_entry
from wslbench.leaderboard.layout import read_json, task_key
from wslbench.leaderboard.references import find_references, load_reference
from wslbench.leaderboard.schema import Entry, TaskResult

log = logging.getLogger(__name__)

#: The default tolerance: a re-run on CPU with the same thread count repeats predictions to
#: the last bit; these leave room for another machine's float rounding, not for other code.
RTOL = 1e-4
ATOL = 1e-6


@dataclass
class TaskReproduction:
    """One task of an entry, run again: how many predictions agree, and the worst ones."""

    task: str
    reference: str
    compared: int = 0
    differing: list[str] = field(default_factory=list)
    largest: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differing


def reproduce(entry_path: Path, root: Path, zoo=None, test_zoo=None, rtol: float = RTOL,
              atol: float = ATOL, device: str | None = None) -> list[TaskReproduction]:
    """Re-run every task of the entry at ``entry_path`` and compare its predictions.

    ``zoo`` (and ``test_zoo`` for a cross-zoo split) is an opened zoo of the entry's
    revision; by default the zoo is resolved by the entry's zoo name (a release or a known
    zoo). Raises :class:`LeaderboardError` naming the entry when it cannot be re-run."""
    from wslbench.evaluate import evaluate
    from wslbench.splits import Split
    from wslbench.tasks import get_task

    entry_path = Path(entry_path)
    data = read_json(entry_path)
    references = {revision: load_reference(path)
                  for revision, path in find_references(root).items()}
    problems = check_entry(data, references, location=entry_path, root=root)
    if problems:
        raise LeaderboardError(f"entry '{entry_path}' does not validate, so there is nothing to "
                               f"reproduce: {'; '.join(problems[:3])}")
    entry = Entry.from_json(data)
    reference = references[entry.zoo.revision]
    zoo = zoo if zoo is not None else _resolve_zoo(entry, entry_path)
    if zoo.revision != entry.zoo.revision:
        raise LeaderboardError(
            f"entry '{entry_path}' was made on zoo '{entry.zoo.name}' revision "
            f"{entry.zoo.revision[:16]}; the zoo at '{zoo.root}' is revision "
            f"{zoo.revision[:16]}: pass --zoo with the entry's revision")
    split = Split.from_json(reference.splits[entry.split.name], source=f"reference of "
                            f"'{entry.zoo.name}'")
    outcomes = []
    for name, task in entry.tasks.items():
        with tempfile.TemporaryDirectory(prefix="wslbench-reproduce-") as scratch:
            predictor, notes = _predictor_of(task, entry, Path(scratch))
            result = evaluate(predictor, get_task(task_key(name, task.version)), zoo, split,
                              seeds=task.seeds, test_zoo=test_zoo, device=device)
        outcome = compare(name, predictor, task.predictions, result.predictions, rtol, atol)
        outcome.notes += notes
        targets = reference.targets.get(task_key(name, task.version), {}).get(entry.split.name)
        if not outcome.ok and targets and all(
                task.predictions[str(s)] == targets for s in task.seeds):
            outcome.notes.append("its stored predictions are the reference's true test targets "
                                 "exactly: they were copied, not predicted")
        outcomes.append(outcome)
    return outcomes


def _resolve_zoo(entry: Entry, entry_path: Path):
    from wslbench.zoo import Zoo

    try:
        return Zoo.resolve(entry.zoo.name)
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise LeaderboardError(f"entry '{entry_path}' needs zoo '{entry.zoo.name}' (revision "
                               f"{entry.zoo.revision[:16]}), which is not here ({err}); pass "
                               "--zoo PATH") from err


def _predictor_of(task: TaskResult, entry: Entry, scratch: Path) -> tuple[str, list[str]]:
    """The reference to run for ``task``, and notes on how it relates to the recorded code."""
    identity = task.predictor
    if identity is None:
        return entry.method.predictor, [
            "the entry records no predictor identity (made before identities were recorded); "
            f"ran {entry.method.predictor} as it is now"]
    notes = []
    file = Path(identity["file"]) if identity.get("file") else None
    if (file is None or not file.is_file()) and identity.get("given_as") != "file":
        file = _module_file(identity.get("class") or "") or file  # made on another machine
    current = (hashlib.sha256(file.read_bytes()).hexdigest()
               if file is not None and file.is_file() else None)
    if identity.get("source") is not None and current != identity.get("sha256"):
        stored = scratch / (file.name if file is not None else "predictor.py")
        stored.write_text(identity["source"], encoding="utf-8")
        attr = identity["class"].rpartition(":")[2]
        notes.append(f"ran the predictor source stored in the entry (sha256 "
                     f"{str(identity['sha256'])[:12]})")
        return f"{stored}:{attr}", notes
    if identity.get("sha256") and current is not None and current != identity["sha256"]:
        notes.append(f"'{file}' has changed since the entry was made (sha256 "
                     f"{current[:12]}, recorded {identity['sha256'][:12]}); ran it as it is now")
    given = identity["reference"]
    if identity.get("given_as") == "file":
        given = str(file) + (f":{identity['class'].rpartition(':')[2]}" if file else "")
    return given, notes


def _module_file(class_reference: str) -> Path | None:
    """The file that defines ``module:Class`` here (without importing it), or None."""
    import importlib.util

    module = class_reference.partition(":")[0]
    try:
        spec = importlib.util.find_spec(module) if module else None
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin else None


def compare(task: str, predictor: str, stored: Mapping[str, Mapping[str, Any]],
            fresh: Mapping[str, Mapping[str, Any]], rtol: float = RTOL,
            atol: float = ATOL) -> TaskReproduction:
    """Stored predictions against fresh ones (by seed, then sample id)."""
    outcome = TaskReproduction(task, predictor)
    for seed, values in stored.items():
        again = fresh.get(seed, {})
        for sample, value in values.items():
            outcome.compared += 1
            new = again.get(sample)
            if isinstance(value, str) or isinstance(new, str) or new is None:
                if new != value:
                    outcome.differing.append(f"seed {seed} '{sample}': stored {value!r}, "
                                             f"reproduced {new!r}")
                continue
            gap = abs(float(new) - float(value))
            if not gap <= atol + rtol * abs(float(value)) or math.isnan(gap):
                outcome.differing.append(f"seed {seed} '{sample}': stored {value!r}, "
                                         f"reproduced {new!r}")
                outcome.largest = max(outcome.largest, gap)
    return outcome


def summary(entry_path: Path, outcomes: Sequence[TaskReproduction], rtol: float,
            atol: float) -> list[str]:
    """The lines `wslbench leaderboard reproduce` prints for one entry."""
    lines = []
    for outcome in outcomes:
        if outcome.ok:
            lines.append(f"ok   {entry_path}: task '{outcome.task}': {outcome.compared} "
                         f"predictions reproduced by {outcome.reference} (within {atol:g} + "
                         f"{rtol:g} x |stored|)")
        else:
            lines.append(f"FAIL {entry_path}: task '{outcome.task}': "
                         f"{len(outcome.differing)} of {outcome.compared} predictions differ "
                         f"from what {outcome.reference} predicts now (tolerance {atol:g} + "
                         f"{rtol:g} x |stored|; largest difference {outcome.largest:.3g}), "
                         f"e.g. {outcome.differing[0]}")
        lines += [f"     note: {note}" for note in outcome.notes]
    return lines
