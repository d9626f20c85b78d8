"""``gmn``: a graph metanetwork (Lim et al. 2023) on parameter graphs.

Each model becomes its parameter graph (:mod:`baselines.param_graph`: a node per neuron or
channel, an edge per weight, a parallel edge per conv kernel entry). An edge-updating
message-passing network reads it:

* encoders: node features (value columns standardized on the training graphs, plus the log
  in- and out-degree, plus the one-hot node type) through a 2-layer MLP; edge values (weight,
  kernel position; standardized) through a linear map plus a learned embedding of the edge
  type (the same as a linear map of the one-hot type);
* ``layers`` rounds of: each edge from (source node, target node, edge)
  ``e <- e + W relu(e + A x_src + B x_dst)``, then each node from its edges
  ``x <- LN(x + MLP([x, mean of incoming e, mean of outgoing e]))``;
* a readout: mean and max over the nodes and over the edges of each graph, then an MLP head.

Every step is the same function at every node and edge, and the aggregations are means and
maxima, so the prediction does not depend on the order of nodes or edges, hence not on the
order of hidden neurons; one network reads models of any width and of every architecture the
graph builder knows. Edges outnumber nodes ~500:1 in a ResNet, so edge states are narrow
(``edge_hidden=8``) and parallel edges are processed per (source, target) pair where they
share work (:class:`CompactGraph`); the results are those of plain edge-by-edge message passing.
Gathers and scatters are plain ``index_select``/``index_add`` over these pairs; the graphs
themselves come from :mod:`baselines.param_graph` as ``torch_geometric.data.Data``.

Training (:class:`GMN`): regression targets standardized with MSE, classification (string
labels) with cross-entropy; Adam; early stopping on the validation loss, keeping the best
state. Each model's graph is built once per ``fit`` and cached in compact form (about 20 bytes
per edge). On the mini digits zoo (54 training ResNet-18s of widths 1-16, 7.4M edges) an
epoch takes 5-9 s on the 2-core reference CPU, and a fit 2-3 minutes (see ``num_threads``).

Augmentation, honestly: the issue asks for random weight-space permutations (permuting the
hidden units of a layer, which leaves the model's function unchanged). In a parameter graph
such a permutation only renumbers nodes (:func:`baselines.param_graph.permute_hidden_units`;
the tests check that the permuted weights give the same graph with its nodes renumbered), so
it is applied to the cached graphs directly: with ``augment=True`` every training graph gets a
random renumbering of all its nodes and a random order of its edges each time it is used,
which includes every weight-space permutation and needs no rebuilding. Since the GMN is
invariant to renumbering, this changes its outputs only through floating-point summation
order: it adds no information and no real regularization. It is kept (cheap: a few gathers
per graph) because the issue asks for it and because it keeps training honest about
invariance: nothing may depend on node order. A metanetwork that is not invariant would gain
from it; this one does not.

Determinism: on the CPU a seed gives the same predictions. CUDA's ``index_add`` is atomic, so
there results may differ in the last bits between runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from baselines.targets import StandardizedTargets
from baselines.param_graph import (EDGE_TYPES, EDGE_VALUE_FEATURES, NODE_VALUE_FEATURES,
                                   parameter_graph)
from baselines.training import torch_threads, train_early_stopping
from wslbench.predictor import ModelSample, NotApplicableError, Predictor

#: columns of ``x`` that are values (standardized), before the one-hot node type
N_NODE_VALUES = len(NODE_VALUE_FEATURES) + 2  # + log1p in-degree, log1p out-degree
N_EDGE_VALUES = len(EDGE_VALUE_FEATURES)


class CompactGraph(NamedTuple):
    """A parameter graph as the GMN reads it, stored small and grouped for speed.

    Parallel edges (the kernel entries of one convolution weight ``[o, i]``) share their
    endpoints, so edges are grouped by their (source, target) *pair*: ``pairs`` lists each
    pair once, sorted by multiplicity ``k`` (``segments = ((k, number of pairs), ...)``), and
    the edges of the ``p``-th pair of a segment are rows ``p * k .. p * k + k - 1`` of that
    segment's rows of ``edge_values``. Gathers from and scatters to nodes then run once per
    pair instead of once per edge; the arithmetic is that of edge by edge. Parallel edges come
    from one weight tensor, so they share their type, stored once per pair.
    """

    x: torch.Tensor            # (N, node values + 2 log-degrees + node type one-hot), float32
    pairs: torch.Tensor        # (2, P) source and target node of each pair, int32
    segments: tuple[tuple[int, int], ...]  # (multiplicity k, number of pairs), k ascending
    edge_values: torch.Tensor  # (E, 3): weight, dy, dx
    pair_type: torch.Tensor    # (P,) uint8 index into EDGE_TYPES

    @property
    def num_edges(self) -> int:
        return len(self.edge_values)


def compact(graph) -> CompactGraph:
    """The :class:`CompactGraph` of a ``parameter_graph`` ``Data``; adds the log degrees.

    Non-finite weights (a diverged model's inf or NaN) become 0: one such edge would turn
    every message, and so the whole prediction, into NaN."""
    n, (source, target) = graph.num_nodes, graph.edge_index
    degrees = torch.stack([torch.bincount(target, minlength=n),
                           torch.bincount(source, minlength=n)], dim=1).float().log1p()
    values = len(NODE_VALUE_FEATURES)
    x = torch.cat([graph.x[:, :values], degrees, graph.x[:, values:]], dim=1).float()
    keys, pair_of_edge, counts = torch.unique(source * n + target, return_inverse=True,
                                              return_counts=True)
    n_pairs = len(keys)
    pair_order = torch.argsort(counts * n_pairs + torch.arange(n_pairs))
    rank = torch.empty_like(pair_order)
    rank[pair_order] = torch.arange(n_pairs)
    edge_order = torch.argsort(rank[pair_of_edge], stable=True)
    pairs = torch.stack([keys[pair_order] // n, keys[pair_order] % n]).to(torch.int32)
    multiplicities, sizes = torch.unique_consecutive(counts[pair_order], return_counts=True)
    edge_attr = graph.edge_attr[edge_order]
    edge_type = edge_attr[:, N_EDGE_VALUES:].argmax(1).to(torch.uint8)
    first_edge = torch.cumsum(counts[pair_order], 0) - counts[pair_order]
    pair_type = edge_type[first_edge]
    if not torch.equal(pair_type.repeat_interleave(counts[pair_order]), edge_type):
        raise ValueError("parallel edges of different types join the same two nodes; the "
                         "parameter graph is malformed")
    finite = functools.partial(torch.nan_to_num, nan=0.0, posinf=0.0, neginf=0.0)
    return CompactGraph(finite(x), pairs, tuple(zip(multiplicities.tolist(), sizes.tolist())),
                        finite(edge_attr[:, :N_EDGE_VALUES].contiguous().float()), pair_type)


def relabel(graph: CompactGraph, generator: torch.Generator) -> CompactGraph:
    """The same graph with its nodes renumbered and its edges reordered at random (pairs
    within their segment, keeping each pair's parallel edges together)."""
    n = len(graph.x)
    node_order = torch.randperm(n, generator=generator)  # new node j is old node_order[j]
    new_id = torch.empty(n, dtype=torch.int32)
    new_id[node_order] = torch.arange(n, dtype=torch.int32)
    pair_orders, edge_orders, pair_start, edge_start = [], [], 0, 0
    for k, count in graph.segments:
        order = torch.randperm(count, generator=generator)
        pair_orders.append(order + pair_start)
        edge_orders.append(((order * k).unsqueeze(1) + torch.arange(k)).reshape(-1) + edge_start)
        pair_start, edge_start = pair_start + count, edge_start + count * k
    pair_order, edge_order = torch.cat(pair_orders), torch.cat(edge_orders)
    return CompactGraph(graph.x[node_order], new_id[graph.pairs[:, pair_order].long()],
                        graph.segments, graph.edge_values[edge_order],
                        graph.pair_type[pair_order])


class Segment(NamedTuple):
    """The edges of multiplicity ``k`` of a batch: pair ``p`` owns edge rows p*k .. p*k+k-1,
    and graph ``i`` owns pairs ``pair_ptr[i]:pair_ptr[i + 1]``."""

    k: int
    source: torch.Tensor
    target: torch.Tensor
    pair_type: torch.Tensor
    edge_values: torch.Tensor
    pair_ptr: list[int]


class GraphBatch(NamedTuple):
    """Graphs stacked into one disconnected graph; graph ``i`` owns nodes
    ``node_ptr[i]:node_ptr[i + 1]``."""

    x: torch.Tensor
    segments: list[Segment]
    node_ptr: list[int]

    @property
    def num_graphs(self) -> int:
        return len(self.node_ptr) - 1


def collate(graphs: Sequence[CompactGraph], device: str | torch.device = "cpu") -> GraphBatch:
    """Stack graphs; the pairs of one multiplicity from all graphs form one segment."""
    node_ptr = [0]
    for g in graphs:
        node_ptr.append(node_ptr[-1] + len(g.x))
    parts: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
    for index, g in enumerate(graphs):
        pair_start = edge_start = 0
        for k, count in g.segments:
            parts.setdefault(k, {})[index] = (
                g.pairs[:, pair_start:pair_start + count].long() + node_ptr[index],
                g.pair_type[pair_start:pair_start + count],
                g.edge_values[edge_start:edge_start + count * k])
            pair_start, edge_start = pair_start + count, edge_start + count * k
    segments = []
    for k, by_graph in sorted(parts.items()):
        pair_ptr = [0]
        for index in range(len(graphs)):
            pair_ptr.append(pair_ptr[-1] + (by_graph[index][0].shape[1] if index in by_graph
                                            else 0))
        chunks = [by_graph[index] for index in sorted(by_graph)]
        pairs = torch.cat([p for p, _, _ in chunks], dim=1).to(device)
        segments.append(Segment(k, pairs[0], pairs[1],
                                torch.cat([t for _, t, _ in chunks]).long().to(device),
                                torch.cat([v for _, _, v in chunks]).to(device), pair_ptr))
    return GraphBatch(torch.cat([g.x for g in graphs]).to(device), segments, node_ptr)


def _pool(x: torch.Tensor, e: Sequence[torch.Tensor], batch: GraphBatch) -> torch.Tensor:
    """Per graph: mean and max of its node states and of its edge states."""
    rows = []
    for i in range(batch.num_graphs):
        nodes = x[batch.node_ptr[i]:batch.node_ptr[i + 1]]
        sums, maxima, count = [], [], 0
        for segment, states in zip(batch.segments, e):
            a, b = segment.pair_ptr[i] * segment.k, segment.pair_ptr[i + 1] * segment.k
            if b > a:
                sums.append(states[a:b].sum(0))
                maxima.append(states[a:b].amax(0))
                count += b - a
        rows.append(torch.cat([nodes.mean(0), nodes.amax(0), sum(sums) / count,
                               torch.stack(maxima).amax(0)]))
    return torch.stack(rows)


class EdgeNodeLayer(nn.Module):
    """One round: every edge from (source node, target node, edge), then every node from the
    means of its incoming and of its outgoing edges.

    Edge update ``e <- e + W relu(e + A x_src + B x_dst)``: the linear map of [x_src, x_dst, e]
    is split so that the node parts are computed per node and gathered per pair.
    """

    def __init__(self, hidden: int, edge_hidden: int):
        super().__init__()
        self.source = nn.Linear(hidden, edge_hidden)
        self.target = nn.Linear(hidden, edge_hidden, bias=False)
        self.edge_out = nn.Linear(edge_hidden, edge_hidden)
        self.node_mlp = nn.Sequential(nn.Linear(hidden + 2 * edge_hidden, hidden), nn.ReLU(),
                                      nn.Linear(hidden, hidden))
        self.node_norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, e: Sequence[torch.Tensor], segments: Sequence[Segment],
                inverse_in: torch.Tensor, inverse_out: torch.Tensor
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        from_source, from_target = self.source(x), self.target(x)
        incoming = outgoing = from_source.new_zeros(from_source.shape)
        updated = []
        for segment, states in zip(segments, e):
            endpoints = (from_source.index_select(0, segment.source)
                         + from_target.index_select(0, segment.target))
            states = states.view(len(endpoints), segment.k, -1)
            states = states + self.edge_out(F.relu(states + endpoints.unsqueeze(1)))
            per_pair = states.sum(1)
            incoming = incoming.index_add(0, segment.target, per_pair)
            outgoing = outgoing.index_add(0, segment.source, per_pair)
            updated.append(states.reshape(-1, states.shape[-1]))
        x = x + self.node_mlp(torch.cat([x, incoming * inverse_in, outgoing * inverse_out], dim=1))
        return self.node_norm(x), updated


class GraphMetanetwork(nn.Module):
    """Edge-updating message passing plus mean/max readout; see the module docstring.

    ``node_mean``/``node_std`` and ``edge_mean``/``edge_std`` standardize the value columns of
    the inputs; :meth:`set_standardization` sets them from training graphs.
    """

    def __init__(self, node_features: int, out_dim: int, hidden: int = 32, edge_hidden: int = 8,
                 layers: int = 3):
        super().__init__()
        self.node_encoder = nn.Sequential(nn.Linear(node_features, hidden), nn.ReLU(),
                                          nn.Linear(hidden, hidden))
        self.edge_encoder = nn.Linear(N_EDGE_VALUES, edge_hidden)
        self.edge_type_embedding = nn.Embedding(len(EDGE_TYPES), edge_hidden)
        self.layers = nn.ModuleList(EdgeNodeLayer(hidden, edge_hidden) for _ in range(layers))
        self.head = nn.Sequential(nn.Linear(2 * hidden + 2 * edge_hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, out_dim))
        self.register_buffer("node_mean", torch.zeros(N_NODE_VALUES))
        self.register_buffer("node_std", torch.ones(N_NODE_VALUES))
        self.register_buffer("edge_mean", torch.zeros(N_EDGE_VALUES))
        self.register_buffer("edge_std", torch.ones(N_EDGE_VALUES))

    @torch.no_grad()
    def set_standardization(self, graphs: Sequence[CompactGraph]) -> None:
        """Mean and std of the value columns over all nodes and all edges of ``graphs``."""
        for columns, tables, mean, std in (
                (N_NODE_VALUES, [g.x for g in graphs], self.node_mean, self.node_std),
                (N_EDGE_VALUES, [g.edge_values for g in graphs], self.edge_mean, self.edge_std)):
            total = torch.zeros(columns, dtype=torch.float64)
            squares = torch.zeros(columns, dtype=torch.float64)
            count = 0
            for table in tables:
                values = table[:, :columns].double()
                total += values.sum(0)
                squares += (values * values).sum(0)
                count += len(values)
            average = total / max(count, 1)
            spread = (squares / max(count, 1) - average ** 2).clamp(min=0).sqrt()
            mean.copy_(average.float())
            std.copy_(torch.where(spread > 1e-6, spread, torch.ones_like(spread)).float())

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        """One output row per graph of the batch."""
        x_values = (batch.x[:, :N_NODE_VALUES] - self.node_mean) / self.node_std
        x = self.node_encoder(torch.cat([x_values, batch.x[:, N_NODE_VALUES:]], dim=1))
        e = [(self.edge_encoder((s.edge_values - self.edge_mean) / self.edge_std)
              .view(len(s.source), s.k, -1) + self.edge_type_embedding(s.pair_type).unsqueeze(1))
             .view(len(s.edge_values), -1) for s in batch.segments]
        in_degree = out_degree = batch.x.new_zeros(len(x))
        for segment in batch.segments:
            multiplicity = batch.x.new_full((len(segment.source),), float(segment.k))
            in_degree = in_degree.index_add(0, segment.target, multiplicity)
            out_degree = out_degree.index_add(0, segment.source, multiplicity)
        inverse_in = 1.0 / in_degree.clamp(min=1).unsqueeze(1)
        inverse_out = 1.0 / out_degree.clamp(min=1).unsqueeze(1)
        for layer in self.layers:
            x, e = layer(x, e, batch.segments, inverse_in, inverse_out)
        return self.head(_pool(x, e, batch))


@dataclass(frozen=True)
class GMNConfig:
    """The network and its training; the defaults fit zoos of tens of models on a CPU."""

    hidden: int = 32
    #: width of the edge states: there are ~100x more edges than nodes, so they stay narrow
    edge_hidden: int = 8
    layers: int = 3
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 8
    #: a batch holds at most this many edges (or one larger graph alone): bounds memory
    max_batch_edges: int = 1_500_000
    max_epochs: int = 40
    patience: int = 10
    augment: bool = True
    #: torch's intra-op threads while fitting and predicting (None: torch's setting). On the
    #: 2-core reference machine the mini digits zoo trained in 171 s with 1 thread, in 113 s
    #: with 2 on an idle machine but in 425 s with 2 while another process was busy (the
    #: threads wait for each other): 1 thread is the predictable choice on a shared machine.
    num_threads: int | None = 1


def batches(sizes: Sequence[int], order: Sequence[int], batch_size: int,
            max_edges: int) -> list[list[int]]:
    """Consecutive runs of ``order`` with at most ``batch_size`` graphs and ``max_edges`` edges
    (a single larger graph gets a batch of its own)."""
    out: list[list[int]] = []
    current, edges = [], 0
    for index in order:
        if current and (len(current) == batch_size or edges + sizes[index] > max_edges):
            out.append(current)
            current, edges = [], 0
        current.append(index)
        edges += sizes[index]
    if current:
        out.append(current)
    return out


class GMN(Predictor):
    """Graph metanetwork predictor; see the module docstring. ``device`` is where it trains
    and predicts ("cpu", or "cuda" if asked)."""

    name = "gmn"

    def __init__(self, seed: int = 0, config: GMNConfig = GMNConfig(),
                 device: str | torch.device = "cpu"):
        super().__init__(seed)
        self.config = config
        self.device = torch.device(device)
        self.network: GraphMetanetwork | None = None
        self.targets: StandardizedTargets | None = None

    def graphs(self, models: Sequence[ModelSample], what: str = "graphs") -> list[CompactGraph]:
        """Each model's compact parameter graph, built once."""
        if any(m.model_args is None for m in models):
            raise NotApplicableError(
                "gmn builds its graph from the architecture arguments, which this task "
                "withholds from predictors; use a predictor on the weights alone (stat-mlp)")
        return [compact(parameter_graph(m.model_args, m.state_dict()))
                for m in tqdm(models, desc=f"{self.name}: {what}", leave=False, disable=None)]

    def _forward(self, graphs: Sequence[CompactGraph], order: Sequence[int]) -> torch.Tensor:
        outputs = []
        sizes = [g.num_edges for g in graphs]
        for group in batches(sizes, order, self.config.batch_size, self.config.max_batch_edges):
            outputs.append(self.network(collate([graphs[i] for i in group], self.device)))
        return torch.cat(outputs)

    def fit(self, train: Sequence[ModelSample], train_targets: np.ndarray,
            val: Sequence[ModelSample], val_targets: np.ndarray) -> None:
        with torch_threads(self.config.num_threads):
            self._fit(train, train_targets, val, val_targets)

    def _fit(self, train: Sequence[ModelSample], train_targets: np.ndarray,
             val: Sequence[ModelSample], val_targets: np.ndarray) -> None:
        config = self.config
        self.targets = targets = StandardizedTargets(train_targets)
        if targets.constant is not None:
            self.network = None
            return
        train_graphs = self.graphs(train, "train graphs")
        val_graphs = self.graphs(val, "val graphs") if len(val) else []
        y_train, y_val = targets.encode(train_targets), targets.encode(val_targets)
        # validation models whose label never occurs in training are not run
        known_val = [i for i in range(len(val_graphs)) if targets.classes is None or y_val[i] >= 0]

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.network = GraphMetanetwork(train_graphs[0].x.shape[1], targets.out_dim,
                                            hidden=config.hidden, edge_hidden=config.edge_hidden,
                                            layers=config.layers)
        self.network.set_standardization(train_graphs)
        self.network.to(self.device)
        optimizer = torch.optim.Adam(self.network.parameters(), lr=config.learning_rate,
                                     weight_decay=config.weight_decay)
        generator = torch.Generator().manual_seed(self.seed)
        sizes = [g.num_edges for g in train_graphs]

        def epoch_batches() -> list[list[int]]:
            order = torch.randperm(len(train_graphs), generator=generator).tolist()
            return batches(sizes, order, config.batch_size, config.max_batch_edges)

        def batch_loss(group: list[int]) -> torch.Tensor:
            chosen = [train_graphs[i] for i in group]
            if config.augment:
                chosen = [relabel(g, generator) for g in chosen]
            output = self.network(collate(chosen, self.device))
            return targets.loss(output, y_train[group].to(self.device))

        def validation_loss() -> torch.Tensor:
            output = self._forward(val_graphs, known_val)
            return targets.loss(output, y_val[known_val].to(self.device))

        train_early_stopping(self.network, optimizer, epoch_batches, batch_loss,
                             validation_loss if known_val else None,
                             config.max_epochs, config.patience, name=self.name)

    @torch.no_grad()
    def predict(self, models: Sequence[ModelSample]) -> np.ndarray:
        if self.targets is not None and self.targets.constant is not None:
            return np.full(len(models), self.targets.constant, dtype=object)
        if self.network is None:
            raise RuntimeError("GMN.predict() called before fit()")
        self.network.eval()
        with torch_threads(self.config.num_threads):
            graphs = self.graphs(models, "graphs")
            output = self._forward(graphs, range(len(graphs))).cpu()
        return self.targets.decode(output)
