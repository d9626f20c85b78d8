"""Parameter graphs and the graph metanetwork (``gmn``) baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torch_geometric")

from baselines.gmn import GMN, GMNConfig, GraphMetanetwork, collate, compact, relabel  # noqa: E402
from baselines.param_graph import (EDGE_FEATURES, EDGE_TYPES, NODE_FEATURES,  # noqa: E402
                                   node_relabeling, parameter_graph, permute_hidden_units)
from helpers import model_input, random_model, write_synthetic_zoo  # noqa: E402
from wslbench.evaluate import evaluate  # noqa: E402
from wslbench.splits import SPLITS, make_split  # noqa: E402
from wslbench.tasks import TASKS  # noqa: E402
from wslbench.zoo import Zoo  # noqa: E402
from zoo_builder.models import build_model  # noqa: E402

PINN = {"type": "pinn_mlp", "hidden": [5, 4], "in_features": 2, "out_features": 1}
RESNET = {"type": "resnet18", "width": 2, "o_dim": 3, "channels_in": 1}
RESNET50 = {"type": "resnet50", "width": 2, "o_dim": 3, "channels_in": 1}
VIT = {"type": "vit", "embedding_dim": 6, "num_classes": 4, "in_channels": 1, "image_size": 8,
       "patch_size": 2, "depth": 2, "heads": 3}
GPT = {"type": "gpt2", "model_dim": 6, "vocab_size": 11, "block_size": 5, "n_layer": 2,
       "n_head": 3}
ARCHITECTURES = {"pinn": PINN, "resnet18": RESNET, "resnet50": RESNET50, "vit": VIT, "gpt": GPT}


def expected_counts(model: nn.Module, model_args: dict) -> tuple[int, int]:
    """Nodes and edges of the parameter graph, counted from the layer shapes."""
    kind = model_args["type"]
    if kind == "pinn_mlp":
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        return (linears[0].in_features + sum(m.out_features for m in linears),
                sum(m.weight.numel() for m in linears))
    if kind.startswith("resnet"):
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4)
                  for b in stage]
        block_outputs = sum((b.conv3 if hasattr(b, "conv3") else b.conv2).out_channels
                            for b in blocks)  # one residual edge per block output channel
        nodes = 1 + sum(c.out_channels for c in convs) + model.fc.out_features
        edges = sum(c.weight.numel() for c in convs) + model.fc.weight.numel() + block_outputs
        return nodes, edges
    dim = model_args.get("embedding_dim") or model_args["model_dim"]
    nodes, edges = 0, 0
    for block in model.blocks:
        hidden, heads = block.mlp.fc1.out_features, block.attention.heads
        # norm1, query, key, value, heads, attention output, norm2, mlp hidden, mlp output
        nodes += 7 * dim + heads + hidden
        # norm edges x2, q/k/v/output weights, q-k pairs, key->head and head->value,
        # residual edges x2, fc1 and fc2 weights
        edges += 2 * dim + 4 * dim * dim + dim + 2 * dim + 2 * dim + 2 * dim * hidden
    nodes += dim + dim  # the first stream (embeddings) and the final LayerNorm
    edges += dim  # stream -> final LayerNorm
    if kind == "vit":
        nodes += 1 + model.head.out_features
        edges += model.patch_embedding.weight.numel() + model.head.weight.numel()
    return nodes, edges


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_graph_counts_follow_the_layer_shapes(name):
    model_args = ARCHITECTURES[name]
    model = random_model(model_args)
    graph = parameter_graph(model_args, model.state_dict())
    assert (graph.num_nodes, graph.num_edges) == expected_counts(model, model_args)
    assert graph.x.shape == (graph.num_nodes, len(NODE_FEATURES))
    assert graph.edge_attr.shape == (graph.num_edges, len(EDGE_FEATURES))
    assert torch.equal(graph.edge_attr[:, 3:].sum(1), torch.ones(graph.num_edges))  # one type
    assert sum(count for _, _, count in graph.node_blocks) == graph.num_nodes


def _block(graph, name: str) -> int:
    return {block: start for block, start, _ in graph.node_blocks}[name]


def _edges_between(graph, source: int, target: int) -> torch.Tensor:
    mask = (graph.edge_index[0] == source) & (graph.edge_index[1] == target)
    return graph.edge_attr[mask]


def test_edge_and_node_features_are_the_weights():
    model = random_model(RESNET)
    state = model.state_dict()
    graph = parameter_graph(RESNET, state)
    weight = state["layer2.0.conv2.weight"]  # (4, 4, 3, 3)
    source, target = _block(graph, "layer2.0.conv1"), _block(graph, "layer2.0.conv2")
    for o, i in [(0, 0), (3, 1), (2, 3)]:
        edges = _edges_between(graph, source + i, target + o)
        assert len(edges) == 9  # one parallel edge per kernel entry
        for y, x in [(0, 0), (1, 2), (2, 1)]:
            position = torch.tensor([y - 1.0, x - 1.0])
            match = edges[(edges[:, 1:3] == position).all(1)]
            assert len(match) == 1 and match[0, 0] == weight[o, i, y, x]
            assert match[0, 3 + EDGE_TYPES.index("conv")] == 1
    # the projection shortcut and its BatchNorm
    projection = _block(graph, "layer2.0.shortcut")
    edge = _edges_between(graph, _block(graph, "layer1.1.conv2") + 1, projection + 2)
    assert edge[0, 0] == state["layer2.0.shortcut.0.weight"][2, 1, 0, 0]
    assert edge[0, 3 + EDGE_TYPES.index("projection")] == 1
    column = {name: i for i, name in enumerate(NODE_FEATURES)}
    for entry, feature in [("weight", "norm_weight"), ("running_var", "norm_var")]:
        assert torch.equal(graph.x[projection:projection + 4, column[feature]],
                           state[f"layer2.0.shortcut.1.{entry}"])
    # identity shortcut: channel j of the block input -> channel j of the block output
    residual = _edges_between(graph, _block(graph, "layer1.0.conv2") + 1,
                              _block(graph, "layer1.1.conv2") + 1)
    assert residual.tolist() == [[1.0, 0.0, 0.0] + [float(t == "residual") for t in EDGE_TYPES]]
    # the classifier: weights on edges, bias on the output nodes
    fc = _block(graph, "fc")
    assert _edges_between(graph, _block(graph, "layer4.1.conv2") + 5, fc + 2)[0, 0] == \
        state["fc.weight"][2, 5]
    assert torch.equal(graph.x[fc:fc + 3, column["bias"]], state["fc.bias"])
    assert graph.x[fc, column["type:output"]] == 1


def test_transformer_edges_carry_their_roles():
    model = random_model(VIT)
    state = model.state_dict()
    graph = parameter_graph(VIT, state)
    column = {name: i for i, name in enumerate(NODE_FEATURES)}
    norm1, key = _block(graph, "blocks.1.norm1"), _block(graph, "blocks.1.attention.key")
    edge = _edges_between(graph, norm1 + 4, key + 1)
    assert edge[0, 0] == state["blocks.1.attention.key.weight"][1, 4]
    assert edge[0, 3 + EDGE_TYPES.index("key")] == 1
    assert torch.equal(graph.x[key:key + 6, column["bias"]], state["blocks.1.attention.key.bias"])
    fc1 = _block(graph, "blocks.0.mlp.fc1")
    assert torch.equal(graph.x[fc1:fc1 + 12, column["type:mlp"]], torch.ones(12))
    first = _block(graph, "patch_embedding")
    assert torch.equal(graph.x[first:first + 6, column["cls_token"]], state["cls_token"][0, 0])
    # GPT: token-embedding columns summarized on the first stream nodes
    gpt = random_model(GPT)
    graph = parameter_graph(GPT, gpt.state_dict())
    embedding = gpt.state_dict()["token_embedding.weight"]
    assert torch.allclose(graph.x[:6, column["embed_mean"]], embedding.mean(0))
    assert torch.allclose(graph.x[:6, column["embed_max"]], embedding.max(0).values)


def test_unknown_architectures_and_leftover_weights_are_named():
    state = dict(random_model(PINN).state_dict())
    state["layers.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="layers.extra.weight"):
        parameter_graph(PINN, state)
    with pytest.raises(KeyError, match="layers.hidden2.weight"):
        parameter_graph(PINN, {k: v for k, v in state.items() if "hidden2.weight" not in k})
    with pytest.raises(ValueError, match="'conv1.weight' has shape .* another width"):
        parameter_graph({**RESNET, "width": 4}, random_model(RESNET).state_dict())


def test_unknown_module_is_named(monkeypatch):
    import baselines.param_graph as param_graph

    model = build_model(PINN)
    model.layers.add_module("dropout", nn.Dropout())
    monkeypatch.setattr(param_graph, "build_structure", lambda _: model)
    with pytest.raises(TypeError, match="'layers.dropout' of type Dropout .* extend "
                                        "baselines/param_graph.py"):
        parameter_graph(PINN, model.state_dict())
    monkeypatch.setattr(param_graph, "build_structure", lambda _: nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="no parameter-graph builder for model class Sequential"):
        parameter_graph(PINN, {})


def _edge_multiset(index: torch.Tensor, attr: torch.Tensor) -> list[tuple[float, ...]]:
    return sorted(map(tuple, torch.cat([index.T.double(), attr.double()], dim=1).tolist()))


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_hidden_unit_permutation_permutes_the_graph_and_not_the_prediction(name):
    model_args = ARCHITECTURES[name]
    model = random_model(model_args)
    permuted_state, perms = permute_hidden_units(model_args, model.state_dict(),
                                                 torch.Generator().manual_seed(3))
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    permuted = build_model(model_args)
    permuted.load_state_dict(permuted_state)
    permuted.eval()
    with torch.no_grad():
        assert torch.allclose(model(model_input(model_args)),
                              permuted(model_input(model_args)), atol=1e-5)

    graph = parameter_graph(model_args, model.state_dict())
    other = parameter_graph(model_args, permuted_state)
    assert not torch.equal(graph.edge_attr, other.edge_attr)  # the weights did move
    assert sorted(map(tuple, graph.edge_attr.tolist())) == \
        sorted(map(tuple, other.edge_attr.tolist()))
    new_id = node_relabeling(graph, perms)  # isomorphic by the known permutation
    assert _edge_multiset(new_id[graph.edge_index], graph.edge_attr) == \
        _edge_multiset(other.edge_index, other.edge_attr)
    moved = torch.empty_like(graph.x)
    moved[new_id] = graph.x
    assert torch.allclose(moved, other.x, atol=1e-6)

    torch.manual_seed(0)
    network = GraphMetanetwork(compact(graph).x.shape[1], out_dim=2).eval()
    with torch.no_grad():
        first = network(collate([compact(graph)]))
        second = network(collate([compact(other)]))
        shuffled = network(collate([relabel(compact(graph), torch.Generator().manual_seed(0))]))
    assert torch.allclose(first, second, atol=1e-5)
    assert torch.allclose(first, shuffled, atol=1e-5)


def test_one_network_reads_models_of_different_widths():
    graphs = [compact(parameter_graph({**RESNET, "width": width},
                                      random_model({**RESNET, "width": width}).state_dict()))
              for width in (2, 4)]
    assert graphs[0].num_edges < graphs[1].num_edges
    torch.manual_seed(0)
    network = GraphMetanetwork(graphs[0].x.shape[1], out_dim=1).eval()
    with torch.no_grad():
        together = network(collate(graphs))
        alone = torch.cat([network(collate([g])) for g in graphs])
    assert together.shape == (2, 1) and torch.isfinite(together).all()
    assert torch.allclose(together, alone, atol=1e-5)
    assert not torch.allclose(together[0], together[1])


SMALL = GMNConfig(hidden=16, edge_hidden=8, layers=2, learning_rate=3e-3, batch_size=8,
                  max_epochs=40, patience=10, num_threads=1)


class SmallGMN(GMN):
    def __init__(self, seed: int = 0):
        super().__init__(seed, config=SMALL)


def _weights_target(state: dict[str, torch.Tensor]) -> float:
    """A known function of the weights: the mean magnitude of the first stage's convs."""
    return float(state["layer1.0.conv1.weight"].abs().mean() + state["fc.weight"].abs().mean())


