"""Permutation symmetries of every architecture, and Git re-basin weight matching on them."""

from __future__ import annotations

import pytest
import torch

from helpers import model_input, random_model
from zoo_builder.data import ImageData
from zoo_builder.annotating.downstream import permutation
from zoo_builder.annotating.downstream.permutation import (PermutationGroup, PermutationSpec,
                                                apply_permutation, identity_permutation,
                                                invert_permutation, permutation_spec,
                                                random_permutation)
from zoo_builder.annotating.downstream.rebasin import (align, average_states,
                                            image_classification_evaluator,
                                            linear_path_barrier, rebasin_average,
                                            weight_matching)
from zoo_builder.models import build_model

PINN = {"type": "pinn_mlp", "hidden": [6, 5, 4], "in_features": 2, "out_features": 1}
RESNET18 = {"type": "resnet18", "width": 2, "o_dim": 3, "channels_in": 1}
RESNET50 = {"type": "resnet50", "width": 2, "o_dim": 3, "channels_in": 1}
VIT = {"type": "vit", "embedding_dim": 12, "num_classes": 4, "in_channels": 1, "image_size": 8,
       "patch_size": 2, "depth": 2, "heads": 3}
GPT = {"type": "gpt2", "model_dim": 12, "vocab_size": 11, "block_size": 5, "n_layer": 2,
       "n_head": 3}
ARCHITECTURES = {"pinn": PINN, "resnet18": RESNET18, "resnet18_width8": {**RESNET18, "width": 8},
                 "resnet50": RESNET50, "vit": VIT, "gpt": GPT, "gpt_one_head": {**GPT, "n_head": 1}}


#: Tiny networks: one thread is faster, and two spin on a shared machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def outputs(model_args: dict, state: dict[str, torch.Tensor]) -> torch.Tensor:
    model = build_model(model_args)
    model.load_state_dict(state)
    return model.eval()(model_input(model_args))


def parameter_distance(spec: PermutationSpec, a: dict, b: dict) -> float:
    return sum(float((a[k] - b[k]).square().sum()) for k in a
               if a[k].is_floating_point() and k not in spec.buffers) ** 0.5


def planted(model_args: dict, seed: int = 3):
    """A random model, its spec, a random permutation that moves every group (a group of 2
    units drawn as the identity is swapped, within heads) and the permuted weights."""
    state = random_model(model_args).state_dict()
    spec = permutation_spec(model_args)
    perms = random_permutation(spec, torch.Generator().manual_seed(seed))
    for name, perm in perms.items():
        if torch.equal(perm, torch.arange(len(perm))):
            perms[name] = perm.view(spec.groups[name].heads, -1).roll(1, dims=1).flatten()
    return state, spec, perms, apply_permutation(spec, state, perms)


