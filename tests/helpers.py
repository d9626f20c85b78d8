"""Zoos written by the tests themselves: in our layout and in the published PTMZ layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from wslbench import zoo_format as fmt
from zoo_builder.models import build_model

TINY_MODEL_ARGS = {"type": "resnet18", "o_dim": 3, "channels_in": 1, "init_type": "kaiming_uniform"}


def published_trial_name(index: int, width: int, batchsize: int, seed: int) -> str:
    return (f"NN_tune_trainable_bf0b6_{index:05d}_{index}_model_width={width},optim_lr=0.1000,"
            f"optim_wd=0.0005,seed={seed},training_batchsize={batchsize}_2024-05-22_11-30-52")


def write_published_zoo(root: Path, widths=(1, 2), batchsizes=(32, 128), seeds=(0, 1),
                        epochs: int = 2, num_classes: int = 3) -> Path:
    """A zoo as the PTMZ authors published it: Ray Tune trial folders, ``module.`` keys,
    an optimizer file, a root config.json, and no manifest, markers or safetensors."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"experiment": "published"}))
    index = 0
    for width in widths:
        for batchsize in batchsizes:
            for seed in seeds:
                trial = root / published_trial_name(index, width, batchsize, seed)
                trial.mkdir()
                params = {"model::type": "resnet18", "model::width": width,
                          "model::o_dim": num_classes,
                          "model::channels_in": 1, "model::init_type": "kaiming_uniform",
                          "optim::lr": 0.1, "optim::wd": 5e-4, "training::batchsize": batchsize,
                          "training::epochs_train": epochs, "seed": seed,
                          "dataset::dump": f"/data/user/dataset_{seed}.pt"}
                (trial / "params.json").write_text(json.dumps(params))
                lines = [json.dumps({"train_loss": 2.0 - 0.1 * e, "train_acc": 0.3 + 0.1 * e,
                                     "test_loss": 2.1 - 0.1 * e, "test_acc": 0.25 + 0.1 * e,
                                     "training_iteration": e, "config": {"seed": seed}})
                         for e in range(epochs + 1)]
                (trial / "result.json").write_text("\n".join(lines) + "\n")
                torch.manual_seed(index)
                model = build_model({**TINY_MODEL_ARGS, "width": width, "o_dim": num_classes})
                folder = trial / f"checkpoint_{epochs:06d}"
                folder.mkdir()
                state = {f"module.{k}": v for k, v in model.state_dict().items()}
                torch.save(state, folder / "checkpoints")
                torch.save({"state": {}, "param_groups": []}, folder / "optimizer")
                index += 1
    return root


def write_synthetic_zoo(root: Path, n_points: int, seeds=(0, 1),
                        target: Callable[[dict[str, torch.Tensor]], float] | None = None,
                        width: int = 1) -> Path:
    """A finished zoo in our layout with random weights (no training), one grid point per
    "batch size" value; ``test_acc`` is ``target(state_dict)`` (default: random)."""
    root.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    trials = {}
    for point in range(n_points):
        for seed in seeds:
            index = point * len(seeds) + seed
            name = f"NN_tune_trainable_5eed5_{index:05d}_{index}_point={point},seed={seed}"
            trial = root / name
            torch.manual_seed(index)
            model = build_model({**TINY_MODEL_ARGS, "width": width})
            scale = float(torch.rand((), generator=generator)) * 2 + 0.1
            state = {k: (v * scale if v.is_floating_point() else v)
                     for k, v in model.state_dict().items()}
            acc = target(state) if target else float(torch.rand((), generator=generator))
            params = fmt.flatten_params({"model": {**TINY_MODEL_ARGS, "width": width},
                                         "training": {"batchsize": 16 * (point + 1)}, "seed": seed})
            fmt.write_params(trial, params)
            fmt.write_results(trial, [{"train_acc": acc + 0.05, "test_acc": acc,
                                       "train_loss": 1.0, "test_loss": 1.0}])
            hashes = fmt.save_checkpoint(trial, 0, state, {**TINY_MODEL_ARGS, "width": width})
            fmt.mark_trial_complete(trial, hashes)
            trials[name] = fmt.read_trial_completion(trial)
    fmt.write_manifest(root, fmt.ZooManifest(spec="synthetic", spec_version=1, preset="test",
                                             grid={}, package_version="test", created="now",
                                             trials=trials))
    return root


def random_model(model_args: dict, seed: int = 0) -> torch.nn.Module:
    """A model with random values in every float entry, BatchNorm running statistics and
    LayerNorms included (so that permutation tests see every tensor move)."""
    torch.manual_seed(seed)
    model = build_model(model_args)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if name.endswith("running_var")
                             else torch.randn_like(tensor) * 0.3)
    return model.eval()


def model_input(model_args: dict) -> torch.Tensor:
    """A small input batch for the architecture of ``model_args`` (8x8 one-channel images)."""
    generator = torch.Generator().manual_seed(1)
    if model_args["type"] == "pinn_mlp":
        return torch.randn(7, 2, generator=generator)
    if model_args["type"] == "gpt2":
        return torch.randint(model_args["vocab_size"], (2, 5), generator=generator)
    return torch.randn(2, 1, 8, 8, generator=generator)
