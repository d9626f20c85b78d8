"""Train a CIFAR-shaped tiny zoo on a GPU under each run option and print what each buys.

Run by ``benchmarks/gpu_check.sh`` (which also runs the gpu-marked tests); alone::

    python benchmarks/gpu_check.py [--device cuda] [--epochs 3] [--images 10000]

The data are synthetic images written in CIFAR-10's own file format (tests/fake_datasets.py),
so the trainer reads them through the real loader. The zoo is the ``cifar10-resnet18`` recipe
on widths 16 and 64 at batch size 128 with 3 seeds (6 models), plus the ``cifar10-vit``
recipe at embedding dim 48 (3 models); every configuration trains the same models:

    fp32            precision fp32, contiguous, eager, one model at a time (the baseline)
    bf16            + bf16 autocast
    bf16+cl         + channels_last (ResNet only; ViTs ignore it)
    bf16+cl+compile + torch.compile
    bf16+seed-batch bf16 autocast, the seeds of a grid point trained together (vmap)

For each it prints training samples/s (epochs 2.. only: epoch 1 holds compilation and
warm-up), the wall time of the whole configuration, the peak GPU memory, and the speed-up of
samples/s over the baseline. Exits with a message (status 2) where torch sees no CUDA device.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from wslbench import zoo_format as fmt  # noqa: E402
from zoo_builder.building.batched import group_by_grid_point, train_seed_batch  # noqa: E402
from zoo_builder.building.catalog import SPECS  # noqa: E402
from zoo_builder.building.specs import Preset  # noqa: E402
from zoo_builder.building.train import RunOptions, train_trial  # noqa: E402
from zoo_builder.data import load_dataset  # noqa: E402

SEEDS = (0, 1, 2)
CONFIGS = {
    "fp32": dict(precision="fp32", channels_last="off"),
    "bf16": dict(precision="bf16", channels_last="off"),
    "bf16+cl": dict(precision="bf16", channels_last="on"),
    "bf16+cl+compile": dict(precision="bf16", channels_last="on", compile=True),
    "bf16+seed-batch": dict(precision="bf16", channels_last="off", seed_batch=True),
}


def zoo_params(epochs: int) -> list[dict]:
    """The models every configuration trains (flat params.json each)."""
    models = []
    for name, loads in (("cifar10-resnet18", (16, 64)), ("cifar10-vit", (48,))):
        spec = SPECS.get(name)
        preset = Preset("gpu check", load_values=loads, temperature_values=(128,),
                        seeds=SEEDS, epochs=epochs, checkpoint_epochs=())
        spec = dataclasses.replace(spec, presets={"gpu-check": preset})
        models += [plan.params for plan in spec.with_preset("gpu-check").trials()]
    return models


def run_config(name: str, models: list[dict], data, device: str, out: Path) -> dict:
    options = RunOptions(device=device, **CONFIGS[name])
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if options.seed_batch:
        for group in group_by_grid_point(models, lambda params: params):
            trials = [(params, out / f"{name}_{id(params)}") for params in group]
            if len(trials) > 1:
                train_seed_batch(trials, data=data, options=options)
            else:
                train_trial(trials[0][0], trials[0][1], data=data, options=options)
    else:
        for params in models:
            train_trial(params, out / f"{name}_{id(params)}", data=data, options=options)
    wall = time.perf_counter() - started
    samples = seconds = 0.0
    for trial in out.glob(f"{name}_*"):
        params = fmt.read_params(trial)
        batch = int(params["training::batchsize"])
        per_epoch = (len(data.train_x) // batch) * batch
        rows = [row for row in fmt.read_results(trial) if row["epoch"] >= 2]
        samples += per_epoch * len(rows)
        # Seed-batched models share their epochs' time: count it once per batch.
        share = len(SEEDS) if options.seed_batch else 1
        seconds += sum(row["time_this_iter_s"] for row in rows) / share
    return {"samples_per_s": samples / seconds, "wall_s": wall,
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--device", default="cuda",
                        help="cuda (default); cpu only to smoke-test this script")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per model (>= 2)")
    parser.add_argument("--images", type=int, default=10_000, help="synthetic training images")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args()
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} sees no CUDA device on this machine; "
              "nothing to measure (run it where `nvidia-smi` lists a GPU)", file=sys.stderr)
        return 2
    from fake_datasets import write_cifar10

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke test)"
    print(f"device {name} | torch {torch.__version__} | "
          f"{args.images} synthetic CIFAR-10 images | {args.epochs} epochs per model")
    models = zoo_params(args.epochs)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_cifar10(root / "data", per_batch=args.images // 5, n_test=args.images // 5)
        data = load_dataset("cifar10", root / "data").to(device)
        print(f"{'config':<16} {'samples/s':>10} {'speed-up':>9} {'wall s':>8} {'peak MiB':>9}")
        for name in args.configs:
            try:
                result = run_config(name, models, data, args.device, root / "trials")
            except Exception as err:  # report and go on: the other options still tell
                print(f"{name:<16} failed: {type(err).__name__}: {err}")
                continue
            results[name] = result
            base = results.get("fp32", result)["samples_per_s"]
            print(f"{name:<16} {result['samples_per_s']:>10.0f} "
                  f"{result['samples_per_s'] / base:>8.2f}x {result['wall_s']:>8.1f} "
                  f"{result['peak_mib']:>9.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
