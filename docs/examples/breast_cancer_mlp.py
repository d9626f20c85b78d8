"""A zoo for a new domain in one short file: MLPs on sklearn's breast-cancer table.

Build it with

    zoo-builder --plugin docs/examples/breast_cancer_mlp.py build breast-cancer-mlp \
        --preset tiny --out /tmp/bc-zoo

A plugin registers up to four things, each under a name params.json refers to: a model
factory (``model::type``), a data loader (``dataset::name``), the zoo spec, and, only where
none of the existing workloads fits, a workload (``training::workload``). See
docs/new_domain.md.
"""

from __future__ import annotations

import torch
from torch import nn

from zoo_builder.data import DATASETS, ImageData
from zoo_builder.models import MODEL_FACTORIES
from zoo_builder.building.catalog import SPECS
from zoo_builder.building.specs import Axis, Preset, ZooSpec


def tabular_mlp(width: int, in_features: int, num_classes: int, depth: int = 2) -> nn.Module:
    """An MLP with ``depth`` hidden layers of ``width`` units (the zoo's load axis)."""
    layers, features = [], in_features
    for _ in range(depth):
        layers += [nn.Linear(features, width), nn.ReLU()]
        features = width
    return nn.Sequential(*layers, nn.Linear(features, num_classes))


def load_breast_cancer(data_root=None, test_fraction: float = 0.5) -> ImageData:
    """569 tumours, 30 features, 2 classes; a fixed stratified split. ``ImageData`` holds
    any (N, features...) tensors and normalizes each feature with the training statistics."""
    from sklearn.datasets import load_breast_cancer as sklearn_breast_cancer
    from sklearn.model_selection import train_test_split

    table = sklearn_breast_cancer()
    x_train, x_test, y_train, y_test = train_test_split(
        table.data.astype("float32"), table.target, test_size=test_fraction,
        stratify=table.target, random_state=0)
    return ImageData(torch.from_numpy(x_train), torch.from_numpy(y_train).long(),
                     torch.from_numpy(x_test), torch.from_numpy(y_test).long(),
                     num_classes=2, name="breast_cancer")


MODEL_FACTORIES["tabular_mlp"] = tabular_mlp
DATASETS.register("breast_cancer", load_breast_cancer)
SPECS.register("breast-cancer-mlp", ZooSpec(
    name="breast-cancer-mlp",
    version=1,
    description="MLPs on sklearn's breast-cancer table: an example of a new domain",
    dataset="breast_cancer",
    model={"type": "tabular_mlp", "in_features": 30, "num_classes": 2, "depth": 2},
    optim={"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "wd": 5e-4, "scheduler": "onecycle"},
    load=Axis("model::width", "width", (2, 8, 32, 128)),
    temperature=Axis("training::batchsize", "batch size", (4, 16, 64, 256)),
    seeds=(0, 1, 2),
    epochs=20,
    checkpoint_epochs=(5, 10, 15),
    presets={"tiny": Preset("4 models x 2 epochs, for tests", load_values=(2, 8),
                            temperature_values=(16, 64), seeds=(0,), epochs=2,
                            checkpoint_epochs=(1,))},
))
