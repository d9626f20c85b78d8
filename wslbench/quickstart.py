"""The quickstart: the linear probe on every task of the released digits zoo, with intervals.

``wslbench quickstart`` opens the release ``digits-resnet18-bench`` (in the repository, else
fetched once from its URL; see :mod:`wslbench.releases`) and evaluates ``linear-probe`` on
the ``iid`` split of every task's newest version; it never trains or annotates a model.
``wslbench quickstart --rebuild`` is the long way: build and annotate a digits zoo from its
spec first (the one place wslbench builds), then evaluate the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from wslbench.paths import cache_dir

if TYPE_CHECKING:
    from wslbench.evaluate import EvaluationResult
    from wslbench.releases import ReleaseRecord
    from wslbench.tasks import Task
    from wslbench.zoo import Zoo

QUICKSTART_RELEASE, QUICKSTART_MODEL, QUICKSTART_SPLIT = (
    "digits-resnet18-bench", "linear-probe", "iid")
#: Wall minutes of ``wslbench quickstart`` on the 2-core reference machine, per release
#: version (``name@vN``); a release without a measurement is announced as not measured.
MEASURED_MINUTES: dict[str, float] = {"digits-resnet18-bench@v1": 1.0}  # 58 s, fresh clone and cache

QUICKSTART_SPEC, REBUILD_PRESETS = "digits-resnet18", ("mini", "bench")
#: What is known of each rebuild's cost, said before it starts (README, "Set up and run").
REBUILD_COST = {
    "mini": "the mini preset measured 90 CPU-minutes from an empty cache on the 2-core "
            "reference machine (91 minutes wall with one worker: 11 building, 79 annotating; "
            "2026-12-03)",
    "bench": "the bench preset has 192 models against mini's 75 and takes longer than mini's "
             "90 CPU-minutes (not measured end to end)",
}


#: The end of every message that says the release is missing.
REBUILD_HINT = ("or build and annotate a zoo from scratch with `wslbench quickstart --rebuild` "
                "(long: the mini preset measured 90 CPU-minutes, see README)")


class ReleaseUnavailable(FileNotFoundError):
    """The quickstart's release is not registered, not on this machine, or cannot be fetched;
    the message says how to get it."""


@dataclass(frozen=True)
class TaskRow:
    """One task of the quickstart: its result, or why the zoo cannot score it."""

    task: "Task"
    result: "EvaluationResult | None"
    reason: str | None = None


# --------------------------------------------------------------------------- the release


def release_record(reference: str = QUICKSTART_RELEASE) -> "ReleaseRecord":
    """The registry's record of the quickstart's release (newest version, or ``name@vN``)."""
    from wslbench.releases import find_release, read_index, registry_path

    record = find_release(reference)
    if record is None:
        known = ", ".join(r.reference for r in read_index()) or "none"
        raise ReleaseUnavailable(
            f"the released zoo {reference} is not in the release registry "
            f"'{registry_path()}' (releases there: {known}); update the repository "
            f"(`git pull`) to get it, {REBUILD_HINT}")
    return record


def _shown(path: Path) -> str:
    """``path`` relative to the working folder where it is below it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def announce_release(record: "ReleaseRecord") -> str:
    """What the quickstart is about to do, on which zoo and where it is, and how long it
    takes."""
    from wslbench.releases import available_dir

    folder = available_dir(record)
    if folder is not None:
        where = f"at {_shown(folder)}"
    elif record.url is not None:
        where = (f"not on this machine: downloaded first from {record.url} "
                 f"({record.size_bytes / 1e6:.0f} MB unpacked) into {_shown(_cached(record))}")
    else:
        where = "not on this machine"
    minutes = MEASURED_MINUTES.get(record.reference)
    if minutes is None:
        took = "its time on 2 CPU cores is not measured yet"
    else:
        rounded = max(1, round(minutes))
        took = f"this takes about {rounded} minute{'s' if rounded != 1 else ''} on 2 CPU cores"
    return (f"Evaluating the linear probe ({QUICKSTART_MODEL}) on every task of the released "
            f"zoo {record.name} v{record.version} ({record.num_models} models, revision "
            f"{record.revision[:12]}, {where}) on its {QUICKSTART_SPLIT} split; {took}. "
            "Nothing is trained or annotated.")


def _cached(record: "ReleaseRecord") -> Path:
    from wslbench.releases import cached_dir

    return cached_dir(record)


def open_release(record: "ReleaseRecord") -> "Zoo":
    """The release as a zoo: its folder here, else fetched once from its URL. Never builds."""
    from wslbench.releases import ReleaseError, available_dir, fetch_release, registry_path
    from wslbench.zoo import Zoo

    folder = available_dir(record)
    if folder is None and record.url is None:
        expected = registry_path().parent / (record.path or "")
        raise ReleaseUnavailable(
            f"the released zoo {record.reference} is registered but not on this machine (no "
            f"zoo in '{expected}') and its record has no URL to fetch it from; restore the "
            f"folder from the repository (`git checkout -- {_shown(expected)}`), "
            f"{REBUILD_HINT}")
    if folder is None:
        try:
            folder = fetch_release(record)
        except ReleaseError as err:  # download, sha256 or archive problems
            raise ReleaseUnavailable(
                f"the released zoo {record.reference} could not be fetched ({err}). Get it by "
                f"hand: download {record.url} (sha256 {record.sha256}) and unpack its folder "
                f"as '{_cached(record)}'; {REBUILD_HINT}") from err
    zoo = Zoo.open(folder)
    if zoo.revision != record.revision:
        raise ReleaseError(
            f"the zoo in '{folder}' has revision {zoo.revision[:12]}, but the registry records "
            f"{record.revision[:12]} for release {record.reference}: its files changed; "
            "restore them from the repository (or delete the fetched copy and run again)")
    return zoo