def test_gmn_recovers_a_known_function_of_the_weights(tmp_path):
    zoo = Zoo.open(write_synthetic_zoo(tmp_path / "zoo", n_points=60, seeds=(0,),
                                       target=_weights_target))
    split = make_split(zoo, SPLITS.get("iid"))
    result = evaluate(SmallGMN, TASKS.get("test_acc"), zoo, split)
    assert result.scores["r2"]["value"] > 0.9


def _samples(zoo_root, labels=False):
    from wslbench.evaluate import TaskItem, samples

    zoo = Zoo.open(zoo_root)
    task = TASKS.get("test_acc")
    targets = task.targets(zoo.models)
    if labels:
        targets = np.where(targets > np.median(targets), "big", "small")
    items = [TaskItem(m, task.epoch_of(m), m.name, t) for m, t in zip(zoo.models, targets)]
    return samples(items, task), targets


def test_gmn_classifies_string_labels_and_is_deterministic(tmp_path):
    models, labels = _samples(write_synthetic_zoo(tmp_path / "zoo", n_points=40, seeds=(0,),
                                                  target=_weights_target), labels=True)
    train, val, test = slice(0, 24), slice(24, 28), slice(28, 40)
    predictors, predictions = [], []
    for seed in (0, 0, 1):
        predictor = SmallGMN(seed=seed)
        predictor.fit(models[train], labels[train], models[val], labels[val])
        predictors.append(predictor)
        predictions.append(predictor.predict(models[test]))
    assert set(predictions[0]) <= {"big", "small"}
    assert np.mean(predictions[0] == labels[test]) >= 0.9
    assert list(predictions[0]) == list(predictions[1])  # same seed: same predictions
    states = [p.network.state_dict() for p in predictors]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])  # and same weights
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_single_class_is_predicted_as_is(tmp_path):
    models, _ = _samples(write_synthetic_zoo(tmp_path / "zoo", n_points=4, seeds=(0,)))
    predictor = SmallGMN()
    predictor.fit(models[:3], np.array(["a", "a", "a"]), models[3:], np.array(["b"]))
    assert list(predictor.predict(models)) == ["a"] * 4


def test_non_finite_weights_become_zero_features():
    """A diverged model's inf / NaN weights must not turn every message into NaN."""
    state = random_model(RESNET).state_dict()
    state["fc.weight"][0, 0] = float("nan")
    state["conv1.weight"].view(-1)[0] = float("inf")
    graph = compact(parameter_graph(RESNET, state))
    assert torch.isfinite(graph.x).all() and torch.isfinite(graph.edge_values).all()
