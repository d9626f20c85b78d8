"""Learned probes (``probegen``): the probes reach every architecture, a known function of the
weights is recovered, seeds reproduce, and renumbering hidden units changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from baselines.param_graph import permute_hidden_units
from baselines.probegen import (LinearGenerator, ProbeGen, ProbeGenConfig, _gpt_on_soft_tokens,
                                probe_space)
from helpers import random_model
from test_baselines_simple import assert_seeded, fc_abs_mean, r2, random_zoo, targets_of
from wslbench.predictor import ModelSample, NotApplicableError
from zoo_builder.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

GPT = {"type": "gpt2", "model_dim": 6, "vocab_size": 11, "block_size": 5, "n_layer": 1,
       "n_head": 3}
VIT = {"type": "vit", "embedding_dim": 6, "num_classes": 4, "in_channels": 1, "image_size": 8,
       "patch_size": 2, "depth": 1, "heads": 3}
FAST = ProbeGenConfig(probes=8, max_epochs=60, patience=60, learning_rate=3e-3)


def pinn_zoo(n: int, hiddens=([8, 8], [6, 6]), target: str = "field"
             ) -> tuple[list[ModelSample], np.ndarray]:
    """PINNs of the given widths, each a random init times a random scale. ``target``:
    ``"field"``, the model's output at one fixed point (a function of the weights that a probe
    at that point reads), or ``"output_weights"``, the mean absolute output weight (only the
    output layer scaled)."""
    generator = torch.Generator().manual_seed(0)
    point = torch.tensor([[0.5, -0.3]])
    models, targets = [], []
    for index in range(n):
        args = {"type": "pinn_mlp", "hidden": hiddens[index % len(hiddens)], "in_features": 2,
                "out_features": 1}
        torch.manual_seed(index)
        model = build_model(args)
        scale = float(torch.rand((), generator=generator)) * 2 + 0.1
        scaled = ("layers.output",) if target == "output_weights" else ("layers.",)
        state = {k: v * scale if k.startswith(scaled) else v
                 for k, v in model.state_dict().items()}
        model.load_state_dict(state)
        with torch.no_grad():
            targets.append(float(model(point)) if target == "field"
                           else float(state["layers.output.weight"].abs().mean()))
        models.append(ModelSample(f"pinn{index}", 0, args, None, lambda s=state: s))
    return models, np.array(targets)


def split_fit(predictor, models, targets):
    n_train, n_val = int(0.6 * len(models)), int(0.2 * len(models))
    predictor.fit(models[:n_train], targets[:n_train], models[n_train:n_train + n_val],
                  targets[n_train:n_train + n_val])
    return predictor.predict(models[n_train + n_val:]), targets[n_train + n_val:]


@pytest.mark.parametrize("model_args, kind, shape", [
    ({"type": "resnet18", "width": 2, "o_dim": 3, "channels_in": 1}, "image", (1, 8, 8)),
    (VIT, "image", (1, 8, 8)),
    ({"type": "pinn_mlp", "hidden": [5, 4], "in_features": 2, "out_features": 1}, "points", (2,)),
    (GPT, "tokens", (5, 11)),
])
def test_every_architecture_gets_probes_it_can_run(model_args, kind, shape):
    space = probe_space(model_args, image_size=8, probe_tokens=8)
    assert (space.kind, space.shape) == (kind, shape)
    probes = LinearGenerator(space, probes=3)()
    assert probes.shape == (3, *shape)
    model = random_model(model_args)
    with torch.no_grad():
        out = _gpt_on_soft_tokens(model, probes) if kind == "tokens" else model(probes)
    assert torch.isfinite(out).all()


def test_soft_tokens_that_are_one_hot_give_the_models_own_output():
    model = random_model(GPT)
    tokens = torch.randint(11, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        soft = _gpt_on_soft_tokens(model, F.one_hot(tokens, 11).float())
        torch.testing.assert_close(soft, model(tokens).log_softmax(-1), atol=1e-5, rtol=1e-5)


def test_recovers_a_known_function_across_widths():
    """The field at a fixed point: the probes must learn where to look."""
    models, targets = pinn_zoo(60)
    predicted, truth = split_fit(ProbeGen(seed=0, config=FAST), models, targets)
    assert r2(predicted, truth) > 0.8


def test_same_seed_same_predictions():
    models, targets = pinn_zoo(20)
    assert_seeded("probegen", models, targets, config=ProbeGenConfig(probes=4, max_epochs=5))


def test_resnets_of_mixed_widths_classification_and_hidden_unit_permutations():
    models = random_zoo(15, widths=(1, 2))
    values = targets_of(models, fc_abs_mean)
    labels = np.where(values > np.median(values), "high", "low").astype(object)
    predictor = ProbeGen(seed=0, config=ProbeGenConfig(probes=4, max_epochs=3))
    predicted, _ = split_fit(predictor, models, labels)
    assert set(predicted) <= {"high", "low"} and len(predicted) == 3
    permuted = []
    for index, model in enumerate(models[12:]):
        state, _ = permute_hidden_units(model.model_args, model.state_dict(),
                                        torch.Generator().manual_seed(index))
        permuted.append(ModelSample(model.name, 0, model.model_args, None, lambda s=state: s))
    regression = ProbeGen(seed=0, config=ProbeGenConfig(probes=4, max_epochs=3))
    regression.fit(models[:9], values[:9], models[9:12], values[9:12])
    np.testing.assert_allclose(regression.predict(permuted), regression.predict(models[12:]),
                               rtol=1e-4, atol=1e-6)


def test_gpt_zoo_of_mixed_widths_gets_finite_predictions():
    models, targets = [], []
    for index in range(10):
        args = {**GPT, "model_dim": (6, 9)[index % 2]}
        state = random_model(args, seed=index).state_dict()
        models.append(ModelSample(f"gpt{index}", 0, args, None, lambda s=state: s))
        targets.append(float(state["token_embedding.weight"].abs().mean()))
    predicted, _ = split_fit(ProbeGen(seed=0, config=ProbeGenConfig(probes=4, max_epochs=3)),
                             models, np.array(targets))
    assert predicted.shape == (2,) and np.isfinite(predicted).all()


def test_needs_the_architecture_and_one_input_space():
    models, targets = pinn_zoo(4)
    hidden = [ModelSample(m.name, 0, None, None, m._load) for m in models]
    with pytest.raises(NotApplicableError, match="architecture arguments"):
        ProbeGen().fit(hidden[:3], targets[:3], hidden[3:], targets[3:])
    other = random_zoo(1)
    with pytest.raises(NotApplicableError, match="one input space"):
        ProbeGen().fit(models[:2] + other, np.arange(3.0), [], np.empty(0))


def test_gpt_zoo_prediction_follows_the_models_confidence():
    """Regression test: raw log-probs share a large negative offset, and the head's ReLUs died
    on them (constant predictions on the shakespeare zoo; here the spread of the predictions
    was 0.0002). The target is the scale of the output logits: four random GPTs of two widths,
    each with its tied token embedding times a random factor, which the probes read directly."""
    generator = torch.Generator().manual_seed(1)
    models, targets = [], []
    for index in range(40):
        args = {**GPT, "model_dim": (6, 9)[index % 2]}
        scale = float(torch.rand((), generator=generator)) * 3 + 0.5
        state = random_model(args, seed=index % 4).state_dict()
        state["token_embedding.weight"] = state["token_embedding.weight"] * scale
        models.append(ModelSample(f"gpt{index}", 0, args, None, lambda s=state: s))
        targets.append(scale)
    predicted, truth = split_fit(ProbeGen(seed=0, config=FAST), models, np.array(targets))
    assert np.std(predicted) > 0.1 * np.std(truth)
    assert r2(predicted, truth) > 0.5


def test_one_training_model_is_a_clear_error():
    models, targets = pinn_zoo(3)
    with pytest.raises(ValueError, match="at least 2 training models"):
        ProbeGen().fit(models[:1], targets[:1], models[1:], targets[1:])
