"""The leaderboard: submit, validate (re-scoring every entry), render, and the committed entries."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import write_published_zoo, write_synthetic_zoo
from wslbench import leaderboard as lb
from wslbench.evaluate import evaluate
from wslbench.leaderboard_cli import main as cli
from wslbench.predictor import Predictor
from wslbench.splits import resolve_split
from wslbench.tasks import TASKS
from wslbench.zoo import Zoo


class NormProbe(Predictor):
    """A 1-D least-squares fit on the total weight norm: fast, and better than a constant."""

    name = "norm-probe"

    def features(self, models) -> np.ndarray:
        return np.array([[sum(float(t.float().norm()) for t in m.state_dict().values()), 1.0]
                         for m in models])

    def fit(self, train, train_targets, val, val_targets) -> None:
        self.coef, *_ = np.linalg.lstsq(self.features(train), train_targets, rcond=None)

    def predict(self, models) -> np.ndarray:
        return self.features(models) @ self.coef


class MeanGuess(Predictor):
    """The training mean for every model, nudged by the seed so that seeds differ."""

    name = "mean-guess"

    def fit(self, train, train_targets, val, val_targets) -> None:
        self.mean = float(np.mean(train_targets)) + 0.01 * self.seed

    def predict(self, models) -> np.ndarray:
        return np.full(len(models), self.mean)


@pytest.fixture(scope="module")
def results(tiny_zoo, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Result files of both predictors on test_acc and ggap of the tiny zoo."""
    out = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as patch:  # split files go to a temporary cache
        patch.setenv("WSLBENCH_CACHE", str(out / "cache"))
        zoo = Zoo.open(tiny_zoo)
        split, _ = resolve_split(zoo, "iid")
        paths = {}
        for predictor in (NormProbe, MeanGuess):
            for task in ("test_acc", "ggap"):
                result = evaluate(predictor, TASKS.get(task), zoo, split, seeds=(0, 1))
                paths[predictor.name, task] = out / f"{predictor.name}-{task}.json"
                result.save(paths[predictor.name, task])
    return paths


@pytest.fixture(scope="module")
def board(results, tmp_path_factory) -> Path:
    """A leaderboard with both predictors on both tasks (its zoo reference made by submit)."""
    root = tmp_path_factory.mktemp("board") / "leaderboards"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WSLBENCH_CACHE", str(root.parent / "cache"))
        lb.submit([lb.load_result(results["norm-probe", t]) for t in ("test_acc", "ggap")],
                  root, paper="https://example.org/paper", code="tests/test_leaderboard.py",
                  parameters=2)
        lb.submit([lb.load_result(results["mean-guess", t]) for t in ("test_acc", "ggap")],
                  root, baseline=True)
    return root


@pytest.fixture
def copy(board, tmp_path) -> Path:
    """A copy of the board for a test to tamper with."""
    return Path(shutil.copytree(board, tmp_path / "leaderboards"))


def problems(root: Path, zoos=()) -> dict[str, list[str]]:
    """The problems of every file that fails, by path relative to the leaderboard."""
    return {str(c.path.relative_to(root)): c.problems for c in lb.validate(root, zoos)
            if c.problems}


@pytest.fixture
def rev(tiny_zoo) -> str:
    """The folder of the tiny zoo's revision in the leaderboard."""
    return Zoo.open(tiny_zoo).revision[:16]


def entry_file(root: Path, method: str = "norm-probe") -> Path:
    (revision,) = (root / "entries" / "digits-resnet18-tiny").iterdir()
    return revision / "iid" / f"{method}.json"


def edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=1))


def only_problem(root: Path, method: str = "norm-probe") -> str:
    found = problems(root)
    key = str(entry_file(root, method).relative_to(root))
    assert list(found) == [key], found
    return " | ".join(found[key])


# --------------------------------------------------------------------------- validation


