"""Training throughput of the zoo trainer against a plain PyTorch reference loop, per architecture.

Run from the repository root (with the project's venv active)::

    python benchmarks/train_throughput.py                     # all four archs (~4 min, 2 cores)
    python benchmarks/train_throughput.py --archs resnet18 --widths 4 --batch-sizes 32 --epochs 2
    python benchmarks/train_throughput.py --dataset cifar10 --data-root DIR --device cuda

Architectures (``--archs``, default all four), each with a small default grid of (width, batch
size) points that ``--widths`` / ``--batch-sizes`` replace for every arch given:

* ``resnet18``, ``resnet50``, ``vit``: image classification on sklearn's 8x8 digits (embedded,
  default) or CIFAR-10 (``--dataset cifar10 --data-root DIR``). The recipe is the catalog spec
  of that data set and arch (``digits-resnet18``, ``cifar10-resnet50``, ``cifar10-vit``, ...);
  where the data set has no spec of that arch (ResNet-50 and ViT on digits) it is CIFAR-10's,
  with the digits' input shape and augmentation (``digits-resnet18``'s: 1-pixel crop, 10 degree
  rotation, no flip). The ViT gets ``image_size`` of the data (patch size image_size // 8).
  Throughput in training samples per second.
* ``gpt2``: the character-level GPT of ``shakespeare-gpt2`` (width = model dim, batch size in
  sequences of ``model::block_size`` tokens, ``--block-size`` to change it), an epoch being the
  spec's fixed number of steps. Throughput in training tokens per second.

Every configuration's params.json is the spec's first trial with the width, batch size and
epochs set (no checkpoints but the first and last, which neither side times). Both sides train
the same model (same seed) on the same data with the same recipe: the optimizer and its
per-step OneCycleLR come from :func:`zoo_builder.building.train.build_optimizer` on both sides (SGD with
momentum for the ResNets, AdamW for the ViT and GPT), so the recipe is identical by
construction; the loss is cross-entropy.

* zoo trainer: :func:`zoo_builder.building.train.train_trial` itself, run to completion. Its result.json
  records, for every epoch, ``time_this_iter_s`` (the training steps) and ``time_eval_s``
  (measuring train and test loss/accuracy, which a zoo needs every epoch); checkpoint writing
  is in neither.
* reference: the loop most people write, a ``torch.utils.data.Dataset`` read by a
  ``DataLoader`` (``shuffle=True``, ``num_workers=0``, full batches only, as the zoo trainer
  does) and the same model, optimizer, scheduler and loss, evaluating after every epoch.
  Images: the Dataset augments one sample at a time in ``__getitem__`` (zero-padded random
  crop, optional flip, rotation with ``affine_grid``/``grid_sample``, normalization); the
  evaluation reads the clean train and test sets through DataLoaders of the training batch
  size. Text: the Dataset returns one random (x, y) window of the train tokens per index, as
  many as the spec's steps per epoch take; the evaluation reads the same number of batches of
  the same size as the zoo trainer's (``training::eval_batches``) from the train and val
  tokens.

Two throughputs per side: ``train`` counts the training steps only; ``epoch`` counts a whole
zoo epoch (training plus the per-epoch evaluation). Epoch 1 of every run is warm-up and not
timed. The machine may be shared (other jobs oversubscribe the cores and stall torch's threads
for whole seconds), so each configuration runs ``--repeats`` times, zoo trainer and reference
alternating, and each side keeps its fastest timed epoch (the least disturbed one, as
``timeit`` does); ``--stat mean`` uses the mean over all timed epochs instead. The header shows
the load average at the start: well above the thread count means other jobs share the CPU.

A third side, ``seed-batched``, trains ``--seeds`` models of the configuration's grid point
together (:func:`zoo_builder.building.batched.train_seed_batch`, seeds 0..N-1, one vmapped
model); its throughput counts the samples of all of them, so its ratio to the one-at-a-time zoo
trainer is the ratio of models/s (the issue's target: >= 2x on the digits mini grid).
``--seeds 0`` leaves it out.

Each arch gets a table with the throughputs and ratios (zoo trainer / reference, seed-batched
/ zoo trainer) per configuration; a final summary gives, per arch, the geometric-mean ratios of
the training steps and of whole epochs, and the geometric mean over every configuration against
the targets. ``--json FILE`` writes the measured throughputs and the model FLOP/s of the
training steps per arch (FLOPs from zoo_builder.building.estimate), which ``zoo-builder
estimate SPEC --measured FILE`` turns into device-hours.

``--device cuda`` runs both sides on the GPU: the zoo trainer with
``RunOptions(device="cuda")`` and its defaults (bf16 autocast, channels_last for convolutional
nets), the reference in plain fp32 with contiguous tensors (its DataLoader pins memory); both
synchronize before reading the clock. The header says which.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from wslbench.zoo_format import params_section, read_results
from zoo_builder.data import ImageData, load_dataset
from zoo_builder.data.images import as_float_images
from zoo_builder.data.text import TokenData, load_shakespeare
from zoo_builder.models import build_model
from zoo_builder.building.batched import train_seed_batch
from zoo_builder.building.catalog import SPECS
from zoo_builder.building.estimate import TRAIN_FORWARD_MULTIPLE, model_forward_flops
from zoo_builder.building.specs import ZooSpec
from zoo_builder.building.train import RunOptions, build_optimizer, train_trial
from zoo_builder.building.workloads import EVAL_BATCH_SIZE

TARGET_RATIO = 1.5
BATCHED_TARGET_RATIO = 2.0
IMAGE_DATASETS = ("digits", "cifar10")
#: The spec whose augmentation an arch without a spec of the data set uses there.
DATASET_AUGMENT_SPEC = {"digits": "digits-resnet18"}
TEXT_SPEC = "shakespeare-gpt2"


@dataclass(frozen=True)
class Arch:
    """One architecture: its workload ("image" or "text"), default grid of (width, batch size)
    and what its width is called in the table."""

    workload: str
    widths: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    width_label: str = "width"


#: Default grids, sized so that the whole default run takes minutes on a 2-core CPU.
ARCHS = {
    "resnet18": Arch("image", widths=(4, 16), batch_sizes=(32, 128)),
    "resnet50": Arch("image", widths=(2, 8), batch_sizes=(32, 128)),
    "vit": Arch("image", widths=(12, 24), batch_sizes=(32, 128), width_label="dim"),
    "gpt2": Arch("text", widths=(16, 64), batch_sizes=(4, 32), width_label="dim"),
}


# --------------------------------------------------------------------------- configurations


def recipe_spec(arch: str, dataset: str) -> ZooSpec:
    """The catalog spec ``arch`` trains with on ``dataset`` (CIFAR-10's where it has none)."""
    if ARCHS[arch].workload == "text":
        return SPECS.get(TEXT_SPEC)
    name = f"{dataset}-{arch}"
    return SPECS.get(name if name in SPECS else f"cifar10-{arch}")


def trial_params(arch: str, dataset: str, data: Any, width: int, batch_size: int, epochs: int,
                 block_size: int | None = None) -> dict[str, Any]:
    """Flat params.json of the recipe spec's first trial, set to ``width``, ``batch_size``,
    ``epochs`` (and, for text, ``block_size``), and to the data's shapes where the spec is
    another data set's."""
    spec = recipe_spec(arch, dataset)
    params = dict(spec.trials()[0].params)
    params.update({spec.load.key: width, spec.temperature.key: batch_size,
                   "training::epochs_train": epochs, "training::checkpoint_epochs": []})
    if ARCHS[arch].workload == "text":
        if block_size is not None:
            params["model::block_size"] = block_size
        return params
    if spec.dataset != dataset:
        params.update({"dataset::name": dataset, "model::channels_in": data.in_channels,
                       "model::o_dim": data.num_classes})
        if "model::image_size" in params:
            params["model::image_size"] = data.train_x.shape[-1]
        params = {key: value for key, value in params.items() if not key.startswith("augment::")}
        augment = SPECS.get(DATASET_AUGMENT_SPEC[dataset]).augment
        params.update({f"augment::{key}": value for key, value in augment.items()})
    return params


def units_per_epoch(params: dict[str, Any], data: Any) -> int:
    """What one epoch trains on, on both sides: samples in full batches, or tokens."""
    batch_size = int(params["training::batchsize"])
    if isinstance(data, TokenData):
        return int(params["training::steps_per_epoch"]) * batch_size * int(
            params["model::block_size"])
    n = len(data.train_x)
    batch_size = min(batch_size, n)
    return (n // batch_size) * batch_size


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- zoo trainer


def zoo_trainer_epoch_seconds(params: dict[str, Any], data: Any, options: RunOptions
                              ) -> list[tuple[float, float]]:
    """(training, evaluation) seconds of epochs 2..N of :func:`train_trial`, from result.json."""
    with tempfile.TemporaryDirectory() as trial_dir:
        train_trial(params, trial_dir, data=data, options=options)
        rows = read_results(trial_dir)
    return [(row["time_this_iter_s"], row["time_eval_s"]) for row in rows if row["epoch"] >= 2]


def seed_batched_epoch_seconds(params: dict[str, Any], data: Any, options: RunOptions,
                               seeds: int) -> list[tuple[float, float]]:
    """(training, evaluation) seconds of epochs 2..N of ``seeds`` models of the grid point
    (seeds params["seed"] + 0..seeds-1) trained together; evaluation summed over the models."""
    group = [dict(params, seed=int(params["seed"]) + k) for k in range(seeds)]
    with tempfile.TemporaryDirectory() as folder:
        dirs = [Path(folder) / str(k) for k in range(seeds)]
        train_seed_batch(list(zip(group, dirs)), data=data, options=options)
        rows = [read_results(trial_dir) for trial_dir in dirs]
    return [(first["time_this_iter_s"], sum(r[i]["time_eval_s"] for r in rows))
            for i, first in enumerate(rows[0]) if first["epoch"] >= 2]


# --------------------------------------------------------------------------- reference loop


class AugmentedImages(Dataset):
    """One split of an :class:`ImageData`, augmented and normalized one sample at a time."""

    def __init__(self, data: ImageData, split: str = "train", crop_padding: int = 0,
                 horizontal_flip: bool = False, rotation_degrees: float = 0.0, **others: Any):
        active = {name: value for name, value in others.items() if value}
        if active:
            raise ValueError(f"the reference Dataset implements crop_padding, horizontal_flip "
                             f"and rotation_degrees only, not augment {active}; benchmark a spec "
                             f"without them")
        self.images, self.labels = ((data.train_x, data.train_y) if split == "train"
                                    else (data.test_x, data.test_y))
        self.mean, self.std = data.mean[0].cpu(), data.std[0].cpu()
        self.padding, self.flip, self.degrees = int(crop_padding), horizontal_flip, rotation_degrees

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = as_float_images(self.images[index])  # (C, H, W) in [0, 1]
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


class RandomWindows(Dataset):
    """``length`` random windows of a token stream, one per index (nanoGPT's batches, one at a
    time): inputs of ``block_size`` tokens and the targets shifted by one."""

    def __init__(self, tokens: torch.Tensor, block_size: int, length: int):
        if len(tokens) < block_size + 1:
            raise ValueError(f"token stream of {len(tokens)} tokens is shorter than block_size "
                             f"+ 1 = {block_size + 1}; use a smaller --block-size")
        self.tokens, self.block_size, self.length = tokens.cpu(), block_size, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = int(torch.randint(len(self.tokens) - self.block_size, ()))
        window = self.tokens[start:start + self.block_size + 1]
        return window[:-1], window[1:]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
                  ) -> torch.Tensor:
    """Cross-entropy over the last dimension: classes (B, C) and next tokens (B, T, V) alike."""
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction=reduction)


