"""Tasks, splits, the predictor interface, `wslbench evaluate` and the linear probe."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import write_published_zoo, write_synthetic_zoo
from wslbench.cli import main as wslbench_main
from wslbench.evaluate import evaluate
from wslbench.predictor import load_predictor_class
from wslbench.splits import SPLITS, Split, make_split, resolve_split
from wslbench.tasks import TASKS
from wslbench.zoo import Zoo


def test_split_keeps_grid_points_together_and_is_deterministic(tmp_path):
    zoo = Zoo.open(write_synthetic_zoo(tmp_path / "zoo", n_points=20, seeds=(0, 1, 2)))
    split = make_split(zoo, SPLITS.get("iid"))
    assert split == make_split(Zoo.open(zoo.root), SPLITS.get("iid"))
    assert split.sizes() == {"train": 42, "val": 9, "test": 9}  # 14 / 3 / 3 grid points
    names = [n for part in ("train", "val", "test") for n in split.part(part)]
    assert sorted(names) == sorted(m.name for m in zoo.models)  # a partition
    side = {n: part for part in ("train", "val", "test") for n in split.part(part)}
    for point in {m.grid_point for m in zoo.models}:
        assert len({side[m.name] for m in zoo.models if m.grid_point == point}) == 1


def test_split_file_round_trip_and_tamper_check(tmp_path):
    zoo = Zoo.open(write_synthetic_zoo(tmp_path / "zoo", n_points=6))
    split, path = resolve_split(zoo, "iid")
    assert path.is_file() and Split.load(path) == split
    assert resolve_split(zoo, str(path))[0].sha256 == split.sha256
    data = json.loads(path.read_text())
    data["test"], data["train"] = data["train"], data["test"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="does not match its sha256"):
        Split.load(path)


def test_split_file_of_another_zoo_is_refused(tmp_path):
    first = Zoo.open(write_synthetic_zoo(tmp_path / "a", n_points=6))
    second = Zoo.open(write_published_zoo(tmp_path / "b"))
    _, path = resolve_split(first, "iid")
    with pytest.raises(ValueError, match="was made for zoo revision"):
        resolve_split(second, str(path))


def test_task_targets():
    from wslbench.zoo import ModelRecord

    model = ModelRecord("m", None, {}, [{"train_acc": 0.5, "test_acc": 0.4},
                                        {"train_acc": 0.9, "test_acc": 0.7}], (1,))
    assert TASKS.get("test_acc").target(model) == 0.7
    assert TASKS.get("ggap").target(model) == pytest.approx(0.2)
    assert np.isnan(TASKS.get("test_acc").target(ModelRecord("n", None, {}, [], ())))
    with pytest.raises(KeyError, match="did you mean 'ggap'"):
        TASKS.get("gap")


def test_linear_probe_recovers_a_known_function_of_the_weights(tmp_path):
    """test_acc = max of the fc weights + mean of the stem's: linear in two of the features."""
    zoo = Zoo.open(write_synthetic_zoo(
        tmp_path / "zoo", n_points=60, seeds=(0,),
        target=lambda state: float(state["fc.weight"].max() + 0.5 * state["conv1.weight"].mean())))
    split = make_split(zoo, SPLITS.get("iid"))
    result = evaluate(load_predictor_class("linear-probe"), TASKS.get("test_acc"), zoo, split)
    assert result.scores["r2"]["value"] > 0.9
    assert result.scores["kendall_tau"]["value"] > 0.8


def test_evaluate_records_predictions_and_provenance(tmp_path, tiny_zoo):
    zoo = Zoo.open(tiny_zoo)
    split, _ = resolve_split(zoo, "iid")
    result = evaluate(load_predictor_class("linear-probe"), TASKS.get("ggap"), zoo, split,
                      seeds=(0, 1)).to_json()
    assert result["task"] == {"name": "ggap", "version": 1, "kind": "regression",
                              "main_score": "r2"}
    assert result["zoo"]["revision"] == zoo.revision == zoo.manifest.revision
    assert result["split"]["sha256"] == split.sha256
    assert set(result["predictions"]) == {"0", "1"}
    assert set(result["predictions"]["0"]) == set(split.test)
    assert len(result["scores"]["r2"]["per_seed"]) == 2
    # Every score with its interval (or why it has none), every test sample with its grid point.
    assert result["schema_version"] == 2
    assert set(result["scores"]["r2"]) == {"value", "ci95", "std", "per_seed",
                                           "grid_point_means", "degenerate", "reason"}
    assert result["grid_points"].keys() == result["predictions"]["0"].keys()
    points = {zoo.model(name).grid_point for name in split.test}
    assert len(set(result["grid_points"].values())) == len(points) == \
        result["bootstrap"]["n_grid_points"]
    assert result["bootstrap"]["resamples"] == 1000 and result["bootstrap"]["seed"] == 0
    if len(points) == 1:  # the tiny zoo tests on one grid point: no interval, and why
        assert result["scores"]["r2"]["ci95"] is None
        assert result["scores"]["r2"]["reason"] == "1 test grid point"
    for key in ("package_version", "git_hash", "python", "torch", "hardware", "wall_time_s"):
        assert key in result["provenance"]
    json.dumps(result)  # numbers as numbers, all serializable


