"""The zoo format: round trips, the published layout as published, and clear refusals."""

from __future__ import annotations

import csv
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from helpers import TINY_MODEL_ARGS, write_published_zoo
from wslbench import zoo_format as fmt
from wslbench.zoo import Zoo
from zoo_builder.models import build_model

PUBLISHED_SUMMARY_SAMPLE = Path(__file__).parent / "data" / "ptmz_cifar10_resnet18_sample.csv"


def test_params_flatten_to_published_keys():
    nested = {"model": {"type": "resnet18", "width": 8}, "optim": {"lr": 0.1}, "seed": 2}
    assert fmt.flatten_params(nested) == {"model::type": "resnet18", "model::width": 8,
                                          "optim::lr": 0.1, "seed": 2}


def test_params_and_results_round_trip(tmp_path):
    params = {"model::width": 4, "training::batchsize": 32, "seed": 1, "training::list": [0, 5]}
    fmt.write_params(tmp_path, params)
    assert fmt.read_params(tmp_path) == params
    rows = [{"epoch": e, "train_loss": 1.0 / (e + 1), "test_acc": 0.5} for e in range(3)]
    rows[2]["train_loss"] = float("nan")
    fmt.write_results(tmp_path, rows)
    lines = (tmp_path / fmt.RESULT_FILE).read_text().splitlines()
    assert len(lines) == 3  # JSON lines: line n is epoch n
    back = fmt.read_results(tmp_path)
    assert [r["epoch"] for r in back] == [0, 1, 2]
    assert back[1]["train_loss"] == 0.5 and back[2]["train_loss"] is None  # NaN -> null


def test_checkpoint_round_trip_both_files(tmp_path):
    model = build_model({**TINY_MODEL_ARGS, "width": 2})
    hashes = fmt.save_checkpoint(tmp_path, 7, model.state_dict(), {**TINY_MODEL_ARGS, "width": 2})
    folder = tmp_path / "checkpoint_000007"
    assert set(hashes) == {"checkpoint_000007/checkpoints", "checkpoint_000007/model.safetensors"}
    for rel, digest in hashes.items():
        assert fmt.sha256_file(tmp_path / rel) == digest
    from_torch = torch.load(folder / "checkpoints", weights_only=True)
    from_safetensors = fmt.load_state_dict(tmp_path, 7)
    for key, value in model.state_dict().items():
        assert torch.equal(from_torch[key], value) and torch.equal(from_safetensors[key], value)
    assert fmt.checkpoint_epochs(tmp_path) == [7]
    assert fmt.read_checkpoint_model_args(tmp_path, 7) == {**TINY_MODEL_ARGS, "width": 2}
    rebuilt = build_model(fmt.read_checkpoint_model_args(tmp_path, 7))
    rebuilt.load_state_dict(from_safetensors)  # strict: every key and shape matches


def test_manifest_round_trip_and_hash_ignores_creation_time(tmp_path):
    manifest = fmt.ZooManifest(spec="s", spec_version=1, preset="tiny", grid={"seed": [0]},
                               package_version="0.1", created="2026-01-01T00:00:00",
                               trials={"t": {"checkpoint_sha256": {"a": "b"}}})
    fmt.write_manifest(tmp_path, manifest)
    back = fmt.read_manifest(tmp_path)
    assert back == manifest
    later = fmt.ZooManifest(**{**back.__dict__, "created": "2027-01-01T00:00:00"})
    assert later.content_hash() == manifest.content_hash()
    changed = fmt.ZooManifest(**{**back.__dict__, "trials": {"t": {"checkpoint_sha256": {}}}})
    assert changed.content_hash() != manifest.content_hash()


def test_reads_published_layout_as_published(tmp_path):
    root = write_published_zoo(tmp_path / "ptmz", widths=(1, 2), batchsizes=(32, 128),
                               seeds=(0, 1), epochs=2)
    zoo = Zoo.open(root)
    assert zoo.manifest is None and len(zoo) == 8
    model = zoo.models[0]
    assert model.trial_id == "bf0b6_00000"
    assert model.checkpoint_epochs == (2,) and model.last_epoch == 2
    assert model.metric("test_acc") == pytest.approx(0.45)
    assert model.metric("test_acc", epoch=0) == pytest.approx(0.25)
    weights = model.state_dict()
    assert not any(k.startswith("module.") for k in weights)
    build_model(model.model_args).load_state_dict(weights)
    # Seeds of one grid point share a key; the dataset path (different per seed) is ignored.
    points = {m.grid_point for m in zoo.models}
    assert len(points) == 4
    summary = zoo.summary()
    assert list(summary.columns[:len(fmt.SUMMARY_COLUMNS)]) == fmt.SUMMARY_COLUMNS
    assert len(summary) == 8 * 3
    assert set(summary["width"]) == {1, 2} and set(summary["batchsize"]) == {32, 128}
    assert Zoo.open(root).revision == zoo.revision  # reading changes nothing
    assert not (root / fmt.MANIFEST_FILE).exists()


def test_published_revision_follows_results_and_checkpoints_not_the_location(tmp_path):
    root = write_published_zoo(tmp_path / "ptmz", widths=(1,), batchsizes=(32,), seeds=(0, 1),
                               epochs=2)
    revision = Zoo.open(root).revision
    shutil.copytree(root, tmp_path / "copy")
    assert Zoo.open(tmp_path / "copy").revision == revision
    checkpoint = fmt.checkpoint_file(Zoo.open(root).models[0].path, 2)
    checkpoint.write_bytes(checkpoint.read_bytes()[:-1])  # a truncated or re-saved checkpoint
    assert Zoo.open(root).revision != revision
    result = Zoo.open(tmp_path / "copy").models[1].path / fmt.RESULT_FILE
    result.write_text(result.read_text().replace("0.45", "0.46"))
    assert Zoo.open(tmp_path / "copy").revision != revision


