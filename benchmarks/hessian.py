"""Hessian-vector products needed for the top eigenvalue and the trace: ours against PyHessian's.

Run from the repository root (with the project's venv active)::

    python benchmarks/hessian.py                          # ResNet-18 width 1, 128 samples (~3 min)
    python benchmarks/hessian.py --samples 512 --repeats 100      # the pipeline's subset size
    python benchmarks/hessian.py --trial ZOO/TRIAL_DIR --epoch 150  # a zoo model instead
    python benchmarks/hessian.py --seed-batch --widths 4 8 --epochs 10  # seed-batched annotation

The model (by default ResNet-18 of width 1 trained here for a few epochs on the digits; or a
zoo trial's checkpoint) and a fixed subset of its training data define one loss Hessian. It
is formed exactly, one product per parameter (2,973 for width 1), so every estimate can be
scored against the exact top eigenvalue and trace. The repetitions then run on the formed
matrix (same operator, same matvec interface, same product counts as on the network; only
faster), and a last section runs both protocols once on the network itself.

Reported, product counts ("HVPs", one per vector over the whole subset):

* top eigenvalue, over ``--eig-repeats`` start vectors: the products after which the
  estimate stays within 1 % of the exact value (median and worst run), for power iteration
  (PyHessian) and Lanczos; and what each spends under its own stopping rule (PyHessian:
  change below 1e-3; ours: Ritz residual bound below 1e-3) with the error it ends with.
* trace, over ``--repeats`` seeds: the smallest fixed budget (on a grid) at which at least
  90 % of the runs are within 5 % of the exact trace, for Hutchinson (PyHessian's estimator
  with no stopping rule, sampled in blocks), Hutch++ (budget split in thirds) and the
  Krylov-deflated estimator (half the budget Lanczos steps, half samples); and each method's
  default stopping rule: median (90th percentile) products and the share within 5 %.

The ratio column divides the reference's count by ours; the target is 3x. The run uses one
thread by default (``--threads``): the products are many small ops, and on a shared machine
a second thread mostly waits.

``--seed-batch`` measures something else: the Hessian work of annotating one digits grid point
(``--seeds`` ResNet-18s of each of ``--widths``, trained here), as the annotation does it
(``AnnotationSettings``' budgets: 200 samples, top eigenvalue and trace on training data, top
eigenvalue on test data; oneDNN off), one model at a time and seed-batched
(:class:`StackedHessianOperator`), side by side: wall and CPU seconds, their ratio, and the
largest relative difference between the two paths' values.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from zoo_builder.data import load_dataset
from zoo_builder.annotating.landscape.hessian import (
    HessianOperator,
    MatrixOperator,
    StackedHessianOperator,
    TraceEstimate,
    fixed_subset,
    hessian_metrics,
    hutchinson_trace,
    hutchpp_trace,
    krylov_deflated_trace,
    lanczos_top_eigenvalue,
    operator_hessian_metrics,
    power_iteration_top_eigenvalue,
    stacked_hessian_metrics,
    stacked_lanczos_top_eigenvalue,
)
from zoo_builder.models import build_model, load_weights, resnet18

EIG_TOL, TRACE_TOL, SUCCESS = 0.01, 0.05, 0.9
TARGET_RATIO = 3.0


# ------------------------------------------------------------------------ model and data


def train_model(width: int, epochs: int, seed: int, data) -> nn.Module:
    """ResNet-18 trained plainly (SGD, OneCycle, no augmentation) to a sharp, fitted minimum."""
    torch.manual_seed(seed)
    model = resnet18(width=width, num_classes=data.num_classes, in_channels=data.in_channels)
    images, labels = data.normalize(data.train_x), data.train_y
    batch_size = 64
    steps = epochs * (len(images) // batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in tqdm(range(epochs), desc="training", leave=False):
        order = torch.randperm(len(images), generator=generator)
        for step in range(len(images) // batch_size):
            index = order[step * batch_size:(step + 1) * batch_size]
            loss = F.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def load_trial(trial_dir: Path, epoch: int | None) -> tuple[nn.Module, str]:
    """A zoo trial's model at ``epoch`` (default: its last checkpoint) and its dataset name."""
    from wslbench import zoo_format as fmt

    params = fmt.read_params(trial_dir)
    epochs = fmt.checkpoint_epochs(trial_dir)
    if not epochs:
        raise SystemExit(f"trial '{trial_dir}' has no checkpoints; pass a trained trial folder")
    model = load_weights(build_model(fmt.params_section(params, "model")),
                         fmt.load_state_dict(trial_dir, epochs[-1] if epoch is None else epoch))
    return model.eval(), params.get("dataset::name", "digits")


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(images).argmax(dim=1) == labels).float().mean())


