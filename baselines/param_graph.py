"""Parameter graphs (Lim et al. 2023, "Graph Metanetworks"): a model's weights as a graph.

One builder covers every architecture of the zoos (``resnet18``/``resnet50``, ``vit``,
``gpt2``, ``pinn_mlp``): it builds the module from ``model_args`` on the meta device to read
the structure and takes every value from the state_dict. Every weight, bias and
normalization entry of the state_dict lands in the graph; one left over, or a module the
builder does not know, raises an error naming it.

Layout
------
Nodes come in *blocks*, one per layer output, in the order data flows; ``data.node_blocks``
lists ``(name, start, count)`` with the module name (``"layer1.0.conv1"``) as name.

* ``input``: one node per input channel (images) or feature (PINN). GPT has none: its input is
  the vocabulary, summarized on the first stream nodes (below).
* one node per neuron / channel of every layer output: ``hidden`` (PINN), ``conv`` (ResNet
  convolutions; the channel after its BatchNorm), ``projection`` (the 1x1 projection
  shortcut's channels, with the shortcut's BatchNorm), ``stream`` (the transformer's residual
  stream after the patch/token embedding and after each attention and MLP), ``layernorm``,
  ``query``/``key``/``value`` (attention projections), ``head`` (one per attention head),
  ``mlp`` (transformer MLP hidden units).
* ``output``: one node per logit (``fc``, ``head``, ``layers.output``). GPT's LM head is tied to
  the token embedding; it has no vocab nodes, its final LayerNorm nodes end the graph.

Node features (``x``, :data:`NODE_FEATURES`): ``depth`` (layer index / deepest index, in
[0, 1]; the same for all nodes of a block, so it is no positional id), ``bias`` (the bias of
the layer producing the node, 0 without one), normalization as affine per-channel features
``norm_weight``, ``norm_bias``, ``norm_mean``, ``norm_var`` (BatchNorm: weight, bias, running
mean and variance; LayerNorm: weight and bias with mean 0 and variance 1; nodes without a
normalization carry the identity 1, 0, 0, 1), embedding statistics ``embed_*`` (GPT token
embedding: mean, std, min, max over the vocabulary of each dimension, on the first stream
nodes and, since the LM head is tied to it, on the final LayerNorm nodes) and ``position_*``
(the same over positions of the learned position embedding, ViT and GPT), ``cls_token``
(ViT), then a one-hot of :data:`NODE_TYPES`.

Edges (``edge_index`` source -> target in the direction data flows, ``edge_attr``,
:data:`EDGE_FEATURES`): ``weight``, the kernel position ``dy``, ``dx`` (the entry's row and
column in the kernel mapped to [-1, 1]; 0 for a 1x1 kernel and for non-conv edges), then a
one-hot of :data:`EDGE_TYPES`.

* one edge per weight: ``linear`` (PINN layers, classifier heads), ``conv`` (one parallel edge
  per kernel entry: c_out * c_in * kh * kw edges; also the ViT patch embedding),
  ``projection`` (1x1 projection shortcut), ``query``/``key``/``value``/``attention_output``,
  ``mlp_in``/``mlp_out`` (transformer MLP fc1/fc2).
* fixed edges of weight 1: ``residual`` (identity shortcut, one edge per channel, from the
  block input to the block output; a projection shortcut's channels are joined to the block
  output the same way), ``norm`` (stream channel -> its LayerNorm node), ``attention_pair``
  (query dim j -> key dim j: they multiply in the attention score), ``attention_head``
  (key dims of a head -> the head's node -> value dims of the head).

The graph is invariant to the weight-space symmetries: :func:`permute_hidden_units` permutes
hidden units without changing the model's function, and the graph of the permuted weights is
the same graph with its nodes relabeled within blocks (the tests check both).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import nn

from zoo_builder.models import reader_for, require_module

#: Structure checks name this file as the one to extend.
_require = partial(require_module, reader="baselines/param_graph.py")

if TYPE_CHECKING:
    from torch_geometric.data import Data

    from zoo_builder.annotating.downstream.permutation import PermutationSpec

NODE_TYPES = ("input", "hidden", "conv", "projection", "stream", "layernorm", "query", "key",
              "value", "head", "mlp", "output")
EDGE_TYPES = ("linear", "conv", "projection", "residual", "norm", "query", "key", "value",
              "attention_output", "mlp_in", "mlp_out", "attention_pair", "attention_head")
NODE_VALUE_FEATURES = ("depth", "bias", "norm_weight", "norm_bias", "norm_mean", "norm_var",
                       "embed_mean", "embed_std", "embed_min", "embed_max", "position_mean",
                       "position_std", "position_min", "position_max", "cls_token")
EDGE_VALUE_FEATURES = ("weight", "dy", "dx")
NODE_FEATURES = NODE_VALUE_FEATURES + tuple(f"type:{t}" for t in NODE_TYPES)
EDGE_FEATURES = EDGE_VALUE_FEATURES + tuple(f"type:{t}" for t in EDGE_TYPES)

#: state_dict entries that carry no information about the function (BatchNorm's step counter)
IGNORED_SUFFIXES = ("num_batches_tracked",)

_NODE_COLUMN = {name: i for i, name in enumerate(NODE_VALUE_FEATURES)}
_IDENTITY_NORM = {"norm_weight": 1.0, "norm_bias": 0.0, "norm_mean": 0.0, "norm_var": 1.0}


def normalize_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Published key names (``module.`` prefix, torchvision's ``downsample``) -> ours."""
    from zoo_builder.models import PUBLISHED_KEY_RENAMES

    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        for published, ours in PUBLISHED_KEY_RENAMES.items():
            key = key.replace(published, ours)
        out[key] = value
    return out


