"""The permutation symmetries of the zoos' architectures: which axes of which tensors move
together when hidden units are renumbered without changing the function.

A :class:`PermutationSpec` has one :class:`PermutationGroup` per set of units that can be
renumbered freely: the channels of a residual stream (all blocks joined by identity shortcuts
share one permutation; a projection shortcut starts a new one), the channels inside a block,
a transformer's residual stream (LayerNorm is equivariant to it), the hidden units of each
MLP. A group lists every ``(state_dict key, axis)`` its permutation acts on: the rows of the
layer producing the units, their bias and normalization entries (BatchNorm weight, bias and
running statistics), and the columns of every layer reading them.

Attention heads: within a head, the query and key dims can be renumbered by one permutation
(their dot product is unchanged) and the value dims by another (with the output projection's
columns), and the heads themselves can be reordered. Such a group has ``heads > 1``: its
permutation maps each block of ``size / heads`` contiguous units onto a whole block, and
groups with the same ``head_set`` (query/key and value of one attention layer) move their
blocks by the same head permutation.

A permutation is a LongTensor ``perm`` per group with ``permuted[i] = original[perm[i]]``
along every listed axis (``index_select``). State dicts use the model's own key names
(``build_model(model_args).state_dict()``, or a published checkpoint after
``zoo_builder.models.load_weights``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Mapping

import torch
from torch import nn

from zoo_builder.models import build_model, reader_for, require_module

#: Structure checks name this file as the one to extend.
_require = partial(require_module, reader="zoo_builder/annotating/downstream/permutation.py")

StateDict = dict[str, torch.Tensor]
Permutations = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PermutationGroup:
    """Units permuted together: ``size`` units, the ``(key, axis)`` pairs they index.

    ``heads > 1``: the units are ``heads`` contiguous blocks that move as blocks (attention);
    groups with the same ``head_set`` share the block (head) permutation.
    """

    size: int
    axes: tuple[tuple[str, int], ...]
    heads: int = 1
    head_set: str | None = None

    @property
    def head_dim(self) -> int:
        return self.size // self.heads


@dataclass
class PermutationSpec:
    """Permutation groups by name; see the module docstring."""

    groups: dict[str, PermutationGroup]
    #: Keys of buffers (BatchNorm running statistics): permuted with their units, but not
    #: weights, so weight matching leaves them out of its objective.
    buffers: frozenset[str] = frozenset()
    #: key -> {axis: group name}, derived from ``groups``.
    key_axes: dict[str, dict[int, str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.key_axes = {}
        for name, group in self.groups.items():
            if group.size < 1 or group.heads < 1 or group.size % group.heads:
                raise ValueError(f"permutation group {name!r} has size {group.size} and "
                                 f"heads={group.heads}; the size must be a positive multiple "
                                 "of heads")
            for key, axis in group.axes:
                axes = self.key_axes.setdefault(key, {})
                if axis in axes:
                    raise ValueError(f"axis {axis} of {key!r} is in permutation groups "
                                     f"{axes[axis]!r} and {name!r}; each axis has one group")
                if name in axes.values():
                    raise ValueError(f"permutation group {name!r} acts on two axes of {key!r}; "
                                     "weight matching needs each group once per tensor")
                axes[axis] = name
        for members in self.head_sets.values():
            heads = {self.groups[m].heads for m in members}
            if len(heads) != 1:
                raise ValueError(f"groups {members} share a head permutation but have "
                                 f"different numbers of heads {sorted(heads)}")

    @property
    def head_sets(self) -> dict[str, list[str]]:
        """Head-set name -> the groups that share its head permutation."""
        sets: dict[str, list[str]] = {}
        for name, group in self.groups.items():
            if group.head_set is not None:
                sets.setdefault(group.head_set, []).append(name)
        return sets


# --------------------------------------------------------------------------- the specs


class _SpecBuilder:
    """Collects groups, adding only entries the model's state_dict has (biases are optional)."""

    def __init__(self, model: nn.Module):
        self.shapes = {key: value.shape for key, value in model.state_dict().items()}
        self.buffers = frozenset(name for name, _ in model.named_buffers())
        self.sizes: dict[str, tuple[int, int, str | None]] = {}
        self.axes: dict[str, list[tuple[str, int]]] = {}

    def group(self, name: str, size: int, heads: int = 1, head_set: str | None = None) -> str:
        if name in self.sizes:
            raise ValueError(f"permutation group {name!r} defined twice")
        self.sizes[name] = (size, heads, head_set)
        self.axes[name] = []
        return name

    def add(self, group: str, key: str, axis: int) -> None:
        if key not in self.shapes:
            return
        size = self.sizes[group][0]
        if self.shapes[key][axis] != size:
            raise ValueError(f"{key!r} has {self.shapes[key][axis]} entries on axis {axis}, but "
                             f"its permutation group {group!r} has {size} units")
        self.axes[group].append((key, axis))

    def outputs(self, group: str, module: str, norm: str | None = None) -> None:
        """The rows of ``module``'s weight and bias, and every entry of its ``norm``."""
        self.add(group, f"{module}.weight", 0)
        self.add(group, f"{module}.bias", 0)
        if norm is not None:
            for entry in ("weight", "bias", "running_mean", "running_var"):
                self.add(group, f"{norm}.{entry}", 0)

    def inputs(self, group: str, module: str) -> None:
        """The columns (input channels) of ``module``'s weight."""
        self.add(group, f"{module}.weight", 1)

    def finish(self) -> PermutationSpec:
        groups = {name: PermutationGroup(size, tuple(self.axes[name]), heads, head_set)
                  for name, (size, heads, head_set) in self.sizes.items()}
        permuted = {key for group in groups.values() for key, _ in group.axes}
        return PermutationSpec(groups, self.buffers & permuted)


