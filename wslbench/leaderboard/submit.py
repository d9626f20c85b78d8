"""``wslbench submit``: results of ``wslbench evaluate`` merged into validated entries."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

from wslbench import zoo_format as fmt
from wslbench.leaderboard.common import ENTRY_SCHEMA_VERSION, LeaderboardError
from wslbench.leaderboard.entries import check_entry
from wslbench.leaderboard.layout import entry_path, read_json, task_key
from wslbench.leaderboard.references import add_zoo, find_references, load_reference
from wslbench.leaderboard.schema import (
    Entry,
    Method,
    Provenance,
    Reference,
    SplitRef,
    TaskResult,
    ZooRef,
)


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
    from wslbench.evaluate import RESULT_SCHEMA_VERSION

    version = data.get("schema_version")
    if version != RESULT_SCHEMA_VERSION:
        raise LeaderboardError(
            f"result '{path}' is of result schema {version}, not {RESULT_SCHEMA_VERSION}"
            + (" (its predictions have no grid points, so its scores no intervals)"
               if version == 1 else "")
            + "; run `wslbench evaluate --output` again with this version of wslbench")
    for key in ("seeds", "scores", "predictions", "grid_points", "bootstrap"):
        if key not in data:
            raise LeaderboardError(f"result '{path}' has no {key}")
    return data


def _task_result(result: Mapping[str, Any]) -> TaskResult:
    return TaskResult.from_json({
        "version": result["task"]["version"], "main_score": result["task"]["main_score"],
        "seeds": result["seeds"], "scores": result["scores"],
        "predictions": result["predictions"], "grid_points": result["grid_points"],
        "bootstrap": result["bootstrap"],
        "wall_time_s": result["provenance"]["wall_time_s"],
        "date": result["provenance"]["started"],
        "predictor": result["predictor"].get("identity")})


def _reference_for(root: Path, result: Mapping[str, Any], task_keys: Sequence[str]
                   ) -> Reference:
    """The reference covering the result's zoo revision, split (with its grid points) and
    task versions; made from the zoo (at the result's zoo path) where it is missing or lacks
    them."""
    from wslbench.splits import SPLITS

    revision, split_name = result["zoo"]["revision"], result["split"]["name"]
    path = find_references(root).get(revision)
    reference = load_reference(path) if path else None
    if reference is not None and split_name in reference.splits and all(
            split_name in reference.targets.get(key, {}) for key in task_keys) \
            and split_name in (reference.grid_points or {}):
        return reference
    fix = (f"run `wslbench leaderboard add-zoo ZOO_PATH --split {split_name} --task "
           f"{' '.join(task_keys)}` where the zoo is")
    if split_name not in SPLITS:
        raise LeaderboardError(
            f"no reference under '{Path(root) / 'zoos'}' holds split '{split_name}' of zoo "
            f"revision {revision[:16]} with the targets and grid points this result needs, "
            "and submit only makes registered splits; run `wslbench "
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
        if old is not None and old.schema_version != ENTRY_SCHEMA_VERSION:
            kept = sorted(set(old.tasks) - {r["task"]["name"] for r in members})
            if kept:
                raise LeaderboardError(
                    f"'{path}' is an entry of the old schema {old.schema_version} (no grid "
                    f"points, no intervals), and its tasks {', '.join(kept)} would stay so; "
                    "rerun them and submit all its tasks together, or submit under another "
                    "--name")
            old = dataclasses.replace(old, tasks={})  # every old task is replaced
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