# --------------------------------------------------------------------------- --rebuild


def rebuild_dir(preset: str, cache: str | os.PathLike | None = None) -> Path:
    """Where ``--rebuild`` builds (and on a later run reuses) the zoo:
    ``<cache>/zoos/digits-resnet18-<preset>`` (default cache: $WSLBENCH_CACHE or
    ~/.cache/wslbench), a zoo that ``--zoo digits-resnet18-<preset>`` then finds by name."""
    root = Path(cache).expanduser() if cache else cache_dir()
    return root / "zoos" / f"{QUICKSTART_SPEC}-{preset}"


def announce_rebuild(preset: str, cache: str | os.PathLike | None = None) -> str:
    """What ``--rebuild`` is about to do, and that it is long."""
    from zoo_builder.building.catalog import SPECS

    if preset not in REBUILD_PRESETS:
        raise ValueError(f"rebuild preset {preset!r} is not one of {', '.join(REBUILD_PRESETS)}")
    models = len(SPECS.get(QUICKSTART_SPEC).with_preset(preset).trials())
    return (f"Building the {QUICKSTART_SPEC} zoo, preset {preset} ({models} models), in "
            f"{rebuild_dir(preset, cache)}, annotating every model (loss-landscape metrics, "
            f"phases, downstream results), then evaluating the linear probe "
            f"({QUICKSTART_MODEL}) on every task on its {QUICKSTART_SPLIT} split. This takes "
            f"long: {REBUILD_COST[preset]}. A finished build or annotation in that folder is "
            "reused: a second run only evaluates.")


def rebuild_zoo(preset: str = "mini", cache: str | os.PathLike | None = None,
                workers: int = 2) -> "Zoo":
    """Build (resuming) and annotate (skipping what is stored) the digits zoo of ``preset``."""
    from wslbench.zoo import Zoo
    from zoo_builder.annotating.annotate import annotate_zoo
    # --rebuild is the one place wslbench builds
    from zoo_builder.building.build import build_zoo
    from zoo_builder.building.catalog import SPECS

    zoo_dir = rebuild_dir(preset, cache)
    spec = SPECS.get(QUICKSTART_SPEC).with_preset(preset)
    build_zoo(spec, zoo_dir, workers=workers)  # resumes; returns at once when finished
    # Landscape metrics and phases, then the downstream methods; both skip what is stored.
    # The curve budget and the averaging window come from the preset, as for a release.
    annotate_zoo(zoo_dir, groups=["landscape", "downstream"], workers=workers)
    return Zoo.open(zoo_dir)


# --------------------------------------------------------------------------- evaluating


def unscorable(task: "Task", zoo: "Zoo", split) -> str | None:
    """Why the zoo cannot score ``task`` on ``split`` (the task does not apply to the zoo, or
    a part has no target), or None."""
    from wslbench.evaluate import TaskDoesNotApplyError, check_task_applies, task_items
    from wslbench.splits import PARTS

    try:
        check_task_applies(task, zoo)
    except TaskDoesNotApplyError:
        return f"does not apply: no model of this zoo records '{task.target_key}'"
    for part in PARTS:
        if not task_items(task, zoo, split, part):
            return (f"no {part} model has the target '{task.target_key}' in this zoo "
                    "(annotation missing)")
    return None


def evaluate_tasks(zoo: "Zoo", seeds: Sequence[int] = (0, 1, 2),
                   progress: bool = True) -> list[TaskRow]:
    """``linear-probe`` on the newest version of every task, on the zoo's ``iid`` split; a
    task the zoo cannot score gets a row saying why."""
    from tqdm.auto import tqdm

    from wslbench.evaluate import evaluate
    from wslbench.predictor import load_predictor_class
    from wslbench.splits import resolve_split
    from wslbench.tasks import TASKS

    split, _ = resolve_split(zoo, QUICKSTART_SPLIT)
    predictor = load_predictor_class(QUICKSTART_MODEL)
    rows = []
    bar = tqdm(list(TASKS), desc="tasks", unit="task", disable=None if progress else True)
    for name in bar:
        task = TASKS.get(name)
        bar.set_postfix_str(task.reference)
        reason = unscorable(task, zoo, split)
        if reason is not None:
            rows.append(TaskRow(task, None, reason))
            continue
        result = evaluate(predictor, task, zoo, split, seeds=seeds,
                          predictor_name=QUICKSTART_MODEL)
        rows.append(TaskRow(task, result))
    bar.close()
    return rows
