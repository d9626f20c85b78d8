"""Training throughput of the zoo trainer against a plain PyTorch reference loop.

Run from the repository root (with the project's venv active)::

    python benchmarks/train_throughput.py                      # widths 4 16, batch sizes 32 128
    python benchmarks/train_throughput.py --widths 4 --batch-sizes 32 --epochs 2

Both sides train the same model (ResNet-18 of spec ``digits-resnet18``, same seed) on the same
digits train images with the same recipe (SGD lr 0.1, momentum 0.9, weight decay 5e-4,
OneCycleLR cosine, cross-entropy, crop + rotation augmentation as the spec sets it):

* zoo trainer: :func:`zoo_builder.train.train_trial` itself, run to completion. Its
  result.json records, for every epoch, ``time_this_iter_s`` (the training steps) and
  ``time_eval_s`` (measuring train and test loss/accuracy, which a zoo needs every epoch);
  checkpoint writing is in neither.
* reference: the loop most people write: a ``torch.utils.data.Dataset`` that augments one
  sample at a time in ``__getitem__`` (zero-padded random crop, optional flip, rotation with
  ``affine_grid``/``grid_sample``, normalization), a ``DataLoader`` with ``shuffle=True`` and
  ``num_workers=0``, and the same model, optimizer, scheduler and loss; after each epoch it
  evaluates the train and test sets through DataLoaders of the same batch size.

Two throughputs per side, in training samples per second: ``train`` counts the training
steps only; ``epoch`` counts a whole zoo epoch (training plus the per-epoch evaluation).
Epoch 1 of every run is warm-up and not timed. The machine may be shared (other jobs oversubscribe the cores and stall torch's
threads for whole seconds), so each configuration runs ``--repeats`` times, zoo trainer and
reference alternating, and each side keeps its fastest timed epoch (the least disturbed one,
as ``timeit`` does). ``--stat mean`` uses the mean over all timed epochs instead. Each row
prints both throughputs and their ratio (zoo trainer / reference); the last line gives the
geometric-mean ratio and whether it meets the 1.5x target. The header shows the load average
at the start: well above the thread count means other jobs share the CPU.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from wslbench.zoo_format import params_section, read_results
from zoo_builder.data import ImageData
from zoo_builder.data.digits import load_digits
from zoo_builder.models import build_model
from zoo_builder.specs import SPECS
from zoo_builder.train import train_trial

SPEC = "digits-resnet18"
PRESET = "mini"
TARGET_RATIO = 1.5


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def trial_params(width: int, batch_size: int, epochs: int) -> dict[str, Any]:
    """Flat params.json of the spec's first trial, set to ``width``, ``batch_size``, ``epochs``."""
    params = dict(SPECS.get(SPEC).with_preset(PRESET).trials()[0].params)
    params.update({"model::width": width, "training::batchsize": batch_size,
                   "training::epochs_train": epochs, "training::checkpoint_epochs": []})
    return params


def samples_per_epoch(n: int, batch_size: int) -> int:
    """Samples one epoch trains on: full batches only, on both sides."""
    return (n // batch_size) * batch_size


def zoo_trainer_epoch_seconds(params: dict[str, Any], data: ImageData
                              ) -> list[tuple[float, float]]:
    """(training, evaluation) seconds of epochs 2..N of :func:`train_trial`, from result.json."""
    with tempfile.TemporaryDirectory() as trial_dir:
        train_trial(params, trial_dir, data=data)
        rows = read_results(trial_dir)
    return [(row["time_this_iter_s"], row["time_eval_s"]) for row in rows if row["epoch"] >= 2]


class AugmentedDigits(Dataset):
    """Digits images augmented and normalized one sample at a time, the usual way."""

    def __init__(self, data: ImageData, crop_padding: int = 0, horizontal_flip: bool = False,
                 rotation_degrees: float = 0.0, split: str = "train"):
        self.images, self.labels = (data.train_x, data.train_y) if split == "train" else (
            data.test_x, data.test_y)
        self.mean, self.std = data.mean[0], data.std[0]
        self.padding, self.flip, self.degrees = crop_padding, horizontal_flip, rotation_degrees

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]  # (C, H, W) in [0, 1]
        _, height, width = image.shape
        if self.padding:
            padded = F.pad(image, [self.padding] * 4)
            top, left = torch.randint(0, 2 * self.padding + 1, (2,)).tolist()
            image = padded[:, top:top + height, left:left + width]
        if self.flip and torch.rand(()) < 0.5:
            image = torch.flip(image, dims=[2])
        if self.degrees:
            angle = math.radians((torch.rand(()).item() * 2 - 1) * self.degrees)
            cos, sin, aspect = math.cos(angle), math.sin(angle), width / height
            theta = torch.tensor([[[cos, -sin / aspect, 0.0], [sin * aspect, cos, 0.0]]])
            grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
            image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros",
                                  align_corners=False)[0]
        return (image - self.mean) / self.std, self.labels[index]