def exact_hessian(op: HessianOperator, block: int = 64) -> torch.Tensor:
    """H column by column: products against the identity, ``block`` columns per pass."""
    columns = []
    for start in tqdm(range(0, op.dim, block), desc=f"exact Hessian ({op.dim} products)",
                      leave=False):
        identity = torch.zeros(op.dim, min(block, op.dim - start), dtype=torch.float64)
        identity[start + torch.arange(identity.shape[1]), torch.arange(identity.shape[1])] = 1
        columns.append(op.matmat(identity))
    hessian = torch.cat(columns, dim=1)
    return (hessian + hessian.T) / 2


# ------------------------------------------------------------------------------- measures


def first_within(history: tuple[float, ...], exact: float, tol: float) -> int | None:
    """Products after which the estimates stay within ``tol`` of ``exact`` (None: never)."""
    count = None
    for index, value in enumerate(history):
        if abs(value - exact) <= tol * abs(exact):
            count = index + 1 if count is None else count
        else:
            count = None
    return count


def summary(values: list[float | None], fmt: str = "{:.0f}") -> str:
    """Median [worst] of a list, where None (never reached) counts as infinite."""
    finite = [v for v in values if v is not None]
    if len(finite) < len(values) / 2:
        return "never"
    ordered = sorted(v if v is not None else math.inf for v in values)
    median = ordered[(len(ordered) - 1) // 2]
    worst = "never" if ordered[-1] == math.inf else fmt.format(ordered[-1])
    return f"{fmt.format(median)} [{worst}]"


def hutchinson_budget_success(matrix: torch.Tensor, exact: float, repeats: int,
                              max_hvps: int) -> list[float]:
    """Share of runs within 5 % at each budget 1..max_hvps, for plain Hutchinson.

    The estimator of :func:`hutchinson_trace` without its stopping rule: the running mean of
    v^T H v over Rademacher vectors, computed a block of samples at a time.
    """
    hits = torch.zeros(max_hvps)
    matrix = matrix.float()
    for seed in range(repeats):
        generator = torch.Generator().manual_seed(10_000 + seed)
        signs = torch.randint(0, 2, (matrix.shape[0], max_hvps), generator=generator)
        v = signs.float() * 2 - 1
        samples = (v * (matrix @ v)).sum(dim=0).double()
        means = samples.cumsum(0) / torch.arange(1, max_hvps + 1)
        hits += ((means - exact).abs() <= TRACE_TOL * abs(exact)).double()
    return (hits / repeats).tolist()


def budget_for_success(run: Callable[[int, int], float], exact: float, repeats: int,
                       budgets: list[int]) -> tuple[int | None, float]:
    """The first budget on the grid with >= 90 % of runs within 5 %, and that share."""
    share = 0.0
    for budget in budgets:
        share = sum(abs(run(budget, seed) - exact) <= TRACE_TOL * abs(exact)
                    for seed in range(repeats)) / repeats
        if share >= SUCCESS:
            return budget, share
    return None, share


def stopping_rule_summary(estimates: list[TraceEstimate], exact: float) -> tuple[str, str]:
    counts = sorted(e.n_hvps for e in estimates)
    p90 = counts[min(len(counts) - 1, math.ceil(0.9 * len(counts)) - 1)]
    within = sum(abs(e.value - exact) <= TRACE_TOL * abs(exact) for e in estimates)
    return f"{statistics.median(counts):.0f} ({p90})", f"{100 * within / len(estimates):.0f} %"


def ratio(reference: float | None, ours: float | None, reference_cap: float | None = None) -> str:
    """reference / ours; a reference that never got there counts as more than its cap."""
    if ours is None:
        return "n/a"
    if reference is None:
        return f"> {reference_cap / ours:.1f}x" if reference_cap else "n/a"
    return f"{reference / ours:.1f}x"


# ----------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--width", type=int, default=1, help="ResNet-18 width to train")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs")
    parser.add_argument("--trial", type=Path, help="a zoo trial folder to use instead")
    parser.add_argument("--epoch", type=int, help="the trial's checkpoint epoch (default last)")
    parser.add_argument("--samples", type=int, default=128,
                        help="training samples in the fixed subset (the pipeline uses 200)")
    parser.add_argument("--repeats", type=int, default=50, help="seeds per trace estimate")
    parser.add_argument("--eig-repeats", type=int, default=20, help="start vectors per method")
    parser.add_argument("--max-hvps", type=int, default=500, help="largest Hutchinson budget")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seed-batch", action="store_true",
                        help="time one grid point's annotation Hessians, one model at a time "
                             "against seed-batched")
    parser.add_argument("--widths", type=int, nargs="+", default=[4, 8],
                        help="--seed-batch: ResNet-18 widths, one grid point each")
    parser.add_argument("--seeds", type=int, default=3, help="--seed-batch: seeds per grid point")
    return parser.parse_args()