def _pinn_spec(model: nn.Module, b: _SpecBuilder) -> None:
    names = []
    for name, module in model.layers.named_children():
        if isinstance(module, nn.Linear):
            names.append(f"layers.{name}")
        else:
            _require(module, (nn.Tanh, nn.ReLU, nn.GELU), f"layers.{name}")
    for name, following in zip(names[:-1], names[1:]):
        b.group(name, model.get_submodule(name).out_features)
        b.outputs(name, name)
        b.inputs(name, following)


def _resnet_spec(model: nn.Module, b: _SpecBuilder) -> None:
    from zoo_builder.models.resnet import BasicBlock, Bottleneck

    stream = b.group("conv1", model.conv1.out_channels)  # one group per residual stream
    b.outputs(stream, "conv1", "bn1")
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for index, block in enumerate(getattr(model, stage)):
            prefix = f"{stage}.{index}"
            _require(block, (BasicBlock, Bottleneck), prefix)
            convs = ["conv1", "conv2", "conv3"] if isinstance(block, Bottleneck) else \
                ["conv1", "conv2"]
            b.inputs(stream, f"{prefix}.conv1")
            if len(block.shortcut) > 0:
                _require(block.shortcut[0], nn.Conv2d, f"{prefix}.shortcut.0")
                _require(block.shortcut[1], nn.BatchNorm2d, f"{prefix}.shortcut.1")
                b.inputs(stream, f"{prefix}.shortcut.0")
                stream = b.group(f"{prefix}.shortcut", block.shortcut[0].out_channels)
                b.outputs(stream, f"{prefix}.shortcut.0", f"{prefix}.shortcut.1")
            for position, (conv, following) in enumerate(zip(convs, convs[1:]), start=1):
                inner = b.group(f"{prefix}.{conv}", getattr(block, conv).out_channels)
                b.outputs(inner, f"{prefix}.{conv}", f"{prefix}.bn{position}")
                b.inputs(inner, f"{prefix}.{following}")
            b.outputs(stream, f"{prefix}.{convs[-1]}", f"{prefix}.bn{len(convs)}")
    b.inputs(stream, "fc")


def _transformer_spec(model: nn.Module, b: _SpecBuilder,
                      stream_entries: list[tuple[str, int]]) -> None:
    from zoo_builder.models.vit import MLP, SelfAttention, TransformerBlock

    stream = b.group("stream", model.norm.normalized_shape[0])
    for key, axis in stream_entries:
        b.add(stream, key, axis)
    for index, block in enumerate(model.blocks):
        prefix, attention = f"blocks.{index}", f"blocks.{index}.attention"
        _require(block, TransformerBlock, prefix)
        _require(block.attention, SelfAttention, attention)
        _require(block.mlp, MLP, f"{prefix}.mlp")
        b.outputs(stream, f"{prefix}.norm1")
        b.outputs(stream, f"{prefix}.norm2")
        for role in ("query", "key", "value"):
            b.inputs(stream, f"{attention}.{role}")
        b.outputs(stream, f"{attention}.output")
        b.inputs(stream, f"{prefix}.mlp.fc1")
        b.outputs(stream, f"{prefix}.mlp.fc2")

        dim, heads = block.attention.query.out_features, block.attention.heads
        query_key = b.group(f"{attention}.query_key", dim, heads, head_set=attention)
        b.outputs(query_key, f"{attention}.query")
        b.outputs(query_key, f"{attention}.key")
        value = b.group(f"{attention}.value", dim, heads, head_set=attention)
        b.outputs(value, f"{attention}.value")
        b.inputs(value, f"{attention}.output")
        hidden = b.group(f"{prefix}.mlp", block.mlp.fc1.out_features)
        b.outputs(hidden, f"{prefix}.mlp.fc1")
        b.inputs(hidden, f"{prefix}.mlp.fc2")
    b.outputs(stream, "norm")