# --------------------------------------------------------------------------- the specs


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_a_random_permutation_moves_the_weights_and_keeps_the_function(name):
    model_args = ARCHITECTURES[name]
    state, spec, perms, permuted = planted(model_args)
    assert all(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    assert all(not torch.equal(state[key], permuted[key]) for key in spec.key_axes)
    assert torch.allclose(outputs(model_args, state), outputs(model_args, permuted), atol=1e-5)


def test_residual_stages_share_one_permutation():
    spec = permutation_spec(RESNET18)
    stem = set(spec.groups["conv1"].axes)
    # layer1 has identity shortcuts: the stem's stream runs through both of its blocks.
    assert {("conv1.weight", 0), ("bn1.running_var", 0), ("layer1.0.conv2.weight", 0),
            ("layer1.1.bn2.bias", 0), ("layer1.1.conv1.weight", 1),
            ("layer2.0.conv1.weight", 1), ("layer2.0.shortcut.0.weight", 1)} <= stem
    stage2 = set(spec.groups["layer2.0.shortcut"].axes)
    assert {("layer2.0.shortcut.1.weight", 0), ("layer2.0.conv2.weight", 0),
            ("layer2.1.conv2.weight", 0), ("layer3.0.conv1.weight", 1)} <= stage2
    assert ("fc.weight", 1) in spec.groups["layer4.0.shortcut"].axes
    assert "layer1.0.bn1.running_mean" in spec.buffers and "layer1.0.bn1.weight" not in spec.buffers
    # ResNet-50's first block projects width -> 4 width: the stem stream ends there.
    spec50 = permutation_spec(RESNET50)
    assert ("layer1.0.conv3.weight", 0) in spec50.groups["layer1.0.shortcut"].axes
    assert ("layer1.0.conv3.weight", 0) not in spec50.groups["conv1"].axes


def test_transformer_groups_tie_the_embedding_and_move_heads_as_blocks():
    spec = permutation_spec(GPT)
    stream = set(spec.groups["stream"].axes)
    assert {("token_embedding.weight", 1), ("position_embedding.weight", 1),
            ("blocks.1.norm2.weight", 0), ("norm.bias", 0)} <= stream
    query_key = spec.groups["blocks.0.attention.query_key"]
    value = spec.groups["blocks.0.attention.value"]
    assert (query_key.heads, value.heads) == (3, 3)
    assert spec.head_sets["blocks.0.attention"] == ["blocks.0.attention.query_key",
                                                    "blocks.0.attention.value"]
    assert ("blocks.0.attention.output.weight", 1) in value.axes
    perms = random_permutation(spec, torch.Generator().manual_seed(0))
    heads = [perms[f"blocks.0.attention.{g}"].view(3, 4) // 4 for g in ("query_key", "value")]
    assert torch.equal(heads[0], heads[1])  # one head permutation for both
    assert all(len(set(row.tolist())) == 1 for row in heads[0])  # a head moves as a whole
    vit = permutation_spec(VIT)
    assert {("cls_token", 2), ("position_embedding", 2), ("head.weight", 1)} <= \
        set(vit.groups["stream"].axes)


def test_spec_and_permutations_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="axis 0 of 'w' is in permutation groups 'a' and 'b'"):
        PermutationSpec({"a": PermutationGroup(2, (("w", 0),)),
                         "b": PermutationGroup(2, (("w", 0),))})
    with pytest.raises(ValueError, match="positive multiple of heads"):
        PermutationSpec({"a": PermutationGroup(5, (("w", 0),), heads=2)})
    spec = permutation_spec(PINN)
    state = random_model(PINN).state_dict()
    perms = identity_permutation(spec)
    with pytest.raises(KeyError, match="missing \\['layers.hidden1'\\]"):
        apply_permutation(spec, state, {k: v for k, v in perms.items() if k != "layers.hidden1"})
    with pytest.raises(ValueError, match="not a permutation of 6 units"):
        apply_permutation(spec, state,
                          {**perms, "layers.hidden1": torch.zeros(6, dtype=torch.long)})
    gpt = permutation_spec(GPT)
    gpt_perms = random_permutation(gpt, torch.Generator().manual_seed(0))
    mixed = {**gpt_perms, "blocks.0.attention.value": torch.arange(12).roll(1)}
    with pytest.raises(ValueError, match="does not move its 3 heads as whole blocks"):
        apply_permutation(gpt, random_model(GPT).state_dict(), mixed)
    with pytest.raises(KeyError, match="state_dict has no 'layers.hidden1.weight'"):
        apply_permutation(spec, {k: v for k, v in state.items() if k != "layers.hidden1.weight"},
                          perms)
    with_dropout = build_model(PINN)
    with_dropout.layers.add_module("dropout", torch.nn.Dropout())
    monkeypatch.setattr(permutation, "build_model", lambda _: with_dropout)
    with pytest.raises(TypeError, match=r"'layers.dropout' of type Dropout \(expected Tanh or "
                                        r"ReLU or GELU\); extend zoo_builder/annotating/downstream/"):
        permutation_spec(PINN)
    monkeypatch.setattr(permutation, "_spec_builders", lambda: {})
    with pytest.raises(TypeError, match="no permutation spec for model class PINNMLP"):
        permutation_spec(PINN)


# --------------------------------------------------------------------------- weight matching


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_weight_matching_recovers_a_planted_permutation(name):
    model_args = ARCHITECTURES[name]
    state, spec, perms, permuted = planted(model_args)
    found = weight_matching(spec, state, permuted)
    inverse = invert_permutation(perms)
    assert all(torch.equal(found[group], inverse[group]) for group in spec.groups)
    aligned = align(model_args, state, permuted)
    assert set(aligned) == set(state)
    assert all(torch.equal(aligned[key], state[key]) for key in state)
    # Averaging a model with its aligned permuted copy is the model; without alignment not.
    averaged = average_states([state, aligned])
    assert torch.allclose(outputs(model_args, averaged), outputs(model_args, state), atol=1e-6)
    naive = average_states([state, permuted])
    assert not torch.allclose(outputs(model_args, naive), outputs(model_args, state), atol=1e-3)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_alignment_brings_another_model_closer_and_keeps_its_function(name):
    model_args = ARCHITECTURES[name]
    spec = permutation_spec(model_args)
    reference = random_model(model_args, seed=0).state_dict()
    other = random_model(model_args, seed=1).state_dict()
    aligned = align(model_args, reference, other)
    assert parameter_distance(spec, reference, aligned) < \
        parameter_distance(spec, reference, other) - 1e-3
    assert torch.allclose(outputs(model_args, aligned), outputs(model_args, other), atol=1e-5)
    # Deterministic for a seed.
    again = align(model_args, reference, other)
    assert all(torch.equal(aligned[key], again[key]) for key in aligned)


def test_rebasin_average_of_permuted_copies_is_the_reference():
    state, spec, _, permuted = planted(RESNET18)
    other = apply_permutation(spec, state,
                              random_permutation(spec, torch.Generator().manual_seed(9)))
    averaged = rebasin_average(RESNET18, state, [permuted, other])
    assert all(torch.equal(averaged[key], state[key]) for key in state)


# --------------------------------------------------------------------------- averaging, barriers


def test_average_states_means_floats_and_keeps_integer_buffers():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(7)}
    assert torch.equal(average_states([a, b])["w"], torch.tensor([2.0, 4.0]))
    assert average_states([a, b])["n"].item() == 3
    assert torch.equal(average_states([a, b], [0.75, 0.25])["w"], torch.tensor([1.5, 3.0]))
    thirds = average_states([a, a, a])  # float64 sums: identical states come back exactly
    assert thirds["w"].dtype == torch.float32 and torch.equal(thirds["w"], a["w"])
    x = {"w": torch.rand(1000)}
    assert torch.equal(average_states([x, x, x])["w"], x["w"])
    with pytest.raises(ValueError, match="other entries than state_dict 0"):
        average_states([a, {"w": b["w"]}])
    with pytest.raises(ValueError, match="entry 'w' has shapes"):
        average_states([a, {**b, "w": torch.zeros(3)}])