@torch.no_grad()
def reference_evaluate(model: nn.Module, loader: DataLoader, device: torch.device
                       ) -> tuple[float, float]:
    """Mean loss and accuracy over ``loader``, in eval mode."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for inputs, targets in loader:
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        logits = model(inputs)
        loss_sum += cross_entropy(logits, targets, reduction="sum").item()
        correct += (logits.argmax(-1) == targets).sum().item()
        count += targets.numel()
    return loss_sum / count, correct / count


@dataclass(frozen=True)
class _Steps:
    """All :func:`build_optimizer` asks of a workload: the optimizer steps of an epoch."""

    steps_per_epoch: int


def reference_loop(params: dict[str, Any], model: nn.Module, train_loader: DataLoader,
                   eval_loaders: Iterable[DataLoader], device: torch.device
                   ) -> list[tuple[float, float]]:
    """Train ``model`` with ``train_loader`` for ``training::epochs_train`` epochs, evaluating
    every eval loader after each; (training, evaluation) seconds of epochs 2..N."""
    optimizer, scheduler = build_optimizer(params, model, _Steps(len(train_loader)))
    seconds = []
    for _ in range(int(params["training::epochs_train"])):
        started = time.perf_counter()
        model.train()
        for inputs, targets in train_loader:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            loss = cross_entropy(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        synchronize(device)
        trained = time.perf_counter()
        for loader in eval_loaders:
            reference_evaluate(model, loader, device)
        seconds.append((trained - started, time.perf_counter() - trained))
    return seconds[1:]


def reference_image_seconds(params: dict[str, Any], data: ImageData, device: torch.device
                            ) -> list[tuple[float, float]]:
    """The reference loop on images: per-sample augmentation in a Dataset, DataLoaders."""
    torch.manual_seed(int(params["seed"]))
    model = build_model(params_section(params, "model")).to(device)
    batch_size = min(int(params["training::batchsize"]), len(data.train_x))
    pin = device.type == "cuda"
    train_loader = DataLoader(AugmentedImages(data, "train", **params_section(params, "augment")),
                              batch_size=batch_size, shuffle=True, num_workers=0, drop_last=True,
                              pin_memory=pin)
    eval_loaders = [DataLoader(AugmentedImages(data, split), batch_size=batch_size, pin_memory=pin)
                    for split in ("train", "test")]
    return reference_loop(params, model, train_loader, eval_loaders, device)


def reference_text_seconds(params: dict[str, Any], data: TokenData, device: torch.device
                           ) -> list[tuple[float, float]]:
    """The reference loop on tokens: one random window per Dataset index, DataLoaders."""
    torch.manual_seed(int(params["seed"]))
    model = build_model(params_section(params, "model")).to(device)
    batch_size, block_size = int(params["training::batchsize"]), int(params["model::block_size"])
    steps, eval_batches = (int(params["training::steps_per_epoch"]),
                           int(params.get("training::eval_batches", 10)))
    # The zoo trainer's evaluation batch (LanguageModeling.evaluate), so both measure as much.
    eval_batch = max(1, min(batch_size, EVAL_BATCH_SIZE * 16 // block_size))
    pin = device.type == "cuda"
    train_loader = DataLoader(RandomWindows(data.train, block_size, steps * batch_size),
                              batch_size=batch_size, shuffle=True, num_workers=0, drop_last=True,
                              pin_memory=pin)
    eval_loaders = [DataLoader(RandomWindows(tokens, block_size, eval_batches * eval_batch),
                               batch_size=eval_batch, pin_memory=pin)
                    for tokens in (data.train, data.val)]
    return reference_loop(params, model, train_loader, eval_loaders, device)


REFERENCE_LOOPS = {"image": reference_image_seconds, "text": reference_text_seconds}


# --------------------------------------------------------------------------- measuring


def throughputs(arch: str, params: dict[str, Any], data: Any, options: RunOptions, repeats: int,
                stat: str, seeds: int, progress: tqdm) -> dict[str, tuple[float, ...]]:
    """{"train": (zoo, reference[, seed-batched]), "epoch": (...)} in samples or tokens per
    second (seed-batched: of all its models together), the sides' runs alternating."""
    device = torch.device(options.device)
    reference = REFERENCE_LOOPS[ARCHS[arch].workload]
    sides: list[tuple[Any, int]] = [
        (lambda: zoo_trainer_epoch_seconds(params, data, options), 1),
        (lambda: reference(params, data, device), 1)]
    if seeds:
        sides.append((lambda: seed_batched_epoch_seconds(params, data, options, seeds), seeds))
    seconds: list[list[tuple[float, float]]] = [[] for _ in sides]
    for _ in range(repeats):
        for side, (run, _) in enumerate(sides):
            seconds[side] += run()
            progress.update()
    summary = min if stat == "best" else statistics.mean
    units = units_per_epoch(params, data)
    return {
        "train": tuple(units * models / summary(t for t, _ in timed)
                       for timed, (_, models) in zip(seconds, sides)),
        "epoch": tuple(units * models / summary(t + e for t, e in timed)
                       for timed, (_, models) in zip(seconds, sides)),
    }


