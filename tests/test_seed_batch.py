"""Seed-batched training (zoo_builder.building.batched): every model of a batch ends where
training it alone ends, up to float rounding, and writes the same trial folder.

Tolerances: after a few optimizer steps the weights agree to atol 1e-5 / rtol 1e-4 (measured
differences are ~1e-7 after one step and ~5e-7 after two: the grouped kernels sum in another
order). Over longer runs narrow ResNets amplify rounding (BatchNorm of near-dead channels
divides by sqrt(eps)): with oneDNN off, a 1e-7 relative change of the init grows to 1e-4 within
two steps even between two one-at-a-time runs, so longer comparisons use builds (worker
processes, oneDNN on) and compare final metrics to 1e-3.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from wslbench import zoo_format as fmt
from wslbench.zoo import Zoo
from zoo_builder.building.batched import group_by_grid_point, seed_batch_blocker, train_seed_batch
from zoo_builder.building.build import TrialBatch, build_zoo, seed_batches, TrialJob
from zoo_builder.building.catalog import SPECS
from zoo_builder.building.specs import Preset
from zoo_builder.building.train import RunOptions, train_trial

pytestmark = pytest.mark.usefixtures("one_thread")

#: Result keys that measure time, not the model.
TIMINGS = {"time_this_iter_s", "time_eval_s"}


def _group(spec_name: str, preset: str, **changes) -> list[dict]:
    """The params of the first grid point of a spec's preset (all its seeds), changed."""
    spec = SPECS.get(spec_name).with_preset(preset)
    plans = [plan.params for plan in spec.trials()]
    first = {k: v for k, v in plans[0].items() if k != "seed"}
    group = [dict(p) for p in plans if {k: v for k, v in p.items() if k != "seed"} == first]
    for params in group:
        params.update(changes)
    return group


CASES = {
    # SGD with momentum, BatchNorm, augmentation: 2 steps of 300 digits.
    "resnet18": lambda: _group("digits-resnet18", "tiny", **{
        "model::width": 4, "training::batchsize": 300, "training::epochs_train": 1,
        "training::checkpoint_epochs": [0, 1]}),
    # AdamW with decay groups, attention, LayerNorm: a depth-1 ViT on the 8x8 digits.
    "vit": lambda: [dict(p, **{"dataset::name": "digits", "model::channels_in": 1,
                               "model::image_size": 8, "model::depth": 1,
                               "model::embedding_dim": 6, "training::batchsize": 300,
                               "training::epochs_train": 1,
                               "training::checkpoint_epochs": [0, 1]})
                    for p in _group("cifar10-vit", "tiny")],
    # Language modelling: random windows from each model's own generator.
    "gpt2": lambda: _group("shakespeare-gpt2", "tiny", **{"training::steps_per_epoch": 3}),
}


def _two_seeds(group: list[dict]) -> list[dict]:
    if len(group) == 1:
        group = [group[0], dict(group[0], seed=group[0]["seed"] + 1)]
    return group[:2]


@pytest.mark.parametrize("arch", list(CASES))
def test_batched_models_equal_models_trained_alone(arch, tmp_path):
    group = _two_seeds(CASES[arch]())
    train_seed_batch([(params, tmp_path / f"batched{i}") for i, params in enumerate(group)])
    for i, params in enumerate(group):
        train_trial(params, tmp_path / f"alone{i}")
    for i, _ in enumerate(group):
        batched, alone = tmp_path / f"batched{i}", tmp_path / f"alone{i}"
        # The same folder: the same files, params and result keys, and a completion marker.
        assert (sorted(p.relative_to(batched) for p in batched.rglob("*"))
                == sorted(p.relative_to(alone) for p in alone.rglob("*")))
        assert fmt.read_params(batched) == fmt.read_params(alone)
        assert fmt.read_trial_completion(batched) is not None
        rows, alone_rows = fmt.read_results(batched), fmt.read_results(alone)
        assert [row.keys() for row in rows] == [row.keys() for row in alone_rows]
        for row, alone_row in zip(rows, alone_rows):
            for key in row.keys() - TIMINGS:
                assert row[key] == pytest.approx(alone_row[key], rel=1e-4, abs=1e-5), key
        for epoch in fmt.checkpoint_epochs(alone):
            ours = fmt.load_state_dict(batched, epoch)
            theirs = fmt.load_state_dict(alone, epoch)
            assert ours.keys() == theirs.keys()
            for name in theirs:
                torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-4,
                                           msg=lambda m: f"{arch} seed {i} {name}: {m}")
    # Two seeds are two different models, not one model twice.
    first = fmt.load_state_dict(tmp_path / "batched0", 0)
    second = fmt.load_state_dict(tmp_path / "batched1", 0)
    assert any(not torch.equal(first[k], second[k]) for k in first
               if first[k].is_floating_point())


