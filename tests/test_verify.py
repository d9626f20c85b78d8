"""Checks before trusting a zoo: `wslbench verify`, and the cheap checks of evaluate, annotate
and the feature cache against what the manifest records."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from test_revision import final_safetensors, flip_tensor_byte
from wslbench import zoo_format as fmt
from wslbench.cli import main as wslbench_main
from wslbench.zoo import Zoo

EVALUATE = ["evaluate", "linear-probe", "--task", "test_acc", "--seeds", "0", "--zoo"]


@pytest.fixture()
def zoo_copy(tiny_zoo, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_zoo, tmp_path / "zoo"))


def triple_final_weights(root: Path) -> None:
    """Rewrite every final safetensors checkpoint with its float tensors times three."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for trial in fmt.find_trial_dirs(root):
        path = final_safetensors(trial)
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        save_file({key: value * 3 if value.is_floating_point() else value
                   for key, value in tensors.items()}, str(path), metadata=metadata)


def test_verify_passes_on_an_intact_zoo(zoo_copy, capsys):
    manifest = fmt.read_manifest(zoo_copy)
    files = sum(len(fmt.recorded_files(record)) for record in manifest.trials.values())
    assert wslbench_main(["verify", str(zoo_copy)]) == 0
    assert f"{files} files of {len(manifest.trials)} models verified" in capsys.readouterr().out
    assert Zoo.open(zoo_copy).verify() == []


def test_verify_lists_each_mismatching_trial_and_file(zoo_copy, capsys):
    trials = fmt.find_trial_dirs(zoo_copy)
    flip_tensor_byte(final_safetensors(trials[0]), "fc.weight")
    torch_file = fmt.checkpoint_dir(trials[1], 0) / fmt.TORCH_CHECKPOINT
    torch_file.write_bytes(torch_file.read_bytes()[:-10])  # truncated
    assert wslbench_main(["verify", str(zoo_copy)]) == 1
    out = capsys.readouterr().out
    rel = f"{final_safetensors(trials[0]).parent.name}/{fmt.SAFETENSORS_CHECKPOINT}"
    assert f"trial '{trials[0].name}' file '{rel}': sha256 differs" in out
    assert f"trial '{trials[0].name}' file '{rel}': tensors differ" in out
    assert f"trial '{trials[1].name}' file 'checkpoint_000000/{fmt.TORCH_CHECKPOINT}'" in out
    assert "problem(s) in zoo" in out.splitlines()[-1]


def test_tripled_weights_fail_evaluate_cold_and_with_a_warm_feature_cache(zoo_copy, capsys):
    assert wslbench_main(EVALUATE + [str(zoo_copy)]) == 0  # the feature cache is warm now
    triple_final_weights(zoo_copy)
    with pytest.raises(fmt.ZooIntegrityError, match="wslbench verify") as raised:
        wslbench_main(["-v"] + EVALUATE + [str(zoo_copy)])
    assert len(raised.value.problems) == len(Zoo.open(zoo_copy).models)
    capsys.readouterr()
    assert wslbench_main(EVALUATE + [str(zoo_copy)]) == 2  # one line, naming trial and file
    err = capsys.readouterr().err
    assert "differ from their recorded hashes" in err and fmt.SAFETENSORS_CHECKPOINT in err


def test_one_changed_float_of_the_same_size_is_caught(zoo_copy):
    trial = fmt.find_trial_dirs(zoo_copy)[3]
    path = final_safetensors(trial)
    size = path.stat().st_size
    flip_tensor_byte(path, "conv1.weight", index=0)
    assert path.stat().st_size == size
    with pytest.raises(fmt.ZooIntegrityError, match=f"trial '{trial.name}' file "
                                                   f"'{path.parent.name}/{path.name}'"):
        Zoo.open(zoo_copy).check_integrity()


def test_corrupt_safetensors_header_is_caught_with_a_warm_cache(zoo_copy, capsys):
    assert wslbench_main(EVALUATE + [str(zoo_copy)]) == 0
    path = final_safetensors(fmt.find_trial_dirs(zoo_copy)[5])
    data = bytearray(path.read_bytes())
    data[8:12] = b"XXXX"  # the header's first bytes: no longer JSON, same size
    path.write_bytes(bytes(data))
    with pytest.raises(fmt.ZooIntegrityError, match=path.parent.name):
        wslbench_main(["-v"] + EVALUATE + [str(zoo_copy)])
    problems = Zoo.open(zoo_copy).verify()
    assert any("no valid safetensors header" in problem for problem in problems)


def test_feature_cache_is_keyed_by_the_checkpoint_file(zoo_copy):
    """Trusted code that featurizes without the zoo check still gets no stale row: the
    sample key carries the file's fingerprint."""
    from wslbench.evaluate import samples, task_items
    from wslbench.features import featurize
    from wslbench.splits import SPLITS, make_split
    from wslbench.tasks import TASKS

    zoo = Zoo.open(zoo_copy)
    task = TASKS.get("test_acc")
    items = task_items(task, zoo, make_split(zoo, SPLITS.get("iid")), "train")

    def norms(state):
        return [float(t.double().norm()) for t in state.values() if t.is_floating_point()]

    before = featurize(samples(items, task, zoo.revision), norms, "norms", 1).values
    flip_tensor_byte(final_safetensors(items[0].model.path), "fc.weight", index=3)
    after = featurize(samples(items, task, zoo.revision), norms, "norms", 1).values
    assert (after[0] != before[0]).any() and (after[1:] == before[1:]).all()


def test_annotate_refuses_a_changed_checkpoint_before_any_work(zoo_copy):
    from zoo_builder.annotating.annotate import annotate_zoo

    trial = fmt.find_trial_dirs(zoo_copy)[0]
    flip_tensor_byte(final_safetensors(trial), "fc.weight")
    with pytest.raises(fmt.ZooIntegrityError, match=trial.name):
        annotate_zoo(zoo_copy, groups=["cka"], progress=False)


def test_an_emptied_result_json_fails_annotate_and_verify_naming_the_file(zoo_copy, capsys):
    from zoo_builder.annotating.annotate import annotate_zoo

    trial = fmt.find_trial_dirs(zoo_copy)[2]
    (trial / fmt.RESULT_FILE).write_text("")
    manifest = (zoo_copy / fmt.MANIFEST_FILE).read_bytes()
    with pytest.raises(fmt.ZooFormatError, match=f"{trial.name}/{fmt.RESULT_FILE}' is empty"):
        annotate_zoo(zoo_copy, groups=["cka"], progress=False)
    assert (zoo_copy / fmt.MANIFEST_FILE).read_bytes() == manifest  # nothing recorded
    assert wslbench_main(["verify", str(zoo_copy)]) == 1
    out = capsys.readouterr().out
    assert f"trial '{trial.name}' file '{fmt.RESULT_FILE}'" in out and "is empty" in out