def grid_point_hessians(models: list[nn.Module], data, batched: bool) -> list[dict[str, float]]:
    """The annotation's Hessian values of each model (``AnnotationSettings``' defaults)."""
    from zoo_builder.annotating.annotate import AnnotationSettings

    settings = AnnotationSettings()
    parts = {part: fixed_subset(x, y, settings.hessian_samples, settings.seed)
             for part, (x, y) in (("train", (data.train_x, data.train_y)),
                                  ("val", (data.test_x, data.test_y)))}
    parts = {part: (data.normalize(x), y) for part, (x, y) in parts.items()}
    budgets = dict(seed=settings.seed, eig_max_iter=settings.hessian_eig_max_iter,
                   trace_hvps=settings.hessian_trace_hvps)
    if batched:
        train = stacked_hessian_metrics(StackedHessianOperator(models, *parts["train"]),
                                        **budgets)
        val = stacked_lanczos_top_eigenvalue(StackedHessianOperator(models, *parts["val"]),
                                             max_iter=settings.hessian_eig_max_iter,
                                             seed=settings.seed)
    else:
        train = [operator_hessian_metrics(HessianOperator(m, *parts["train"]), **budgets)
                 for m in models]
        val = [lanczos_top_eigenvalue(HessianOperator(m, *parts["val"]),
                                      max_iter=settings.hessian_eig_max_iter, seed=settings.seed)
               for m in models]
    return [{**metrics, "hessian_top_ev_val": top.value, "hessian_top_ev_val_hvps": top.n_hvps}
            for metrics, top in zip(train, val)]