USER_PREDICTOR = textwrap.dedent('''
    import numpy as np

    class MeanOfTrain:
        """Predicts the mean training target; checks it never sees test targets."""

        def fit(self, train, train_targets, val, val_targets):
            assert len(train) == len(train_targets)
            self.mean = float(np.mean(train_targets))

        def predict(self, models):
            for model in models:
                assert model.hyperparameters is None and model.state_dict()
            return np.full(len(models), self.mean)
''')


def test_cli_evaluates_a_user_predictor_from_a_file(tmp_path, tiny_zoo, capsys):
    source = tmp_path / "my_model.py"
    source.write_text(USER_PREDICTOR)
    out = tmp_path / "result.json"
    code = wslbench_main(["evaluate", f"{source}:MeanOfTrain", "--task", "test_acc",
                          "--zoo", str(tiny_zoo), "--seeds", "0", "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "r2" in printed and "kendall_tau" in printed
    # One test grid point; a constant prediction has no rank correlation: the table says so.
    assert "[no interval: 1 test grid point]" in printed
    assert "n/a (constant predictions for seed 0)" in printed
    assert "nan" not in printed
    result = json.loads(out.read_text())
    assert result["predictor"]["class"].endswith(":MeanOfTrain")
    assert result["scores"]["r2"]["value"] <= 0  # a constant has no skill


def test_cli_evaluates_a_module_path_and_reports_errors(tiny_zoo, capsys):
    assert wslbench_main(["evaluate", "baselines.linear_probe:LinearProbe", "--task", "ggap",
                          "--zoo", str(tiny_zoo), "--seeds", "0"]) == 0
    assert wslbench_main(["evaluate", "linear-prob", "--task", "ggap", "--zoo",
                          str(tiny_zoo)]) == 2
    assert "did you mean 'linear-probe'" in capsys.readouterr().err
    assert wslbench_main(["evaluate", "linear-probe", "--task", "ggap", "--zoo",
                          str(tiny_zoo / "nowhere")]) == 2
    assert "no zoo" in capsys.readouterr().err


def test_a_task_whose_target_no_model_records_says_it_does_not_apply(tiny_zoo, capsys):
    """A PINN's relative L2 error on an image zoo is not an annotation to add: the error
    says the task does not apply, names the target and what to do."""
    assert wslbench_main(["evaluate", "linear-probe", "--task", "test_rel_l2", "--zoo",
                          str(tiny_zoo), "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert "task 'test_rel_l2' does not apply to zoo 'digits-resnet18'" in err
    assert "records test_rel_l2_error in its training log" in err and "wslbench ls tasks" in err


def test_a_predictor_that_does_not_apply_says_so_across_the_process_boundary(tiny_zoo):
    """flat-mlp raises NotApplicableError in its own process on a zoo of mixed widths; the
    caller gets it as NotApplicableError (what benchmarks/baselines.py reports as 'not
    applicable'), named in the zoo's terms, not as a failure of the predictor's code."""
    from wslbench.isolation import PredictorError
    from wslbench.predictor import NotApplicableError

    zoo = Zoo.open(tiny_zoo)
    split, _ = resolve_split(zoo, "iid")
    with pytest.raises(NotApplicableError, match="does not apply: flat-mlp needs models of "
                                                 "one shape.*trial 'NN_tune_trainable") as err:
        evaluate("flat-mlp", TASKS.get("test_acc"), zoo, split, seeds=[0])
    assert isinstance(err.value, PredictorError) and "stage" not in str(err.value)


def _console_script(name: str) -> str:
    """The installed entry point beside this interpreter (the venv's bin/), activated or not."""
    return str(Path(sys.executable).with_name(name))


def test_console_scripts_list_what_exists():
    listing = subprocess.run([_console_script("wslbench"), "ls"], capture_output=True, text=True,
                             check=True).stdout
    for name in ("test_acc", "ggap", "iid", "linear-probe"):
        assert name in listing
    specs = subprocess.run([_console_script("zoo-builder"), "ls"], capture_output=True, text=True,
                           check=True).stdout
    assert "digits-resnet18" in specs and "mini 75" in specs
    # wslbench does not import zoo_builder or the baselines to list things.
    probe = "import sys, wslbench.cli; print(any(m.startswith(('zoo_builder', 'baselines')) " \
            "for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
