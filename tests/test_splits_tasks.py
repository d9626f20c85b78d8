"""The standardized splits and the strict, versioned task registry."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import write_published_zoo, write_synthetic_zoo
from wslbench import zoo_format as fmt
from wslbench.evaluate import evaluate, samples, split_targets, task_items
from wslbench.predictor import ModelSample, load_predictor_class
from wslbench.splits import PARTS, SPLITS, Split, make_split, resolve_split
from wslbench.tasks import (TASK_VERSIONS, Input, Score, Task, TaskKind, get_task,
                            register_task)
from wslbench.zoo import Zoo

RELEASED = Path(__file__).parent / "released_tasks.json"


def _sides(split: Split) -> dict[str, str]:
    return {name: part for part in PARTS for name in split.part(part)}


def _check_grid_points_together(zoo: Zoo, split: Split) -> None:
    side = _sides(split)
    for point in {m.grid_point for m in zoo.models}:
        assert len({side.get(m.name) for m in zoo.models if m.grid_point == point}) == 1


# --------------------------------------------------------------------------- splits


@pytest.mark.parametrize("name", ["iid", "ood-width", "epochs"])
def test_splits_partition_the_zoo_by_grid_point(tiny_zoo, name):
    zoo = Zoo.open(tiny_zoo)
    split = make_split(zoo, SPLITS.get(name))
    assert split == make_split(Zoo.open(tiny_zoo), SPLITS.get(name))  # deterministic
    assert sorted(_sides(split)) == sorted(m.name for m in zoo.models)  # every model, once
    assert all(split.part(part) for part in PARTS)
    _check_grid_points_together(zoo, split)


def test_ood_width_tests_on_the_largest_width(tiny_zoo):
    zoo = Zoo.open(tiny_zoo)
    split = make_split(zoo, SPLITS.get("ood-width"))
    widths = {part: {zoo.model(n).params["model::width"] for n in split.part(part)}
              for part in PARTS}
    largest = max(m.params["model::width"] for m in zoo.models)
    assert widths["test"] == {largest}
    assert largest not in widths["train"] | widths["val"]


def test_ood_temperature_holds_out_both_extremes(tmp_path):
    zoo = Zoo.open(write_synthetic_zoo(tmp_path / "zoo", n_points=8))  # batch 16 ... 128
    split = make_split(zoo, SPLITS.get("ood-temperature"))
    batch = {part: sorted({zoo.model(n).params["training::batchsize"] for n in split.part(part)})
             for part in PARTS}
    assert batch["test"] == [16, 128]
    assert set(batch["train"] + batch["val"]) == {32, 48, 64, 80, 96, 112}
    _check_grid_points_together(zoo, split)
    with pytest.raises(ValueError, match="varies none of the load keys"):
        make_split(zoo, SPLITS.get("ood-width"))  # every model has one width
    narrow = Zoo.open(write_synthetic_zoo(tmp_path / "narrow", n_points=2))
    with pytest.raises(ValueError, match="needs at least 3"):
        make_split(narrow, SPLITS.get("ood-temperature"))


def test_epochs_split_trains_early_and_tests_late(tiny_zoo):
    zoo = Zoo.open(tiny_zoo)
    split = make_split(zoo, SPLITS.get("epochs"))
    assert max(split.epochs["train"]) < min(split.epochs["test"])
    assert split.epochs["train"] == split.epochs["val"]
    task = get_task("test_acc")
    items = task_items(task, zoo, split, "test")
    assert {i.epoch for i in items} == set(split.epochs["test"])
    for item in items:  # the target is the test accuracy at that checkpoint
        assert item.sample_id == f"{item.model.name}@{item.epoch}"
        assert item.target == item.model.results[item.epoch]["test_acc"]
    # Grid points stay on one side: no test model is also trained on at an early epoch.
    train_models = {i.model.name for i in task_items(task, zoo, split, "train")}
    assert not train_models & {i.model.name for i in items}
    with pytest.raises(ValueError, match="per-checkpoint targets"):
        task_items(get_task("hessian"), zoo, split, "test")


def test_cross_zoo_split_tests_on_the_other_zoo(tmp_path, tiny_zoo):
    source = Zoo.open(tiny_zoo)
    target = Zoo.open(write_published_zoo(tmp_path / "published"))  # resnet18 too
    split, path = resolve_split(source, "cross-zoo", target)
    assert set(split.test) == {m.name for m in target.models}
    assert set(split.train) | set(split.val) == {m.name for m in source.models}
    assert (split.test_zoo_revision, split.test_zoo_name) == (target.revision, "published")
    assert Split.load(path) == split
    task = get_task("test_acc")
    assert set(split_targets(task, source, split, "test", target)) == set(split.test)
    with pytest.raises(ValueError, match="pass it as the test zoo"):
        split_targets(task, source, split, "test")
    result = evaluate(load_predictor_class("linear-probe"), task, source, split, seeds=(0,),
                      test_zoo=target)
    assert set(result.predictions["0"]) == set(split.test)
    assert result.zoo["test_zoo"]["revision"] == target.revision
    with pytest.raises(ValueError, match="needs a second zoo"):
        make_split(source, SPLITS.get("cross-zoo"))


def test_cross_zoo_refuses_another_architecture_family(tmp_path, tiny_zoo):
    other = write_synthetic_zoo(tmp_path / "mlps", n_points=3)
    for trial in fmt.find_trial_dirs(other):
        params = fmt.read_params(trial)
        params["model::type"] = "pinn_mlp"
        fmt.write_params(trial, params)
    with pytest.raises(ValueError, match="one architecture family"):
        make_split(Zoo.open(tiny_zoo), SPLITS.get("cross-zoo"), Zoo.open(other))


def test_split_hash_is_fixed_by_its_content():
    """Optional fields stay out of the hashed content when unset, so every split made before
    they existed keeps its sha256 (results and leaderboard entries record it)."""
    split = Split(name="iid", version=1, zoo_revision="abc", train=("a",), val=("b",),
                  test=("c",))
    assert set(split.content()) == {"name", "version", "zoo_revision", "train", "val", "test"}
    assert split.sha256 == fmt.canonical_hash(
        {"name": "iid", "version": 1, "zoo_revision": "abc", "train": ["a"], "val": ["b"],
         "test": ["c"]})
    with_epochs = dataclasses.replace(split, epochs={"train": (0,), "val": (0,), "test": (1,)})
    assert with_epochs.sha256 != split.sha256


def test_every_split_file_round_trips(tmp_path, tiny_zoo):
    zoo = Zoo.open(tiny_zoo)
    for name in ("iid", "ood-width", "epochs"):
        split, path = resolve_split(zoo, name)
        assert Split.load(path) == split
        assert json.loads(path.read_text())["sha256"] == split.sha256
        assert resolve_split(zoo, str(path))[0] == split


# --------------------------------------------------------------------------- tasks


def test_released_tasks_never_change_meaning():
    """Every released task version keeps its fingerprint. A failure here means a released
    task was edited: register a new version instead (and add its fingerprint here)."""
    released = json.loads(RELEASED.read_text())
    registered = {name: get_task(name).fingerprint() for name in TASK_VERSIONS}
    for reference, fingerprint in released.items():
        assert reference in registered, f"released task {reference} is no longer registered"
        assert registered[reference] == fingerprint, f"released task {reference} changed meaning"
    unreleased = sorted(set(registered) - set(released))
    assert not unreleased, f"add the fingerprints of {unreleased} to {RELEASED.name}"


def test_phase_task_v2_reads_v2_labels_and_v1_keeps_v1():
    """A new rules version is a new task version on its own key: ``--task phase`` is v3, the
    rules of each domain (v2's for image classifiers)."""
    from zoo_builder.annotating.phases import (DOMAIN_LABEL_KEY, RULES_LANGUAGE_V1, RULES_PINN_V1,
                                               RULES_V1, RULES_V2, label_key)

    assert get_task("phase") is get_task("phase@v3")
    assert get_task("phase@v3").target_key == DOMAIN_LABEL_KEY == "phase_v3"
    assert label_key(RULES_LANGUAGE_V1) == label_key(RULES_PINN_V1) == "phase_v3"
    assert get_task("phase@v2").target_key == label_key(RULES_V2) == "phase_v2"
    assert get_task("phase@v1").target_key == label_key(RULES_V1) == "phase"


def test_task_metadata_is_strict():
    with pytest.raises(ValueError, match="lower_snake_case"):
        Task(name="Test-Acc", version=1, description="", target_key="test_acc")
    with pytest.raises(ValueError, match="do not fit a classification task"):
        Task(name="x", version=1, description="", target_key="phase",
             kind=TaskKind.CLASSIFICATION)
    with pytest.raises(ValueError, match="include main_score"):
        Task(name="x", version=1, description="", target_key="a", main_score=Score.ACCURACY)
    with pytest.raises(ValueError, match="include weights"):
        Task(name="x", version=1, description="", target_key="a",
             inputs=frozenset({Input.ARCHITECTURE}))
    with pytest.raises(ValueError, match="increasing order"):
        register_task(dataclasses.replace(get_task("ggap@v1")))
    assert get_task("ggap") is get_task("ggap@v1")
    with pytest.raises(KeyError, match="did you mean 'ggap@v1'"):
        get_task("ggap@v9")
    with pytest.raises(ValueError, match="name@vN"):
        get_task("ggap@1")


def test_predictors_see_only_what_the_task_allows(tiny_zoo):
    zoo = Zoo.open(tiny_zoo)
    split = make_split(zoo, SPLITS.get("iid"))
    base = get_task("test_acc")
    for inputs, sees_args, sees_hyper in (
            ({Input.WEIGHTS}, False, False),
            ({Input.WEIGHTS, Input.ARCHITECTURE}, True, False),
            ({Input.WEIGHTS, Input.ARCHITECTURE, Input.HYPERPARAMETERS}, True, True)):
        task = dataclasses.replace(base, inputs=frozenset(inputs))
        for sample in samples(task_items(task, zoo, split, "test"), task, zoo.revision):
            assert (sample.model_args is not None) == sees_args
            assert (sample.hyperparameters is not None) == sees_hyper
            assert sample.state_dict()
    # A sample holds no route to targets: only these fields, and a loader of the weights.
    assert {f.name for f in dataclasses.fields(ModelSample)} == {
        "name", "epoch", "model_args", "hyperparameters", "_load", "zoo_revision", "fingerprint"}


SPY = """
import json
from pathlib import Path

import numpy as np

REPORT = Path({report!r})
seen = {{}}


def look(models):  # while the predictor runs (in its own process)
    for sample in models:
        folder = Path(sample._load.args[0])
        seen[sample.name] = (str(folder), folder.is_dir(), sorted(
            p.name for p in folder.rglob("*") if p.is_file()))
    REPORT.write_text(json.dumps(seen))


class Spy:
    def fit(self, train, train_targets, val, val_targets):
        look(list(train) + list(val))

    def predict(self, models):
        look(models)
        return np.zeros(len(models))
"""


def test_evaluated_samples_lead_to_no_trial_folder(tiny_zoo, tmp_path):
    """What evaluate() hands a predictor names no trial (whose name holds the
    hyperparameters) and loads from a stage folder that holds the weights and nothing else
    (no result.json: the targets)."""
    zoo = Zoo.open(tiny_zoo)
    split = make_split(zoo, SPLITS.get("iid"))
    report = tmp_path / "seen.json"
    (tmp_path / "spy.py").write_text(SPY.format(report=str(report)))
    result = evaluate(str(tmp_path / "spy.py"), get_task("test_acc"), zoo, split)
    seen = json.loads(report.read_text())
    assert len(seen) == len(zoo)
    for name, (folder, existed, files) in seen.items():
        assert name.startswith("model-") and "width" not in name
        assert existed and files == ["model.safetensors"]  # the weights, nothing else
        assert zoo.root not in Path(folder).parents
        assert not Path(folder).exists()  # the stage is removed after the evaluation
    assert set(result.predictions["0"]) == set(split.test)  # results keep the real ids


def test_targets_at_a_given_epoch(tiny_zoo):
    model = Zoo.open(tiny_zoo).models[0]
    task = get_task("ggap")
    for epoch, row in enumerate(model.results):
        assert task.target(model, epoch) == pytest.approx(row["train_acc"] - row["test_acc"])
    assert np.isnan(task.target(model, len(model.results)))
