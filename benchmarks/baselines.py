"""Every baseline on every task of embedded zoos: scores (mean over seeds with a 95% bootstrap
interval over test grid points) and wall time.

Run from the repository root (with the project's venv active)::

    python benchmarks/baselines.py                                   # the released zoo, iid
    python benchmarks/baselines.py --splits iid ood-width ood-temperature epochs
    python benchmarks/baselines.py --zoos digits-resnet18:mini shakespeare-gpt2:default --baselines gmn
    python benchmarks/baselines.py --write-leaderboard               # also store the results

Each zoo is built (and, for image zoos, annotated with landscape metrics and phases) once
under ``--cache`` (default: the wslbench cache, as the quickstart uses), then every baseline
runs through :func:`wslbench.evaluate.evaluate` exactly as ``wslbench evaluate`` runs a user's
model: the same ``iid`` split, fresh predictors per seed, the same result JSON. A task whose
targets the zoo does not have (e.g. loss-landscape metrics of the language zoo, which are
measured for image zoos only) is reported as skipped. The table prints each task's scores
(R² and Kendall tau for regression, accuracy and macro-F1 for the phase) and the wall time of
all seeds; the paper's Table 1 ranges for its linear probe on ResNet-18 zoos are printed
beside them for reference. ``--write-leaderboard`` submits every result to ``leaderboards/``
as ``wslbench submit --baseline`` does (one entry per baseline, zoo and split; the zoo's
reference of true targets is added where missing) and renders the tables; ``--from-results``
prints the README's summary of the stored baseline entries (each zoo's newest revision, one
column per baseline) without running anything.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

# This script shares its name with the `baselines` package: keep its own folder off the import
# path, or `import baselines` would find this file.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from wslbench import leaderboard  # noqa: E402
from wslbench.evaluate import EvaluationResult, TaskDoesNotApplyError, evaluate
from wslbench.intervals import format_score
from wslbench.predictor import PREDICTORS, NotApplicableError, load_predictor_class
from wslbench.paths import cache_dir
from wslbench.splits import SPLITS, resolve_split
from wslbench.tasks import TASKS
from wslbench.zoo import Zoo

BASELINES = ("linear-probe", "stat-gbm", "stat-mlp", "flat-mlp", "gmn")
#: The methods of recent papers (issue 16): not run by default (probegen runs every model, for
#: minutes per task); name them with ``--baselines``. Tables order them after BASELINES.
RECENT_METHODS = ("probegen", "nfn", "spectral-mlp", "spectral-free")
#: The released zoo (as it is, nothing built); ``spec:preset`` names a zoo to build and annotate.
ZOOS = ("digits-resnet18-bench",)
LEADERBOARD_DIR = Path(__file__).resolve().parents[1] / "leaderboards"

#: What the leaderboard says about each baseline: a description, the paper it follows and
#: its code in this repository.
BASELINE_METHODS = {
    "linear-probe": dict(description="ridge / logistic regression on weight statistics, the "
                                     "paper's Table 1 protocol", paper=None,
                         code="baselines/linear_probe.py"),
    "stat-gbm": dict(description="LightGBM on weight statistics (Unterthiner et al. 2020)",
                     paper="https://arxiv.org/abs/2002.11448", code="baselines/stat_gbm.py"),
    "stat-mlp": dict(description="MLP on weight statistics, StatNN (Unterthiner et al. 2020)",
                     paper="https://arxiv.org/abs/2002.11448", code="baselines/stat_mlp.py"),
    "flat-mlp": dict(description="MLP on the flattened weights", paper=None,
                     code="baselines/flat_mlp.py"),
    "gmn": dict(description="graph metanetwork on parameter graphs (Lim et al. 2023)",
                paper="https://arxiv.org/abs/2312.04501", code="baselines/gmn.py"),
    "probegen": dict(description="learned probes from a deep linear generator, run through "
                                 "each model, outputs read by an MLP (ProbeGen, Kahana et al. "
                                 "2024)", paper="https://arxiv.org/abs/2410.10811",
                     code="baselines/probegen.py"),
    "nfn": dict(description="permutation-equivariant neural functional over the "
                            "architecture's permutation groups (NFN, Zhou et al. 2023); "
                            "zoos of one shape", paper="https://arxiv.org/abs/2302.14040",
                code="baselines/nfn.py"),
    "spectral-mlp": dict(description="MLP on per-layer heavy-tail spectral metrics: alpha, "
                                     "alpha-hat, stable rank, spectral and Frobenius norm "
                                     "(Martin & Mahoney)",
                         paper="https://arxiv.org/abs/2002.06716",
                         code="baselines/spectral.py"),
    "spectral-free": dict(description="data-free: minus the layer mean of alpha-hat, no "
                                      "training; only rank scores are meaningful (Martin, "
                                      "Peng & Mahoney 2021)",
                          paper="https://arxiv.org/abs/2002.06716",
                          code="baselines/spectral.py"),
}

#: The paper's Table 1 (linear probe on ResNet-18 zoos, R²), via REFERENCE.md section 6.
PAPER_TABLE_1 = {"test_acc": "0.54-0.92", "ggap": "0.53-0.67", "cka": "0.13-0.46",
                 "hessian": "0.48-0.79", "mode_connectivity": "-2.93-0.81"}


def prepare_zoo(reference: str, cache: Path, workers: int) -> Zoo:
    """Build (resuming) the ``spec:preset`` zoo under ``cache`` and annotate image zoos; a
    reference without a colon is a zoo as it is (a release name such as
    ``digits-resnet18-bench``, or a folder)."""
    if ":" not in reference:
        return Zoo.resolve(reference)
    from zoo_builder.annotating.annotate import annotate_zoo
    from zoo_builder.building.build import build_zoo
    from zoo_builder.building.catalog import SPECS

    name, _, preset = reference.partition(":")
    spec = SPECS.get(name).with_preset(preset or "default")
    root = cache / "zoos" / f"{spec.name}-{spec.preset}"
    build_zoo(spec, root, workers=workers)
    if spec.training.get("workload", "image_classification") == "image_classification":
        annotate_zoo(root, workers=workers)
    return Zoo.open(root)


def run_one(baseline: str, task_name: str, zoo: Zoo, split_name: str, seeds: list[int],
            test_zoo: Zoo | None = None) -> EvaluationResult | str:
    """The result, or why the task could not run on this zoo and split."""
    task = TASKS.get(task_name)
    try:
        split, _ = resolve_split(zoo, split_name, test_zoo)
        return evaluate(load_predictor_class(baseline), task, zoo, split, seeds=seeds,
                        predictor_name=baseline, test_zoo=test_zoo)
    except NotApplicableError as err:
        return f"not applicable: {str(err).split(';')[0]}"
    except TaskDoesNotApplyError:
        return f"does not apply: no model of the zoo records '{task.target_key}'"
    except ValueError as err:
        if "has no model with a" in str(err):
            return f"skipped: the zoo has no '{task_name}' targets"
        if "per-checkpoint targets" in str(err):
            return f"skipped: '{task_name}' has no per-checkpoint targets for '{split_name}'"
        raise


def cell(scores: dict, name: str) -> str:
    """A result's score as ``wslbench evaluate`` prints it: value [95% interval]."""
    return format_score(scores[name]) if name in scores else ""


