"""How many optimizer steps of Bezier curve training a zoo needs: mc and the curve loss against
the budget, for a few seed pairs of a built zoo.

Mode connectivity trains the middle of a Bezier curve between two seeds; stopped too early, the
curve still passes through high loss and mc reports a barrier that is not there. This script
trains the same pairs with growing budgets (in optimizer steps, as annotation counts them) and
prints, per pair and budget, mc on train error (%), the mean loss along the curve over the last
10% of steps and the convergence flag that annotation stores. The smallest budget from which
mc and the curve loss stop moving is the one to set as the spec's ``curve_steps``.

    python benchmarks/curve_budget.py ZOO [--widths 8 4 2] [--batch-sizes 32 128]
        [--steps 70 140 280 560 1120]

Works on a zoo that is still building: it reads the finished models only.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

from wslbench import zoo_format as fmt
from wslbench.zoo import ModelRecord
from zoo_builder.annotating.annotate import dataset_for, load_model
from zoo_builder.annotating.landscape.mode_connectivity import bezier_mode_connectivity


def finished_grid_points(root: Path, widths: list[int], batch_sizes: list[int]
                         ) -> dict[tuple[int, int], list[ModelRecord]]:
    """Finished models of the zoo at ``root`` by (width, batch size), seeds in order."""
    points: dict[tuple[int, int], list[ModelRecord]] = {}
    for trial in sorted(root.iterdir()):
        if not (trial / fmt.COMPLETE_MARKER).is_file():
            continue
        model = ModelRecord.read(trial)
        key = (int(model.params["model::width"]), int(model.params["training::batchsize"]))
        if key[0] in widths and key[1] in batch_sizes:
            points.setdefault(key, []).append(model)
    return {key: models for key, models in sorted(points.items()) if len(models) >= 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("zoo", type=Path)
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 4, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--steps", type=int, nargs="+", default=[70, 140, 280, 560, 1120])
    parser.add_argument("--pairs", type=int, default=1, help="seed pairs per grid point")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.mkldnn.enabled = False  # as annotation does on CPU (see annotate.py)

    print("| width | batch | pair | " + " | ".join(f"mc @ {s}" for s in args.steps)
          + " | " + " | ".join(f"loss @ {s}" for s in args.steps) + " | converged |")
    print("|---" * (4 + 2 * len(args.steps)) + "|")
    for (width, batch), models in finished_grid_points(args.zoo, args.widths,
                                                       args.batch_sizes).items():
        data = dataset_for(models[0])
        for a, b in itertools.islice(itertools.combinations(models, 2), args.pairs):
            first, second = load_model(a, a.checkpoint_epochs[-1], "cpu"), \
                load_model(b, b.checkpoint_epochs[-1], "cpu")
            mcs, losses, converged = [], [], []
            started = time.perf_counter()
            for steps in args.steps:
                result = bezier_mode_connectivity(first, second, data, steps=steps, seed=0)
                metrics = result.to_metrics()
                mcs.append(f"{metrics['curve_mc_train_error']:+.1f}")
                losses.append(f"{metrics['curve_loss_final']:.3f}")
                converged.append(str(int(metrics["curve_converged"])))
            pair = f"{a.params['seed']}-{b.params['seed']}"
            print(f"| {width} | {batch} | {pair} | " + " | ".join(mcs) + " | "
                  + " | ".join(losses) + f" | {''.join(converged)} |", flush=True)
            print(f"<!-- {time.perf_counter() - started:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
