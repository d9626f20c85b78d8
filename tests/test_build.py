"""Building zoos: the real trainer on digits, resumable after a SIGKILL at any moment."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wslbench import zoo_format as fmt
from wslbench.zoo import Zoo
from zoo_builder.building.build import BuildError, build_zoo
from zoo_builder.building.executors import LocalExecutor
from zoo_builder.models import build_model
from zoo_builder.building.catalog import SPECS

TINY = SPECS.get("digits-resnet18").with_preset("tiny")


def assert_complete_zoo(root: Path, spec=TINY) -> Zoo:
    """Every trial finished, every checkpoint loads into its model, every hash holds."""
    zoo = Zoo.open(root)
    assert len(zoo) == len(spec.trials())
    assert zoo.manifest is not None and zoo.verify() == []
    assert not list(root.rglob("*.tmp")), "a temporary file was left behind"
    for model in zoo.models:
        assert model.last_epoch == spec.epochs
        assert model.checkpoint_epochs == spec.saved_epochs
        for epoch in model.checkpoint_epochs:
            from_safetensors = model.state_dict(epoch)
            from_torch = fmt._load_torch_state_dict(fmt.checkpoint_dir(model.path, epoch)
                                                    / fmt.TORCH_CHECKPOINT)
            assert from_safetensors.keys() == from_torch.keys()
            build_model(model.model_args).load_state_dict(from_safetensors)
    return zoo


def test_tiny_build_writes_the_published_layout_and_our_additions(tiny_zoo):
    zoo = assert_complete_zoo(tiny_zoo)
    assert zoo.manifest.spec == "digits-resnet18" and zoo.manifest.preset == "tiny"
    assert zoo.manifest.grid == {"model::width": [1, 2, 4], "training::batchsize": [64, 512],
                                 "seed": [0, 1]}
    model = zoo.models[0]
    assert model.name.startswith("NN_tune_trainable_") and "model_width=1" in model.name
    assert (model.path / fmt.TRIAL_LOG).read_text().count("epoch") >= TINY.epochs
    params = fmt.read_params(model.path)
    assert params["model::type"] == "resnet18" and params["optim::lr"] == 0.1
    assert [row["training_iteration"] for row in model.results] == [0, 1, 2]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert all(isinstance(row[key], float) for row in model.results)
    # Training moved the weights and the metrics.
    assert not torch.equal(model.state_dict(0)["conv1.weight"], model.state_dict()["conv1.weight"])
    assert model.results[0]["train_loss"] != model.results[-1]["train_loss"]
    for name in (fmt.SUMMARY_CSV, fmt.SUMMARY_PARQUET):
        assert (tiny_zoo / name).is_file()
    import pandas as pd

    table = pd.read_parquet(tiny_zoo / fmt.SUMMARY_PARQUET)
    assert list(table.columns[:len(fmt.SUMMARY_COLUMNS)]) == fmt.SUMMARY_COLUMNS
    assert len(table) == len(zoo) * (TINY.epochs + 1)
    pd.testing.assert_frame_equal(table, zoo.summary(), check_dtype=False)


def test_build_is_deterministic_per_seed(tiny_zoo, tmp_path):
    """Built again (worker processes on the builds' one thread), every weight is the zoo's bit
    for bit."""
    again = Zoo.open(build_zoo(TINY, tmp_path / "again", workers=2, progress=False))
    for model, other in zip(Zoo.open(tiny_zoo).models, again.models):
        assert model.name == other.name
        for key, value in model.state_dict().items():
            assert torch.equal(other.state_dict()[key], value), (model.name, key)


def test_a_slice_of_loads_is_the_zoo_in_part_and_a_full_build_completes_it(tiny_zoo, tmp_path):
    """``loads`` trains only those widths, under the whole zoo's folder names and seeds, so
    its weights are the whole zoo's; the manifest's grid says what the slice holds; a build
    without it into the same folder trains the rest."""
    root = tmp_path / "slice"
    sliced = Zoo.open(build_zoo(TINY, root, progress=False, loads=["2"]))
    whole = {model.name: model for model in Zoo.open(tiny_zoo).models}
    assert len(sliced) == 4 and {m.params["model::width"] for m in sliced.models} == {2}
    assert sliced.manifest.grid["model::width"] == [2] and sliced.verify() == []
    for model in sliced.models:
        for key, value in model.state_dict().items():
            assert torch.equal(whole[model.name].state_dict()[key], value), (model.name, key)
    with pytest.raises(BuildError, match="width 3 is not in the grid.*1, 2, 4"):
        build_zoo(TINY, tmp_path / "other", progress=False, loads=[3])
    build_zoo(TINY, root, progress=False)
    assert_complete_zoo(root)
    assert Zoo.open(root).revision == Zoo.open(tiny_zoo).revision


def test_rebuild_skips_finished_and_redoes_half_written(tiny_zoo, tmp_path):
    root = Path(shutil.copytree(tiny_zoo, tmp_path / "zoo"))
    zoo = Zoo.open(root)
    finished, half = zoo.models[0].path, zoo.models[1].path
    finished_mtime = (finished / "checkpoint_000002" / fmt.TORCH_CHECKPOINT).stat().st_mtime_ns
    (half / fmt.COMPLETE_MARKER).unlink()  # as if killed before the end
    ckpt = half / "checkpoint_000002" / fmt.TORCH_CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    (root / fmt.MANIFEST_FILE).unlink()
    with pytest.raises(fmt.ZooFormatError, match="unfinished build"):
        Zoo.open(root)
    build_zoo(TINY, root, progress=False)
    assert (finished / "checkpoint_000002" / fmt.TORCH_CHECKPOINT).stat().st_mtime_ns \
        == finished_mtime
    assert_complete_zoo(root)


def test_refuses_to_mix_zoos(tiny_zoo, tmp_path):
    root = Path(shutil.copytree(tiny_zoo, tmp_path / "zoo"))
    other = SPECS.get("digits-resnet18").with_preset("mini")
    with pytest.raises(BuildError, match="holds zoo digits-resnet18 \\(preset tiny\\)"):
        build_zoo(other, root, progress=False)


def _build_command(out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "zoo_builder.cli", "build", "digits-resnet18",
            "--preset", "tiny", "--out", str(out), "--workers", str(workers)]


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_mid_build_then_resume(tmp_path, workers):
    """Kill the build while models are being written, at several moments; resume; check all."""
    out = tmp_path / "zoo"
    for finished_before_kill in (1, 5):
        process = subprocess.Popen(_build_command(out, workers), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            if len(list(out.glob(f"*/{fmt.COMPLETE_MARKER}"))) >= finished_before_kill:
                break
            time.sleep(0.01)
        assert process.poll() is None, "the build finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    time.sleep(0.5)  # pool workers die with their parent (PR_SET_PDEATHSIG)
    assert not (out / fmt.MANIFEST_FILE).exists()
    build_zoo(TINY, out, progress=False)
    assert_complete_zoo(out)


def test_concurrent_build_is_refused(tmp_path):
    import fcntl

    out = tmp_path / "zoo"
    out.mkdir()
    with open(out / ".build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        with pytest.raises(BuildError, match="another build or annotation is running"):
            build_zoo(TINY, out, progress=False)


def test_failed_trial_is_reported_not_dropped(tmp_path, monkeypatch):
    import zoo_builder.building.train as train

    def broken(params, trial_dir, **kwargs):
        if params["model::width"] == 2:
            raise RuntimeError("out of memory")
        return real(params, trial_dir, **kwargs)

    real = train.train_trial
    monkeypatch.setattr(train, "train_trial", broken)
    with pytest.raises(BuildError, match="4 of 12 trials failed") as err:
        # in this process, where the patched trainer is (a build's default runs workers)
        build_zoo(TINY, tmp_path / "zoo", progress=False, executor=LocalExecutor(1))
    assert "out of memory" in str(err.value) and "train.log" in str(err.value)
    assert not (tmp_path / "zoo" / fmt.MANIFEST_FILE).exists()


@pytest.mark.slow
def test_mini_zoo_spans_underfitting_to_interpolation(tmp_path):
    """The quickstart zoo is a real population (about 4 minutes on 2 cores)."""
    spec = SPECS.get("digits-resnet18").with_preset("mini")
    zoo = assert_complete_zoo(build_zoo(spec, tmp_path / "mini", workers=2, progress=False),
                              spec)
    final = [(m.metric("train_loss"), m.metric("train_acc"), m.metric("test_acc"))
             for m in zoo.models]
    train_loss, train_acc, test_acc = zip(*final)
    assert min(train_loss) < 0.05 and max(train_loss) > 1.5
    assert max(train_acc) > 0.99 and min(train_acc) < 0.3
    assert max(test_acc) > 0.95 and min(test_acc) < 0.3


@pytest.mark.gpu
def test_training_on_cuda_gives_cpu_loadable_checkpoints(tmp_path):
    if not torch.cuda.is_available():
        pytest.fail("the gpu marker needs a CUDA device")
    from zoo_builder.building.train import RunOptions, train_trial

    params = dict(TINY.trials()[0].params)
    train_trial(params, tmp_path, options=RunOptions(device="cuda"))
    results = fmt.read_results(tmp_path)
    assert len(results) == TINY.epochs + 1
    assert all(r["train_loss"] is not None for r in results)
    weights = fmt.load_state_dict(tmp_path, TINY.epochs)
    assert all(t.device.type == "cpu" for t in weights.values())
    build_model(fmt.read_checkpoint_model_args(tmp_path, TINY.epochs)).load_state_dict(weights)
