"""What running the predictor in its own process costs: `wslbench evaluate` of this checkout
against a version before the isolation (issue 14), on the same zoo, task and seeds.

    python benchmarks/evaluate_isolation.py [--zoo ZOO] [--before 5c849b2] [--repeats 3]

Without --zoo it writes a synthetic zoo of 75 ResNet-18s (25 grid points x 3 seeds, width 4:
the size of the quickstart's mini zoo, random weights) in a temporary folder. The old version
is unpacked from git (`git archive`) and run from that folder; both run the command line
(`python -m wslbench.cli evaluate linear-probe ...`) in alternation, each with a warm feature
cache (the usual second run) and with an empty one (a first run), and the script prints the
median wall time of each and the ratio after / before.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The last commit before `wslbench evaluate` ran predictors in a child process.
BEFORE = "5c849b2"


def unpack(revision: str, folder: Path) -> Path:
    """The wslbench and baselines packages of ``revision``, unpacked into ``folder``."""
    archive = subprocess.run(["git", "archive", revision, "wslbench", "baselines"], cwd=REPO,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def run(source: Path, zoo: Path, cache: Path, args: argparse.Namespace) -> float:
    """Wall seconds of one `wslbench evaluate` of the code in ``source``."""
    env = {**os.environ, "PYTHONPATH": str(source), "WSLBENCH_CACHE": str(cache)}
    command = [sys.executable, "-m", "wslbench.cli", "evaluate", args.model, "--task",
               args.task, "--zoo", str(zoo), "--seeds", *map(str, args.seeds)]
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=source, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, help="a zoo folder (default: a synthetic 75-model zoo)")
    parser.add_argument("--before", default=BEFORE, help="the git revision to compare with")
    parser.add_argument("--model", default="linear-probe")
    parser.add_argument("--task", default="test_acc")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        zoo = args.zoo
        if zoo is None:
            sys.path.insert(0, str(REPO / "tests"))
            from helpers import write_synthetic_zoo

            zoo = write_synthetic_zoo(tmp / "zoo", n_points=25, seeds=(0, 1, 2), width=4)
        (tmp / "before").mkdir()
        before = unpack(args.before, tmp / "before")
        versions = {"before": before, "after": REPO}
        times: dict[tuple[str, str], list[float]] = {}
        for version, source in versions.items():  # warm both feature caches, the split file
            run(source, zoo, tmp / f"cache-{version}", args)
        for repeat in range(args.repeats):
            for version, source in versions.items():
                times.setdefault((version, "warm"), []).append(
                    run(source, zoo, tmp / f"cache-{version}", args))
                times.setdefault((version, "cold"), []).append(
                    run(source, zoo, tmp / f"cold-{version}-{repeat}", args))
        print(f"wslbench evaluate {args.model} --task {args.task} --seeds "
              f"{' '.join(map(str, args.seeds))} on '{zoo}'; median of {args.repeats} runs (s), "
              f"before = {args.before}, after = this checkout")
        for cache in ("warm", "cold"):
            old = statistics.median(times["before", cache])
            new = statistics.median(times["after", cache])
            print(f"  {cache} feature cache: before {old:.2f}  after {new:.2f}  "
                  f"ratio {new / old:.3f}  (runs: before "
                  f"{', '.join(f'{t:.2f}' for t in times['before', cache])}; after "
                  f"{', '.join(f'{t:.2f}' for t in times['after', cache])})")


if __name__ == "__main__":
    main()