def test_a_correct_entry_passes_and_its_reference_matches_the_zoo(board, tiny_zoo, capsys):
    assert problems(board, zoos=[Zoo.open(tiny_zoo)]) == {}
    assert sorted(p.name for p in (board / "entries").rglob("*.json")) == [
        "mean-guess.json", "norm-probe.json"]
    entry = lb.Entry.from_json(json.loads(entry_file(board).read_text()))
    assert sorted(entry.tasks) == ["ggap", "test_acc"]
    assert entry.method.parameters == 2 and not entry.method.baseline
    assert entry.tasks["test_acc"].seeds == [0, 1]
    assert cli(["leaderboard", "validate", "--leaderboard", str(board),
                "--zoo", str(tiny_zoo)]) == 0
    out = capsys.readouterr().out
    assert "targets recomputed from" in out and "all valid" in out and "FAIL" not in out


def test_a_tampered_score_fails(copy):
    def tamper(data):
        data["tasks"]["test_acc"]["scores"]["r2"]["per_seed"][1] += 0.1
    edit(entry_file(copy), tamper)
    message = only_problem(copy)
    assert "task 'test_acc': r2.per_seed: seed 1: stored" in message
    assert "recomputed from the predictions" in message


def test_a_value_that_does_not_follow_from_the_predictions_fails(copy):
    edit(entry_file(copy), lambda d: d["tasks"]["ggap"]["scores"]["kendall_tau"].update(value=0.99))
    assert "kendall_tau.value 0.99 differs from" in only_problem(copy)


def test_a_wrong_split_hash_fails(copy):
    edit(entry_file(copy), lambda d: d["split"].update(sha256="0" * 64))
    message = only_problem(copy)
    assert "split sha256 000000000000 does not match the reference's split 'iid'" in message


def test_predictions_for_unknown_models_fail(copy):
    def rename(data):
        predictions = data["tasks"]["ggap"]["predictions"]["0"]
        first = sorted(predictions)[0]
        predictions["NN_not_in_the_zoo"] = predictions.pop(first)
    edit(entry_file(copy), rename)
    message = only_problem(copy)
    assert "task 'ggap': seed 0: predictions for 1 unknown models" in message
    assert "'NN_not_in_the_zoo'" in message
    assert "seed 0: no prediction for 1 test models" in message


def test_a_missing_field_fails(copy):
    edit(entry_file(copy), lambda d: d["tasks"]["test_acc"].pop("main_score"))
    assert only_problem(copy) == "missing field 'tasks.test_acc.main_score'"


def test_an_unknown_field_and_a_string_for_a_number_fail(copy):
    edit(entry_file(copy), lambda d: d["method"].update(stars=5))
    assert "unknown field 'method.stars'" in only_problem(copy)
    edit(entry_file(copy), lambda d: (d["method"].pop("stars"),
                                      d["tasks"]["ggap"].update(wall_time_s="3.2")))
    assert only_problem(copy) == "field 'tasks.ggap.wall_time_s' must be a number, not \"3.2\""


def test_malformed_json_fails(copy):
    path = entry_file(copy)
    path.write_text(path.read_text()[:200])
    assert only_problem(copy).startswith("malformed JSON at line ")


def test_an_unreleased_task_version_fails(copy):
    edit(entry_file(copy), lambda d: d["tasks"]["ggap"].update(version=99))
    assert "ggap@v99 is not a released task version (released: ggap@v1" in only_problem(copy)


def test_an_entry_filed_under_another_method_fails(copy, rev):
    entry_file(copy).rename(entry_file(copy, "someone-else"))
    assert f"belongs at 'entries/digits-resnet18-tiny/{rev}/iid/norm-probe.json'" in only_problem(
        copy, "someone-else")


