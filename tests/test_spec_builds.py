"""Every spec's ``tiny`` preset builds through the real code path: the real loader reading
tiny files in the data set's official format, the real model, trainer and zoo layout."""

from __future__ import annotations

import math

import pytest

from fake_datasets import WRITERS
from wslbench import zoo_format as fmt
from wslbench.zoo import Zoo
from zoo_builder.building.build import build_zoo
from zoo_builder.building.catalog import SPECS
from zoo_builder.building.train import RunOptions


@pytest.mark.parametrize("name", SPECS.names())
def test_tiny_preset_builds(name, tmp_path):
    spec = SPECS.get(name).with_preset("tiny")
    if spec.dataset in WRITERS:
        WRITERS[spec.dataset](tmp_path / "data")
    root = build_zoo(spec, tmp_path / "zoo", options=RunOptions(data_root=str(tmp_path / "data")),
                     progress=False)
    zoo = Zoo.open(root)
    assert len(zoo) == spec.num_models
    for model in zoo:
        results = fmt.read_results(model.path)
        assert len(results) == spec.epochs + 1
        for row in results:
            assert math.isfinite(row["train_loss"]) and math.isfinite(row["test_loss"])
        assert model.model_args["type"] == spec.model["type"]
        weights = fmt.load_state_dict(model.path, spec.epochs)
        assert weights, f"no weights in the last checkpoint of {model.path.name}"


def test_missing_data_set_is_a_clear_build_error(tmp_path):
    from zoo_builder.building.build import BuildError

    spec = SPECS.get("cifar10-resnet18").with_preset("tiny")
    with pytest.raises(BuildError) as failure:
        build_zoo(spec, tmp_path / "zoo", options=RunOptions(data_root=str(tmp_path / "empty")),
                  progress=False)
    assert "cifar-10-batches-py" in str(failure.value) or "cifar" in str(failure.value)
