"""The ``wslbench`` command: list what exists, evaluate a predictor, run the quickstart."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from wslbench.commands import run_command
from wslbench.predictor import PREDICTORS
from wslbench.splits import SPLITS
from wslbench.tasks import TASKS


def cmd_ls(args: argparse.Namespace) -> int:
    what = args.what
    if what in ("all", "tasks"):
        print("tasks:")
        for name in TASKS:
            task = TASKS.get(name)
            print(f"  {name:<12} v{task.version}  {task.main_score.value:<11} {task.description}")
    if what in ("all", "splits"):
        print("splits:")
        for name in SPLITS:
            split = SPLITS.get(name)
            print(f"  {name:<12} v{split.version}  {split.description}")
    if what in ("all", "models"):
        print("models (predictors; or pass path/to/file.py:Class or package.module:Class):")
        for name in PREDICTORS:
            print(f"  {name}")
    return 0


def format_scores(rows: list[tuple[str, str, dict]]) -> str:
    """A text table: predictor, task, then mean ± std of each score."""
    names = sorted({score for _, _, scores in rows for score in scores})
    header = f"{'model':<16} {'task':<18} " + " ".join(f"{n:>17}" for n in names)
    lines = [header, "-" * len(header)]
    for model, task, scores in rows:
        cells = " ".join(f"{scores[n]['mean']:>8.3f} ± {scores[n]['std']:<6.3f}" if n in scores
                         else f"{'':>17}" for n in names)
        lines.append(f"{model:<16} {task:<18} {cells}")
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from wslbench.evaluate import evaluate
    from wslbench.predictor import load_predictor_class
    from wslbench.splits import resolve_split
    from wslbench.zoo import Zoo

    predictor_class = load_predictor_class(args.model)
    task = TASKS.get(args.task)
    zoo = Zoo.open(args.zoo)
    split, split_path = resolve_split(zoo, args.split)
    result = evaluate(predictor_class, task, zoo, split, seeds=args.seeds,
                      predictor_name=args.model)
    print(f"zoo {zoo.root} ({len(zoo)} models, revision {zoo.revision[:12]}); split "
          f"{split.name} {result.split['sizes']} ({split_path})")
    print(format_scores([(args.model, task.name, result.scores)]))
    if args.output:
        result.save(Path(args.output))
        print(f"result written to {args.output}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from wslbench.quickstart import run_quickstart

    started = time.perf_counter()
    rows = run_quickstart(cache=args.cache, workers=args.workers, seeds=args.seeds)
    print(format_scores(rows))
    print(f"quickstart finished in {time.perf_counter() - started:.0f}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wslbench", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    ls = commands.add_parser("ls", help="list tasks, splits and models")
    ls.add_argument("what", nargs="?", default="all", choices=["all", "tasks", "splits", "models"])
    ls.set_defaults(run=cmd_ls)

    ev = commands.add_parser("evaluate", help="evaluate a predictor on a task of a zoo")
    ev.add_argument("model", help="a registered name (see `wslbench ls models`), "
                                  "path/to/file.py:Class, or package.module:Class")
    ev.add_argument("--task", required=True, help="a task name (see `wslbench ls tasks`)")
    ev.add_argument("--zoo", required=True, help="path to a zoo root folder")
    ev.add_argument("--split", default="iid", help="a split name or a split .json file")
    ev.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="predictor training seeds (scores are mean ± std over them)")
    ev.add_argument("--output", help="write the result JSON here")
    ev.set_defaults(run=cmd_evaluate)

    qs = commands.add_parser("quickstart", help="build the mini digits zoo and evaluate "
                                                "linear-probe on every task")
    qs.add_argument("--cache", help="where the zoo is built and reused (default: "
                                    "$WSLBENCH_CACHE or ~/.cache/wslbench)")
    qs.add_argument("--workers", type=int, default=2, help="models trained in parallel")
    qs.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    qs.set_defaults(run=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