def test_an_edited_reference_fails_and_so_do_its_entries(copy, tiny_zoo):
    (reference,) = (copy / "zoos").rglob("*.json")

    def lower_one_target(data):
        targets = data["targets"]["test_acc@v1"]["iid"]
        targets[sorted(targets)[0]] -= 0.5
    edit(reference, lower_one_target)
    found = problems(copy)
    assert "the reference was edited" in " ".join(found[str(reference.relative_to(copy))])
    assert all("has no valid reference" in " ".join(p) for k, p in found.items()
               if k.startswith("entries/"))
    # A forger who also rewrites the sha256 is caught where the zoo is at hand.
    edit(reference, lambda d: d.update(sha256=lb.Reference.from_json(d).content_hash()))
    assert str(reference.relative_to(copy)) not in problems(copy)
    found = problems(copy, zoos=[Zoo.open(tiny_zoo)])
    assert "targets of test_acc@v1 on split 'iid' differ from the zoo" in " ".join(
        found[str(reference.relative_to(copy))])


def test_validate_cli_reports_each_problem_and_exits_1(copy, rev, capsys):
    edit(entry_file(copy), lambda d: d["split"].update(sha256="f" * 64))
    assert cli(["leaderboard", "validate", "--leaderboard", str(copy)]) == 1
    out = capsys.readouterr().out
    entries = f"leaderboards/entries/digits-resnet18-tiny/{rev}/iid"
    assert f"FAIL {entries}/norm-probe.json: split sha256" in out
    assert f"ok   {entries}/mean-guess.json" in out
    assert "1 failed" in out


# --------------------------------------------------------------------------- submit


def test_submit_merges_tasks_into_one_entry_and_keeps_method_fields(results, tmp_path,
                                                                     tiny_zoo, rev, capsys):
    root = tmp_path / "leaderboards"
    assert cli(["submit", str(results["norm-probe", "test_acc"]), "--leaderboard", str(root),
                "--name", "Norm Probe", "--paper", "https://example.org/p", "--parameters",
                "2"]) == 0
    assert f"wrote leaderboards/entries/digits-resnet18-tiny/{rev}/iid/norm-probe.json" in \
        capsys.readouterr().out
    path = entry_file(root)
    assert list(json.loads(path.read_text())["tasks"]) == ["test_acc"]
    (reference,) = (root / "zoos" / "digits-resnet18-tiny").glob("*.json")
    assert reference.name == f"{Zoo.open(tiny_zoo).revision[:16]}.json"

    # A second task joins the entry; the paper and parameters given before are kept.
    assert cli(["submit", str(results["norm-probe", "ggap"]), "--leaderboard", str(root),
                "--name", "Norm Probe"]) == 0
    entry = lb.Entry.from_json(json.loads(path.read_text()))
    assert sorted(entry.tasks) == ["ggap", "test_acc"]
    assert (entry.method.name, entry.method.paper, entry.method.parameters) == (
        "Norm Probe", "https://example.org/p", 2)
    # Submitting a task again replaces it.
    assert cli(["submit", str(results["norm-probe", "ggap"]), "--leaderboard", str(root),
                "--name", "Norm Probe"]) == 0
    assert sorted(lb.Entry.from_json(json.loads(path.read_text())).tasks) == ["ggap", "test_acc"]
    assert problems(root) == {}


def test_submit_refuses_a_result_whose_scores_do_not_follow(results, tmp_path):
    bad = tmp_path / "bad.json"
    data = json.loads(results["mean-guess", "ggap"].read_text())
    data["scores"]["r2"]["per_seed"][0] = 0.99
    bad.write_text(json.dumps(data))
    root = tmp_path / "leaderboards"
    with pytest.raises(lb.LeaderboardError, match="does not validate, nothing written"):
        lb.submit([lb.load_result(bad)], root)
    assert not (root / "entries").exists()


def test_submit_without_a_reference_or_the_zoo_says_how_to_add_one(results, tmp_path):
    data = json.loads(results["mean-guess", "ggap"].read_text())
    data["zoo"]["path"] = str(tmp_path / "gone")
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(data))
    with pytest.raises(lb.LeaderboardError, match=r"is not there; run `wslbench leaderboard "
                                                  r"add-zoo ZOO_PATH --split iid --task ggap@v1`"):
        lb.submit([lb.load_result(moved)], tmp_path / "leaderboards")


