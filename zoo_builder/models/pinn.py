"""The PINN of the convection zoo: an MLP from (x, t) to u with tanh activations.

The paper's Table 4 gives layers 50-50-50-50-1, tanh and Kaiming-uniform init; the weights get
the zoos' Kaiming-uniform init and the biases zeros (:func:`init_kaiming_uniform`).

Module names: ``layers`` is an ``nn.Sequential`` of ``hidden1``, ``tanh1``, ..., ``hiddenN``,
``tanhN``, ``output``; the Linear layers are ``layers.hidden{k}`` (k = 1 .. N) and
``layers.output``, in the order data flows through them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from zoo_builder.models.resnet import init_kaiming_uniform


class PINNMLP(nn.Module):
    """Fully connected tanh network; ``forward`` maps (N, in_features) to (N, out_features)."""

    def __init__(self, hidden: Sequence[int], in_features: int, out_features: int):
        super().__init__()
        hidden = [int(width) for width in hidden]  # model args from JSON arrive as lists
        if not hidden or min(hidden) < 1:
            raise ValueError(f"pinn_mlp needs at least one hidden layer of positive width, got "
                             f"hidden={hidden}; e.g. hidden=[50, 50, 50, 50]")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        width = in_features
        for index, out in enumerate(hidden, start=1):
            layers[f"hidden{index}"] = nn.Linear(width, out)
            layers[f"tanh{index}"] = nn.Tanh()
            width = out
        layers["output"] = nn.Linear(width, out_features)
        self.layers = nn.Sequential(layers)
        init_kaiming_uniform(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def pinn_mlp(hidden: Sequence[int] = (50, 50, 50, 50), in_features: int = 2,
             out_features: int = 1) -> PINNMLP:
    """The convection PINN: inputs (x, t), ``hidden`` tanh layers, output u."""
    return PINNMLP(hidden, in_features=in_features, out_features=out_features)