def build_structure(model_args: Mapping[str, Any]) -> nn.Module:
    """The model of ``model_args`` on the meta device: its modules and shapes, no memory."""
    from zoo_builder.models import build_model

    with torch.device("meta"):
        return build_model(dict(model_args))


class _GraphBuilder:
    """Collects node blocks and edge blocks, reading (and ticking off) state_dict entries."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor]):
        self.state = state_dict
        self.used: set[str] = set()
        self.blocks: list[tuple[str, int, int]] = []
        self.node_features: list[torch.Tensor] = []
        self.depths: list[tuple[int, int]] = []  # (block index, depth)
        self.edge_index: list[torch.Tensor] = []
        self.edge_values: list[torch.Tensor] = []
        self.edge_types: list[tuple[int, int]] = []  # (type index, edge count) per edge block
        self.num_nodes = 0

    def take(self, key: str) -> torch.Tensor:
        self.used.add(key)
        return self.state[key].detach().float().cpu()

    def nodes(self, name: str, count: int, node_type: str, depth: int,
              values: Mapping[str, torch.Tensor | float] | None = None) -> int:
        """Add a block of ``count`` nodes; returns the index of its first node."""
        features = torch.zeros(count, len(NODE_FEATURES))
        for column, value in {**_IDENTITY_NORM, **(values or {})}.items():
            features[:, _NODE_COLUMN[column]] = value
        features[:, len(NODE_VALUE_FEATURES) + NODE_TYPES.index(node_type)] = 1.0
        start = self.num_nodes
        self.blocks.append((name, start, count))
        self.depths.append((len(self.node_features), depth))
        self.node_features.append(features)
        self.num_nodes += count
        return start

    def module_nodes(self, name: str, count: int, node_type: str, depth: int,
                     bias_key: str | None = None, norm: str | None = None,
                     norm_kind: str = "batchnorm", **values: torch.Tensor) -> int:
        """Nodes with the bias of ``bias_key`` (if in the state_dict) and normalization ``norm``."""
        features: dict[str, torch.Tensor | float] = dict(values)
        if bias_key is not None and bias_key in self.state:
            features["bias"] = self.take(bias_key)
        if norm is not None:
            features["norm_weight"] = self.take(f"{norm}.weight")
            if f"{norm}.bias" in self.state:
                features["norm_bias"] = self.take(f"{norm}.bias")
            if norm_kind == "batchnorm":
                features["norm_mean"] = self.take(f"{norm}.running_mean")
                features["norm_var"] = self.take(f"{norm}.running_var")
        return self.nodes(name, count, node_type, depth, features)

    def _edges(self, index: torch.Tensor, values: torch.Tensor, edge_type: str) -> None:
        """An edge block: ``index`` (2, E) source and target nodes, ``values`` (E, 3)."""
        self.edge_index.append(index.reshape(2, -1))
        self.edge_values.append(values.reshape(-1, len(EDGE_VALUE_FEATURES)))
        self.edge_types.append((EDGE_TYPES.index(edge_type),
                                values.numel() // len(EDGE_VALUE_FEATURES)))

    def dense(self, source: int, target: int, weight: torch.Tensor, edge_type: str) -> None:
        """Edges for a Linear weight (out, in): target + o <- source + i, one per entry."""
        self.conv(source, target, weight[:, :, None, None], edge_type)

    def conv(self, source: int, target: int, weight: torch.Tensor, edge_type: str) -> None:
        """Parallel edges for a Conv2d weight (out, in, kh, kw), each with its kernel position."""
        n_out, n_in, kh, kw = weight.shape
        index = torch.empty(2, n_out, n_in, kh, kw, dtype=torch.long)
        index[0] = (source + torch.arange(n_in)).view(1, n_in, 1, 1)
        index[1] = (target + torch.arange(n_out)).view(n_out, 1, 1, 1)
        values = torch.empty(n_out, n_in, kh, kw, len(EDGE_VALUE_FEATURES))
        values[..., 0] = weight
        values[..., 1] = _kernel_positions(kh).view(1, 1, kh, 1)
        values[..., 2] = _kernel_positions(kw).view(1, 1, 1, kw)
        self._edges(index, values, edge_type)

    def fixed(self, source: torch.Tensor | int, target: torch.Tensor | int, count: int,
              edge_type: str) -> None:
        """``count`` edges of weight 1: source + j -> target + j (or explicit index tensors)."""
        arange = torch.arange(count)
        source = source + arange if isinstance(source, int) else source
        target = target + arange if isinstance(target, int) else target
        values = torch.zeros(count, len(EDGE_VALUE_FEATURES))
        values[:, 0] = 1.0
        self._edges(torch.stack([source, target]), values, edge_type)

    def finish(self, model_name: str) -> "Data":
        from torch_geometric.data import Data

        ignored = {k for k in self.state if k.endswith(IGNORED_SUFFIXES)}
        unused = sorted(set(self.state) - self.used - ignored)
        if unused:
            raise ValueError(f"the parameter graph of {model_name} does not place state_dict "
                             f"entries {unused[:6]}; the model has modules the graph builder "
                             "does not know (extend baselines/param_graph.py)")
        deepest = max(depth for _, depth in self.depths) or 1
        for index, depth in self.depths:
            self.node_features[index][:, _NODE_COLUMN["depth"]] = depth / deepest
        values = torch.cat(self.edge_values)
        edge_attr = torch.zeros(len(values), len(EDGE_FEATURES))
        edge_attr[:, :len(EDGE_VALUE_FEATURES)] = values
        types = torch.repeat_interleave(torch.tensor([t for t, _ in self.edge_types]),
                                        torch.tensor([n for _, n in self.edge_types]))
        edge_attr[torch.arange(len(values)), len(EDGE_VALUE_FEATURES) + types] = 1.0
        data = Data(x=torch.cat(self.node_features),
                    edge_index=torch.cat(self.edge_index, dim=1), edge_attr=edge_attr)
        data.node_blocks = list(self.blocks)
        return data


def _kernel_positions(size: int) -> torch.Tensor:
    """Kernel rows (or columns) 0 .. size - 1 mapped to [-1, 1]; 0 for a kernel of size 1."""
    return torch.linspace(-1.0, 1.0, size) if size > 1 else torch.zeros(1)


def _column_statistics(table: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
    """Mean, std, min and max of each column of ``table`` (rows: vocabulary or positions)."""
    return {f"{prefix}_mean": table.mean(0), f"{prefix}_std": table.std(0, unbiased=False),
            f"{prefix}_min": table.min(0).values, f"{prefix}_max": table.max(0).values}


def _pinn_graph(model: nn.Module, b: _GraphBuilder) -> None:
    linears = []
    for name, module in model.layers.named_children():
        if isinstance(module, nn.Linear):
            linears.append((f"layers.{name}", module))
        else:
            _require(module, (nn.Tanh, nn.ReLU, nn.GELU), f"layers.{name}")
    previous = b.nodes("input", linears[0][1].in_features, "input", 0)
    for depth, (name, layer) in enumerate(linears, start=1):
        node_type = "output" if name == "layers.output" else "hidden"
        current = b.module_nodes(name, layer.out_features, node_type, depth, f"{name}.bias")
        b.dense(previous, current, b.take(f"{name}.weight"), "linear")
        previous = current


def _resnet_graph(model: nn.Module, b: _GraphBuilder) -> None:
    from zoo_builder.models.resnet import BasicBlock, Bottleneck

    stream = b.nodes("input", model.conv1.in_channels, "input", 0)
    stem = b.module_nodes("conv1", model.conv1.out_channels, "conv", 1, norm="bn1")
    b.conv(stream, stem, b.take("conv1.weight"), "conv")
    stream, depth = stem, 1
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for index, block in enumerate(getattr(model, stage)):
            prefix = f"{stage}.{index}"
            _require(block, (BasicBlock, Bottleneck), prefix)
            block_input, block_depth = stream, depth
            convs = ("conv1", "conv2", "conv3") if isinstance(block, Bottleneck) else \
                ("conv1", "conv2")
            for position, conv in enumerate(convs, start=1):
                depth = block_depth + position
                layer = getattr(block, conv)
                current = b.module_nodes(f"{prefix}.{conv}", layer.out_channels, "conv", depth,
                                         norm=f"{prefix}.bn{position}")
                b.conv(stream, current, b.take(f"{prefix}.{conv}.weight"), "conv")
                stream = current
            out_channels = getattr(block, convs[-1]).out_channels
            if len(block.shortcut) == 0:
                b.fixed(block_input, stream, out_channels, "residual")
            else:
                _require(block.shortcut[0], nn.Conv2d, f"{prefix}.shortcut.0")
                _require(block.shortcut[1], nn.BatchNorm2d, f"{prefix}.shortcut.1")
                projection = b.module_nodes(f"{prefix}.shortcut", out_channels, "projection",
                                            block_depth + 1, norm=f"{prefix}.shortcut.1")
                b.conv(block_input, projection, b.take(f"{prefix}.shortcut.0.weight"),
                       "projection")
                b.fixed(projection, stream, out_channels, "residual")
    output = b.module_nodes("fc", model.fc.out_features, "output", depth + 1, "fc.bias")
    b.dense(stream, output, b.take("fc.weight"), "linear")


def _transformer_block(block: nn.Module, prefix: str, stream: int, depth: int,
                       b: _GraphBuilder) -> int:
    """Nodes and edges of one pre-norm block; returns the first node of its output stream."""
    from zoo_builder.models.vit import MLP, SelfAttention

    _require(block.attention, SelfAttention, f"{prefix}.attention")
    _require(block.mlp, MLP, f"{prefix}.mlp")
    attention, dim = f"{prefix}.attention", block.norm1.normalized_shape[0]
    norm1 = b.module_nodes(f"{prefix}.norm1", dim, "layernorm", depth, norm=f"{prefix}.norm1",
                           norm_kind="layernorm")
    b.fixed(stream, norm1, dim, "norm")
    projections = {}
    for role in ("query", "key", "value"):
        projections[role] = b.module_nodes(f"{attention}.{role}", dim, role, depth + 1,
                                           f"{attention}.{role}.bias")
        b.dense(norm1, projections[role], b.take(f"{attention}.{role}.weight"), role)
    heads = block.attention.heads
    head_nodes = b.nodes(f"{attention}.heads", heads, "head", depth + 1)
    b.fixed(projections["query"], projections["key"], dim, "attention_pair")
    head_of_dim = head_nodes + torch.arange(dim) // (dim // heads)
    b.fixed(projections["key"] + torch.arange(dim), head_of_dim, dim, "attention_head")
    b.fixed(head_of_dim, projections["value"] + torch.arange(dim), dim, "attention_head")
    after_attention = b.module_nodes(f"{attention}.output", dim, "stream", depth + 2,
                                     f"{attention}.output.bias")
    b.dense(projections["value"], after_attention, b.take(f"{attention}.output.weight"),
            "attention_output")
    b.fixed(stream, after_attention, dim, "residual")
    norm2 = b.module_nodes(f"{prefix}.norm2", dim, "layernorm", depth + 3, norm=f"{prefix}.norm2",
                           norm_kind="layernorm")
    b.fixed(after_attention, norm2, dim, "norm")
    hidden = b.module_nodes(f"{prefix}.mlp.fc1", block.mlp.fc1.out_features, "mlp", depth + 4,
                            f"{prefix}.mlp.fc1.bias")
    b.dense(norm2, hidden, b.take(f"{prefix}.mlp.fc1.weight"), "mlp_in")
    after_mlp = b.module_nodes(f"{prefix}.mlp.fc2", dim, "stream", depth + 5,
                               f"{prefix}.mlp.fc2.bias")
    b.dense(hidden, after_mlp, b.take(f"{prefix}.mlp.fc2.weight"), "mlp_out")
    b.fixed(after_attention, after_mlp, dim, "residual")
    return after_mlp


_BLOCK_DEPTH = 5  # depth steps a transformer block spans


def _vit_graph(model: nn.Module, b: _GraphBuilder) -> None:
    patch = model.patch_embedding
    inputs = b.nodes("input", patch.in_channels, "input", 0)
    position = b.take("position_embedding")[0]  # (1 + patches, dim)
    stream = b.module_nodes("patch_embedding", patch.out_channels, "stream", 1,
                            "patch_embedding.bias", cls_token=b.take("cls_token").reshape(-1),
                            **_column_statistics(position, "position"))
    b.conv(inputs, stream, b.take("patch_embedding.weight"), "conv")
    depth = 1
    for index, block in enumerate(model.blocks):
        stream = _transformer_block(block, f"blocks.{index}", stream, depth + 1, b)
        depth += _BLOCK_DEPTH + 1
    dim = model.norm.normalized_shape[0]
    norm = b.module_nodes("norm", dim, "layernorm", depth + 1, norm="norm", norm_kind="layernorm")
    b.fixed(stream, norm, dim, "norm")
    output = b.module_nodes("head", model.head.out_features, "output", depth + 2, "head.bias")
    b.dense(norm, output, b.take("head.weight"), "linear")


def _gpt_graph(model: nn.Module, b: _GraphBuilder) -> None:
    tokens = _column_statistics(b.take("token_embedding.weight"), "embed")
    positions = _column_statistics(b.take("position_embedding.weight"), "position")
    dim = model.token_embedding.embedding_dim
    stream = b.nodes("token_embedding", dim, "stream", 0, {**tokens, **positions})
    depth = 0
    for index, block in enumerate(model.blocks):
        stream = _transformer_block(block, f"blocks.{index}", stream, depth + 1, b)
        depth += _BLOCK_DEPTH + 1
    norm = b.module_nodes("norm", dim, "layernorm", depth + 1, norm="norm",
                          norm_kind="layernorm", **tokens)  # the LM head is the token embedding
    b.fixed(stream, norm, dim, "norm")


def _builders() -> dict[type, Callable[[nn.Module, _GraphBuilder], None]]:
    from zoo_builder.models.gpt import GPT
    from zoo_builder.models.pinn import PINNMLP
    from zoo_builder.models.resnet import ResNet
    from zoo_builder.models.vit import ViT

    return {ResNet: _resnet_graph, ViT: _vit_graph, GPT: _gpt_graph, PINNMLP: _pinn_graph}


def _check_shapes(model: nn.Module, state: Mapping[str, torch.Tensor],
                  model_args: Mapping[str, Any]) -> None:
    """Every entry the model has is in ``state``, with the model's shape."""
    for key, expected in model.state_dict().items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        if key not in state:
            raise KeyError(f"state_dict has no {key!r}, which the model of model_args "
                           f"{dict(model_args)} has; the weights belong to another architecture")
        if tuple(state[key].shape) != tuple(expected.shape):
            raise ValueError(f"state_dict entry {key!r} has shape {list(state[key].shape)}, but "
                             f"the model of model_args {dict(model_args)} has "
                             f"{list(expected.shape)}; the weights belong to another width")


