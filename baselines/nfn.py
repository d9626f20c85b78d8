"""``nfn``: a permutation-equivariant neural functional (NFN, Zhou et al. 2023) for zoos of one shape.

A neural functional reads a model's weights with layers that commute with the permutations of
its hidden units, so that a prediction does not change when hidden units are renumbered (which
leaves the model's function unchanged). Zhou et al.'s NP layers are written for chains of
MLP / CNN layers, where the units between layer i and i+1 are one permutation group. The zoos
here hold ResNets (residual streams tie the channels of many layers to one permutation),
transformers and PINNs, so this module writes the same kind of layer for any architecture,
with the symmetry groups read from :func:`zoo_builder.annotating.downstream.permutation.permutation_spec`
(the groups that git re-basin uses, tested there):

* every floating tensor of the state_dict (weights, biases, normalization parameters and
  running statistics) is laid out as ``(n_1, [n_2,] c)``: its axes that a permutation group
  acts on first (0, 1 or 2 of them), then every other axis (kernel positions, the input image
  channels, the output classes) flattened into channels, which stay in place;
* the hidden state of a tensor has the same group axes and ``hidden`` channels. One layer
  updates each tensor from (a) itself, channel-mixed; (b) per group axis, the *message of
  its group*: the mean, over all tensors with an axis in that group, of a linear map of that
  tensor's state averaged over its other group axes, broadcast back along the axis; (c) a
  global vector: the mean over tensors of a linear map of their fully averaged state. A
  LayerNorm over channels and a residual connection follow. For an MLP these terms are those
  of the NP layer (a weight sees its own row/column means and those of the layers before and
  after it through the shared hidden units, plus global terms); written per group they cover
  residual streams, BatchNorm statistics and attention;
* the readout averages each tensor's state over its group axes (invariant) and concatenates
  the tensors (one shape: a fixed number), then an MLP head.

Attention groups with ``heads > 1`` permute heads and dims within heads, a subgroup of all
permutations of their units; the layer is equivariant to all of them, hence to the subgroup.

Published implementation: the ``nfn`` package on PyPI (0.1.2, the authors' code,
AllanYangZhou/nfn) provides NP/HNP layers for plain MLP and CNN weight spaces given as a chain
of weight and bias tensors; it has no notion of residual streams, BatchNorm statistics or
attention, so it cannot take the zoos' ResNet-18s, GPT-2s or their BatchNorm buffers without
rewriting its weight-space description; this module is written from the paper instead.

Like ``flat-mlp``, the tensors are concatenated in the readout, so all models must share
tensor names and shapes (a zoo of one width); other zoos raise NotApplicableError. Training as
:mod:`baselines.gmn`'s (:mod:`baselines.training`): standardized regression targets with MSE,
labels with cross-entropy, AdamW, early stopping on validation, the best state kept; seeded and
deterministic on the CPU.
Each tensor's values are standardized by one mean and std over the training models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from baselines.flat_mlp import check_same_layout, weight_layout
from baselines.targets import StandardizedTargets
from baselines.training import torch_threads, train_early_stopping
from wslbench.predictor import ModelSample, NotApplicableError, Predictor


class TensorLayout(NamedTuple):
    """How one state_dict tensor enters the NFN."""

    key: str
    groups: tuple[str, ...]   # permutation group of each leading axis (0-2 of them)
    axes: tuple[int, ...]     # the tensor's axes that those groups act on, in that order
    channels: int             # the other axes, flattened


def nfn_layout(model_args: Mapping[str, Any] | None,
               state_dict: Mapping[str, torch.Tensor]) -> list[TensorLayout]:
    """The tensors of a model and the permutation groups acting on their axes."""
    if model_args is None:
        raise NotApplicableError("nfn reads the weight symmetries from the architecture "
                                 "arguments, which this task withholds; use flat-mlp")
    from baselines.param_graph import normalize_keys
    from zoo_builder.annotating.downstream.permutation import permutation_spec

    try:
        spec = permutation_spec(dict(model_args))
    except (TypeError, ValueError) as err:
        raise NotApplicableError(f"nfn knows no weight symmetries for model_args "
                                 f"{dict(model_args)}: {err}") from err
    layouts = []
    for key, tensor in normalize_keys(state_dict).items():
        if not tensor.is_floating_point() or key.endswith("num_batches_tracked"):
            continue
        axes_groups = sorted(spec.key_axes.get(key, {}).items())
        axes = tuple(axis for axis, _ in axes_groups)
        if len(axes) > 2:
            raise NotApplicableError(f"nfn handles tensors with at most two permuted axes; "
                                     f"'{key}' has {len(axes)}")
        channels = 1
        for axis, size in enumerate(tensor.shape):
            if axis not in axes:
                channels *= size
        layouts.append(TensorLayout(key, tuple(g for _, g in axes_groups), axes, channels))
    return layouts


def arrange(tensor: torch.Tensor, layout: TensorLayout) -> torch.Tensor:
    """``tensor`` as ``(n_1, [n_2,] channels)``: permuted axes first, the rest flattened."""
    rest = [axis for axis in range(tensor.ndim) if axis not in layout.axes]
    moved = tensor.permute(*layout.axes, *rest)
    return moved.reshape(*[tensor.shape[a] for a in layout.axes], layout.channels)


def _broadcast(message: torch.Tensor, position: int, n_axes: int) -> torch.Tensor:
    """A group message ``(B, n, h)`` shaped to broadcast along axis ``position`` of a state
    ``(B, n_1, [n_2,] h)``."""
    if n_axes == 2 and position == 0:
        return message.unsqueeze(2)
    if n_axes == 2:
        return message.unsqueeze(1)
    return message


class EquivariantLayer(nn.Module):
    """One NFN layer over all tensors; see the module docstring."""

    def __init__(self, layouts: Sequence[TensorLayout], hidden: int):
        super().__init__()
        self.layouts = list(layouts)
        count = len(layouts)
        self.self_maps = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(count))
        self.global_in = nn.ModuleList(nn.Linear(hidden, hidden, bias=False)
                                       for _ in range(count))
        self.global_out = nn.ModuleList(nn.Linear(hidden, hidden, bias=False)
                                        for _ in range(count))
        self.to_group = nn.ModuleList(
            nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in layout.groups)
            for layout in layouts)
        self.from_group = nn.ModuleList(
            nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in layout.groups)
            for layout in layouts)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(count))
        self.group_counts: dict[str, int] = {}
        for layout in layouts:
            for group in layout.groups:
                self.group_counts[group] = self.group_counts.get(group, 0) + 1

    def forward(self, states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        messages: dict[str, torch.Tensor] = {}
        total = 0
        for k, (layout, x) in enumerate(zip(self.layouts, states)):
            n_axes = len(layout.groups)
            for position, group in enumerate(layout.groups):
                pooled = x.mean(dim=2 - position) if n_axes == 2 else x  # (B, n, h)
                term = self.to_group[k][position](pooled)
                messages[group] = messages[group] + term if group in messages else term
            whole = x.mean(dim=tuple(range(1, 1 + n_axes))) if n_axes else x
            total = total + self.global_in[k](whole)
        glob = total / len(self.layouts)
        updated = []
        for k, (layout, x) in enumerate(zip(self.layouts, states)):
            n_axes = len(layout.groups)
            out = self.self_maps[k](x)
            for position, group in enumerate(layout.groups):
                message = messages[group] / self.group_counts[group]
                out = out + _broadcast(self.from_group[k][position](message), position, n_axes)
            g = self.global_out[k](glob)
            out = out + g.view(g.shape[0], *([1] * n_axes), g.shape[-1])
            updated.append(self.norms[k](x + F.relu(out)))
        return updated


class NeuralFunctional(nn.Module):
    """Per-tensor encoders, ``layers`` equivariant layers, invariant mean readout, MLP head."""

    def __init__(self, layouts: Sequence[TensorLayout], out_dim: int, hidden: int = 16,
                 layers: int = 2, head_hidden: int = 64):
        super().__init__()
        self.layouts = list(layouts)
        self.encoders = nn.ModuleList(nn.Linear(layout.channels, hidden) for layout in layouts)
        self.layers = nn.ModuleList(EquivariantLayer(layouts, hidden) for _ in range(layers))
        self.head = nn.Sequential(nn.Linear(len(layouts) * hidden, head_hidden), nn.ReLU(),
                                  nn.Linear(head_hidden, out_dim))
        self.register_buffer("mean", torch.zeros(len(layouts)))
        self.register_buffer("std", torch.ones(len(layouts)))

    def forward(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """``tensors[k]``: the arranged tensor k of a batch of models, ``(B, n_1, [n_2,] c)``."""
        states = [encoder((t - self.mean[k]) / self.std[k])
                  for k, (encoder, t) in enumerate(zip(self.encoders, tensors))]
        for layer in self.layers:
            states = layer(states)
        pooled = [x.mean(dim=tuple(range(1, x.ndim - 1))) if x.ndim > 2 else x for x in states]
        return self.head(torch.cat(pooled, dim=1))


@dataclass(frozen=True)
class NFNConfig:
    """Network and training; the defaults fit zoos of tens to hundreds of models on a CPU."""

    hidden: int = 16
    layers: int = 2
    head_hidden: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 8
    max_epochs: int = 150
    patience: int = 25
    num_threads: int | None = 1


class NFN(Predictor):
    """An equivariant neural functional on the weights of fixed-shape models."""

    name = "nfn"

    def __init__(self, seed: int = 0, config: NFNConfig = NFNConfig()):
        super().__init__(seed)
        self.config = config
        self.network: NeuralFunctional | None = None
        self.targets: StandardizedTargets | None = None

    def _tensors(self, models: Sequence[ModelSample], what: str) -> list[torch.Tensor]:
        """Per layout tensor, the arranged tensors of all ``models`` stacked: ``(N, ...)``."""
        from baselines.param_graph import normalize_keys

        rows: list[list[torch.Tensor]] = [[] for _ in self.layouts]
        for model in tqdm(models, desc=f"{self.name}: {what}", leave=False, disable=None):
            state = model.state_dict()
            check_same_layout(self.reference, self.layout, model.name, weight_layout(state),
                              predictor=self.name, instead="stat-mlp, gmn or probegen")
            state = normalize_keys(state)
            for k, layout in enumerate(self.layouts):
                value = arrange(state[layout.key].detach().float(), layout)
                rows[k].append(torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0))
        return [torch.stack(r) for r in rows]

    def fit(self, train: Sequence[ModelSample], train_targets: np.ndarray,
            val: Sequence[ModelSample], val_targets: np.ndarray) -> None:
        if len(train) == 0:
            raise ValueError("NFN.fit() got no training models")
        with torch_threads(self.config.num_threads):
            self._fit(train, train_targets, val, val_targets)

    def _fit(self, train, train_targets, val, val_targets) -> None:
        config = self.config
        first = train[0].state_dict()
        self.reference, self.layout = train[0].name, weight_layout(first)
        self.layouts = nfn_layout(train[0].model_args, first)
        self.targets = targets = StandardizedTargets(train_targets)
        if targets.constant is not None:
            self.network = None
            self._tensors(train, "train weights")  # still refuse other shapes
            return
        x_train = self._tensors(train, "train weights")
        x_val = self._tensors(val, "val weights") if len(val) else None
        y_train, y_val = targets.encode(train_targets), targets.encode(val_targets)
        usable_val = x_val is not None and targets.any_known(y_val)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.network = NeuralFunctional(self.layouts, targets.out_dim, config.hidden,
                                            config.layers, config.head_hidden)
        with torch.no_grad():
            for k, t in enumerate(x_train):
                self.network.mean[k] = t.mean()
                spread = t.std(correction=0)
                self.network.std[k] = spread if spread > 1e-8 else 1.0
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=config.learning_rate,
                                      weight_decay=config.weight_decay)
        generator = torch.Generator().manual_seed(self.seed)

        def epoch_batches():
            order = torch.randperm(len(train), generator=generator)
            return (order[start:start + config.batch_size]
                    for start in range(0, len(order), config.batch_size))

        def batch_loss(group: torch.Tensor) -> torch.Tensor:
            return targets.loss(self.network([t[group] for t in x_train]), y_train[group])

        def validation_loss() -> torch.Tensor:
            return targets.loss(self.network(x_val), y_val)

        train_early_stopping(self.network, optimizer, epoch_batches, batch_loss,
                             validation_loss if usable_val else None,
                             config.max_epochs, config.patience, name=self.name)

    @torch.no_grad()
    def predict(self, models: Sequence[ModelSample]) -> np.ndarray:
        if self.targets is not None and self.targets.constant is not None:
            return np.full(len(models), self.targets.constant, dtype=object)
        if self.network is None:
            raise RuntimeError("NFN.predict() called before fit()")
        if len(models) == 0:
            return self.targets.decode(torch.empty(0, self.targets.out_dim))
        with torch_threads(self.config.num_threads):
            self.network.eval()
            x = self._tensors(models, "weights")
            outputs = [self.network([t[i:i + 64] for t in x]) for i in range(0, len(models), 64)]
            output = torch.cat(outputs)
        return self.targets.decode(output)
