"""Leaderboard entries tied to code (issue 14): results record the predictor's identity,
`wslbench leaderboard reproduce` re-runs it and compares predictions, and `validate` reports
every broken file without stopping at the first."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import write_synthetic_zoo
from wslbench import leaderboard as lb
from wslbench.evaluate import evaluate, split_targets
from wslbench.intervals import TestPart, score_task
from wslbench.leaderboard_cli import main as cli
from wslbench.splits import resolve_split
from wslbench.tasks import TASKS
from wslbench.zoo import Zoo

REPO = Path(__file__).resolve().parents[1]

CONSTANT = '''
import numpy as np


class Constant:
    name = "constant"

    def __init__(self, seed=0):
        self.seed = seed

    def fit(self, train, train_targets, val, val_targets):
        self.value = float(np.median(train_targets)) + {shift}

    def predict(self, models):
        return np.full(len(models), self.value)
'''


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A synthetic zoo, a leaderboard with a linear-probe entry and a file predictor's entry,
    and the results they came from."""
    base = tmp_path_factory.mktemp("reproduce")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WSLBENCH_CACHE", str(base / "cache"))
        zoo = Zoo.open(write_synthetic_zoo(base / "zoo", n_points=10))
        split, _ = resolve_split(zoo, "iid")
        task = TASKS.get("test_acc")
        probe = evaluate("linear-probe", task, zoo, split, seeds=(0, 1)).to_json()
        source = base / "constant.py"
        source.write_text(textwrap.dedent(CONSTANT.format(shift=0.0)))
        constant = evaluate(str(source), task, zoo, split, seeds=(0,)).to_json()
        root = base / "leaderboards"
        lb.submit([probe], root, baseline=True)
        lb.submit([constant], root)
    return {"zoo": zoo, "split": split, "root": root, "probe": probe, "constant": constant,
            "source": source, "base": base}


def entry_of(root: Path, method: str) -> Path:
    (path,) = (root / "entries").rglob(f"{method}.json")
    return path


def test_results_record_the_predictors_identity(setting):
    identity = setting["probe"]["predictor"]["identity"]
    assert identity["given_as"] == "registered" and identity["name"] == "linear-probe"
    assert identity["class"] == "baselines.linear_probe:LinearProbe"
    code = REPO / "baselines" / "linear_probe.py"
    assert identity["file"] == str(code)
    assert identity["sha256"] == hashlib.sha256(code.read_bytes()).hexdigest()
    assert identity["git_commit"] and len(identity["git_commit"]) == 40
    assert identity["distribution"] == "wslbench" and identity["version"]
    assert identity["source"] is None  # a registered predictor is found by its commit
    own = setting["constant"]["predictor"]["identity"]
    assert own["given_as"] == "file" and "class Constant" in own["source"]
    assert own["sha256"] == hashlib.sha256(setting["source"].read_bytes()).hexdigest()
    entry = json.loads(entry_of(setting["root"], "linear-probe").read_text())
    assert entry["tasks"]["test_acc"]["predictor"] == identity


