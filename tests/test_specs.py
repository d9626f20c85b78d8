"""The zoo specs reproduce the paper's grids (Tables 2-4) and print them in `zoo-builder show`."""

from __future__ import annotations

import pytest

from zoo_builder.cli import main as zoo_builder_main
from zoo_builder.building.catalog import SPECS
from zoo_builder.building.specs import Preset

RESNET_WIDTHS = [2, 4, 8, 16, 32, 64, 128, 256]
RESNET_BATCHES = [8, 16, 32, 64, 128, 256, 512, 1024]

# The paper's tables, written out independently of zoo_builder.building.catalog:
# spec -> (load key, load values, temperature key, values, seeds, optim settings that must hold)
PAPER_GRIDS = {
    **{f"{data}-resnet{depth}": (
        "model::width", RESNET_WIDTHS, "training::batchsize", RESNET_BATCHES, [0, 1, 2],
        {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "wd": 5e-4, "scheduler": "onecycle"})
       for data in ("svhn", "cifar10", "cifar100", "tinyimagenet") for depth in (18, 50)},
    "cifar10-vit": ("model::embedding_dim", [6, 12, 24, 48, 60, 96, 192], "training::batchsize",
                    [8, 16, 32, 64, 128, 256, 512], [0, 1, 2],
                    {"optimizer": "adamw", "lr": 6e-3, "wd": 5e-4, "scheduler": "onecycle"}),
    "cifar100-vit": ("model::embedding_dim", [6, 12, 24, 48, 60, 96, 192], "training::batchsize",
                     [8, 16, 32, 64, 128, 256, 512], [0, 1, 2],
                     {"optimizer": "adamw", "lr": 6e-3, "wd": 5e-2, "scheduler": "onecycle"}),
    "openwebtext-gpt2": ("model::model_dim", [192, 276, 384, 540, 768, 1092, 1536, 2172],
                         "training::batchsize", [32, 64, 128, 256, 512, 1024, 2048, 4096],
                         [1, 2, 3], {"optimizer": "adamw", "lr": 6e-4, "wd": 0.1,
                                     "scheduler": "onecycle"}),
    "convection-pinn": ("dataset::beta", None, "optim::lr", None, [0, 123, 2023, 54321, 123456],
                        {"optimizer": "lbfgs", "history_size": 50, "line_search": "strong_wolfe"}),
}
PAPER_MODEL_COUNTS = {**{name: 192 for name in PAPER_GRIDS if "resnet" in name},
                      "cifar10-vit": 147, "cifar100-vit": 147, "openwebtext-gpt2": 192,
                      "convection-pinn": 420}


def test_there_are_twelve_paper_specs_and_the_embedded_ones():
    assert len(PAPER_GRIDS) == 12
    embedded = {"digits-resnet18", "digits-rotated-resnet18", "shakespeare-gpt2"}
    assert set(PAPER_GRIDS) | embedded == set(SPECS.names())
    rotated, digits = SPECS.get("digits-rotated-resnet18"), SPECS.get("digits-resnet18")
    assert rotated.dataset == "digits-rotated" and rotated.model == digits.model
    assert rotated.with_preset("mini").num_models == digits.with_preset("mini").num_models
    for name in SPECS:
        assert "tiny" in SPECS.get(name).presets, f"{name} has no tiny preset"


@pytest.mark.parametrize("name", sorted(PAPER_GRIDS))
def test_paper_preset_is_the_papers_grid(name):
    load_key, loads, temperature_key, temperatures, seeds, optim = PAPER_GRIDS[name]
    spec = SPECS.get(name).with_preset("paper")
    assert spec.num_models == PAPER_MODEL_COUNTS[name]
    assert spec.load.key == load_key and spec.temperature.key == temperature_key
    if loads is not None:
        assert list(spec.load.values) == loads
        assert list(spec.temperature.values) == temperatures
    assert list(spec.seeds) == seeds
    assert {key: spec.optim[key] for key in optim} == optim
    plans = spec.trials()
    assert len(plans) == spec.num_models
    assert len({plan.folder_name("abcde") for plan in plans}) == len(plans)
    first = plans[0].params
    assert first[load_key] == spec.load.values[0]
    assert first[temperature_key] == spec.temperature.values[0]


def test_model_settings_follow_the_paper():
    gpt = SPECS.get("openwebtext-gpt2")
    assert gpt.model["block_size"] == 1024
    assert gpt.epochs * gpt.training["steps_per_epoch"] == 350_000
    pinn = SPECS.get("convection-pinn")
    assert pinn.model["hidden"] == [50, 50, 50, 50]
    assert pinn.optim["max_iter"] * pinn.epochs == 100_000
    assert pinn.with_preset("paper").saved_epochs == tuple(range(11))
    strong = SPECS.get("cifar100-vit").augment
    assert strong["random_erasing"] > 0 and strong["color_jitter"] > 0
    assert strong["randaugment_ops"] > 0
    for data, classes in (("svhn", 10), ("cifar10", 10), ("cifar100", 100), ("tinyimagenet", 200)):
        assert SPECS.get(f"{data}-resnet50").model["o_dim"] == classes


@pytest.mark.parametrize("name", sorted(PAPER_GRIDS))
def test_show_prints_the_grid(name, capsys):
    assert zoo_builder_main(["show", name, "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    load_key, _, temperature_key, _, _, _ = PAPER_GRIDS[name]
    spec = SPECS.get(name)
    assert f"models      {PAPER_MODEL_COUNTS[name]} = " in out
    assert f"{load_key} = {list(spec.load.values)}" in out
    assert f"{temperature_key} = {list(spec.temperature.values)}" in out
    assert f"seeds       {list(spec.seeds)}" in out


def test_ls_lists_every_spec_with_model_counts(capsys):
    assert zoo_builder_main(["ls"]) == 0
    out = capsys.readouterr().out
    for name in SPECS:
        assert name in out
    assert "default 192, paper 192, tiny 4" in out


def test_preset_overrides_update_single_settings():
    tiny = SPECS.get("openwebtext-gpt2").with_preset("tiny")
    assert tiny.model["block_size"] == 16 and tiny.model["n_head"] == 12
    assert tiny.data["tokenizer"] == "bytes"
    params = tiny.trials()[0].params
    assert params["model::block_size"] == 16 and params["training::steps_per_epoch"] == 3
    assert params["dataset::tokenizer"] == "bytes"


def test_unknown_override_section_is_refused():
    import dataclasses

    spec = SPECS.get("digits-resnet18")
    bad = dataclasses.replace(spec, presets={"bad": Preset("x", overrides={"modle": {}})})
    with pytest.raises(ValueError, match="unknown sections \\['modle'\\]"):
        bad.with_preset("bad")