@torch.no_grad()
def reference_evaluate(model: torch.nn.Module, loader: DataLoader) -> tuple[float, float]:
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in loader:
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        count += len(labels)
    return loss_sum / count, correct / count


def reference_epoch_seconds(params: dict[str, Any], data: ImageData
                            ) -> list[tuple[float, float]]:
    """(training, evaluation) seconds of epochs 2..N of a plain Dataset/DataLoader loop."""
    torch.manual_seed(int(params["seed"]))
    model = build_model(params_section(params, "model"))
    dataset = AugmentedDigits(data, **params_section(params, "augment"))
    epochs, batch_size = int(params["training::epochs_train"]), int(params["training::batchsize"])
    # Full batches only, as the zoo trainer does (a tiny last batch derails BatchNorm).
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0,
                        drop_last=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=params["optim::lr"],
                                momentum=params["optim::momentum"], weight_decay=params["optim::wd"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=params["optim::lr"], total_steps=epochs * len(loader),
        anneal_strategy="cos")
    eval_loaders = [DataLoader(AugmentedDigits(data, split=split), batch_size=batch_size)
                     for split in ("train", "test")]
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        trained = time.perf_counter()
        for eval_loader in eval_loaders:
            reference_evaluate(model, eval_loader)
        seconds.append((trained - started, time.perf_counter() - trained))
    return seconds[1:]


def throughputs(params: dict[str, Any], data: ImageData, repeats: int, stat: str
                ) -> dict[str, tuple[float, float]]:
    """{"train": (zoo, reference), "epoch": (zoo, reference)} in samples/s, runs alternating."""
    zoo_seconds: list[tuple[float, float]] = []
    reference_seconds: list[tuple[float, float]] = []
    for _ in range(repeats):
        zoo_seconds += zoo_trainer_epoch_seconds(params, data)
        reference_seconds += reference_epoch_seconds(params, data)
    summary = min if stat == "best" else statistics.mean
    n = samples_per_epoch(len(data.train_x), int(params["training::batchsize"]))
    return {
        "train": (n / summary(t for t, _ in zoo_seconds),
                  n / summary(t for t, _ in reference_seconds)),
        "epoch": (n / summary(t + e for t, e in zoo_seconds),
                  n / summary(t + e for t, e in reference_seconds)),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[4, 16],
                        help="ResNet-18 widths (channels of the first stage)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs per run; the first is warm-up and not timed (>= 2)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs per side and configuration, alternating (default 2)")
    parser.add_argument("--stat", choices=["best", "mean"], default="best",
                        help="fastest timed epoch (default) or mean over timed epochs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads for both loops (default: all cores)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (epoch 1 is warm-up)")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    data = load_digits()
    print(f"Training throughput, spec {SPEC}: zoo trainer (train_trial, batched augmentation) "
          f"vs reference (Dataset + DataLoader, per-sample augmentation)")
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | CPU {cpu_name()} | "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{len(data.train_x)} train images | {args.repeats} x {args.epochs} epochs per side, "
          f"first of each is warm-up | samples/s of the {args.stat} timed epoch")
    print(f"{'':>11} {'train steps only (samples/s)':^34} {'whole epoch with eval (samples/s)':^34}")
    print(f"{'width':>5} {'batch':>5} " + f"{'zoo':>10} {'reference':>10} {'ratio':>9}   " * 2)
    ratios: dict[str, list[float]] = {"train": [], "epoch": []}
    for width in args.widths:
        for batch_size in args.batch_sizes:
            params = trial_params(width, batch_size, args.epochs)
            measured = throughputs(params, data, args.repeats, args.stat)
            cells = []
            for kind, (zoo, reference) in measured.items():
                ratios[kind].append(zoo / reference)
                cells.append(f"{zoo:>10.0f} {reference:>10.0f} {zoo / reference:>8.2f}x")
            print(f"{width:>5} {batch_size:>5} " + "   ".join(cells), flush=True)
    for kind, label in (("train", "train steps only"), ("epoch", "whole epoch with eval")):
        geomean = math.exp(statistics.mean(math.log(r) for r in ratios[kind]))
        verdict = "meets" if geomean >= TARGET_RATIO else "misses"
        print(f"geometric-mean ratio, {label}: {geomean:.2f}x ({verdict} the "
              f"{TARGET_RATIO}x target)")


if __name__ == "__main__":
    main()
