"""Streaming a zoo of 1,000 checkpoints: checkpoints/s and peak memory, safetensors vs pickles.

Run from the repository root (with the project's venv active)::

    python benchmarks/load_zoo.py                  # 250 models x 4 checkpoints, width 8, 1 thread
    python benchmarks/load_zoo.py --threads 2 --repeats 3
    python benchmarks/load_zoo.py --models 50 --checkpoints-per-model 2 --out /tmp/load-zoo

It writes (in a temporary folder, or ``--out``, where a second run with the same settings
reuses them) two zoos of the same ResNet-18s (``--width``, 10 classes, 3 input channels) with
random weights, ``--models`` x ``--checkpoints-per-model`` checkpoints each:

* ours: the layout ``zoo-builder`` writes (``zoo_format.save_checkpoint``: safetensors beside
  the torch file, a manifest), read through its ``model.safetensors``;
* published: the PTMZ layout as its authors released it (torch pickles of state_dicts with
  ``module.`` prefixes, no manifest, no safetensors), read with ``torch.load(weights_only=True)``.

For each it measures, through :func:`wslbench.features.featurize` as the statistics baselines
use it (``--threads`` threads, at most ``--batch-size`` checkpoints handed out at a time):

* load: every checkpoint read, nothing computed;
* cold: read and featurized with the weight statistics of ``linear-probe`` / ``stat-gbm`` /
  ``stat-mlp``, with an empty feature cache (which the call fills);
* warm: the same call again, answered from the feature cache without reading a checkpoint;

in checkpoints per second against the 500/s target, and the memory of streaming: the
process's peak resident memory above its level before the call (``VmHWM`` of
``/proc/self/status``, reset before each call; ``ru_maxrss`` where that cannot be reset, which
counts from the process start), and the ``tracemalloc`` peak of one further cold pass (Python
allocations only: safetensors' bytes count, torch's own tensor storage does not). Streaming
keeps both near one checkpoint, far below the zoo's size, which the table prints beside them.

Checkpoints are read from the page cache (they were just written); a cold disk adds its
own read time. The machine may be shared: ``--repeats`` runs every timing that many times and
keeps the fastest; the header shows the load average. The feature cache lives in the
temporary folder, never in ``~/.cache/wslbench``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Callable, Sequence

# This script shares its folder with `baselines.py`: keep the folder off the import path, or
# `import baselines` would find that file instead of the package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from baselines.weight_stats import FEATURES_NAME, FEATURES_VERSION, weight_statistics  # noqa: E402
from wslbench import zoo_format as fmt  # noqa: E402
from wslbench.features import feature_cache_dir, featurize  # noqa: E402
from wslbench.predictor import ModelSample  # noqa: E402
from wslbench.zoo import Zoo  # noqa: E402
from zoo_builder.models import build_model  # noqa: E402

TARGET = 500.0  # checkpoints per second
LAYOUTS = ("ours", "published")


# --------------------------------------------------------------------------- the zoos


def model_args(width: int) -> dict:
    return {"type": "resnet18", "width": width, "o_dim": 10, "channels_in": 3}


def random_checkpoints(index: int, width: int, epochs: int):
    """(epoch, state_dict) pairs of one model: a random init, drifting a little per epoch."""
    torch.manual_seed(index)
    state = build_model(model_args(width)).state_dict()
    for epoch in range(1, epochs + 1):
        state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                 for k, v in state.items()}
        yield epoch, state


def write_zoos(root: Path, models: int, epochs: int, width: int) -> dict[str, Path]:
    """Both layouts of the same weights under ``root`` (reused if built with these settings)."""
    config = {"models": models, "checkpoints_per_model": epochs, "width": width, "version": 1}
    paths = {layout: root / layout for layout in LAYOUTS}
    stamp = root / "load_zoo.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == config:
        return paths
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"--out '{root}' is not empty and holds no zoos of these settings; "
                         "pass an empty or new folder")
    trials = {}
    for index in range(models):
        name = (f"NN_tune_trainable_10ad0_{index:05d}_{index}_model_width={width},"
                f"seed={index}_2026-01-01_00-00-00")
        ours, published = paths["ours"] / name, paths["published"] / name
        params = fmt.flatten_params({"model": model_args(width), "seed": index,
                                     "training": {"batchsize": 32, "epochs_train": epochs}})
        rows = [{"test_acc": 0.1, "train_acc": 0.1, "epoch": e} for e in range(epochs + 1)]
        hashes = {}
        for epoch, state in random_checkpoints(index, width, epochs):
            hashes.update(fmt.save_checkpoint(ours, epoch, state, model_args(width)))
            with fmt.atomic_open(fmt.checkpoint_dir(published, epoch) / fmt.TORCH_CHECKPOINT) as f:
                torch.save({f"module.{k}": v for k, v in state.items()}, f)
        for trial in (ours, published):
            fmt.write_params(trial, params)
            fmt.write_results(trial, rows)
        fmt.mark_trial_complete(ours, hashes)
        trials[name] = fmt.read_trial_completion(ours)
    fmt.write_manifest(paths["ours"], fmt.ZooManifest(
        spec="load-zoo-benchmark", spec_version=1, preset="random", grid={},
        package_version="benchmark", created=time.strftime("%Y-%m-%dT%H:%M:%S"), trials=trials))
    fmt.atomic_write_json(stamp, config)
    return paths


def zoo_samples(root: Path) -> list[ModelSample]:
    """Every checkpoint of a zoo as a predictor gets it (loaded on demand, keyed for caching)."""
    zoo = Zoo.open(root)
    return [ModelSample(name=m.name, epoch=epoch, model_args=m.model_args, hyperparameters=None,
                        _load=functools.partial(fmt.load_state_dict, m.path, epoch),
                        zoo_revision=zoo.revision)
            for m in zoo.models for epoch in m.checkpoint_epochs]


# --------------------------------------------------------------------------- measuring


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_mb(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of this process in MB; ``ru_maxrss`` where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed(call: Callable[[], object], repeats: int,
          before: Callable[[], None] = lambda: None) -> tuple[float, float, float]:
    """Fastest wall time and fastest CPU time (all threads) of ``repeats`` calls, in seconds,
    and the largest rise of peak RSS over the resident memory before a call, in MB."""
    wall, cpu, rise = float("inf"), float("inf"), 0.0
    for _ in range(repeats):
        before()
        _reset_peak_rss()
        start_rss = _rss_mb("VmRSS")
        clock, cpu_clock = time.perf_counter(), time.process_time()
        call()
        wall = min(wall, time.perf_counter() - clock)
        cpu = min(cpu, time.process_time() - cpu_clock)
        rise = max(rise, _rss_mb("VmHWM") - start_rss)
    return wall, cpu, rise


def _no_features(state_dict) -> np.ndarray:
    """A featurizer that computes nothing: what is left is reading the checkpoint."""
    return np.empty(0)


def measure(samples: Sequence[ModelSample], threads: int, batch_size: int,
            repeats: int) -> dict[str, float]:
    """Checkpoints/s and memory of loading, cold and warm featurizing one zoo."""
    workers = threads if threads > 1 else 0
    stream = functools.partial(featurize, samples, workers=workers, batch_size=batch_size,
                               progress=False)
    cache = feature_cache_dir(FEATURES_NAME, FEATURES_VERSION)
    n = len(samples)
    calls = {
        "load": (lambda: stream(_no_features, "load-only", 1, cache=False), lambda: None),
        "cold": (lambda: stream(weight_statistics, FEATURES_NAME, FEATURES_VERSION),
                 lambda: shutil.rmtree(cache, ignore_errors=True)),
        "warm": (lambda: stream(weight_statistics, FEATURES_NAME, FEATURES_VERSION), lambda: None),
    }
    out = {}
    for key, (call, before) in calls.items():
        wall, cpu, out[f"{key}_rss"] = timed(call, repeats, before)
        out[key], out[f"{key}_cpu_ms"] = n / wall, 1000 * cpu / n
    tracemalloc.start()
    stream(weight_statistics, FEATURES_NAME, FEATURES_VERSION, cache=False)
    out["tracemalloc"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out


def same_features(paths: dict[str, Path]) -> bool:
    """Both layouts give every checkpoint the same statistics (matched by feature name:
    safetensors keep the file's tensor order, pickles the module's)."""
    tables = {}
    for layout, root in paths.items():
        first = zoo_samples(root)[:8]
        values, names = zip(*(weight_statistics(s.state_dict()) for s in first))
        tables[layout] = [dict(zip(n, v)) for v, n in zip(values, names)]
    return tables["ours"] == tables["published"]


# --------------------------------------------------------------------------- report


def report(results: dict[str, dict[str, float]], args, paths: dict[str, Path],
           n: int, agree: bool) -> str:
    state = build_model(model_args(args.width)).state_dict()
    params = sum(p.numel() for p in state.values())
    table_mb = n * len(weight_statistics(state)[1]) * 8 / 2**20  # the features, float64
    # the size of the file each layout reads (our zoo also holds a torch file, never read)
    checkpoint_mb = {
        layout: next(paths[layout].rglob(file)).stat().st_size / 2**20
        for layout, file in (("ours", fmt.SAFETENSORS_CHECKPOINT),
                             ("published", fmt.TORCH_CHECKPOINT))}
    lines = [
        f"zoo: {args.models} models x {args.checkpoints_per_model} checkpoints = {n} "
        f"ResNet-18 width {args.width} ({params:,} numbers; {checkpoint_mb['ours']:.2f} MB "
        f"safetensors, {checkpoint_mb['published']:.2f} MB pickle per checkpoint)",
        f"threads: {args.threads}, batch size {args.batch_size}, best of {args.repeats}; "
        f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
        f"same features from both layouts: {'yes' if agree else 'NO'}",
        "",
        f"{'checkpoints/s':<34}{'safetensors':>12}{'/ 500':>8}{'pickle':>12}{'/ 500':>8}"
        f"{'st / pickle':>13}",
    ]
    names = {"load": "load", "cold": "load + weight stats (cold cache)",
             "warm": "weight stats from cache (warm)"}
    for key, label in names.items():
        st, pk = results["ours"][key], results["published"][key]
        lines.append(f"{label:<34}{st:>12,.0f}{st / TARGET:>7.2f}x{pk:>12,.0f}"
                     f"{pk / TARGET:>7.2f}x{st / pk:>12.1f}x")
    lines += ["", f"{'CPU ms per checkpoint':<34}{'safetensors':>12}{'':>8}{'pickle':>12}"]
    for key, label in names.items():
        lines.append(f"{label:<34}{results['ours'][key + '_cpu_ms']:>12.3f}{'':>8}"
                     f"{results['published'][key + '_cpu_ms']:>12.3f}")
    lines += ["", f"{'memory (MB)':<34}{'safetensors':>12}{'':>8}{'pickle':>12}"]
    rows = {"peak RSS rise, load": "load_rss", "peak RSS rise, cold": "cold_rss",
            "peak RSS rise, warm": "warm_rss", "tracemalloc peak, cold": "tracemalloc"}
    for label, key in rows.items():
        lines.append(f"{label:<34}{results['ours'][key]:>12.1f}{'':>8}"
                     f"{results['published'][key]:>12.1f}")
    lines.append(f"{'feature table of the whole zoo':<34}{table_mb:>12.1f}{'':>8}{table_mb:>12.1f}")
    lines.append(f"{'one checkpoint / whole zoo':<34}"
                 f"{checkpoint_mb['ours']:>6.2f} / {checkpoint_mb['ours'] * n:>5.0f}{'':>3}"
                 f"{checkpoint_mb['published']:>6.2f} / {checkpoint_mb['published'] * n:>5.0f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=250)
    parser.add_argument("--checkpoints-per-model", type=int, default=4)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads that read and featurize checkpoints (1: the caller alone)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="keep the fastest of N runs")
    parser.add_argument("--out", type=Path, help="keep the zoos here (default: a temp folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="load-zoo-") as tmp:
        os.environ["WSLBENCH_CACHE"] = str(Path(tmp) / "cache")  # never the user's cache
        clock = time.perf_counter()
        paths = write_zoos(args.out or Path(tmp) / "zoos", args.models,
                           args.checkpoints_per_model, args.width)
        written = time.perf_counter() - clock
        results, n = {}, 0
        for layout in LAYOUTS:
            samples = zoo_samples(paths[layout])
            n = len(samples)
            results[layout] = measure(samples, args.threads, args.batch_size, args.repeats)
        print(report(results, args, paths, n, same_features(paths)))
        print(f"\n(zoos written in {written:.0f} s under {paths['ours'].parent})")


if __name__ == "__main__":
    main()