def test_summary_columns_are_the_published_ones():
    with open(PUBLISHED_SUMMARY_SAMPLE) as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == fmt.SUMMARY_COLUMNS
    # The trial id and the columns read from params agree with the published rows.
    for row in rows:
        assert fmt.trial_id_from_name(row["model"]) == row["trial_id"]


# --------------------------------------------------------------------------- refusals


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_truncated_torch_checkpoint_names_the_file(tmp_path):
    root = write_published_zoo(tmp_path / "ptmz")
    zoo = Zoo.open(root)
    path = zoo.models[1].path / "checkpoint_000002" / "checkpoints"
    path.write_bytes(path.read_bytes()[:200])
    before = _snapshot(root)
    with pytest.raises(fmt.ZooFormatError, match="truncated or corrupt") as err:
        zoo.models[1].state_dict()
    assert str(path) in str(err.value)
    assert _snapshot(root) == before


def test_truncated_safetensors_names_the_file(tmp_path, tiny_zoo):
    import shutil

    root = Path(shutil.copytree(tiny_zoo, tmp_path / "zoo"))
    zoo = Zoo.open(root)
    path = zoo.models[0].path / "checkpoint_000002" / fmt.SAFETENSORS_CHECKPOINT
    path.write_bytes(path.read_bytes()[:100])
    before = _snapshot(root)
    with pytest.raises(fmt.ZooFormatError, match="truncated or corrupt") as err:
        zoo.models[0].state_dict()
    assert str(path) in str(err.value)
    assert _snapshot(root) == before
    assert any(str(path) in problem for problem in zoo.verify())


def test_missing_params_json_names_the_trial(tmp_path):
    root = write_published_zoo(tmp_path / "ptmz")
    trial = sorted(p for p in root.iterdir() if p.is_dir())[2]
    (trial / "params.json").unlink()
    before = _snapshot(root)
    with pytest.raises(fmt.ZooFormatError, match="has no params.json") as err:
        Zoo.open(root)
    assert trial.name in str(err.value)
    assert _snapshot(root) == before


@pytest.mark.parametrize("make", ["empty", "file", "missing", "other"])
def test_not_a_zoo(tmp_path, make):
    target = tmp_path / "target"
    if make == "empty":
        target.mkdir()
    elif make == "file":
        target.write_text("hello")
    elif make == "other":
        (target / "src").mkdir(parents=True)
        (target / "src" / "main.py").write_text("print(1)")
    with pytest.raises(fmt.ZooFormatError) as err:
        Zoo.open(target)
    assert str(target) in str(err.value)


class _Payload:
    """Unpickling this would create a file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    root = write_published_zoo(tmp_path / "ptmz")
    zoo = Zoo.open(root)
    marker = tmp_path / "code_ran"
    path = zoo.models[0].path / "checkpoint_000002" / "checkpoints"
    torch.save({"conv1.weight": torch.zeros(1), "evil": _Payload(marker)}, path)
    before = _snapshot(root)
    with pytest.raises(fmt.ZooFormatError, match="refusing to load") as err:
        zoo.models[0].state_dict()
    assert str(path) in str(err.value)
    assert not marker.exists()
    assert _snapshot(root) == before


def test_malformed_result_line_names_file_and_line(tmp_path):
    root = write_published_zoo(tmp_path / "ptmz")
    trial = sorted(p for p in root.iterdir() if p.is_dir())[0]
    result = trial / "result.json"
    result.write_text(result.read_text()[:-30])  # cut in the middle of the last line
    with pytest.raises(fmt.ZooFormatError, match="line 3") as err:
        Zoo.open(root)
    assert str(result) in str(err.value)


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "file.json"
    fmt.atomic_write_json(path, {"version": 1})

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        fmt.atomic_write_json(path, {"version": 2})
    assert fmt.json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]  # no temporary left


def test_json_number_keeps_finite_values():
    assert fmt._json_number(1.5) == 1.5 and fmt._json_number(math.inf) is None


def test_a_checkpoint_saved_in_other_processes_has_the_same_bytes(tmp_path):
    """safetensors keeps metadata in a hash map whose order varies by process; the saved file
    sorts it, so the same tensors give the same file and sha256 (and the metadata reads)."""
    import subprocess
    import sys

    from safetensors import safe_open

    code = ("import sys, torch; from pathlib import Path; from wslbench import zoo_format as f; "
            "torch.manual_seed(0); f.save_checkpoint(Path(sys.argv[1]), 3, "
            "{'w': torch.randn(4, 3), 'b': torch.zeros(4)}, {'type': 'mlp', 'width': 4})")
    files = []
    for run in range(4):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / str(run))], check=True)
        files.append(fmt.checkpoint_dir(tmp_path / str(run), 3) / fmt.SAFETENSORS_CHECKPOINT)
    assert len({path.read_bytes() for path in files}) == 1
    with safe_open(str(files[0]), "pt") as opened:
        assert opened.metadata() == {"epoch": "3", "format": "wslbench-zoo",
                                     "model_args": '{"type": "mlp", "width": 4}'}