def test_reproduce_a_baseline_entry(setting, capsys):
    path = entry_of(setting["root"], "linear-probe")
    assert cli(["leaderboard", "reproduce", str(path), "--zoo", str(setting["zoo"].root),
                "--leaderboard", str(setting["root"])]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "test_acc" in out and "FAIL" not in out
    assert "predictions reproduced by linear-probe" in out


def test_an_entry_made_on_another_machine_is_checked_against_the_module_here(
        setting, tmp_path, capsys):
    """The recorded file path does not exist here (another checkout); reproduce finds the
    class's module in this installation and says when its code differs from the recorded."""
    import shutil

    root = Path(shutil.copytree(setting["root"], tmp_path / "leaderboards"))
    path = entry_of(root, "linear-probe")
    entry = json.loads(path.read_text())
    identity = entry["tasks"]["test_acc"]["predictor"]
    identity["file"] = "/elsewhere/baselines/linear_probe.py"
    identity["sha256"] = "0" * 64
    path.write_text(json.dumps(entry))
    assert cli(["leaderboard", "reproduce", str(path), "--zoo", str(setting["zoo"].root),
                "--leaderboard", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"'{REPO / 'baselines' / 'linear_probe.py'}' has changed since the entry was made" in out


def test_an_entry_of_copied_reference_targets_validates_but_does_not_reproduce(
        setting, tmp_path, capsys):
    """Predictions replaced by the true test targets, scores recomputed: validation cannot
    tell; reproduction fails and names the entry."""
    forged = json.loads(json.dumps(setting["probe"]))
    truth = split_targets(TASKS.get("test_acc"), setting["zoo"], setting["split"])
    ids = sorted(truth)
    forged["predictions"] = {seed: dict(truth) for seed in forged["predictions"]}
    part = TestPart(ids, [truth[i] for i in ids], [forged["grid_points"][i] for i in ids])
    predicted = {int(seed): np.array([truth[i] for i in ids]) for seed in forged["predictions"]}
    forged["scores"] = {name: stats.to_json() for name, stats in
                        score_task(TASKS.get("test_acc").scores, part, predicted).items()}
    root = Path(setting["root"])
    lb.submit([forged], root, name="Oracle")  # submit validates it
    path = entry_of(root, "oracle")
    (checked,) = [c for c in lb.validate(root) if c.path == path]
    assert checked.problems == []  # validation cannot tell, and says so
    assert "true test targets exactly" in checked.note and "reproduce" in checked.note
    assert cli(["leaderboard", "reproduce", str(path), "--zoo", str(setting["zoo"].root),
                "--leaderboard", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {path.relative_to(root.parent)}" in out
    assert "differ from what linear-probe predicts now" in out
    assert "copied" in out


def test_a_changed_predictor_file_is_reproduced_from_the_stored_source(setting, capsys):
    setting["source"].write_text(textwrap.dedent(CONSTANT.format(shift=0.25)))  # new code
    try:
        path = entry_of(setting["root"], "constant")
        assert cli(["leaderboard", "reproduce", str(path), "--zoo",
                    str(setting["zoo"].root), "--leaderboard", str(setting["root"])]) == 0
        out = capsys.readouterr().out
        assert "ran the predictor source stored in the entry" in out
    finally:
        setting["source"].write_text(textwrap.dedent(CONSTANT.format(shift=0.0)))


def test_reproduce_refuses_a_zoo_of_another_revision(setting, tmp_path, capsys):
    other = write_synthetic_zoo(tmp_path / "other", n_points=4)
    path = entry_of(setting["root"], "linear-probe")
    assert cli(["leaderboard", "reproduce", str(path), "--zoo", str(other),
                "--leaderboard", str(setting["root"])]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "revision" in err and "--zoo" in err


def test_validate_checks_every_entry_and_names_each_broken_file(setting, tmp_path, capsys):
    import shutil

    root = Path(shutil.copytree(setting["root"], tmp_path / "leaderboards"))
    nan_entry = entry_of(root, "linear-probe")
    text = nan_entry.read_text()
    first = next(iter(json.loads(text)["tasks"]["test_acc"]["predictions"]["0"].values()))
    nan_entry.write_text(text.replace(json.dumps(first), "NaN", 1))
    broken = entry_of(root, "constant")
    data = json.loads(broken.read_text())
    data["tasks"]["test_acc"]["predictions"]["0"] = {
        k: float("inf") for k in data["tasks"]["test_acc"]["predictions"]["0"]}
    broken.write_text(json.dumps(data).replace("Infinity", "1e999"))  # inf, as a number
    code = cli(["leaderboard", "validate", "--leaderboard", str(root)])
    out = capsys.readouterr().out
    assert code == 1
    assert f"FAIL {nan_entry.relative_to(root.parent)}: not JSON: bare NaN at line" in out
    assert f"FAIL {broken.relative_to(root.parent)}:" in out and "not finite" in out
    assert "ok   " in out  # the reference (and any other entry) still checked
    assert "2 failed" in out