def paper_range(row_label: str, task: str) -> str:
    """The paper's Table 1 range for the task, on rows of the iid split (labels without a
    split in parentheses) of ResNet-18 zoos only: the paper reports no other split, and its
    Table 1 is on its ResNet-18 zoos (zoo names carry their architecture, as in
    ``digits-resnet18-bench``; the language and PINN zoos get no range)."""
    if "(" in row_label or "resnet18" not in row_label:
        return ""
    return PAPER_TABLE_1.get(task, "")


def print_table(rows: list[tuple[str, str, str, EvaluationResult | dict | str, float]]) -> str:
    """The rows' markdown table; a row's result is a result, its scores, or why it is missing."""
    header = ("| zoo | task | baseline | R² | Kendall tau | accuracy | macro-F1 | wall time (s) "
              "| paper Table 1 R² (linear probe) |")
    lines = [header, "|" + "---|" * 9]
    for zoo, task, baseline, result, seconds in rows:
        if isinstance(result, str):
            lines.append(f"| {zoo} | {task} | {baseline} | {result} | | | | | |")
            continue
        scores = result if isinstance(result, dict) else result.scores
        lines.append(f"| {zoo} | {task} | {baseline} | {cell(scores, 'r2')} | "
                     f"{cell(scores, 'kendall_tau')} | {cell(scores, 'accuracy')} | "
                     f"{cell(scores, 'macro_f1')} | {seconds:.0f} | "
                     f"{paper_range(zoo, task)} |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def stored_rows() -> list[tuple[str, str, str, dict, float]]:
    """The table rows of every baseline entry under :data:`LEADERBOARD_DIR`, of each zoo's
    newest revision (the one with the newest entry), labelled like :func:`main`'s rows."""
    entries = [e for e in leaderboard.load_entries(LEADERBOARD_DIR) if e.method.baseline]
    newest: dict[str, tuple[str, str]] = {}
    for entry in entries:
        newest[entry.zoo.name] = max(newest.get(entry.zoo.name, ("", "")),
                                     (entry.provenance.date, entry.zoo.revision))
    order = {name: index for index, name in enumerate(BASELINES + RECENT_METHODS)}
    split_order = {name: index for index, name in enumerate(SPLITS.registration_order())}
    keyed = []
    for entry in entries:
        if entry.zoo.revision != newest[entry.zoo.name][1]:
            continue
        split = entry.split.name
        label = entry.zoo.name + ("" if split == "iid" else f" ({split})")
        for task_name, task in entry.tasks.items():
            scores = {name: {"value": s.value, "std": s.std, "ci95": s.ci95}
                      for name, s in task.scores.items()}
            key = (entry.zoo.name, split_order.get(split, len(split_order)), task_name,
                   order.get(entry.method.name, len(order)))
            keyed.append((key, (label, task_name, entry.method.name, scores, task.wall_time_s)))
    return [row for _, row in sorted(keyed)]


def summary_table(rows: list[tuple[str, str, str, dict, float]]) -> str:
    """One line per zoo (and split) and task, one column per baseline: the README's table.

    A cell is R² [95% interval over test grid points] / Kendall tau (accuracy [interval] /
    macro-F1 for a classification task), or R² ± std over seeds for an entry of the old
    schema 1 (no interval); a baseline without an entry for the task shows a dash.
    """
    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    known = BASELINES + RECENT_METHODS
    names = [b for b in known if any(row[2] == b for row in rows)]
    names += sorted({row[2] for row in rows} - set(known))
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for zoo, task, baseline, scores, _ in rows:
        main, second = (("accuracy", "macro_f1") if "accuracy" in scores else ("r2", "kendall_tau"))
        first, ci95 = scores[main], scores[main]["ci95"]
        spread = (f" [{ci95[0]:.2f}, {ci95[1]:.2f}]" if ci95 is not None
                  else "" if first["value"] is None or first["std"] is None
                  else f" ± {first['std']:.2f}")
        cells.setdefault((zoo, task), {})[baseline] = (
            f"{number(first['value'])}{spread} / {number(scores[second]['value'])}")
    lines = ["| zoo | task | " + " | ".join(names) + " | paper Table 1, linear probe R² |",
             "|---|---|" + "---|" * (len(names) + 1)]
    for (zoo, task), by_baseline in cells.items():
        lines.append(f"| {zoo} | {task} | " + " | ".join(by_baseline.get(b, "–") for b in names)
                     + f" | {paper_range(zoo, task)} |")
    seconds: dict[str, list[float]] = {}
    for _, _, baseline, _, wall in rows:
        seconds.setdefault(baseline, []).append(wall)
    lines += ["", "Wall time per task, all seeds, on the shared 2-core machine (s): " + ", ".join(
        f"{b} {min(seconds[b]):.0f}-{max(seconds[b]):.0f}" for b in names)]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def submit_baseline(result: EvaluationResult, board: Path = LEADERBOARD_DIR) -> list[Path]:
    """Add a baseline's result to the leaderboard (``wslbench submit --baseline``)."""
    name = result.predictor["name"]
    return leaderboard.submit([result.to_json()], board, baseline=True,
                              **BASELINE_METHODS.get(name, {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--zoos", nargs="+", default=list(ZOOS),
                        help="a release name or folder (used as it is), or spec:preset (built "
                             "and annotated under --cache)")
    parser.add_argument("--baselines", nargs="+", default=list(BASELINES), choices=PREDICTORS.names())
    parser.add_argument("--tasks", nargs="+", default=TASKS.names(), choices=TASKS.names())
    parser.add_argument("--splits", nargs="+", default=["iid"], choices=SPLITS.names())
    parser.add_argument("--test-zoo", help="spec:preset of the zoo that the cross-zoo split "
                                           "tests on (with --splits cross-zoo)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="for building and annotating")
    parser.add_argument("--cache", type=Path, default=None, help="default: the wslbench cache")
    parser.add_argument("--write-leaderboard", action="store_true",
                        help=f"submit each result to {LEADERBOARD_DIR} and render its tables")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--from-results", action="store_true",
                        help=f"only print the table of the baseline entries in "
                             f"{LEADERBOARD_DIR}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.from_results:
        summary_table(stored_rows())
        return

    if ("cross-zoo" in args.splits) != (args.test_zoo is not None):
        parser.error("--test-zoo goes with --splits cross-zoo, and cross-zoo needs it")
    cache = args.cache or cache_dir()
    test_zoo = prepare_zoo(args.test_zoo, cache, args.workers) if args.test_zoo else None
    rows = []
    for reference in args.zoos:
        zoo = prepare_zoo(reference, cache, args.workers)
        for split_name in args.splits:
            label = reference.replace(":default", "")
            if split_name != "iid":
                label += f" ({split_name})"
            for task in args.tasks:
                for baseline in args.baselines:
                    started = time.perf_counter()
                    result = run_one(baseline, task, zoo, split_name, args.seeds,
                                     test_zoo if split_name == "cross-zoo" else None)
                    seconds = time.perf_counter() - started
                    rows.append((label, task, baseline, result, seconds))
                    summary = result if isinstance(result, str) else {
                        k: format_score(v) for k, v in result.scores.items()}
                    print(f"{label} {task} {baseline}: {summary} ({seconds:.0f}s)", flush=True)
                    if args.write_leaderboard and not isinstance(result, str):
                        submit_baseline(result)
    if args.write_leaderboard:
        leaderboard.write_rendered(LEADERBOARD_DIR)
    text = print_table(rows)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