def test_add_zoo_stores_the_tasks_the_zoo_has_targets_for(tiny_zoo, tmp_path, capsys):
    root = tmp_path / "leaderboards"
    assert cli(["leaderboard", "add-zoo", str(tiny_zoo), "--leaderboard", str(root)]) == 0
    (path,) = (root / "zoos").rglob("*.json")
    reference = lb.load_reference(path)
    assert {"test_acc@v1", "ggap@v1"} <= set(reference.targets)
    assert "hessian@v1" not in reference.targets  # the tiny zoo is not annotated
    assert problems(root, zoos=[Zoo.open(tiny_zoo)]) == {}


# --------------------------------------------------------------------------- render


def test_render_sorts_rows_by_the_main_score_and_escapes_names(board, results, tmp_path):
    root = Path(shutil.copytree(board, tmp_path / "leaderboards"))
    lb.submit([lb.load_result(results["mean-guess", "test_acc"])], root,
              name="<b>x</b> & co", code="https://example.org/?a=1&b=2")
    files = lb.render(root)
    markdown, page = files[root / "README.md"], files[root / "index.html"]

    table = markdown.split("#### test_acc@v1")[1].split("\n\n")[2].splitlines()[2:]
    values = [float(row.split("|")[3].split()[0]) for row in table]
    assert values == sorted(values, reverse=True)
    # The tiny zoo tests on one grid point: values without intervals, so no ranks at all.
    assert [row.split("|")[1].strip() for row in table] == ["–", "–", "–"]
    assert "[no interval: 1 test grid point]" in table[0]
    assert "–: no interval of the main score (see its cell), so not ranked" in markdown
    assert "[norm-probe](../tests/test_leaderboard.py) ([paper](https://example.org/paper))" \
        in markdown
    assert "mean-guess *baseline*" in markdown
    assert "\\<b\\>x\\</b\\> & co" in markdown

    assert "&lt;b&gt;x&lt;/b&gt; &amp; co" in page and "<b>x</b>" not in page
    assert 'href="https://example.org/?a=1&amp;b=2"' in page
    assert "<script" not in page and "http://" not in page.split("<body>")[0]
    assert page.count('<table class="leaderboard"') == 2


def test_render_says_whether_a_zoo_revision_is_a_release(board, tiny_zoo, tmp_path,
                                                          monkeypatch):
    root = Path(shutil.copytree(board, tmp_path / "leaderboards"))
    monkeypatch.setenv("WSLBENCH_RELEASES", str(tmp_path / "no-releases"))
    markdown, page = (lb.render(root)[root / name] for name in ("README.md", "index.html"))
    assert "Not a release: a zoo built by the maintainers" in markdown
    assert "Not a release" in page

    revision = Zoo.open(tiny_zoo).revision
    (tmp_path / "registry").mkdir()
    (tmp_path / "registry" / "index.json").write_text(json.dumps({"format_version": 1, "releases": [
        {"name": "tiny-digits", "version": 2, "revision": revision, "spec": "digits-resnet18",
         "preset": "tiny", "num_models": 4, "epochs": [1], "size_bytes": 1,
         "created": "2026-12-03T00:00:00+00:00", "path": "tiny-digits/v2"}]}))
    monkeypatch.setenv("WSLBENCH_RELEASES", str(tmp_path / "registry"))
    markdown, page = (lb.render(root)[root / name] for name in ("README.md", "index.html"))
    assert "Released as tiny-digits v2 (`--zoo tiny-digits@v2`)." in markdown
    assert "(<code>--zoo tiny-digits@v2</code>)" in page and "Not a release" not in markdown


def test_render_names_the_test_zoo_of_a_cross_zoo_split(board, tiny_zoo, tmp_path,
                                                        monkeypatch):
    monkeypatch.setenv("WSLBENCH_CACHE", str(tmp_path / "cache"))
    root = Path(shutil.copytree(board, tmp_path / "leaderboards"))
    zoo, other = Zoo.open(tiny_zoo), Zoo.open(write_published_zoo(tmp_path / "rotated-digits"))
    split, _ = resolve_split(zoo, "cross-zoo", other)
    result = evaluate(MeanGuess, TASKS.get("test_acc"), zoo, split, seeds=(0,), test_zoo=other)
    lb.submit([result.to_json()], root)
    markdown = lb.render(root)[root / "README.md"]
    assert markdown.index("split iid") < markdown.index("split cross-zoo")
    assert f"test models: every model of rotated-digits (revision {other.revision[:16]})" \
        in markdown
    assert cli(["leaderboard", "validate", "--leaderboard", str(root)]) == 0