def test_linear_path_barrier_is_the_largest_excess_over_the_line():
    def evaluate(state):  # at x = 0, 1, 2: loss 2, 1, 2 and accuracy 1, 0.5, 1
        x = float(state["x"])
        return {"loss": (x - 1) ** 2 + 1, "acc": 1.0 - x * (2 - x) / 2}

    result = linear_path_barrier(evaluate, {"x": torch.tensor(0.0)}, {"x": torch.tensor(2.0)})
    assert result["t"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert result["loss"] == [2.0, 1.25, 1.0, 1.25, 2.0]
    assert result["loss_barrier"] == 0.0  # the path is below the line: no barrier
    assert result["acc_barrier"] == pytest.approx(0.5)  # accuracy drops by 0.5 at t = 0.5
    result = linear_path_barrier(lambda s: {"loss": -(float(s["x"]) - 1) ** 2},
                                 {"x": torch.tensor(0.0)}, {"x": torch.tensor(2.0)}, n_points=3)
    assert result["loss_barrier"] == pytest.approx(1.0)


def test_the_barrier_between_a_model_and_its_aligned_permuted_copy_is_zero():
    torch.manual_seed(0)
    images = torch.rand(40, 1, 8, 8)
    data = ImageData(images[:24], torch.randint(3, (24,)), images[24:], torch.randint(3, (16,)),
                     num_classes=3, name="random")
    state, _, _, permuted = planted(RESNET18)
    evaluate = image_classification_evaluator(RESNET18, data, data.test_x, data.test_y,
                                              batchnorm_inputs=data.train_x)
    after = linear_path_barrier(evaluate, state, align(RESNET18, state, permuted), n_points=3)
    assert after["loss"] == pytest.approx([after["loss"][0]] * 3, abs=1e-5)
    assert after["loss_barrier"] == pytest.approx(0.0, abs=1e-5)
    before = linear_path_barrier(evaluate, state, permuted, n_points=3)
    assert before["loss"][0] == pytest.approx(before["loss"][-1], abs=1e-5)  # same function
    assert before["loss"][1] != pytest.approx(before["loss"][0], abs=1e-3)  # another one between
