"""`wslbench evaluate` runs the predictor apart from the targets and the zoo (issue 14): a
predictor that writes everywhere leaves the zoo intact, one that searches finds no test
target, and every way a predictor can fail is named with its file, line or model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import write_published_zoo, write_synthetic_zoo
from wslbench import zoo_format as fmt
from wslbench.cli import main as wslbench_main
from wslbench.evaluate import evaluate, split_targets
from wslbench.isolation import PredictorError
from wslbench.splits import SPLITS, make_split, resolve_split
from wslbench.tasks import TASKS
from wslbench.zoo import Zoo


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory) -> Path:
    """12 grid points x 2 seeds, random weights, a distinct random test_acc per model."""
    return write_synthetic_zoo(tmp_path_factory.mktemp("isolation") / "zoo", n_points=12)


def zoo_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def predictor_file(folder: Path, body: str, name: str = "probe.py") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """`wslbench` in its own process (so that its command line holds --zoo, as a user's)."""
    return subprocess.run([sys.executable, "-m", "wslbench.cli", *args], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=600)


# --------------------------------------------------------------------------- the zoo stays whole


WRITER = '''
import os
from pathlib import Path

import numpy as np


def reachable(sample):
    """Every file the predictor can find: its stage (and the cache around it), its working
    directory, and what the parent's /proc shows."""
    stage = Path(sample._load.args[0]).parent
    places = [stage, stage.parent.parent, Path.cwd(), Path(f"/proc/{os.getppid()}/cwd")]
    for place in places:
        try:
            for folder, _, files in os.walk(place):
                for name in files:
                    yield Path(folder) / name
        except OSError:
            pass


class Writer:
    def fit(self, train, train_targets, val, val_targets):
        self.mean = float(np.mean(train_targets))

    def predict(self, models):
        written = 0
        for path in {p for m in list(models) for p in reachable(m)}:
            try:
                os.chmod(path, 0o644)
            except OSError:
                pass
            try:
                with open(path, "r+b") as handle:
                    handle.write(b"\\0" * 64)
                written += 1
            except OSError:
                pass
        assert written > 0, "the predictor reached no file at all"
        return np.full(len(models), self.mean)
'''


def test_a_predictor_that_writes_into_every_file_it_reaches_leaves_the_zoo_intact(
        zoo_root, tmp_path, monkeypatch):
    before = zoo_files(zoo_root)
    source = predictor_file(tmp_path, WRITER)
    monkeypatch.chdir(zoo_root.parent)  # the zoo lies below the working directory
    zoo = Zoo.open(zoo_root)
    split, _ = resolve_split(zoo, "iid")
    evaluate(str(source), TASKS.get("test_acc"), zoo, split, seeds=(0,))
    assert zoo_files(zoo_root) == before
    assert wslbench_main(["verify", str(zoo_root)]) == 0
    # The staged weights were copies (no hard link shares a zoo file's inode), and are gone.
    assert all(p.stat().st_nlink == 1 for p in zoo_root.rglob("*") if p.is_file())
    assert not any((Path(os.environ["WSLBENCH_CACHE"]) / "stage").rglob("*.safetensors"))


# --------------------------------------------------------------------------- no test target


SEARCHER = '''
import gc
import inspect
import json
import os
from pathlib import Path

import numpy as np

REPORT = Path({report!r})


def numbers(obj, found, depth=0):
    """Every float held by obj (dicts, lists, arrays, objects' attributes), a few levels deep."""
    if depth > 4:
        return
    if isinstance(obj, float):
        found.add(obj)
    elif isinstance(obj, np.ndarray) and obj.dtype.kind in "fO" and obj.size < 100000:
        for value in obj.ravel().tolist():
            numbers(value, found, depth + 1)
    elif isinstance(obj, dict):
        for value in list(obj.values()):
            numbers(value, found, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for value in list(obj)[:100000]:
            numbers(value, found, depth + 1)
    elif hasattr(obj, "__dict__") and not inspect.ismodule(obj):
        try:
            numbers(vars(obj), found, depth + 1)
        except TypeError:
            pass


def read(path):
    try:
        return Path(path).read_bytes().decode("utf-8", "replace")
    except OSError as err:
        return f"<{{type(err).__name__}}>"


def search(samples):
    found = set()
    for frame in inspect.stack():  # the stack
        numbers(dict(frame.frame.f_locals), found)
        numbers(dict(frame.frame.f_globals), found)
    for obj in gc.get_objects():  # everything this process holds
        if isinstance(obj, (dict, list, np.ndarray)):
            numbers(obj, found)
    texts = dict(os.environ)  # the environment
    parent = os.getppid()
    for name in ("cmdline", "environ", "maps"):  # /proc of this process and its parent
        texts[f"self/{{name}}"] = read(f"/proc/self/{{name}}")
        texts[f"parent/{{name}}"] = read(f"/proc/{{parent}}/{{name}}")
    for link in ("cwd", "exe", "root"):
        try:
            texts[f"parent/{{link}}"] = os.readlink(f"/proc/{{parent}}/{{link}}")
        except OSError as err:
            texts[f"parent/{{link}}"] = f"<{{type(err).__name__}}>"
    for pid in os.listdir("/proc"):  # every process's command line
        if pid.isdigit():
            texts[f"{{pid}}/cmdline"] = read(f"/proc/{{pid}}/cmdline")
    files = {{}}
    stage = Path(samples[0]._load.args[0]).parent
    for place in (Path.cwd(), stage):  # the file system it is given
        for folder, _, names in os.walk(place):
            for name in names:
                files[str(Path(folder) / name)] = read(Path(folder) / name)
    inodes = [os.stat(p).st_ino for p in files if os.path.isfile(p)]
    return found, texts, files, inodes


class Searcher:
    def fit(self, train, train_targets, val, val_targets):
        self.mean = float(np.mean(train_targets))

    def predict(self, models):
        found, texts, files, inodes = search(models)
        REPORT.write_text(json.dumps({{"numbers": sorted(found), "texts": texts,
                                      "files": sorted(files), "inodes": inodes,
                                      "contents": "".join(files.values())}}))
        return np.full(len(models), self.mean)
'''


def test_a_predictor_that_searches_finds_no_test_target(zoo_root, tmp_path):
    zoo = Zoo.open(zoo_root)
    split, split_path = resolve_split(zoo, "iid")
    report = tmp_path / "report.json"
    source = predictor_file(tmp_path, SEARCHER.format(report=str(report)))
    work = tmp_path / "work"
    work.mkdir()
    done = run_cli("evaluate", str(source), "--task", "test_acc", "--zoo", str(zoo_root),
                   "--split", str(split_path), "--seeds", "0", cwd=work,
                   env={"WSLBENCH_ZOOS": str(zoo_root.parent), "MY_ZOO": str(zoo_root)})
    assert done.returncode == 0, done.stderr
    found = json.loads(report.read_text())
    test_targets = set(split_targets(TASKS.get("test_acc"), zoo, split).values())
    train_targets = {TASKS.get("test_acc").target(zoo.model(n)) for n in split.train}
    assert len(test_targets) == len(split.test) and not test_targets & train_targets
    assert train_targets <= set(found["numbers"])  # the search does see what it is given
    assert not test_targets & set(found["numbers"])  # stack, memory: no test target
    for where, text in found["texts"].items():  # environment, /proc: no zoo path
        assert str(zoo_root) not in text, where
    if os.geteuid() != 0:  # root reads any process's /proc; others are shut out
        assert found["texts"]["parent/environ"] == "<PermissionError>"
        assert found["texts"]["parent/cwd"] == "<PermissionError>"
    assert "--zoo" not in found["texts"]["parent/cmdline"]
    assert "WSLBENCH_ZOOS" not in found["texts"] and "MY_ZOO" not in found["texts"]
    # The file system it is given: weights only, under opaque names, none a zoo file's inode.
    assert found["files"] and all(Path(f).name == "model.safetensors" for f in found["files"])
    assert not any(n.split("/")[-3].startswith("NN_tune") for n in found["files"])
    zoo_inodes = {p.stat().st_ino for p in zoo_root.rglob("*") if p.is_file()}
    assert not zoo_inodes & set(found["inodes"])
    assert not any(repr(t) in found["contents"] for t in test_targets)


# --------------------------------------------------------------------------- errors, named


def _evaluate_file(tmp_path, body: str, zoo_root: Path, task: str = "test_acc",
                   capsys=None, *extra: str) -> tuple[int, str]:
    source = predictor_file(tmp_path, body)
    code = wslbench_main(["evaluate", str(source), "--task", task, "--zoo", str(zoo_root),
                          "--seeds", "0", *extra])
    return code, capsys.readouterr().err if capsys else ""


RAISER = '''
import numpy as np


class Raiser:
    def fit(self, train, train_targets, val, val_targets):
        self.values = np.asarray(train_targets, dtype=float)
        raise ValueError("this predictor cannot fit")

    def predict(self, models):
        return np.zeros(len(models))
'''


def test_an_error_in_user_code_names_its_type_file_and_line_and_mentions_v(zoo_root, tmp_path,
                                                                           capsys):
    code, err = _evaluate_file(tmp_path, RAISER, zoo_root, capsys=capsys)
    assert code == 2
    assert "ValueError: this predictor cannot fit" in err
    assert f"{tmp_path / 'probe.py'}:8 in fit" in err and "fit()" in err
    assert "-v" in err and "Traceback" not in err
    with pytest.raises(PredictorError) as caught:  # with -v: the child's whole traceback
        wslbench_main(["-v", "evaluate", str(tmp_path / "probe.py"), "--task", "test_acc",
                       "--zoo", str(zoo_root), "--seeds", "0"])
    assert "raise ValueError" in caught.value.traceback_text
    assert "Traceback" in str(caught.value.__cause__)


def test_a_syntax_error_names_the_file_and_line_with_exit_2(zoo_root, tmp_path, capsys):
    code, err = _evaluate_file(tmp_path, "class Broken:\n    def fit(self\n", zoo_root,
                               capsys=capsys)
    assert code == 2
    assert f"predictor file '{tmp_path / 'probe.py'}' line 2" in err and "syntax" in err
    assert len(err.strip().splitlines()) <= 3


def _returning(expression: str) -> str:
    return f'''
import numpy as np


class Returns:
    def fit(self, train, train_targets, val, val_targets):
        pass

    def predict(self, models):
        n = len(models)
        return {expression}
'''


@pytest.mark.parametrize("expression, says", [
    ("np.full(n, np.nan)", "returned NaN for test model"),
    ("np.full(n, np.inf)", "returned inf for test model"),
    ("[complex(1, 2)] * n", "returned a complex ((1+2j))"),
    ("[{'a': 1}] * n", "returned a dict"),
    ("{'a': 1}", "predict() returned a dict"),
    ("['0.5'] * n", "returned the string '0.5' (a number as text)"),
    ("[True] * n", "returned a bool (True)"),
    ("np.zeros(n + 1)", "returned"),
    ("np.zeros((n, 2))", "shape"),
])
def test_predictions_that_are_not_finite_numbers_are_named(zoo_root, tmp_path, capsys,
                                                            expression, says):
    code, err = _evaluate_file(tmp_path, _returning(expression), zoo_root, capsys=capsys)
    assert code == 2, err
    assert says in err
    assert str(tmp_path / "probe.py") in err  # the predictor's file
    split, _ = resolve_split(Zoo.open(zoo_root), "iid")
    if "test model" in says:
        assert any(f"'{name}'" in err for name in split.test)  # and the model


def test_classification_needs_labels_and_names_the_model(tmp_path, capsys):
    root = write_task_zoo(tmp_path / "zoo")
    code, err = _evaluate_file(tmp_path, _returning("np.zeros(n)"), root, task="phase",
                               capsys=capsys)
    assert code == 2
    assert "the number 0.0, not a label" in err and "labels (strings" in err
    split, _ = resolve_split(Zoo.open(root), "iid")
    assert any(f"'{name}'" in err for name in split.test)


DYING = '''
import os
import sys


class Dies:
    def fit(self, train, train_targets, val, val_targets):
        print("about to go", file=sys.stderr, flush=True)
        os._exit(3)

    def predict(self, models):
        return [0.0] * len(models)
'''


def test_a_child_that_dies_gives_its_exit_code_and_last_stderr_lines(zoo_root, tmp_path,
                                                                     capsys):
    code, err = _evaluate_file(tmp_path, DYING, zoo_root, capsys=capsys)
    assert code == 2
    assert "died (exit code 3)" in err and "about to go" in err.split("died")[1]
    assert "'" + str(tmp_path / "probe.py") in err


SLOW_TO_EXIT = '''
import atexit
import os
import time

MARK = {mark!r}


def _leave_slowly():
    time.sleep(3)
    with open(MARK, "w") as handle:
        handle.write(str(os.getpid()))


atexit.register(_leave_slowly)


class SlowToExit:
    def fit(self, train, train_targets, val, val_targets):
        pass

    def predict(self, models):
        return [0.5] * len(models)
'''


def test_the_parent_scores_once_answered_and_the_child_still_shuts_down_cleanly(
        zoo_root, tmp_path, capsys):
    """The parent does not wait for the child's exit (tearing down torch takes ~0.5 s),
    and does not kill it either: the predictor's exit handlers still run."""
    mark = tmp_path / "exit-handler-ran"
    code, _ = _evaluate_file(tmp_path, SLOW_TO_EXIT.format(mark=str(mark)), zoo_root,
                             capsys=capsys)
    assert code == 0
    assert not mark.exists()  # evaluate returned while the child was still in its handler
    for _ in range(200):
        if mark.exists() and mark.read_text():
            break
        time.sleep(0.1)
    assert mark.read_text().isdigit()


def test_a_broken_checkpoint_is_named_in_the_zoo_not_the_stage(tmp_path, capsys):
    root = write_published_zoo(tmp_path / "published")  # no manifest: no integrity check
    broken = sorted(root.glob("*/checkpoint_*/checkpoints"))[0]
    broken.write_bytes(broken.read_bytes()[:100])
    code = wslbench_main(["evaluate", "linear-probe", "--task", "test_acc", "--zoo", str(root),
                          "--seeds", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert str(broken.parent.parent) in err  # the trial folder a user can delete or restore
    assert "stage" not in err


def test_a_constant_predictor_writes_strict_json_with_reasons(zoo_root, tmp_path, capsys):
    out = tmp_path / "result.json"
    code, _ = _evaluate_file(tmp_path, _returning("np.full(n, 0.5)"), zoo_root, "test_acc",
                             capsys, "--output", str(out))
    assert code == 0
    result = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(name))
    tau = result["scores"]["kendall_tau"]
    assert tau["value"] is None and "constant" in tau["reason"]
    assert result["predictor"]["identity"]["sha256"]
    assert "class Returns" in result["predictor"]["identity"]["source"]


def test_a_local_class_is_refused_with_how_to_fix_it(zoo_root):
    class Local:
        def fit(self, *args):
            pass

        def predict(self, models):
            return np.zeros(len(models))

    zoo = Zoo.open(zoo_root)
    split = make_split(zoo, SPLITS.get("iid"))
    with pytest.raises(ValueError, match="defined inside a function.*top level"):
        evaluate(Local, TASKS.get("test_acc"), zoo, split)


def test_stage_folders_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    """A run killed before it cleaned up leaves its stage; the next stage removes it, but
    never the stage of a run still open (it holds the lock), nor a fresh folder."""
    import subprocess as sp

    from wslbench.isolation import CheckpointStage

    base = tmp_path / "stage"
    code = ("import sys, time; from pathlib import Path; from wslbench.isolation import "
            "CheckpointStage; s = CheckpointStage(Path(sys.argv[1])); print(s.folder, "
            "flush=True); time.sleep(60)")
    killed = sp.Popen([sys.executable, "-c", code, str(base)], stdout=sp.PIPE, text=True)
    killed_folder = Path(killed.stdout.readline().strip())
    killed.kill()
    killed.wait()
    pre_lock_era = base / "run-old"  # no lock file: removed once over an hour old
    pre_lock_era.mkdir()
    fresh = base / "run-fresh"
    fresh.mkdir()
    hour_ago = time.time() - 3700
    for folder in (killed_folder, pre_lock_era):
        os.utime(folder, (hour_ago, hour_ago))
    with CheckpointStage(base) as open_stage:
        os.utime(open_stage.folder, (hour_ago, hour_ago))
        with CheckpointStage(base) as stage:
            assert not killed_folder.exists() and not pre_lock_era.exists()
            assert fresh.exists() and open_stage.folder.exists() and stage.folder.exists()
        assert not stage.folder.exists()
    assert sorted(p.name for p in base.iterdir()) == ["run-fresh"]


def test_runs_that_start_together_sweep_the_same_abandoned_stage_without_failing(tmp_path,
                                                                                monkeypatch):
    """Two runs started at once both sweep a killed run's stage: the one that holds its lock
    removes it, the other skips it, and a folder that vanishes mid-sweep is no error."""
    import wslbench.isolation as isolation
    from wslbench.isolation import CheckpointStage, remove_abandoned_stages

    base = tmp_path / "stage"
    abandoned = CheckpointStage(base)
    folder = abandoned.folder
    (folder / "model-a").mkdir()
    (folder / "model-a" / "model.safetensors").write_bytes(b"x")
    abandoned._lock.close()  # as if killed: the lock file stays, nobody holds it
    hour_ago = time.time() - 3700
    os.utime(folder, (hour_ago, hour_ago))

    with open(CheckpointStage.lock_path(folder)) as other_sweep:  # the other run, removing it
        import fcntl
        fcntl.flock(other_sweep, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert remove_abandoned_stages(base) == [] and folder.exists()

    real_walk = os.walk

    def walk_while_another_run_removes(top):  # the other sweep deletes a listed subfolder
        for path, dirs, files in real_walk(top):
            if path.endswith("model-a"):
                isolation.shutil.rmtree(path)
            yield path, dirs, files

    monkeypatch.setattr(isolation.os, "walk", walk_while_another_run_removes)
    assert remove_abandoned_stages(base) == [folder] and not folder.exists()
    assert remove_abandoned_stages(base) == []


# --------------------------------------------------------------------------- bad zoos, named


@pytest.mark.parametrize("value, says", [("1e999", "not a finite number"),
                                         ("9" * 5000, "not valid JSON")])
def test_params_json_with_a_number_out_of_range_names_the_file(zoo_root, tmp_path, value, says):
    import shutil

    root = Path(shutil.copytree(zoo_root, tmp_path / "zoo"))
    params = sorted(root.glob("*/params.json"))[0]
    params.write_text(re.sub(r'("(?:model::)?width": )1\b', rf"\g<1>{value}", params.read_text(), count=1))
    assert value in params.read_text()
    with pytest.raises(fmt.ZooFormatError, match=says) as caught:
        Zoo.open(root)
    assert str(params) in str(caught.value)
    assert len(str(caught.value)) < 600


def test_a_trial_folder_that_links_out_of_the_zoo_is_refused(zoo_root, tmp_path):
    import shutil

    root = Path(shutil.copytree(zoo_root, tmp_path / "zoo"))
    trial = sorted(p for p in root.iterdir() if p.is_dir())[0]
    outside = tmp_path / "outside"
    shutil.move(trial, outside)
    trial.symlink_to(outside, target_is_directory=True)
    with pytest.raises(fmt.ZooFormatError, match="symbolic link") as caught:
        Zoo.open(root)
    assert trial.name in str(caught.value) and str(outside) in str(caught.value)


def test_finalize_removes_the_temporaries_of_an_interrupted_write(tiny_zoo, tmp_path):
    import shutil

    from zoo_builder.building.build import finalize_zoo
    from zoo_builder.building.catalog import SPECS

    root = Path(shutil.copytree(tiny_zoo, tmp_path / "zoo"))
    stale = [root / ".summary.csv.k1ll3d_x.tmp", root / ".zoo.json.abcd1234.tmp"]
    for path in stale:
        path.write_text("half")
    keep = root / ".notes.tmp"  # not what atomic writes leave: kept
    keep.write_text("mine")
    spec = SPECS.get("digits-resnet18").with_preset("tiny")
    finalize_zoo(root, spec, sorted(t.name for t in fmt.find_trial_dirs(root)))
    assert not any(p.exists() for p in stale) and keep.exists()
    assert wslbench_main(["verify", str(root)]) == 0


# --------------------------------------------------------------------------- the README template


def write_task_zoo(root: Path) -> Path:
    """A synthetic zoo whose models carry a target of every registered task (random numbers;
    phase labels), with the manifest rewritten to match."""
    root = write_synthetic_zoo(root, n_points=12)
    labels = ["I", "II", "III", "IV-A", "IV-B"]
    rng = np.random.default_rng(0)
    trials = {}
    for index, trial in enumerate(fmt.find_trial_dirs(root)):
        rows = fmt.read_results(trial)
        for task in TASKS:
            spec = TASKS.get(task)
            for key in (spec.target_key, spec.subtract_key):
                if key and key not in rows[-1]:
                    rows[-1][key] = (labels[index // 4 % len(labels)]
                                     if spec.kind.value == "classification"
                                     else float(rng.normal()))
        fmt.write_results(trial, rows)
        fmt.mark_trial_complete(trial, fmt.read_trial_completion(trial)["checkpoint_sha256"])
        trials[trial.name] = fmt.trial_record(trial)
    manifest = fmt.read_manifest(root)
    manifest.set_trials(trials)
    fmt.write_manifest(root, manifest)
    return root


def test_the_readme_template_runs_on_every_task(tmp_path):
    from test_user_models import readme_template

    root = write_task_zoo(tmp_path / "zoo")
    source = predictor_file(tmp_path, readme_template(), "my_model.py")
    zoo = Zoo.open(root)
    split, _ = resolve_split(zoo, "iid")
    for name in TASKS:
        task = TASKS.get(name)
        result = evaluate(str(source), task, zoo, split, seeds=(0,)).to_json()
        values = list(result["predictions"]["0"].values())
        kind = str if task.kind.value == "classification" else float
        assert values and all(isinstance(v, kind) for v in values), name
        assert task.main_score.value in result["scores"], name