def test_revisions_of_one_zoo_get_their_own_tables_newest_first(tmp_path, monkeypatch):
    monkeypatch.setenv("WSLBENCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "leaderboards"
    revisions = []
    for epochs, started in ((2, "2026-01-02T00:00:00+00:00"), (3, "2026-01-01T00:00:00+00:00")):
        zoo = Zoo.open(write_published_zoo(tmp_path / f"{epochs}-epochs" / "ptmz", epochs=epochs))
        split, _ = resolve_split(zoo, "iid")
        result = evaluate(MeanGuess, TASKS.get("test_acc"), zoo, split, seeds=(0,)).to_json()
        result["provenance"]["started"] = started  # the older zoo has the newer result
        lb.submit([result], root)
        revisions.append(zoo.revision[:16])
    files = lb.render(root)
    markdown, page = files[root / "README.md"], files[root / "index.html"]
    assert markdown.index(f"## ptmz (newest revision, {revisions[0][:8]})") < \
        markdown.index(f"## ptmz (an earlier revision, {revisions[1][:8]})")
    assert [page.index(f'data-revision="{r}"') for r in revisions] == sorted(
        page.index(f'data-revision="{r}"') for r in revisions)
    assert cli(["leaderboard", "validate", "--leaderboard", str(root)]) == 0


def test_render_check_tells_stale_tables(board, tmp_path, capsys):
    root = Path(shutil.copytree(board, tmp_path / "leaderboards"))
    assert cli(["leaderboard", "render", "--check", "--leaderboard", str(root)]) == 1
    assert cli(["leaderboard", "render", "--leaderboard", str(root)]) == 0
    assert cli(["leaderboard", "render", "--check", "--leaderboard", str(root)]) == 0
    assert "up to date" in capsys.readouterr().out


# --------------------------------------------------------------------------- intervals


def weight_signal(state) -> float:
    """The synthetic zoo's test_acc as a function of the weights."""
    return float(state["fc.weight"].max() + 0.5 * state["conv1.weight"].mean())


class NoisySignal(Predictor):
    """The target's own function of the weights plus noise: good."""

    name = "noisy-signal"
    offset = 0

    def fit(self, train, train_targets, val, val_targets) -> None:
        pass

    def predict(self, models) -> np.ndarray:
        noise = np.random.default_rng([self.offset, self.seed]).normal(scale=0.1,
                                                                       size=len(models))
        return np.array([weight_signal(m.state_dict()) for m in models]) + noise


class OtherNoise(NoisySignal):
    """As good as NoisySignal, with other noise (some other draws happen to fit these six
    test grid points significantly better: a paired bootstrap over grid points takes the
    predictions as given)."""

    name = "other-noise"
    offset = 2


@pytest.fixture(scope="module")
def ranked(tmp_path_factory) -> Path:
    """A leaderboard on a synthetic zoo that tests on 6 grid points (2 seeds each): two
    equally good methods and a clearly worse one, on test_acc."""
    folder = tmp_path_factory.mktemp("ranked")
    root = folder / "leaderboards"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WSLBENCH_CACHE", str(folder / "cache"))
        zoo = Zoo.open(write_synthetic_zoo(folder / "zoo", n_points=40, seeds=(0, 1),
                                           target=weight_signal))
        split, _ = resolve_split(zoo, "iid")
        for predictor in (NoisySignal, OtherNoise, MeanGuess):
            result = evaluate(predictor, TASKS.get("test_acc"), zoo, split, seeds=(0, 1))
            lb.submit([result.to_json()], root)
    return root


def ranked_entry(root: Path, method: str) -> Path:
    (revision,) = (root / "entries" / "synthetic-test").iterdir()
    return revision / "iid" / f"{method}.json"


def test_entries_store_intervals_and_grid_points(ranked):
    entry = lb.Entry.from_json(json.loads(ranked_entry(ranked, "noisy-signal").read_text()))
    task = entry.tasks["test_acc"]
    assert entry.schema_version == 2
    assert task.bootstrap.n_grid_points == 7 and task.bootstrap.resamples == 1000
    assert set(task.grid_points) == set(task.predictions["0"])
    assert len(set(task.grid_points.values())) == 7
    r2 = task.scores["r2"]
    assert r2.ci95[0] <= r2.value <= r2.ci95[1] and r2.reason is None
    assert lb.validate(ranked) and problems(ranked) == {}


def test_render_ranks_only_significant_differences(ranked):
    markdown = lb.render(ranked)[ranked / "README.md"]
    table = markdown.split("#### test_acc@v1")[1].split("\n\n")[2].splitlines()[2:]
    cells = [[c.strip() for c in row.split("|")[1:-1]] for row in table]
    # The two equally good methods: the top one ranked, the other not told apart from it;
    # the constant guess is significantly worse than both.
    assert [c[0] for c in cells] == ["**1**", "≈ top (n.s.)", "3"]
    assert {cells[0][1], cells[1][1]} == {"noisy-signal", "other-noise"}
    assert cells[2][1] == "mean-guess"
    assert cells[0][2].startswith("**") and "[" in cells[0][2]  # value [interval], in bold
    assert not cells[1][2].startswith("**")
    assert cells[2][3] == "n/a (constant predictions for seeds 0, 1)"
    assert "≈ top (n.s.): the 95% interval of the paired bootstrap difference" in markdown
    page = lb.render(ranked)[ranked / "index.html"]
    assert page.count('class="entry rank-1"') == 1 and 'class="entry tied-top"' in page


def test_a_tampered_interval_fails(ranked, tmp_path):
    root = Path(shutil.copytree(ranked, tmp_path / "leaderboards"))
    path = ranked_entry(root, "other-noise")
    edit(path, lambda d: d["tasks"]["test_acc"]["scores"]["r2"]["ci95"].__setitem__(0, 0.99))
    found = problems(root)
    assert list(found) == [str(path.relative_to(root))]
    assert "task 'test_acc': r2.ci95 [0.99, " in found[str(path.relative_to(root))][0]
    assert "bootstrap interval over grid points recomputed" in found[
        str(path.relative_to(root))][0]


def test_grid_points_and_bootstrap_settings_are_checked(ranked, tmp_path):
    root = Path(shutil.copytree(ranked, tmp_path / "leaderboards"))
    path = ranked_entry(root, "noisy-signal")

    def one_grid_point(data):  # all samples in one grid point: a narrower-looking claim
        points = data["tasks"]["test_acc"]["grid_points"]
        data["tasks"]["test_acc"]["grid_points"] = {k: "0" * 16 for k in points}
    edit(path, one_grid_point)
    assert "grid_points of 14 samples are not the reference's" in " ".join(
        problems(root)[str(path.relative_to(root))])

    shutil.copy(ranked_entry(ranked, "noisy-signal"), path)
    edit(path, lambda d: d["tasks"]["test_acc"]["bootstrap"].update(resamples=50))
    assert "are not the benchmark's" in " ".join(problems(root)[str(path.relative_to(root))])


def test_schema_1_entries_and_references_still_validate_and_render(ranked, tmp_path,
                                                                  monkeypatch):
    root = Path(shutil.copytree(ranked, tmp_path / "leaderboards"))
    (reference,) = (root / "zoos").rglob("*.json")

    def to_schema_1(data):
        data["schema_version"] = 1
        for task in data["tasks"].values():
            for name, stats in task["scores"].items():
                per_seed = [np.nan if v is None else v for v in stats["per_seed"]]
                task["scores"][name] = {"mean": float(np.mean(per_seed)),
                                        "std": float(np.std(per_seed)), "per_seed": per_seed}
            del task["grid_points"], task["bootstrap"]
            task.pop("predictor", None)  # schema 1 predates the predictor's identity
    path = ranked_entry(root, "other-noise")
    edit(path, to_schema_1)
    checked = {c.path: c for c in lb.validate(root)}
    assert not checked[path].problems and "old entry schema 1" in checked[path].note
    markdown = lb.render(root)[root / "README.md"]
    row = next(r for r in markdown.splitlines() if "other-noise" in r)
    assert row.startswith("| – (v1) |") and " ± " in row
    assert "| ≈ top (n.s.) |" not in markdown  # the other good method is not compared
    # A rerun of all its tasks replaces a schema-1 entry; a result cannot be merged into one
    # whose other tasks would stay without intervals.
    rerun = _result_of(ranked_entry(ranked, "other-noise"))
    lb.submit([rerun], root)
    assert json.loads(path.read_text())["schema_version"] == 2
    edit(path, to_schema_1)
    edit(path, lambda d: d["tasks"].update(ggap=d["tasks"]["test_acc"]))
    with pytest.raises(lb.LeaderboardError, match="its tasks ggap would stay so"):
        lb.submit([rerun], root)
    path.unlink()
    shutil.copy(ranked_entry(ranked, "other-noise"), path)

    # A reference of schema 1 (no grid points) validates, its schema-2 entries do not; the
    # zoo's add-zoo upgrades it.
    def reference_to_schema_1(data):
        data.pop("grid_points")
        data["schema_version"] = 1
        data["sha256"] = lb.Reference.from_json(data).content_hash()
    edit(reference, reference_to_schema_1)
    found = problems(root)
    assert str(reference.relative_to(root)) not in found
    assert "holds no grid points of split 'iid' (reference schema 1)" in " ".join(
        found[str(ranked_entry(root, "noisy-signal").relative_to(root))])
    monkeypatch.setenv("WSLBENCH_CACHE", str(tmp_path / "cache"))
    zoo = Zoo.open(ranked.parent / "zoo")
    lb.add_zoo(root, zoo, splits=["iid"], tasks=["test_acc"])
    assert lb.load_reference(reference).schema_version == 2
    assert problems(root, zoos=[zoo]) == {}


def _result_of(entry_path: Path) -> dict:
    """The result an entry's test_acc came from, as far as submit reads it."""
    data = json.loads(entry_path.read_text())
    stored = data["tasks"]["test_acc"]
    return {"predictor": {"name": data["method"]["name"], "class": data["method"]["predictor"]},
            "task": {"name": "test_acc", "version": 1, "main_score": "r2"},
            "zoo": {"name": data["zoo"]["name"], "path": "/nowhere",
                    "revision": data["zoo"]["revision"]},
            "split": data["split"], "seeds": stored["seeds"], "scores": stored["scores"],
            "predictions": stored["predictions"], "grid_points": stored["grid_points"],
            "bootstrap": stored["bootstrap"],
            "provenance": {**data["provenance"], "started": data["provenance"]["date"]}}


def test_submit_refuses_a_result_of_schema_1(results, tmp_path):
    data = json.loads(results["mean-guess", "ggap"].read_text())
    data["schema_version"] = 1
    for key in ("grid_points", "bootstrap"):
        del data[key]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    with pytest.raises(lb.LeaderboardError, match="result schema 1, not 2 .*no grid points"):
        lb.load_result(old)


# --------------------------------------------------------------------------- committed


def test_every_committed_entry_validates_and_the_tables_are_rendered():
    """What CI runs: the repository's leaderboard re-scores and its README is current."""
    root = lb.default_root()
    checked = lb.validate(root)
    assert any(c.kind == "entry" for c in checked)
    assert {str(c.path.relative_to(root)): c.problems for c in checked if c.problems} == {}
    for path, text in lb.render(root).items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path} is out of date; run `wslbench leaderboard render`")