def geometric_mean(values: list[float]) -> float:
    return math.exp(statistics.mean(math.log(value) for value in values))


def benchmark_arch(arch: str, data: Any, dataset: str, args: argparse.Namespace,
                   options: RunOptions) -> dict[str, list[float]]:
    """Print one arch's table; its ratios (zoo / reference) per kind, one per configuration."""
    spec, grid = recipe_spec(arch, dataset), ARCHS[arch]
    widths, batch_sizes = args.widths or grid.widths, args.batch_sizes or grid.batch_sizes
    if grid.workload == "text":
        first = trial_params(arch, dataset, data, widths[0], batch_sizes[0], args.epochs,
                             args.block_size)
        unit, size = "tokens/s", (f"epochs of {first['training::steps_per_epoch']} steps of "
                                  f"batch x {first['model::block_size']} tokens")
    else:
        unit, size = "samples/s", f"{len(data.train_x)} train images"
    print(f"\n{arch}: recipe of spec {spec.name}, on {data.name} ({size})")
    batched = f"{args.seeds} seeds" if args.seeds else ""
    cell = 34 + (22 if args.seeds else 0)
    print(f"{'':>11} {f'train steps only ({unit})':^{cell}} "
          f"{f'whole epoch with eval ({unit})':^{cell}}")
    print(f"{grid.width_label:>5} {'batch':>5} "
          + (f"{'zoo':>10} {'reference':>10} {'ratio':>9}"
             + (f" {batched:>10} {'vs zoo':>9}" if args.seeds else "") + "   ") * 2)
    ratios: dict[str, list[float]] = {"train": [], "epoch": [], "batched_train": [],
                                      "batched_epoch": [], "zoo_train": []}
    runs = len(widths) * len(batch_sizes) * args.repeats * (3 if args.seeds else 2)
    with tqdm(total=runs, desc=f"{arch} runs", leave=False, disable=None) as progress:
        for width in widths:
            for batch_size in batch_sizes:
                params = trial_params(arch, dataset, data, width, batch_size, args.epochs,
                                      args.block_size)
                measured = throughputs(arch, params, data, options, args.repeats, args.stat,
                                       args.seeds, progress)
                flops = TRAIN_FORWARD_MULTIPLE * model_forward_flops(params)
                if ARCHS[arch].workload == "text":  # throughput in tokens: FLOPs per token
                    flops /= int(params["model::block_size"])
                ratios["zoo_train"].append(measured["train"][0] * flops)
                cells = []
                for kind, (zoo, reference, *batched) in measured.items():
                    ratios[kind].append(zoo / reference)
                    text = f"{zoo:>10.0f} {reference:>10.0f} {zoo / reference:>8.2f}x"
                    if batched:
                        ratios[f"batched_{kind}"].append(batched[0] / zoo)
                        text += f" {batched[0]:>10.0f} {batched[0] / zoo:>8.2f}x"
                    cells.append(text)
                progress.write(f"{width:>5} {batch_size:>5} " + "   ".join(cells))
    return ratios


