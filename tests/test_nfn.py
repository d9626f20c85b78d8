"""The permutation-equivariant neural functional (``nfn``): invariance to hidden-unit
permutations checked numerically on every architecture, a known function recovered, seeds
reproduce, and zoos of mixed shapes are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baselines.nfn import NFN, NFNConfig, NeuralFunctional, arrange, nfn_layout
from baselines.param_graph import normalize_keys, permute_hidden_units
from helpers import random_model
from test_baselines_simple import assert_seeded, fc_abs_mean, r2, random_zoo, targets_of
from test_probegen import pinn_zoo, split_fit
from wslbench.predictor import ModelSample, NotApplicableError

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHITECTURES = {
    "pinn": {"type": "pinn_mlp", "hidden": [5, 4], "in_features": 2, "out_features": 1},
    "resnet18": {"type": "resnet18", "width": 2, "o_dim": 3, "channels_in": 1},
    "vit": {"type": "vit", "embedding_dim": 6, "num_classes": 4, "in_channels": 1,
            "image_size": 8, "patch_size": 2, "depth": 2, "heads": 3},
    "gpt": {"type": "gpt2", "model_dim": 6, "vocab_size": 11, "block_size": 5, "n_layer": 2,
            "n_head": 3},
}


def network_inputs(layouts, state):
    state = normalize_keys(state)
    return [arrange(state[layout.key].float(), layout).unsqueeze(0) for layout in layouts]


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_outputs_do_not_change_when_hidden_units_are_permuted(name):
    model_args = ARCHITECTURES[name]
    state = random_model(model_args).state_dict()
    permuted, perms = permute_hidden_units(model_args, state, torch.Generator().manual_seed(3))
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    layouts = nfn_layout(model_args, state)
    torch.manual_seed(0)
    network = NeuralFunctional(layouts, out_dim=2, hidden=8, layers=2).eval()
    with torch.no_grad():
        before = network(network_inputs(layouts, state))
        after = network(network_inputs(layouts, permuted))
        # a change the symmetries do not allow (swapping two output classes / final units
        # or moving one weight) changes the output: the network is not trivially constant
        moved = dict(normalize_keys(state))
        key = layouts[0].key
        moved[key] = moved[key].flatten().roll(1).reshape(moved[key].shape)
        other = network(network_inputs(layouts, moved))
    torch.testing.assert_close(before, after, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before, other, atol=1e-5)


def test_layouts_put_the_permuted_axes_first():
    model_args = ARCHITECTURES["resnet18"]
    state = random_model(model_args).state_dict()
    layouts = {layout.key: layout for layout in nfn_layout(model_args, state)}
    conv = layouts["layer1.0.conv1.weight"]
    assert conv.groups == ("layer1.0.conv1", "conv1") and conv.channels == 9
    assert arrange(state["layer1.0.conv1.weight"], conv).shape == (2, 2, 9)
    stem = layouts["conv1.weight"]  # input channels and kernel positions are channels
    assert stem.groups == ("conv1",) and stem.channels == 9
    assert layouts["fc.bias"].groups == () and layouts["fc.weight"].channels == 3
    assert "bn1.running_var" in layouts


@pytest.mark.slow  # 60 ResNet-18s through 40 epochs: minutes on the 2-core machine
def test_recovers_a_known_function_on_resnets_of_one_shape():
    models = random_zoo(60, shared_init=True)
    targets = targets_of(models, fc_abs_mean)
    predicted, truth = split_fit(NFN(seed=0, config=NFNConfig(max_epochs=40, patience=40)),
                                 models, targets)
    assert r2(predicted, truth) > 0.9


def test_recovers_a_known_function_on_pinns_and_classifies():
    models, targets = pinn_zoo(60, hiddens=([8, 8],), target="output_weights")
    config = NFNConfig(max_epochs=80, patience=80)
    predicted, truth = split_fit(NFN(seed=0, config=config), models, targets)
    assert r2(predicted, truth) > 0.9
    labels = np.where(targets > np.median(targets), "high", "low").astype(object)
    predicted, truth = split_fit(NFN(seed=0, config=config), models, labels)
    assert np.mean(predicted == truth) > 0.75


def test_same_seed_same_predictions():
    models, targets = pinn_zoo(20, hiddens=([8, 8],), target="output_weights")
    assert_seeded("nfn", models, targets, config=NFNConfig(max_epochs=5))


def test_mixed_shapes_are_not_applicable_and_say_what_to_use():
    models = random_zoo(6, widths=(1, 2))
    with pytest.raises(NotApplicableError) as error:
        NFN().fit(models[:4], np.arange(4.0), models[4:], np.arange(2.0))
    message = str(error.value)
    assert message.startswith("nfn needs models of one shape") and "'model1_w2'" in message
    assert "probegen" in message
    hidden = [ModelSample(m.name, 0, None, None, m._load) for m in random_zoo(3)]
    with pytest.raises(NotApplicableError, match="architecture arguments"):
        NFN().fit(hidden[:2], np.arange(2.0), hidden[2:], np.arange(1.0))
