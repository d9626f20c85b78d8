"""zoo-builder estimate: FLOPs from the architecture, checked against torch's flop counter, and
the schedule arithmetic of a zoo's cost."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from zoo_builder.building.catalog import SPECS
from zoo_builder.building.estimate import (PAPER_SPECS, TRAIN_FORWARD_MULTIPLE, forward_flops,
                                           format_estimate, model_cost, model_forward_flops,
                                           read_measured, zoo_cost)
from zoo_builder.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_MODELS = {
    "resnet18": ({"type": "resnet18", "width": 2, "num_classes": 10, "in_channels": 1},
                 torch.zeros(2, 1, 8, 8)),
    "resnet50": ({"type": "resnet50", "width": 2, "num_classes": 10, "in_channels": 3},
                 torch.zeros(2, 3, 16, 16)),
    "vit": ({"type": "vit", "embedding_dim": 6, "num_classes": 10, "in_channels": 1,
             "image_size": 8, "depth": 2}, torch.zeros(2, 1, 8, 8)),
    "gpt2": ({"type": "gpt2", "model_dim": 16, "vocab_size": 128, "block_size": 16,
              "n_layer": 2, "n_head": 4}, torch.zeros(2, 16, dtype=torch.long)),
    "pinn": ({"type": "pinn_mlp", "hidden": [50, 50]}, torch.zeros(3, 2)),
}


def profiled_flops(model, inputs, backward: bool = False) -> int:
    """torch.utils.flop_counter's count; attention in its math form, which it counts (the CPU
    flash kernel it does not)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        output = model(inputs)
        if backward:
            output.float().sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("name", list(SMALL_MODELS))
def test_forward_flops_equal_the_flop_counter(name):
    args, inputs = SMALL_MODELS[name]
    torch.manual_seed(0)
    model = build_model(args)
    assert forward_flops(model, inputs) == profiled_flops(model, inputs) > 0
    # On the meta device (how estimates build models, even GPT-2 of width 2172) too.
    with torch.device("meta"):
        meta_model = build_model(args)
    assert forward_flops(meta_model, inputs.to("meta")) == profiled_flops(model, inputs)


@pytest.mark.parametrize("name", ["resnet18", "vit", "gpt2"])
def test_a_training_sample_costs_three_forward_passes(name):
    args, inputs = SMALL_MODELS[name]
    model = build_model(args)
    measured = profiled_flops(model, inputs, backward=True)
    # The input layer's gradient with respect to the inputs is never computed: a bit under 3x.
    assert measured == pytest.approx(TRAIN_FORWARD_MULTIPLE * forward_flops(model, inputs),
                                     rel=0.1)
    assert measured <= TRAIN_FORWARD_MULTIPLE * forward_flops(model, inputs)


def test_schedule_of_an_image_zoo():
    spec = SPECS.get("digits-resnet18").with_preset("tiny")
    params = spec.trials()[0].params  # width 1, batch size 64, 2 epochs on 898 + 899 digits
    forward = model_forward_flops(params)
    torch.manual_seed(0)
    model = build_model({"type": "resnet18", "width": 1, "num_classes": 10, "in_channels": 1})
    assert forward == profiled_flops(model.eval(), torch.zeros(1, 1, 8, 8))
    cost = model_cost(params)
    assert cost.train_flops == 2 * (898 // 64 * 64) * 3 * forward
    assert cost.eval_flops == 3 * (898 + 899) * forward
    zoo = zoo_cost(spec)
    assert len(zoo.models) == spec.num_models
    assert zoo.total == pytest.approx(sum(model_cost(plan.params).total
                                          for plan in spec.trials()))


def test_language_and_pinn_schedules():
    gpt = SPECS.get("shakespeare-gpt2").with_preset("tiny").trials()[0].params
    cost = model_cost(gpt)
    assert cost.train_flops == (gpt["training::epochs_train"] * gpt["training::steps_per_epoch"]
                                * gpt["training::batchsize"] * 3 * cost.forward_per_sample)
    pinn = SPECS.get("convection-pinn").with_preset("tiny").trials()[0].params
    assert model_cost(pinn).train_flops > 0


def test_paper_zoos_and_the_printed_table(tmp_path):
    assert len(PAPER_SPECS) == 12 and all(name in SPECS for name in PAPER_SPECS)
    # GPT-2 small (model dim 768, block 1024): ~2 x 85M non-embedding parameters x 1024
    # tokens, plus the head and attention; the forward pass of one sequence is ~0.29 TFLOP.
    params = dict(SPECS.get("openwebtext-gpt2").trials()[0].params, **{"model::model_dim": 768})
    assert model_forward_flops(params) == pytest.approx(2.9e11, rel=0.05)
    measured = tmp_path / "measured.json"
    measured.write_text(json.dumps({"model_flops_per_s": {"resnet18": 1e9, "all": 2e9}}))
    rates = read_measured(measured)
    costs = [zoo_cost(SPECS.get("digits-resnet18").with_preset("tiny"))]
    text = format_estimate(costs, 1e12, "test device", rates)
    assert "digits-resnet18" in text and "11,520 GPU-hours" in text
    hours = costs[0].total / 1e9 / 3600
    assert f"{hours:,.1f}" in text
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="model_flops_per_s"):
        read_measured(tmp_path / "bad.json")