# --------------------------------------------------------------------------- command line


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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--archs", nargs="+", choices=list(ARCHS), default=list(ARCHS),
                        help="architectures to measure (default: all)")
    parser.add_argument("--widths", type=int, nargs="+",
                        help="widths (ResNet channels, ViT embedding dim, GPT model dim) for "
                             "every arch given; default: each arch's own grid")
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        help="batch sizes (GPT: sequences) for every arch given; default: each "
                             "arch's own grid")
    parser.add_argument("--dataset", choices=IMAGE_DATASETS, default="digits",
                        help="images of the image archs (default digits, embedded)")
    parser.add_argument("--data-root", help="where the data set lies (cifar10; default "
                                            "$WSLBENCH_DATA or ~/.cache/wslbench/data)")
    parser.add_argument("--block-size", type=int,
                        help=f"GPT tokens per sequence (default: the {TEXT_SPEC} spec's)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs per run; the first is warm-up and not timed (>= 2)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs per side and configuration, alternating (default 2)")
    parser.add_argument("--stat", choices=["best", "mean"], default="best",
                        help="fastest timed epoch (default) or mean over timed epochs")
    parser.add_argument("--device", default="cpu",
                        help="cpu (default) or cuda[:N]; both sides run there")
    parser.add_argument("--seeds", type=int, default=3,
                        help="models trained together on the seed-batched side (0: leave it "
                             "out; default 3, the zoos' seeds per grid point)")
    parser.add_argument("--json", help="write the measured throughputs and model FLOP/s here "
                                       "(for zoo-builder estimate --measured)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads for both loops (default: all cores)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (epoch 1 is warm-up)")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA "
                     f"GPU; use --device cpu")
    return args


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    options = RunOptions(device=args.device)
    device = torch.device(args.device)
    images = (load_dataset(args.dataset, args.data_root)
              if any(ARCHS[arch].workload == "image" for arch in args.archs) else None)
    text = load_shakespeare() if "gpt2" in args.archs else None

    print("Training throughput: zoo trainer (train_trial, data resident as tensors, batched "
          "augmentation) vs reference (Dataset + DataLoader, per-sample augmentation)")
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | CPU {cpu_name()} | "
          f"load average {os.getloadavg()[0]:.2f}")
    if device.type == "cuda":
        print(f"device {args.device} ({torch.cuda.get_device_name(device)}): zoo trainer "
              f"RunOptions(device={args.device!r}) = {options.autocast_dtype(device)} autocast, "
              f"channels_last for conv nets; reference plain fp32, contiguous")
    else:
        print(f"device {args.device}: both sides fp32")
    print(f"{args.repeats} x {args.epochs} epochs per side and configuration, first of each is "
          f"warm-up | throughput of the {args.stat} timed epoch | ratio = zoo / reference")

    summary: dict[str, dict[str, list[float]]] = {}
    for arch in args.archs:
        data = text if ARCHS[arch].workload == "text" else images
        summary[arch] = benchmark_arch(arch, data, args.dataset, args, options)

    kinds = ["train", "epoch"] + (["batched_train", "batched_epoch"] if args.seeds else [])
    print(f"\n{'geometric-mean ratio':<20} {'zoo/reference: train steps':>27} {'whole epoch':>12}"
          + (f" {'seed-batched/zoo: train steps':>31} {'whole epoch':>12}" if args.seeds else ""))
    for arch, ratios in summary.items():
        print(f"{arch:<20} " + " ".join(
            f"{geometric_mean(ratios[kind]):>{27 if kind == 'train' else 31 if kind == 'batched_train' else 12}.2f}x"
            for kind in kinds))
    overall = {kind: geometric_mean([r for ratios in summary.values() for r in ratios[kind]])
               for kind in kinds}
    count = sum(len(ratios["train"]) for ratios in summary.values())
    print(f"{f'all ({count} configs)':<20} " + " ".join(
        f"{overall[kind]:>{27 if kind == 'train' else 31 if kind == 'batched_train' else 12}.2f}x"
        for kind in kinds))
    print(f"target {TARGET_RATIO}x (zoo/reference): training steps "
          f"{'meet' if overall['train'] >= TARGET_RATIO else 'miss'} it, whole epochs "
          f"{'meet' if overall['epoch'] >= TARGET_RATIO else 'miss'} it")
    if args.seeds:
        print(f"target {BATCHED_TARGET_RATIO}x models/s (seed-batched/zoo): training steps "
              f"{'meet' if overall['batched_train'] >= BATCHED_TARGET_RATIO else 'miss'} it, "
              f"whole epochs "
              f"{'meet' if overall['batched_epoch'] >= BATCHED_TARGET_RATIO else 'miss'} it")
    if args.json:
        record = {"device": args.device, "torch": torch.__version__, "threads": args.threads,
                  "load_average": os.getloadavg()[0], "ratios": {
                      arch: {kind: geometric_mean(ratios[kind]) for kind in kinds}
                      for arch, ratios in summary.items()},
                  "model_flops_per_s": {
                      **{arch: geometric_mean(ratios["zoo_train"])
                         for arch, ratios in summary.items()},
                      "all": geometric_mean([rate for ratios in summary.values()
                                             for rate in ratios["zoo_train"]])}}
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        print(f"measurements written to {args.json}")


if __name__ == "__main__":
    main()
