"""ZooDataset: items per checkpoint, flat weights, targets, DataLoader workers, pickling."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch.utils.data import DataLoader

from helpers import write_published_zoo
from wslbench import zoo_format as fmt
from wslbench.dataset import (ZooDataset, collate_models, flatten_weights, natural_key,
                              unflatten_weights)
from wslbench.tasks import TASKS
from wslbench.zoo import Zoo
from zoo_builder.models import build_model


@pytest.fixture(scope="module")
def zoo(tiny_zoo) -> Zoo:
    return Zoo.open(tiny_zoo)


def width_one(zoo: Zoo) -> list[str]:
    return [m.name for m in zoo.models if m.model_args["width"] == 1]


def test_epochs_pick_checkpoints(zoo):
    assert len(ZooDataset(zoo)) == len(zoo)
    assert ZooDataset(zoo).epochs == [m.checkpoint_epochs[-1] for m in zoo.models]
    every = ZooDataset(zoo, epochs="all")
    assert len(every) == sum(len(m.checkpoint_epochs) for m in zoo.models)
    assert list(zip(every.names, every.epochs)) == [
        (m.name, e) for m in zoo.models for e in m.checkpoint_epochs]
    assert ZooDataset(zoo, epochs=[0]).epochs == [0] * len(zoo)
    with pytest.raises(ValueError, match="no model has a checkpoint at epoch"):
        ZooDataset(zoo, epochs=[99])
    with pytest.raises(ValueError, match="is not one of"):
        ZooDataset(zoo, epochs="last")
    with pytest.raises(ValueError, match="needs a task"):
        ZooDataset(zoo, epochs="task")


def test_models_restrict_and_unknown_names_are_refused(zoo):
    names = width_one(zoo)
    data = ZooDataset(zoo, epochs="all", models=names)
    assert set(data.names) == set(names)
    with pytest.raises(KeyError, match="did you mean"):
        ZooDataset(zoo, models=[names[0] + "x"])


def test_item_holds_weights_config_and_target_but_no_metrics_by_default(zoo):
    data = ZooDataset(zoo.root, epochs="all", task="test_acc")
    model = zoo.models[0]
    item = data[1]
    assert (item["name"], item["epoch"]) == (model.name, model.checkpoint_epochs[1])
    expected = fmt.load_state_dict(model.path, item["epoch"])
    assert list(item["weights"]) == sorted(expected, key=natural_key)
    assert all(torch.equal(item["weights"][k], expected[k]) for k in expected)
    assert item["model_args"] == model.model_args
    assert item["hyperparameters"] == model.hyperparameters
    assert item["target"] == pytest.approx(model.results[item["epoch"]]["test_acc"])
    assert "metrics" not in item

    with_metrics = ZooDataset(zoo, epochs="all", include_metrics=True)[1]
    assert with_metrics["metrics"] == model.results[item["epoch"]]
    assert with_metrics["target"] is None


def test_task_epoch_and_missing_targets(zoo):
    task = TASKS.get("ggap")
    data = ZooDataset(zoo, epochs="task", task=task)
    assert data.epochs == [task.epoch_of(m) for m in zoo.models]
    assert [data[i]["target"] for i in range(2)] == pytest.approx(
        [task.target(m) for m in zoo.models[:2]])
    # the tiny zoo is not annotated: a landscape task has no epoch to take
    with pytest.raises(ValueError, match="no checkpoint"):
        ZooDataset(zoo, epochs="task", task="hessian")
    # at given epochs a missing target is NaN
    assert math.isnan(ZooDataset(zoo, task="hessian")[0]["target"])


def test_flat_length_is_the_parameter_count_and_unflattens(zoo):
    data = ZooDataset(zoo, flatten=True)
    for index in (0, len(data) - 1):
        item = data[index]
        net = build_model(item["model_args"])
        assert item["weights"].dtype == torch.float32
        assert item["weights"].numel() == sum(p.numel() for p in net.parameters())
        assert data.keys(index) == [key for key, _ in item["layout"]]
        assert data.layout(index) == item["layout"]
        tensors = unflatten_weights(item["weights"], item["layout"])
        state = fmt.load_state_dict(zoo.models[index].path, item["epoch"])
        assert all(torch.equal(tensors[k], state[k]) for k in tensors)
        assert set(state) - set(tensors) == {k for k in state if "running" in k
                                             or k.endswith("num_batches_tracked")}


def test_key_order_is_natural_whatever_the_file_order():
    state = {"h.10.w": torch.ones(1), "h.2.w": torch.zeros(2), "a": torch.ones(3)}
    flat, layout = flatten_weights(state)
    assert [k for k, _ in layout] == ["a", "h.2.w", "h.10.w"]
    assert flat.tolist() == [1, 1, 1, 0, 0, 1]


def test_published_zoo_has_the_same_key_order_as_ours(zoo, tmp_path):
    published = ZooDataset(write_published_zoo(tmp_path / "published"), flatten=True)
    ours = ZooDataset(zoo, flatten=True)
    # safetensors (ours) and torch files with "module." (published) store keys differently
    assert published.keys() == ours.keys()
    item = published[0]
    assert item["weights"].numel() == sum(
        p.numel() for p in build_model(item["model_args"]).parameters())


def test_dataloader_with_workers_yields_the_same_items(zoo):
    data = ZooDataset(zoo, epochs="all", models=width_one(zoo), task="test_acc", flatten=True)

    def batches(workers: int):
        return list(DataLoader(data, batch_size=3, num_workers=workers,
                               collate_fn=collate_models))

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == math.ceil(len(data) / 3)
    for a, b in zip(serial, parallel):
        assert a["name"] == b["name"]
        assert torch.equal(a["epoch"], b["epoch"])
        assert torch.equal(a["weights"], b["weights"])
        assert torch.equal(a["target"], b["target"])
        assert a["weights"].shape == (len(a["name"]), data[0]["weights"].numel())


def test_collate_refuses_flat_weights_of_different_shapes(zoo):
    data = ZooDataset(zoo, flatten=True)
    widths = [item["model_args"]["width"] for item in (data[0], data[len(data) - 1])]
    assert widths[0] != widths[1]
    with pytest.raises(ValueError, match="cannot stack flat weights of .* shape"):
        collate_models([data[0], data[len(data) - 1]])
    batch = collate_models([ZooDataset(zoo)[0], ZooDataset(zoo)[len(data) - 1]])
    assert isinstance(batch["weights"], list) and len(batch["weights"]) == 2
    assert batch["target"] == [None, None]


def test_dataset_pickles_small_without_weights(zoo):
    data = ZooDataset(zoo, epochs="all", task="test_acc", flatten=True)
    blob = pickle.dumps(data)
    checkpoint_bytes = sum(
        (fmt.checkpoint_dir(m.path, e) / fmt.SAFETENSORS_CHECKPOINT).stat().st_size
        for m in zoo.models for e in m.checkpoint_epochs)
    assert len(blob) < 32 * 1024
    assert len(blob) < checkpoint_bytes / 100
    copy = pickle.loads(blob)
    assert torch.equal(copy[5]["weights"], data[5]["weights"])