def parameter_graph(model_args: Mapping[str, Any],
                    state_dict: Mapping[str, torch.Tensor]) -> "Data":
    """The parameter graph (a ``torch_geometric.data.Data``) of a model; see the module doc."""
    model = build_structure(model_args)
    build_graph = reader_for(_builders(), model, model_args, "parameter-graph builder")
    state = normalize_keys(state_dict)
    _check_shapes(model, state, model_args)
    builder = _GraphBuilder(state)
    build_graph(model, builder)
    return builder.finish(f"model type {model_args.get('type')!r}")


# --------------------------------------------------------------------------- weight symmetries


def _node_block_permutations(model: nn.Module, spec: "PermutationSpec",
                             perms: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The permutations of ``spec``'s groups as permutations of :func:`parameter_graph`'s node
    blocks: a block of layer outputs moves with the group of its weight's rows (GPT's token
    embedding: its columns), a projection shortcut's block with its convolution's, and an
    attention layer's head nodes with its query/key heads."""
    from zoo_builder.models.vit import SelfAttention

    blocks = {}
    for name, module in model.named_modules():
        axis = 0
        if isinstance(module, SelfAttention):
            group = spec.groups[f"{name}.query_key"]
            heads = perms[f"{name}.query_key"].view(group.heads, group.head_dim)[:, 0]
            blocks[f"{name}.heads"] = heads // group.head_dim
            continue
        if isinstance(module, nn.Embedding) and name == "token_embedding":
            axis = 1
        elif not isinstance(module, (nn.Conv2d, nn.Linear, nn.LayerNorm)):
            continue
        block = name.removesuffix(".shortcut.0") + ".shortcut" \
            if name.endswith(".shortcut.0") else name
        group = spec.key_axes.get(f"{name}.weight", {}).get(axis)
        if group is not None:
            blocks[block] = perms[group]
    return blocks


