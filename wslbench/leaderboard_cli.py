"""``wslbench submit`` and ``wslbench leaderboard {validate,reproduce,render,add-zoo}``.

:func:`add_leaderboard_commands` adds them to the ``wslbench`` parser; the work is
:mod:`wslbench.leaderboard`'s (a package), imported only when one of these commands runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _root(args: argparse.Namespace) -> Path:
    from wslbench.leaderboard import default_root

    return Path(args.leaderboard) if args.leaderboard else default_root()


def _shown(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve().parent))
    except ValueError:
        return str(path)


def cmd_submit(args: argparse.Namespace) -> int:
    from wslbench.leaderboard import load_result, submit

    root = _root(args)
    results = [load_result(Path(p)) for p in args.results]
    for path in submit(results, root, name=args.name, description=args.description,
                       paper=args.paper, code=args.code, parameters=args.parameters,
                       baseline=args.baseline):
        print(f"wrote {_shown(path, root)}")
    print("next: `wslbench leaderboard render`, then commit the entry and the rendered tables")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from wslbench.leaderboard import validate
    from wslbench.zoo import Zoo

    root = _root(args)
    if not root.is_dir():
        raise FileNotFoundError(f"leaderboard folder '{root}' does not exist; pass --leaderboard")
    zoos = [Zoo.open(p) for p in args.zoo]
    checked = validate(root, zoos)
    failed = 0
    for item in checked:
        shown = _shown(item.path, root)
        if item.problems:
            failed += 1
            for problem in item.problems:
                print(f"FAIL {shown}: {problem}")
        else:
            print(f"ok   {shown} ({item.note})")
    n_refs = sum(c.kind == "reference" for c in checked)
    old = sum("old entry schema 1" in c.note for c in checked)
    print(f"checked {n_refs} zoo references and {len(checked) - n_refs} entries: "
          + (f"{failed} failed" if failed else "all valid")
          + (f"; {old} entries in the old schema 1 have no intervals" if old else ""))
    return 1 if failed else 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from wslbench.leaderboard.reproduce import reproduce, summary
    from wslbench.zoo import Zoo

    root = _root(args)
    zoo = Zoo.resolve(args.zoo) if args.zoo else None
    test_zoo = Zoo.resolve(args.test_zoo) if args.test_zoo else None
    failed = 0
    for given in args.entries:
        path = Path(given) if Path(given).is_file() else root / given
        if not path.is_file():
            raise FileNotFoundError(f"no entry '{given}' (looked at '{path}' too); give the "
                                    "entry's JSON file, e.g. entries/<zoo>/<revision>/<split>/"
                                    "<method>.json")
        outcomes = reproduce(path, root, zoo, test_zoo, rtol=args.rtol, atol=args.atol,
                             device=args.device)
        for line in summary(Path(_shown(path, root)), outcomes, args.rtol, args.atol):
            print(line)
        failed += not all(o.ok for o in outcomes)
    if failed:
        print(f"{failed} of {len(args.entries)} entries do not reproduce: their predictions are "
              "not what the recorded predictor makes on their zoo, split and seeds")
    return 1 if failed else 0


def cmd_render(args: argparse.Namespace) -> int:
    from wslbench.leaderboard import render, write_rendered

    root = _root(args)
    if not args.check:
        for path in write_rendered(root):
            print(f"wrote {_shown(path, root)}")
        return 0
    stale = [_shown(path, root) for path, text in render(root).items()
             if not path.is_file() or path.read_text(encoding="utf-8") != text]
    if stale:
        print(f"out of date: {', '.join(stale)}; run `wslbench leaderboard render`",
              file=sys.stderr)
        return 1
    print("rendered tables are up to date")
    return 0


def cmd_add_zoo(args: argparse.Namespace) -> int:
    from wslbench.leaderboard import add_zoo, load_reference
    from wslbench.zoo import Zoo

    root = _root(args)
    zoo = Zoo.open(args.zoo)
    test_zoo = Zoo.open(args.test_zoo) if args.test_zoo else None
    path = add_zoo(root, zoo, splits=args.split, tasks=args.task, test_zoo=test_zoo)
    reference = load_reference(path)
    print(f"wrote {_shown(path, root)}: zoo '{reference.zoo.name}' revision "
          f"{zoo.revision[:16]}, splits {', '.join(reference.splits)}, tasks "
          f"{', '.join(reference.targets)}")
    return 0


def add_leaderboard_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``submit`` and ``leaderboard`` to the ``wslbench`` subcommands."""
    where = dict(metavar="DIR", help="the leaderboard folder (default: the repository's "
                                     "leaderboards/, else ./leaderboards)")

    sub = subparsers.add_parser("submit", help="add results to the leaderboard as an entry")
    sub.add_argument("results", nargs="+", metavar="RESULT.json",
                     help="result files of `wslbench evaluate --output`; results of one "
                          "predictor, zoo and split go into one entry")
    sub.add_argument("--name", help="the method's name (default: the result's predictor name)")
    sub.add_argument("--description", help="one line on what the method is")
    sub.add_argument("--paper", metavar="URL", help="the method's paper")
    sub.add_argument("--code", metavar="URL", help="the method's code (a URL, or a path "
                                                   "inside this repository)")
    sub.add_argument("--parameters", type=int, metavar="N", help="the method's parameter count")
    sub.add_argument("--baseline", action="store_true", help="mark it as a baseline")
    sub.add_argument("--leaderboard", **where)
    sub.set_defaults(run=cmd_submit)

    board = subparsers.add_parser("leaderboard", help="validate, render, add zoo references")
    commands = board.add_subparsers(dest="leaderboard_command", required=True)

    val = commands.add_parser("validate", help="re-score every entry from its predictions; "
                                               "exit status 1 if any fails")
    val.add_argument("--leaderboard", **where)
    val.add_argument("--zoo", action="append", default=[], metavar="PATH",
                     help="a zoo to recompute its reference's targets from (repeatable)")
    val.set_defaults(run=cmd_validate)

    from wslbench.leaderboard.reproduce import ATOL, RTOL

    rep = commands.add_parser(
        "reproduce", help="run the predictor an entry records again on its zoo, split and "
                          "seeds and compare predictions; exit status 1 if any differ")
    rep.add_argument("entries", nargs="+", metavar="ENTRY",
                     help="entry files (paths, or relative to the leaderboard folder)")
    rep.add_argument("--zoo", help="the entry's zoo (a folder or name; default: the entry's "
                                   "zoo name, e.g. a release)")
    rep.add_argument("--test-zoo", help="the zoo a cross-zoo split tests on")
    rep.add_argument("--rtol", type=float, default=RTOL,
                     help=f"relative tolerance for numeric predictions (default {RTOL:g})")
    rep.add_argument("--atol", type=float, default=ATOL,
                     help=f"absolute tolerance for numeric predictions (default {ATOL:g})")
    rep.add_argument("--device", help="passed to predictors that take a device")
    rep.add_argument("--leaderboard", **where)
    rep.set_defaults(run=cmd_reproduce)

    ren = commands.add_parser("render", help="write README.md and index.html from the entries")
    ren.add_argument("--leaderboard", **where)
    ren.add_argument("--check", action="store_true",
                     help="write nothing; exit status 1 if the rendered files are out of date")
    ren.set_defaults(run=cmd_render)

    add = commands.add_parser("add-zoo", help="store a zoo's splits and true test targets")
    add.add_argument("zoo", metavar="ZOO_PATH", help="path to the zoo root folder")
    add.add_argument("--split", nargs="+", default=["iid"],
                     help="split names or split .json files (default: iid)")
    add.add_argument("--task", nargs="+", default=None,
                     help="tasks, as name (newest version) or name@vN (default: every task "
                          "the zoo has test targets for)")
    add.add_argument("--test-zoo", metavar="PATH", help="the zoo a cross-zoo split tests on")
    add.add_argument("--leaderboard", **where)
    add.set_defaults(run=cmd_add_zoo)


def main(argv: list[str] | None = None) -> int:
    """These commands alone, as ``wslbench`` runs them (``python -m wslbench.leaderboard_cli``)."""
    from wslbench.commands import run_command

    parser = argparse.ArgumentParser(prog="wslbench")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    add_leaderboard_commands(parser.add_subparsers(dest="command", required=True))
    return run_command(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
