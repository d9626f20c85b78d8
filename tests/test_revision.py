"""A zoo's content revision: what defines the data (params, targets, tensors), nothing else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import write_synthetic_zoo
from wslbench import zoo_format as fmt
from wslbench.zoo import Zoo


def revision_on_disk(root: Path) -> str:
    return fmt.trial_dir_revision(fmt.find_trial_dirs(root))


def final_safetensors(trial: Path) -> Path:
    return fmt.checkpoint_dir(trial, fmt.checkpoint_epochs(trial)[-1]) / fmt.SAFETENSORS_CHECKPOINT


def rewrite_safetensors(path: Path, order: str = "reversed", metadata: dict | None = None) -> None:
    """Write the tensors of a safetensors file again, by hand: header keys and data in
    ``order`` (names sorted or reversed), with ``metadata``."""
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    header.pop("__metadata__", None)
    names = sorted(header, reverse=order == "reversed")
    blobs, out_header, offset = [], {}, 0
    for name in names:
        begin, end = header[name]["data_offsets"]
        blob = data[8 + length + begin:8 + length + end]
        out_header[name] = {"dtype": header[name]["dtype"], "shape": header[name]["shape"],
                            "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    if metadata is not None:
        out_header = {"__metadata__": metadata, **out_header}
    text = json.dumps(out_header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def flip_tensor_byte(path: Path, name: str, index: int = 4) -> None:
    """Change one byte of tensor ``name`` of a safetensors file in place (one float changes,
    the size stays)."""
    data = bytearray(path.read_bytes())
    length = int.from_bytes(data[:8], "little")
    begin, _ = json.loads(data[8:8 + length])[name]["data_offsets"]
    data[8 + length + begin + index] ^= 1
    path.write_bytes(bytes(data))


@pytest.fixture()
def zoo_copy(tiny_zoo, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_zoo, tmp_path / "zoo"))


def test_builds_with_one_and_two_workers_share_the_revision(tiny_zoo, tmp_path):
    from zoo_builder.building.build import build_zoo
    from zoo_builder.building.catalog import SPECS

    spec = SPECS.get("digits-resnet18").with_preset("tiny")
    other = build_zoo(spec, tmp_path / "two_workers", workers=2, progress=False)
    one, two = Zoo.open(tiny_zoo), Zoo.open(other)
    assert one.revision == two.revision == revision_on_disk(other)
    assert one.revision == one.manifest.revision and len(one.revision) == 64
    # The files differ (timings in result.json), the content does not.
    name = one.models[0].name
    assert (fmt.sha256_file(tiny_zoo / name / fmt.RESULT_FILE)
            != fmt.sha256_file(other / name / fmt.RESULT_FILE))


def test_revision_ignores_timings_headers_metadata_and_the_torch_file(zoo_copy):
    revision = Zoo.open(zoo_copy).revision
    assert revision_on_disk(zoo_copy) == revision
    trials = fmt.find_trial_dirs(zoo_copy)

    rows = fmt.read_results(trials[0])
    for row in rows:
        row["time_this_iter_s"] = row["time_this_iter_s"] + 1.5
        row["time_eval_s"], row["hostname"], row["timestamp"] = 9.0, "elsewhere", 1234567890
    fmt.write_results(trials[0], rows)
    assert revision_on_disk(zoo_copy) == revision

    path = final_safetensors(trials[1])
    before = fmt.sha256_file(path)
    rewrite_safetensors(path, order="reversed", metadata={"made_by": "another tool"})
    assert fmt.sha256_file(path) != before
    assert revision_on_disk(zoo_copy) == revision

    for checkpoint in trials[2].glob(f"checkpoint_*/{fmt.TORCH_CHECKPOINT}"):
        checkpoint.unlink()
    assert revision_on_disk(zoo_copy) == revision


def test_revision_follows_one_weight_and_one_target(zoo_copy):
    revision = Zoo.open(zoo_copy).revision
    trials = fmt.find_trial_dirs(zoo_copy)

    flip_tensor_byte(final_safetensors(trials[0]), "fc.weight")
    changed_weight = revision_on_disk(zoo_copy)
    assert changed_weight != revision

    rows = fmt.read_results(trials[1])
    rows[-1]["test_acc"] += 0.01
    fmt.write_results(trials[1], rows)
    assert revision_on_disk(zoo_copy) not in (revision, changed_weight)


def test_the_torch_file_and_the_safetensors_file_have_one_tensor_fingerprint(tiny_zoo):
    for trial in fmt.find_trial_dirs(tiny_zoo)[:2]:
        for epoch in fmt.checkpoint_epochs(trial):
            folder = fmt.checkpoint_dir(trial, epoch)
            assert (fmt.tensors_fingerprint(folder / fmt.TORCH_CHECKPOINT)
                    == fmt.tensors_fingerprint(folder / fmt.SAFETENSORS_CHECKPOINT))


def test_volatile_keys_are_one_documented_rule():
    for key in ("time_this_iter_s", "time_eval_s", "time_total_s", "warmup_time", "timestamp",
                "hostname", "date", "pid", "node_ip", "trial_id", "experiment_id"):
        assert fmt.is_volatile_result_key(key), key
    for key in ("test_acc", "train_loss", "epoch", "training_iteration", "curve_mc_test_error",
                "lr_last_step", "phase"):
        assert not fmt.is_volatile_result_key(key), key


def test_manifests_without_a_revision_keep_the_one_they_had(tmp_path):
    """Format-1 manifests (written before the content revision) keep their revision, so that
    results and leaderboards computed on such a zoo still refer to it."""
    root = write_synthetic_zoo(tmp_path / "zoo", n_points=2)
    legacy = json.loads((root / fmt.MANIFEST_FILE).read_text())
    legacy.pop("revision")
    legacy["format_version"] = 1
    (root / fmt.MANIFEST_FILE).write_text(json.dumps(legacy))
    zoo = Zoo.open(root)
    assert zoo.manifest.revision == ""
    assert zoo.revision == fmt.canonical_hash({k: v for k, v in legacy.items() if k != "created"})
