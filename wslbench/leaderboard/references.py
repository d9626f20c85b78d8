"""Zoo references: a zoo revision's splits and the true targets of their test samples."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

from wslbench import zoo_format as fmt
from wslbench.leaderboard.common import REFERENCE_SCHEMA_VERSION, LeaderboardError
from wslbench.leaderboard.layout import (
    first_few,
    read_json,
    reference_path,
    scores_agree,
    task_applies,
    test_grid_points,
    true_targets,
)
from wslbench.leaderboard.schema import Reference, ZooInfo
from wslbench.splits import Split
from wslbench.tasks import TASK_VERSIONS, TASKS, get_task


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
    new version, not a new reference). The reference also gets the grid points of each
    split's test models (a reference of schema 1 is upgraded: stored splits get theirs where
    their test models are at hand).
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
        stored_points = dict(existing.grid_points or {})
        name = existing.zoo.name
    else:
        stored_splits, stored_targets, stored_points, name = {}, {}, {}, zoo.label

    for split_name in splits:
        split, _ = resolve_split(zoo, split_name, test_zoo)
        data = split.to_json()
        if split.name in stored_splits and stored_splits[split.name]["sha256"] != split.sha256:
            raise LeaderboardError(
                f"the reference of zoo '{name}' already holds a different split named "
                f"'{split.name}' (sha256 {stored_splits[split.name]['sha256'][:12]}, this one "
                f"{split.sha256[:12]}); give the new split file another name")
        stored_splits[split.name] = data
        stored_points[split.name] = test_grid_points(split, test_zoo if split.test_zoo_revision
                                                     else zoo)
        for task_name in tasks if tasks is not None else TASKS.names():
            task = get_task(task_name)
            if tasks is None and not task_applies(task, split):
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

    for split_name, data in stored_splits.items():  # splits of a schema-1 reference
        split = Split.from_json(data, source=f"split '{split_name}'")
        source = zoo if split.test_zoo_revision is None else (
            test_zoo if test_zoo is not None and test_zoo.revision == split.test_zoo_revision
            else None)
        if split_name not in stored_points and source is not None:
            stored_points[split_name] = test_grid_points(split, source)
    reference = Reference(schema_version=REFERENCE_SCHEMA_VERSION,
                          zoo=ZooInfo(name=name, revision=zoo.revision, n_models=len(zoo)),
                          splits=stored_splits, targets=stored_targets, sha256="",
                          grid_points=dict(sorted(stored_points.items())))
    reference = dataclasses.replace(reference, sha256=reference.content_hash())
    path = existing_path or reference_path(root, name, zoo.revision)
    fmt.atomic_write_json(path, reference.to_json())
    return path


def _same_target(a: float | str, b: float | str) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return scores_agree(float(a), float(b))


def check_reference(path: Path, root: Path, zoos: Sequence[Any] = ()) -> list[str]:
    """Problems of one reference file; with a zoo of its revision in ``zoos``, its splits and
    targets are recomputed from the zoo, else checked against the file's own sha256."""
    try:
        reference = load_reference(path)
    except LeaderboardError as err:
        return [str(err)]
    problems = []
    if reference.schema_version not in (1, REFERENCE_SCHEMA_VERSION):
        problems.append(f"schema_version {reference.schema_version} is not "
                        f"{REFERENCE_SCHEMA_VERSION}")
    if (reference.grid_points is None) != (reference.schema_version == 1):
        problems.append("grid_points must be given in reference schema "
                        f"{REFERENCE_SCHEMA_VERSION} and only there")
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
    for split_name, points in (reference.grid_points or {}).items():
        if split_name not in reference.splits:
            problems.append(f"grid points of split '{split_name}', which the reference does "
                            "not hold")
        elif split_name in splits and set(points) != set(splits[split_name].test):
            odd = set(points) ^ set(splits[split_name].test)
            problems.append(f"grid points of split '{split_name}' must name exactly its test "
                            f"models; {len(odd)} differ: {first_few(odd)}")
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
    for split_name, points in (reference.grid_points or {}).items():
        if split_name in usable:
            source = test_zoos[split_name] or zoo
            try:
                actual = test_grid_points(usable[split_name], source)
            except LeaderboardError as err:
                problems.append(str(err))
                continue
            wrong = sorted(k for k in points if points[k] != actual.get(k))
            if wrong:
                problems.append(f"grid points of split '{split_name}' differ from the zoo at "
                                f"'{source.root}' for {len(wrong)} models, e.g. "
                                f"{first_few(wrong)}")
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
                                f"{first_few(differing)}")
    return problems
