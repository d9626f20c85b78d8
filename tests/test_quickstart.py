"""The quickstart: linear-probe on every task of the released zoo, announced first, with
intervals, building nothing; a missing release says how to get it."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest

from wslbench import quickstart
from wslbench import zoo_format as fmt
from wslbench.cli import main
from wslbench.releases import read_index, write_index
from wslbench.tasks import TASKS
from wslbench.zoo import Zoo

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = quickstart.QUICKSTART_RELEASE
PHASES = ("I", "II", "III", "IV-A")


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    """A registry holding a stand-in release of the quickstart's name: the tiny digits zoo
    with 5 batch sizes and one seed (15 grid points, so that the iid split tests on 3 and
    scores get intervals), landscape targets made up at each model's last checkpoint (no
    phase_v2, no downstream targets: those tasks cannot be scored)."""
    from zoo_builder.annotating.annotate import refresh_zoo_tables
    from zoo_builder.building.build import build_zoo
    from zoo_builder.building.catalog import SPECS
    from zoo_builder.release import make_release

    tiny = SPECS.get("digits-resnet18").with_preset("tiny")
    spec = dataclasses.replace(tiny, seeds=(0,), temperature=dataclasses.replace(
        tiny.temperature, values=(32, 64, 128, 256, 512)))
    root = build_zoo(spec, tmp_path_factory.mktemp("zoo") / "zoo", progress=False)
    for index, model in enumerate(Zoo.open(root).models):
        rows = model.results
        rows[model.checkpoint_epochs[-1]].update({
            "hessian_trace_train": 10.0 + index, "log_hessian_trace_train": math.log(10 + index),
            "log_hessian_top_ev_val": 0.1 * index, "representation_similarity": 0.5 + index / 30,
            "curve_mc_train_error": float(index % 5), "phase": PHASES[index % 4]})
        fmt.write_results(model.path, rows)
    refresh_zoo_tables(Zoo.open(root))
    folder = tmp_path_factory.mktemp("repo") / "releases"
    make_release(root, NAME, 1, registry=folder, progress=False)
    return folder


@pytest.fixture
def nothing_built(monkeypatch):
    """Building or annotating fails the test."""
    import zoo_builder.annotating.annotate as annotate
    import zoo_builder.building.build as build

    def forbidden(*args, **kwargs):
        raise AssertionError("the quickstart built or annotated a zoo")

    monkeypatch.setattr(build, "build_zoo", forbidden)
    monkeypatch.setattr(annotate, "annotate_zoo", forbidden)


def test_a_measured_release_is_announced_with_its_time(registry, monkeypatch):
    (record,) = read_index(registry)
    monkeypatch.setattr(quickstart, "MEASURED_MINUTES", {record.reference: 1.7})
    assert "; this takes about 2 minutes on 2 CPU cores." in quickstart.announce_release(record)
    monkeypatch.setattr(quickstart, "MEASURED_MINUTES", {record.reference: 1.0})
    assert "; this takes about 1 minute on 2 CPU cores." in quickstart.announce_release(record)
    assert "digits-resnet18-bench@v1" in quickstart.MEASURED_MINUTES  # the committed release


def test_quickstart_evaluates_the_release(registry, nothing_built, monkeypatch, capsys):
    monkeypatch.setenv("WSLBENCH_RELEASES", str(registry))
    (record,) = read_index(registry)
    printed_before = []
    evaluate_tasks = quickstart.evaluate_tasks

    def spy(zoo, **kwargs):
        printed_before.append(capsys.readouterr().out)
        return evaluate_tasks(zoo, **kwargs)

    monkeypatch.setattr(quickstart, "evaluate_tasks", spy)
    # This tiny stand-in shares the real release's name; its time is not the real one's.
    monkeypatch.setattr(quickstart, "MEASURED_MINUTES", {})
    assert main(["quickstart", "--seeds", "0"]) == 0
    out = capsys.readouterr().out

    (announcement,) = printed_before
    assert announcement.startswith(
        f"Evaluating the linear probe (linear-probe) on every task of the released zoo {NAME} "
        f"v1 (15 models, revision {record.revision[:12]}, at "
        f"{(registry / NAME / 'v1').resolve()}) on its iid split; its time on 2 CPU cores is "
        "not measured yet. Nothing is trained or annotated.")
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("task "))
    assert lines[header].split("  ")[-1] == "value [95% interval]"
    rows = {line.split()[0]: line for line in lines[header + 2:header + 2 + len(list(TASKS))]}
    assert sorted(rows) == sorted(TASKS.get(name).reference for name in TASKS)
    interval = r"-?\d+\.\d{3} \[(-?\d+\.\d{2}), (-?\d+\.\d{2})\]"
    bounds = []
    for reference in ("test_acc@v1", "ggap@v1", "hessian@v1", "cka@v1", "mode_connectivity@v1"):
        match = re.fullmatch(rf"{reference} +r2 +3 +3  {interval}.*", rows[reference])
        assert match, rows[reference]
        bounds.append(tuple(map(float, match.groups())))
    assert all(low <= high for low, high in bounds) and any(low < high for low, high in bounds)
    assert "phase@v1" not in rows and "phase@v2" not in rows  # the newest version of each task
    assert re.fullmatch(r"phase@v3 +macro_f1 +- +-  not scored: no train model has the target "
                        r"'phase_v3' in this zoo \(annotation missing\)", rows["phase@v3"])
    assert "not scored: no train model has the target 'wiseft_acc_test_delta'" \
        in rows["wiseft_gain@v1"]
    assert rows["test_rel_l2@v1"].endswith(
        "not scored: does not apply: no model of this zoo records 'test_rel_l2_error'")
    assert "value: mean over seeds [95% bootstrap interval over test grid points]" in out
    assert re.search(r"quickstart finished in \d+s", out)


def test_missing_release_says_how_to_get_it(registry, nothing_built, tmp_path, monkeypatch,
                                             capsys):
    empty = tmp_path / "empty" / "index.json"
    write_index([], empty)
    monkeypatch.setenv("WSLBENCH_RELEASES", str(empty))
    assert main(["quickstart"]) == 2
    err = capsys.readouterr().err
    assert f"the released zoo {NAME} is not in the release registry '{empty}'" in err
    assert "`git pull`" in err and "`wslbench quickstart --rebuild`" in err

    (record,) = read_index(registry)
    moved = tmp_path / "moved" / "index.json"  # registered, but its folder is not there
    write_index([record], moved)
    monkeypatch.setenv("WSLBENCH_RELEASES", str(moved))
    assert main(["quickstart"]) == 2
    err = capsys.readouterr().err
    assert f"{NAME}@v1 is registered but not on this machine" in err
    assert "has no URL" in err and "`wslbench quickstart --rebuild`" in err

    url = "http://127.0.0.1:9/digits-resnet18-bench-v1.tar.gz"  # nothing listens on port 9
    write_index([dataclasses.replace(record, url=url, sha256="0" * 64)], moved)
    assert main(["quickstart"]) == 2
    out, err = capsys.readouterr()
    assert f"downloaded first from {url}" in out  # the announcement says so, then it tries
    assert "could not be fetched" in err and f"download {url} (sha256 {'0' * 64})" in err
    assert "`wslbench quickstart --rebuild`" in err


def test_rebuild_flags_need_rebuild(capsys):
    assert main(["quickstart", "--preset", "bench"]) == 2
    assert "--preset only apply with --rebuild" in capsys.readouterr().err


def test_rebuild_announces_and_builds_in_the_cache(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(quickstart, "rebuild_zoo",
                        lambda preset, cache, workers: calls.append((preset, cache, workers))
                        or pytest.fail("stop after the announcement"))
    with pytest.raises(pytest.fail.Exception):
        main(["quickstart", "--rebuild", "--cache", str(tmp_path), "--workers", "3"])
    out = capsys.readouterr().out
    assert calls == [("mini", str(tmp_path), 3)]
    assert out.startswith(f"Building the digits-resnet18 zoo, preset mini (75 models), in "
                          f"{tmp_path / 'zoos' / 'digits-resnet18-mini'}")
    assert "This takes long: the mini preset measured 90 CPU-minutes" in out
    assert quickstart.announce_rebuild("bench").startswith(
        "Building the digits-resnet18 zoo, preset bench (192 models)")