def seed_batch_benchmark(args: argparse.Namespace) -> None:
    """One grid point per width: its seeds' annotation Hessians both ways, side by side."""
    torch.backends.mkldnn.enabled = False  # as annotation runs on a CPU (see annotate.py)
    data = load_dataset("digits")
    print(f"SEED-BATCHED ANNOTATION HESSIANS: digits, ResNet-18, {args.seeds} seeds trained "
          f"{args.epochs} epochs, {args.threads} thread(s); top eigenvalue + trace (train), "
          "top eigenvalue (test)")
    print(f"{'width':>5} {'params':>7} {'HVPs':>5} {'one at a time':>18} {'seed-batched':>18} "
          f"{'ratio':>13} {'max rel. diff':>14}")
    print(f"{'':>5} {'':>7} {'':>5} {'wall s (CPU s)':>18} {'wall s (CPU s)':>18} "
          f"{'wall (CPU)':>13} {'of the values':>14}")
    for width in args.widths:
        models = [train_model(width, args.epochs, args.seed + s, data)
                  for s in range(args.seeds)]
        timings, values = {}, {}
        for batched in (False, True):
            wall, cpu = time.perf_counter(), time.process_time()
            values[batched] = grid_point_hessians(models, data, batched)
            timings[batched] = (time.perf_counter() - wall, time.process_time() - cpu)
        diff = max(abs(b[key] - a[key]) / max(abs(a[key]), 1e-12)
                   for a, b in zip(values[False], values[True])
                   for key in ("hessian_top_ev", "hessian_trace", "hessian_top_ev_val"))
        hvps = sum(v["hessian_trace_hvps"] + v["hessian_top_ev_val_hvps"] for v in values[False])
        (wall1, cpu1), (wall2, cpu2) = timings[False], timings[True]
        print(f"{width:>5} {sum(p.numel() for p in models[0].parameters()):>7} {hvps:>5} "
              f"{f'{wall1:.1f} ({cpu1:.1f})':>18} {f'{wall2:.1f} ({cpu2:.1f})':>18} "
              f"{f'{wall1 / wall2:.2f}x ({cpu1 / cpu2:.2f}x)':>13} {diff:>14.1e}", flush=True)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.seed_batch:
        seed_batch_benchmark(args)
        return
    started = time.perf_counter()
    if args.trial is not None:
        model, dataset = load_trial(args.trial, args.epoch)
        data = load_dataset(dataset)
        source = f"trial {args.trial.name}"
    else:
        data = load_dataset("digits")
        model = train_model(args.width, args.epochs, args.seed, data)
        source = f"ResNet-18 width {args.width}, trained {args.epochs} epochs on digits"
    images, labels = fixed_subset(data.normalize(data.train_x), data.train_y, args.samples,
                                  seed=args.seed)
    with torch.no_grad():
        outputs = model(images[:1]).shape[-1]
    if outputs != data.num_classes:
        raise SystemExit(f"the model has {outputs} outputs but dataset {data.name!r} has "
                         f"{data.num_classes} classes; pass a trial trained on it")
    op = HessianOperator(model, images, labels, chunk_size=args.samples)
    train_acc = accuracy(model, data.normalize(data.train_x), data.train_y)
    test_acc = accuracy(model, data.normalize(data.test_x), data.test_y)
    print(f"Hessian benchmark: {source} | {op.dim} parameters | subset of {len(images)} "
          f"training samples | train acc {train_acc:.3f} test acc {test_acc:.3f}")
    if op.dim > 20_000:
        print(f"warning: forming a {op.dim}-parameter Hessian takes {op.dim} products", flush=True)
    formed = time.perf_counter()
    hessian = exact_hessian(op)
    formed = time.perf_counter() - formed
    eigenvalues = torch.linalg.eigvalsh(hessian)
    top, trace = float(eigenvalues[-1]), float(hessian.trace())
    print(f"exact: top eigenvalue {top:.5g} (next {float(eigenvalues[-2]):.5g}, smallest "
          f"{float(eigenvalues[0]):.3g}) | trace {trace:.5g} | formed in {formed:.0f} s "
          f"({1000 * formed / op.dim:.0f} ms per product in blocks)\n")

    hessian32 = hessian.float()

    def dense() -> MatrixOperator:
        return MatrixOperator(hessian32)

    # ---- top eigenvalue
    seeds = range(args.eig_repeats)
    power_long = [power_iteration_top_eigenvalue(dense(), max_iter=100, rtol=0.0, seed=s)
                  for s in seeds]
    lanczos_long = [lanczos_top_eigenvalue(dense(), max_iter=60, rtol=1e-12, seed=s)
                    for s in seeds]
    power_rule = [power_iteration_top_eigenvalue(dense(), seed=s) for s in seeds]
    lanczos_rule = [lanczos_top_eigenvalue(dense(), seed=s) for s in seeds]
    power_1pc = [first_within(e.history, top, EIG_TOL) for e in power_long]
    lanczos_1pc = [first_within(e.history, top, EIG_TOL) for e in lanczos_long]
    print(f"TOP EIGENVALUE, {args.eig_repeats} start vectors, median [worst]")
    print(f"{'method':<36} {'HVPs to 1 %':>12} {'stopping rule: HVPs':>21} {'rel. error':>21}")
    for name, reached, rule in (("power iteration (PyHessian)", power_1pc, power_rule),
                                ("Lanczos (ours)", lanczos_1pc, lanczos_rule)):
        errors = [abs(e.value - top) / abs(top) for e in rule]
        print(f"{name:<36} {summary(reached):>12} {summary([e.n_hvps for e in rule]):>21} "
              f"{summary(errors, '{:.1e}'):>21}")
    median = statistics.median
    eig_ratio = ratio(median(v if v is not None else math.inf for v in power_1pc),
                      median(v if v is not None else math.inf for v in lanczos_1pc))
    rule_ratio = ratio(median(e.n_hvps for e in power_rule),
                       median(e.n_hvps for e in lanczos_rule))
    print(f"{'ratio (power / Lanczos)':<36} {eig_ratio:>12} {rule_ratio:>21}\n")

    # ---- trace
    hutch_share = hutchinson_budget_success(hessian32, trace, args.repeats, args.max_hvps)
    hutch_budget = next((m + 1 for m, share in enumerate(hutch_share) if share >= SUCCESS), None)
    grid = [6, 9, 12, 15, 18, 21, 24, 30, 36, 42, 48, 60, 72, 90, 120, 150, 180, 240, 300]
    hpp_budget, hpp_share = budget_for_success(
        lambda m, s: hutchpp_trace(dense(), n_hvps=m, target_rse=None, seed=s).value,
        trace, args.repeats, grid)
    krylov_budget, krylov_share = budget_for_success(
        lambda m, s: krylov_deflated_trace(dense(), n_hvps=m, krylov_size=m // 2,
                                           target_rse=None, seed=s).value,
        trace, args.repeats, grid)
    reps = range(args.repeats)
    # name, fixed budget for 90 % within 5 % (None: beyond the grid), the share at the
    # largest budget tried, and its runs under its default stopping rule
    rows = (
        ("Hutchinson (PyHessian, |trace| fix)", hutch_budget, hutch_share[-1],
         [hutchinson_trace(dense(), seed=s) for s in reps]),
        ("Hutch++ (ours)", hpp_budget, hpp_share,
         [hutchpp_trace(dense(), seed=s) for s in reps]),
        ("Krylov-deflated (ours)", krylov_budget, krylov_share,
         [krylov_deflated_trace(dense(), seed=s) for s in reps]),
    )
    print(f"TRACE, {args.repeats} seeds")
    print(f"{'':<36} {'fixed budget':>22} {'default stopping rule':^38}")
    print(f"{'method':<36} {'HVPs: 90 % within 5 %':>22} {'HVPs median (p90)':>26} "
          f"{'within 5 %':>11}")
    for name, budget, share, estimates in rows:
        cell = str(budget) if budget is not None else f"> grid ({100 * share:.0f} %)"
        hvps, within = stopping_rule_summary(estimates, trace)
        print(f"{name:<36} {cell:>22} {hvps:>26} {within:>11}")
    for name, ours_budget in (("Hutch++", hpp_budget), ("Krylov-deflated", krylov_budget)):
        cell = ratio(hutch_budget, ours_budget, args.max_hvps)
        print(f"{f'ratio Hutchinson / {name}':<36} {cell:>22}")
    print()

    # ---- once on the network itself
    print("ON THE NETWORK (one run each; wall time on this machine)")
    clock = time.perf_counter()
    reference_op = HessianOperator(model, images, labels, chunk_size=256)
    power = power_iteration_top_eigenvalue(reference_op, seed=args.seed)
    hutch = hutchinson_trace(reference_op, seed=args.seed + 1)
    reference_time = time.perf_counter() - clock
    clock = time.perf_counter()
    ours = hessian_metrics(model, images, labels, seed=args.seed)
    ours_time = time.perf_counter() - clock
    print(f"{'protocol':<36} {'top ev (err)':>18} {'trace (err)':>18} {'HVPs':>6} {'time':>7}")
    print(f"{'PyHessian: power + Hutchinson':<36} "
          f"{f'{power.value:.4g} ({100 * (power.value - top) / top:+.2f} %)':>18} "
          f"{f'{hutch.value:.4g} ({100 * (hutch.value - trace) / trace:+.1f} %)':>18} "
          f"{power.n_hvps + hutch.n_hvps:>6} {reference_time:>6.1f}s")
    ev, tr = ours["hessian_top_ev"], ours["hessian_trace"]
    print(f"{'ours: hessian_metrics':<36} "
          f"{f'{ev:.4g} ({100 * (ev - top) / top:+.2f} %)':>18} "
          f"{f'{tr:.4g} ({100 * (tr - trace) / trace:+.1f} %)':>18} "
          f"{ours['hessian_trace_hvps']:>6} {ours_time:>6.1f}s")
    verdicts = []
    for label, cell in (("top eigenvalue", eig_ratio),
                        ("trace (Hutch++)", ratio(hutch_budget, hpp_budget, args.max_hvps))):
        value = float(cell.strip("> x")) if cell != "n/a" else math.nan
        verdicts.append(f"{label} {cell} ({'met' if value >= TARGET_RATIO else 'not met'})")
    print(f"\ntarget >= {TARGET_RATIO:.0f}x fewer products: {'; '.join(verdicts)} | total "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
