"""The ``wslbench`` command: list what exists, evaluate a predictor, verify a zoo, run the
quickstart."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from wslbench.commands import run_command
from wslbench.export import add_export_command
from wslbench.leaderboard_cli import add_leaderboard_commands
from wslbench.predictor import PREDICTORS, entry_points
from wslbench.quickstart import REBUILD_PRESETS
from wslbench.splits import SPLITS
from wslbench.tasks import TASK_VERSIONS, TASKS, get_task


def cmd_ls(args: argparse.Namespace) -> int:
    what = args.what
    if what in ("all", "tasks"):
        print("tasks (name@version, main score, kind: regression targets are numbers, "
              "classification targets string labels; what predictors see: W weights, A "
              "architecture arguments, H hyperparameters):")
        for name in TASK_VERSIONS:
            task = get_task(name)
            sees = "".join(flag for flag, seen in (("W", True), ("A", task.sees_architecture),
                                                   ("H", task.sees_hyperparameters)) if seen)
            newest = "" if TASKS.get(task.name) is task else "  (superseded)"
            print(f"  {name:<22} {task.main_score.value:<11} {task.kind.value:<14} {sees:<3} "
                  f"{task.description}{newest}")
    if what in ("all", "splits"):
        print("splits:")
        for name in SPLITS.registration_order():
            split = SPLITS.get(name)
            print(f"  {name:<16} v{split.version}  {split.description}")
    if what in ("all", "models"):
        print("models (predictors; or pass path/to/file.py[:Class] or package.module[:Class]):")
        for name in PREDICTORS:
            print(f"  {name}")
        for name, entry in sorted(entry_points().items()):
            print(f"  {name:<16} entry point {entry.value}")
    if what in ("all", "zoos"):
        from wslbench.paths import known_zoos, zoo_dirs
        from wslbench.releases import read_index, registry_path

        records = read_index()
        print(f"released zoos (name@version, from {registry_path()}):")
        for record in records:
            print(f"  {record.reference:<28} {record.num_models} models, epochs "
                  f"{','.join(map(str, record.epochs))}, {record.size_bytes / 1e6:.1f} MB, "
                  f"{_release_place(record)}")
        released = {record.name for record in records}
        print(f"zoos (by name, from {', '.join(map(str, zoo_dirs()))}):")
        for name, path in known_zoos().items():
            if name not in released:
                print(f"  {name:<28} {path}")
    return 0


def _release_place(record) -> str:
    """Where a release is: its folder here, or the URL it would be fetched from."""
    from wslbench.releases import cached_dir, local_dir

    if local_dir(record) is not None:
        return f"in {local_dir(record)}"
    if (cached_dir(record) / "zoo.json").is_file():
        return f"fetched into {cached_dir(record)}"
    return f"fetched on first use from {record.url}" if record.url else "not on this machine"


def format_scores(rows: list[tuple[str, str, dict]]) -> str:
    """A text table: predictor, task, then each score as its value (mean over seeds) and 95 %
    bootstrap interval over test grid points, with footnotes for the marks used."""
    from wslbench.intervals import format_score

    names = sorted({score for _, _, scores in rows for score in scores})
    cells = [[format_score(scores[n]) if n in scores else "" for n in names]
             for _, _, scores in rows]
    widths = [max([len(n)] + [len(row[i]) for row in cells]) for i, n in enumerate(names)]
    header = f"{'model':<16} {'task':<18} " + " ".join(
        f"{n:>{w}}" for n, w in zip(names, widths))
    lines = [header, "-" * len(header)]
    for (model, task, _), row in zip(rows, cells):
        lines.append(f"{model:<16} {task:<18} " + " ".join(
            f"{c:>{w}}" for c, w in zip(row, widths)))
    return "\n".join(lines + _score_notes(cell for row in cells for cell in row))


def _score_notes(cells) -> list[str]:
    """The lines under a table of :func:`~wslbench.intervals.format_score` cells: what a value
    and its interval are, and the footnotes of the marks used."""
    from wslbench.intervals import FOOTNOTES

    used = "".join(cells)
    return (["value: mean over seeds [95% bootstrap interval over test grid points]"]
            + [f"{mark} {text}" for mark, text in FOOTNOTES.items() if mark in used])


def format_task_table(rows) -> str:
    """The quickstart's table, one line per task (:class:`wslbench.quickstart.TaskRow`): its
    main score as value [95 % interval], and the test models and grid points it is scored
    on; a task that was not scored says why."""
    from wslbench.intervals import format_score

    table = []
    for row in rows:
        task = row.task
        if row.result is None:
            table.append((task.reference, task.main_score.value, "-", "-",
                          f"not scored: {row.reason}"))
            continue
        table.append((task.reference, task.main_score.value,
                      str(row.result.split["sizes"]["test"]),
                      str(row.result.bootstrap["n_grid_points"]),
                      format_score(row.result.scores[task.main_score.value])))
    names = ("task", "main score", "test models", "grid points", "value [95% interval]")
    widths = [max([len(n)] + [len(r[i]) for r in table]) for i, n in enumerate(names[:4])]
    header = (f"{names[0]:<{widths[0]}}  {names[1]:<{widths[1]}}  {names[2]:>{widths[2]}}  "
              f"{names[3]:>{widths[3]}}  {names[4]}")
    lines = [header, "-" * len(header)]
    for r in table:
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  "
                     f"{r[3]:>{widths[3]}}  {r[4]}")
    return "\n".join(lines + _score_notes(r[4] for r in table if r[2] != "-"))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from wslbench.evaluate import evaluate
    from wslbench.splits import resolve_split
    from wslbench.zoo import Zoo

    # The predictor is imported only in its own process (see wslbench.isolation), never here.
    task = get_task(args.task)
    zoo = Zoo.resolve(args.zoo)
    test_zoo = Zoo.resolve(args.test_zoo) if args.test_zoo else None
    split, split_path = resolve_split(zoo, args.split, test_zoo)
    result = evaluate(args.model, task, zoo, split, seeds=args.seeds,
                      test_zoo=test_zoo, device=args.device)
    name = result.predictor["name"]
    tested_on = f"; test zoo {test_zoo.root}" if test_zoo else ""
    print(f"zoo {zoo.root} ({len(zoo)} models, revision {zoo.revision[:12]}){tested_on}; "
          f"split {split.name} {result.split['sizes']} ({split_path})")
    print(format_scores([(name, task.reference, result.scores)]))
    if args.output:
        result.save(Path(args.output))
        print(f"result written to {args.output}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from wslbench import zoo_format as fmt
    from wslbench.zoo import Zoo

    path = Path(args.zoo).expanduser()  # a damaged zoo may not open: verify reads it as files
    root = path.resolve() if path.exists() else Zoo.resolve(args.zoo).root
    manifest = fmt.read_manifest(root)
    if manifest is None:
        raise fmt.ZooFormatError(
            f"zoo '{root}' has no {fmt.MANIFEST_FILE} (a published zoo, or not a zoo folder): "
            "there are no recorded hashes to verify it against")
    files, problems = fmt.verify_zoo(root, manifest, progress=None)
    models = len(manifest.trials)
    for problem in problems:
        print(problem)
    if problems:
        print(f"verify: {len(problems)} problem(s) in zoo '{root}' ({files} files of {models} "
              "models checked); restore the files, or rebuild the trials (delete their folders "
              "and run `zoo-builder build` again)")
        return 1
    revision = manifest.revision or manifest.content_hash()
    print(f"zoo '{root}': {files} files of {models} models verified (revision {revision[:16]})")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from wslbench import quickstart

    started = time.perf_counter()
    if args.rebuild:
        preset = args.preset or "mini"
        print(quickstart.announce_rebuild(preset, args.cache), flush=True)
        zoo = quickstart.rebuild_zoo(preset, args.cache, workers=args.workers or 2)
    else:
        given = [flag for flag, value in (("--preset", args.preset), ("--workers", args.workers),
                                          ("--cache", args.cache)) if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --rebuild (the quickstart "
                             "evaluates the released zoo and builds nothing)")
        record = quickstart.release_record()
        print(quickstart.announce_release(record), flush=True)
        zoo = quickstart.open_release(record)
    rows = quickstart.evaluate_tasks(zoo, seeds=args.seeds)
    print(f"zoo {zoo.root} ({len(zoo)} models, revision {zoo.revision[:12]}); linear-probe, "
          f"split {quickstart.QUICKSTART_SPLIT}, seeds {' '.join(map(str, args.seeds))}")
    print(format_task_table(rows))
    print(f"quickstart finished in {time.perf_counter() - started:.0f}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wslbench", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    ls = commands.add_parser("ls", help="list tasks, splits and models")
    ls.add_argument("what", nargs="?", default="all",
                    choices=["all", "tasks", "splits", "models", "zoos"])
    ls.set_defaults(run=cmd_ls)

    ev = commands.add_parser("evaluate", help="evaluate a predictor on a task of a zoo")
    ev.add_argument("model", help="a registered name or installed entry point (see `wslbench "
                                  "ls models`), path/to/file.py[:Class], or "
                                  "package.module[:Class]")
    ev.add_argument("--task", required=True,
                    help="a task name or name@vN (see `wslbench ls tasks`)")
    ev.add_argument("--zoo", required=True,
                    help="a zoo folder, or the name of a known zoo (see `wslbench ls zoos`)")
    ev.add_argument("--split", default="iid",
                    help="a split name (see `wslbench ls splits`) or a split .json file")
    ev.add_argument("--test-zoo", help="the zoo to test on, for the cross-zoo split")
    ev.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="predictor training seeds (scores are means over them, with a 95%% "
                         "bootstrap interval over test grid points)")
    ev.add_argument("--device", help="passed to predictors that take a device, e.g. cuda")
    ev.add_argument("--output", help="write the result JSON (with per-model predictions) here")
    ev.set_defaults(run=cmd_evaluate)

    ve = commands.add_parser("verify", help="check every file of a zoo against the sha256 and "
                                            "tensor fingerprints its zoo.json records")
    ve.add_argument("zoo", help="a zoo folder, or the name of a known zoo")
    ve.set_defaults(run=cmd_verify)

    add_leaderboard_commands(commands)
    add_export_command(commands)

    qs = commands.add_parser(
        "quickstart", help="evaluate linear-probe on every task of the released zoo "
                           "digits-resnet18-bench (no training); --rebuild builds and "
                           "annotates a digits zoo first (long)")
    qs.add_argument("--rebuild", action="store_true",
                    help="build and annotate a digits-resnet18 zoo from scratch, then evaluate "
                         "on it (long: the mini preset measured 90 CPU-minutes, see README)")
    qs.add_argument("--preset", choices=REBUILD_PRESETS,
                    help="with --rebuild: the zoo's preset (default: mini)")
    qs.add_argument("--workers", type=int,
                    help="with --rebuild: models trained and annotated in parallel (default: 2)")
    qs.add_argument("--cache", help="with --rebuild: where the zoo is built and reused, under "
                                    "zoos/ (default: $WSLBENCH_CACHE or ~/.cache/wslbench)")
    qs.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="predictor training seeds")
    qs.set_defaults(run=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