def test_what_cannot_be_batched_says_why():
    assert seed_batch_blocker(_group("digits-resnet18", "tiny")[0]) is None
    pinn = SPECS.get("convection-pinn").with_preset("tiny").trials()[0].params
    assert "not element-wise" in seed_batch_blocker(pinn)
    assert "input derivatives" in seed_batch_blocker(dict(pinn, **{"optim::optimizer": "adamw"}))
    vit = dict(_group("cifar10-vit", "tiny")[0], **{"model::dropout": 0.1})
    assert "dropout" in seed_batch_blocker(vit)
    with pytest.raises(ValueError, match="differ only in their seed"):
        group = _group("digits-resnet18", "tiny")
        train_seed_batch([(group[0], "a"), (dict(group[1], **{"model::width": 8}), "b")])


def test_jobs_are_batched_by_grid_point(tmp_path):
    spec = SPECS.get("digits-resnet18").with_preset("tiny")
    jobs = [TrialJob(str(plan.index), plan.params, tmp_path / str(plan.index))
            for plan in spec.trials()]
    batches = seed_batches(jobs)
    assert len(batches) == 6 and all(isinstance(b, TrialBatch) for b in batches)
    assert [[t.params["seed"] for t in b.trials] for b in batches] == [[0, 1]] * 6
    # A resumed build batches what is left; a lone seed trains alone.
    assert [type(b) for b in seed_batches(jobs[1:4])] == [TrialJob, TrialBatch]
    pinn = SPECS.get("convection-pinn").with_preset("tiny").trials()
    assert all(len(g) == 1 for g in group_by_grid_point(pinn, lambda plan: plan.params))


def _small_spec():
    """digits-resnet18 tiny on 2 widths at batch size 512: 2 batches of 2 seeds, 2 epochs."""
    spec = SPECS.get("digits-resnet18")
    preset = Preset("test", load_values=(1, 2), temperature_values=(512,), seeds=(0, 1),
                    epochs=2, checkpoint_epochs=(1,))
    return dataclasses.replace(spec, presets={**spec.presets, "seedbatch-test": preset}
                               ).with_preset("seedbatch-test")


def test_batched_builds_match_one_at_a_time_and_do_not_depend_on_workers(tmp_path):
    spec = _small_spec()
    alone = Zoo.open(build_zoo(spec, tmp_path / "alone", progress=False))
    batched = RunOptions(seed_batch=True)
    one = Zoo.open(build_zoo(spec, tmp_path / "one", options=batched, progress=False))
    two = Zoo.open(build_zoo(spec, tmp_path / "two", workers=2, options=batched,
                             progress=False))
    # Deterministic whatever the number of workers: the same content, bit for bit.
    assert one.revision == two.revision
    for model in alone.models:
        rows = fmt.read_results(tmp_path / "one" / model.name)
        alone_rows = fmt.read_results(tmp_path / "alone" / model.name)
        assert len(rows) == len(alone_rows) == 3
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert rows[-1][key] == pytest.approx(alone_rows[-1][key], rel=1e-3, abs=1e-3), key
