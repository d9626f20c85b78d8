"""The reproduction report: a rebuilt zoo against a release, model by model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from wslbench import zoo_format as fmt
from wslbench.zoo import Zoo
from zoo_builder.reporting.compare import compare_zoos, format_comparison

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rebuilt_zoo(tmp_path_factory) -> Path:
    """A second build of the tiny zoo (the session's tiny_zoo is the first)."""
    from zoo_builder.building.build import build_zoo
    from zoo_builder.building.catalog import SPECS

    spec = SPECS.get("digits-resnet18").with_preset("tiny")
    return build_zoo(spec, tmp_path_factory.mktemp("rebuilt"), progress=False)


def _copy_with(source: Path, dest: Path, change) -> Path:
    """A copy of a zoo whose last result row of each model passes through ``change(index,
    row)``; without a manifest, whose hashes the change would break."""
    shutil.copytree(source, dest)
    (dest / fmt.MANIFEST_FILE).unlink()
    for index, model in enumerate(Zoo.open(dest).models):
        rows = model.results
        change(index, rows[-1])
        fmt.write_results(model.path, rows)
    return dest


def _by_metric(comparison):
    return {m.metric: m for m in comparison.metrics}


def test_two_builds_of_one_spec_agree(tiny_zoo, rebuilt_zoo):
    comparison = compare_zoos(Zoo.open(rebuilt_zoo), Zoo.open(tiny_zoo))
    assert (comparison.matched_models, comparison.matched_grid_points) == (12, 6)
    assert comparison.grid_points_only_rebuilt == comparison.grid_points_only_release == 0
    metrics = _by_metric(comparison)
    assert list(metrics) == ["test_acc", "train_acc", "test_loss", "train_loss", "ggap"]
    for metric in metrics.values():
        assert metric.spearman == pytest.approx(1.0)
        assert metric.mean_abs_diff == 0.0 and metric.release_std > 0
        assert metric.epochs_rebuilt == metric.epochs_release == [2]
    assert "phase" in comparison.not_in_both
    assert comparison.checkpoints_compared == comparison.checkpoints_identical == 12 * 3
    assert comparison.checkpoint_epochs == [0, 1, 2]
    assert ("weights  36 of 36 checkpoints of matched models have bit-identical tensors "
            "(epochs 0, 1, 2)") in format_comparison(comparison)


def test_changed_weights_are_counted(tiny_zoo, rebuilt_zoo, tmp_path):
    """One checkpoint's tensors changed (and the zoo's manifest rewritten for it): compare
    counts one checkpoint that is not bit-identical; a zoo without a manifest says nothing."""
    changed = Path(shutil.copytree(rebuilt_zoo, tmp_path / "changed"))
    model = Zoo.open(changed).models[0]
    state = model.state_dict(2)
    state["conv1.weight"] = state["conv1.weight"] * 2
    fmt.save_checkpoint(model.path, 2, state, model.model_args)
    completion = fmt.read_trial_completion(model.path)
    completion["checkpoint_sha256"] = {}  # as if trained so: the record says nothing older
    fmt.atomic_write_json(model.path / fmt.COMPLETE_MARKER, completion)
    manifest = fmt.read_manifest(changed)
    manifest.set_trials({m.name: fmt.trial_record(m.path) for m in Zoo.open(changed).models})
    fmt.write_manifest(changed, manifest)
    comparison = compare_zoos(Zoo.open(changed), Zoo.open(tiny_zoo))
    assert (comparison.checkpoints_identical, comparison.checkpoints_compared) == (35, 36)
    no_manifest = _copy_with(tiny_zoo, tmp_path / "no_manifest", lambda index, row: None)
    assert compare_zoos(Zoo.open(no_manifest), Zoo.open(tiny_zoo)).checkpoints_compared is None


def test_perturbed_targets_are_detected(tiny_zoo, tmp_path):
    def perturb(index, row):
        row["test_acc"] = 1.0 - row["test_acc"]  # reverses the order of the grid points
        row["phase"] = "I"
        row["representation_similarity"] = 0.5

    def label(index, row):
        row["phase"] = "I" if index % 4 else "II"  # one seed of every other grid point differs
        row["representation_similarity"] = 0.5

    perturbed = _copy_with(tiny_zoo, tmp_path / "perturbed", perturb)
    labelled = _copy_with(tiny_zoo, tmp_path / "labelled", label)
    comparison = compare_zoos(Zoo.open(perturbed), Zoo.open(labelled))
    metrics = _by_metric(comparison)
    assert metrics["test_acc"].spearman == pytest.approx(-1.0)
    assert metrics["test_acc"].mean_abs_diff > 0.5 * metrics["test_acc"].release_std
    assert metrics["ggap"].mean_abs_diff > 0
    assert metrics["train_acc"].mean_abs_diff == 0 and metrics["train_acc"].spearman == 1
    assert metrics["representation_similarity"].spearman is None  # constant: no ranking
    assert metrics["representation_similarity"].mean_abs_diff == 0
    assert metrics["phase"].agreement == pytest.approx(9 / 12)
    assert metrics["phase"].majority_agreement == pytest.approx(1.0)  # ties go to "I"
    text = format_comparison(comparison)
    assert "same label: 0.75 of models, 1.00 of grid-point majorities" in text
    assert "-1.000" in text


def test_different_grids_compare_their_intersection(tiny_zoo, tmp_path):
    smaller = tmp_path / "smaller"
    shutil.copytree(tiny_zoo, smaller)
    (smaller / fmt.MANIFEST_FILE).unlink()
    zoo = Zoo.open(smaller)
    first_point = next(iter(zoo.grid_points().values()))
    for model in first_point:  # a whole grid point, and one seed of another
        shutil.rmtree(model.path)
    shutil.rmtree(zoo.models[-1].path)
    comparison = compare_zoos(Zoo.open(smaller), Zoo.open(tiny_zoo))
    assert comparison.matched_grid_points == 5 and comparison.matched_models == 9
    assert (comparison.grid_points_only_rebuilt, comparison.grid_points_only_release) == (0, 1)
    assert (comparison.models_only_rebuilt, comparison.models_only_release) == (0, 1)
    assert "1 only in the release" in format_comparison(comparison)


def test_compare_command_writes_json(tiny_zoo, rebuilt_zoo, tmp_path, capsys):
    from zoo_builder.cli import main

    out = tmp_path / "comparison.json"
    assert main(["compare", str(rebuilt_zoo), str(tiny_zoo), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "matched  12 models in 6 grid points" in printed and "test_acc" in printed
    data = json.loads(out.read_text())
    assert data["matched_models"] == 12
    test_acc = next(m for m in data["metrics"] if m["metric"] == "test_acc")
    assert test_acc["spearman"] == pytest.approx(1.0) and test_acc["mean_abs_diff"] == 0
    assert test_acc["relative_diff"] == 0