def permute_hidden_units(model_args: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor],
                         generator: torch.Generator | None = None
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Randomly permute hidden units of a model without changing its function.

    The symmetries are :func:`zoo_builder.annotating.downstream.permutation.permutation_spec`'s. PINN:
    the neurons of each hidden layer. ResNet: the channels inside each block and of each
    residual stream (one permutation shared by all blocks joined by identity shortcuts).
    Transformers: the residual stream (LayerNorm is equivariant to it), each MLP's hidden
    units, and per attention layer the heads plus, within each head, the query/key dims (one
    permutation for both) and the value dims (with the output projection's inputs).

    Returns the permuted state_dict (keys normalized as in :func:`normalize_keys`) and, per
    permuted node block of :func:`parameter_graph`, the permutation: new unit ``i`` of that
    block is old unit ``perm[i]``.
    """
    from zoo_builder.annotating.downstream.permutation import (apply_permutation, permutation_spec,
                                                    random_permutation)

    spec = permutation_spec(model_args)
    perms = random_permutation(spec, generator)
    state = apply_permutation(spec, normalize_keys(state_dict), perms)
    return state, _node_block_permutations(build_structure(model_args), spec, perms)


def node_relabeling(graph, perms: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """For the permutations of :func:`permute_hidden_units`: ``new[old node] = new node`` index
    map from the graph of the original weights to the graph of the permuted ones."""
    new = torch.arange(graph.num_nodes)
    blocks = {name: (start, count) for name, start, count in graph.node_blocks}
    for name, perm in perms.items():
        if name not in blocks:
            raise KeyError(f"permutation for node block {name!r}, which the graph lacks; "
                           f"blocks: {sorted(blocks)[:8]} ...")
        start, count = blocks[name]
        if len(perm) != count:
            raise ValueError(f"permutation of {len(perm)} units for node block {name!r} of "
                             f"{count} nodes")
        new[start + perm] = start + torch.arange(count)
    return new


__all__ = ["EDGE_FEATURES", "EDGE_TYPES", "NODE_FEATURES", "NODE_TYPES", "node_relabeling",
           "parameter_graph", "permute_hidden_units"]