def _vit_spec(model: nn.Module, b: _SpecBuilder) -> None:
    entries = [("patch_embedding.weight", 0), ("patch_embedding.bias", 0), ("cls_token", 2),
               ("position_embedding", 2), ("head.weight", 1)]
    _transformer_spec(model, b, entries)


def _gpt_spec(model: nn.Module, b: _SpecBuilder) -> None:
    # The LM head is the token embedding (tied), so its one entry covers both.
    entries = [("token_embedding.weight", 1), ("position_embedding.weight", 1)]
    _transformer_spec(model, b, entries)


def _spec_builders() -> dict[type, Callable[[nn.Module, _SpecBuilder], None]]:
    from zoo_builder.models.gpt import GPT
    from zoo_builder.models.pinn import PINNMLP
    from zoo_builder.models.resnet import ResNet
    from zoo_builder.models.vit import ViT

    return {ResNet: _resnet_spec, ViT: _vit_spec, GPT: _gpt_spec, PINNMLP: _pinn_spec}


def permutation_spec(model_args: Mapping[str, Any]) -> PermutationSpec:
    """The permutation groups of the model ``model_args`` builds (read on the meta device)."""
    with torch.device("meta"):
        model = build_model(dict(model_args))
    build_spec = reader_for(_spec_builders(), model, model_args, "permutation spec")
    builder = _SpecBuilder(model)
    build_spec(model, builder)
    return builder.finish()


# --------------------------------------------------------------------------- using them


def _check_permutations(spec: PermutationSpec, perms: Mapping[str, torch.Tensor]) -> None:
    missing, unknown = sorted(set(spec.groups) - set(perms)), sorted(set(perms) - set(spec.groups))
    if missing or unknown:
        raise KeyError(f"permutations do not match the spec's groups: missing {missing[:5]}, "
                       f"unknown {unknown[:5]}; make them with random_permutation or "
                       "weight_matching on the same spec")
    for name, perm in perms.items():
        size = spec.groups[name].size
        if perm.shape != (size,) or not torch.equal(perm.sort().values.cpu(), torch.arange(size)):
            raise ValueError(f"permutation of group {name!r} is not a permutation of "
                             f"{size} units: {perm.tolist()[:10]}")
    head_perms: dict[str, torch.Tensor] = {}
    for name, group in spec.groups.items():
        if group.heads == 1:
            continue
        blocks = perms[name].cpu().view(group.heads, group.head_dim) // group.head_dim
        shared = head_perms.setdefault(group.head_set or name, blocks[:, 0])
        if not (blocks == blocks[:, :1]).all() or not torch.equal(blocks[:, 0], shared):
            raise ValueError(f"permutation of group {name!r} does not move its {group.heads} "
                             f"heads as whole blocks by the head permutation of its head set "
                             f"{group.head_set!r}; that would change the function")


def apply_permutation(spec: PermutationSpec, state_dict: Mapping[str, torch.Tensor],
                      perms: Mapping[str, torch.Tensor]) -> StateDict:
    """A new state_dict with every axis of ``spec`` permuted (``index_select`` by its group's
    permutation); entries no group acts on are kept as they are."""
    _check_permutations(spec, perms)
    out = dict(state_dict)
    for key, axes in spec.key_axes.items():
        if key not in out:
            raise KeyError(f"state_dict has no {key!r}, which permutation group "
                           f"{next(iter(axes.values()))!r} acts on; is it the model's own "
                           "state_dict (published keys renamed by "
                           "zoo_builder.models.load_weights)?")
        tensor = out[key]
        for axis, name in axes.items():
            tensor = tensor.index_select(axis, perms[name].to(tensor.device))
        out[key] = tensor
    return out


def random_permutation(spec: PermutationSpec,
                       generator: torch.Generator | None = None) -> Permutations:
    """A uniformly random permutation of every group (heads moved as whole blocks)."""
    head_perms = {}
    perms = {}
    for name, group in spec.groups.items():
        if group.heads == 1:
            perms[name] = torch.randperm(group.size, generator=generator)
            continue
        key = group.head_set if group.head_set is not None else name
        if key not in head_perms:
            head_perms[key] = torch.randperm(group.heads, generator=generator)
        perms[name] = torch.cat([head * group.head_dim
                                 + torch.randperm(group.head_dim, generator=generator)
                                 for head in head_perms[key].tolist()])
    return perms


def invert_permutation(perms: Mapping[str, torch.Tensor]) -> Permutations:
    """The permutations that undo ``perms`` (``apply`` one, then the other: the identity)."""
    return {name: torch.argsort(perm) for name, perm in perms.items()}


def identity_permutation(spec: PermutationSpec) -> Permutations:
    """The permutations that leave every group as it is."""
    return {name: torch.arange(group.size) for name, group in spec.groups.items()}


__all__ = ["PermutationGroup", "PermutationSpec", "apply_permutation", "identity_permutation",
           "invert_permutation", "permutation_spec", "random_permutation"]
