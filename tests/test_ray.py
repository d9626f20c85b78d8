"""The Ray Tune executor: same zoo as the local executor, retries, resume (``pytest -m ray``).

One local Ray cluster with 2 CPUs serves the whole module. Ray is imported inside the
fixtures only, so that collecting this file works without it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from wslbench import zoo_format as fmt
from zoo_builder.building.build import build_zoo
from zoo_builder.building.catalog import SPECS

pytestmark = pytest.mark.ray

TINY = SPECS.get("digits-resnet18").with_preset("tiny")
#: 4 models (widths 1 and 2 x batch sizes 64 and 512, seed 0), 2 epochs.
SMALL = dataclasses.replace(TINY, load=dataclasses.replace(TINY.load, values=(1, 2)), seeds=(0,))
TIMING_KEYS = {"time_this_iter_s", "time_eval_s"}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local 2-CPU Ray cluster; the test module's functions travel to workers by value."""
    import ray

    with pytest.MonkeyPatch.context() as env:  # inherited by the cluster's workers
        env.setenv("WSLBENCH_CACHE", str(tmp_path_factory.mktemp("worker_cache")))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.fixture(scope="module")
def two_builds(ray_cluster, tmp_path_factory) -> dict[str, Path]:
    """SMALL built by the local executor and by the Ray executor, in separate folders.

    Training on CPU is deterministic for a given number of threads, and a Ray trial with one
    CPU runs torch on one thread; so does the local build here."""
    from zoo_builder.building.ray_executor import RayExecutor

    base = tmp_path_factory.mktemp("builds")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = build_zoo(SMALL, base / "local", progress=False)
    finally:
        torch.set_num_threads(threads)
    executor = RayExecutor(cpus_per_trial=1, storage_path=base / "ray_results")
    return {"local": local,
            "ray": build_zoo(SMALL, base / "ray", executor=executor, progress=False),
            "ray_results": base / "ray_results"}


def relative_files(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def assert_same_results(a: Path, b: Path) -> None:
    """result.json of two trial folders: same rows and keys, metrics equal to 1e-6."""
    rows_a, rows_b = fmt.read_results(a), fmt.read_results(b)
    assert len(rows_a) == len(rows_b) == SMALL.epochs + 1
    for row_a, row_b in zip(rows_a, rows_b):
        assert row_a.keys() == row_b.keys()
        for key in row_a.keys() - TIMING_KEYS:
            assert row_a[key] == pytest.approx(row_b[key], rel=1e-6, abs=1e-6), (a.name, key)


def test_ray_build_writes_the_same_zoo_as_the_local_executor(two_builds):
    local, ray = two_builds["local"], two_builds["ray"]
    trials = sorted(p.name for p in local.iterdir() if p.is_dir())
    assert len(trials) == 4 and sorted(p.name for p in ray.iterdir() if p.is_dir()) == trials
    # The zoo root gets no file of Ray's: exactly the local executor's files, trial by trial.
    assert relative_files(ray) == relative_files(local)
    for name in trials:
        assert (ray / name / fmt.PARAMS_FILE).read_text() == \
            (local / name / fmt.PARAMS_FILE).read_text()
        assert_same_results(ray / name, local / name)
        assert fmt.read_trial_completion(ray / name) is not None
    columns = [c for c in pd.read_csv(local / fmt.SUMMARY_CSV).columns if c not in TIMING_KEYS]
    pd.testing.assert_frame_equal(pd.read_csv(ray / fmt.SUMMARY_CSV)[columns],
                                  pd.read_csv(local / fmt.SUMMARY_CSV)[columns],
                                  rtol=1e-6, atol=1e-6)
    manifests = fmt.read_manifest(ray), fmt.read_manifest(local)
    assert all(m is not None for m in manifests)
    assert manifests[0].trials.keys() == manifests[1].trials.keys() == set(trials)
    # Ray Tune's own bookkeeping went to storage_path: one run with one folder per model.
    runs = list(two_builds["ray_results"].glob("zoo_builder_building_zoo_*"))
    assert len(runs) == 1 and {p.name for p in runs[0].iterdir() if p.is_dir()} == set(trials)


@dataclasses.dataclass(frozen=True)
class CountingJob:
    """A job that fails its first ``failures`` attempts (-1: always; -2: always, by raising)."""

    name: str
    folder: Path
    failures: int


def counting_job(job: CountingJob) -> str | None:
    """Counts its attempts in a file; succeeds once it has failed ``job.failures`` times."""
    counter = job.folder / f"{job.name}.attempts"
    attempt = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(attempt))
    if job.failures == -2:
        raise ValueError(f"{job.name} cannot be trained")
    if job.failures == -1 or attempt <= job.failures:
        return f"attempt {attempt} of {job.name} broke"
    (job.folder / f"{job.name}.done").touch()
    return None


def test_failed_jobs_are_retried_and_lasting_failures_reported(ray_cluster, tmp_path, caplog,
                                                                capfd):
    from zoo_builder.building.ray_executor import RayExecutor

    jobs = [CountingJob("steady", tmp_path, 0), CountingJob("flaky", tmp_path, 1),
            CountingJob("broken", tmp_path, -1), CountingJob("raising", tmp_path, -2)]
    executor = RayExecutor(max_retries=1, storage_path=tmp_path / "ray_results")
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)
    with caplog.at_level("WARNING", logger="zoo_builder.building.ray_executor"):
        failures = executor.run(counting_job, jobs, total=6, progress=True, desc="testing")
    # Tune's own Ctrl+C handler is gone once the run is over.
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)) == handlers
    assert failures == {
        "broken": "attempt 2 of broken broke (failed 2 times: the first attempt and 1 retry)",
        "raising": "ValueError: raising cannot be trained (failed 2 times: the first attempt "
                   "and 1 retry)",
    }
    attempts = {job.name: int((tmp_path / f"{job.name}.attempts").read_text()) for job in jobs}
    assert attempts == {"steady": 1, "flaky": 2, "broken": 2, "raising": 2}
    assert sorted(p.name for p in tmp_path.glob("*.done")) == ["flaky.done", "steady.done"]
    assert "trial flaky failed (attempt 1 of 2); retrying" in caplog.text
    assert "trial broken failed (attempt 1 of 2); retrying" in caplog.text
    # One progress bar (2 jobs done before + 4 now), and none of Ray Tune's own output.
    output = capfd.readouterr()
    assert "6/6" in output.err
    assert "Traceback" not in output.err + output.out
    assert "Configuration for experiment" not in output.out


@dataclasses.dataclass(frozen=True)
class InterruptingJob:
    name: str
    driver_pid: int


def interrupting_job(job: InterruptingJob) -> str | None:
    """The first job presses Ctrl+C in the driver; every job takes a while."""
    if job.name == "first":
        os.kill(job.driver_pid, signal.SIGINT)
    time.sleep(3)
    return None


def test_ctrl_c_stops_the_run_and_says_so(ray_cluster, tmp_path):
    from zoo_builder.building.ray_executor import RayExecutor

    jobs = [InterruptingJob(name, os.getpid()) for name in ("first", "b", "c", "d", "e")]
    executor = RayExecutor(storage_path=tmp_path / "ray_results")
    with pytest.raises(KeyboardInterrupt, match=r"interrupted before [3-5] of 5 trials ended"):
        executor.run(interrupting_job, jobs, total=5, progress=False)


def test_interrupted_build_resumes_with_only_the_missing_trials(two_builds, tmp_path):
    from zoo_builder.building.ray_executor import RayExecutor

    root = Path(shutil.copytree(two_builds["local"], tmp_path / "zoo"))
    trials = sorted(p for p in root.iterdir() if p.is_dir())
    half_written, missing, kept = trials[0], trials[1], trials[2:]
    (half_written / fmt.COMPLETE_MARKER).unlink()  # as if killed before its end
    (half_written / fmt.RESULT_FILE).write_text("{}\n")
    shutil.rmtree(missing)  # as if never started
    (root / fmt.MANIFEST_FILE).unlink()
    kept_times = {p: (p / fmt.COMPLETE_MARKER).stat().st_mtime_ns for p in kept}

    build_zoo(SMALL, root, executor=RayExecutor(storage_path=tmp_path / "ray_results"),
              progress=False)

    assert {p: (p / fmt.COMPLETE_MARKER).stat().st_mtime_ns for p in kept} == kept_times
    (run,) = (tmp_path / "ray_results").iterdir()
    assert {p.name for p in run.iterdir() if p.is_dir()} == {half_written.name, missing.name}
    assert relative_files(root) == relative_files(two_builds["local"])
    for trial in (half_written, missing):
        assert_same_results(trial, two_builds["local"] / trial.name)
    manifest = fmt.read_manifest(root)
    assert manifest is not None and manifest.trials.keys() == {p.name for p in trials}


def test_clear_errors_without_ray_or_with_bad_settings(monkeypatch):
    from zoo_builder.building.ray_executor import RayExecutor, import_ray

    with pytest.raises(ValueError, match="cpus_per_trial=0, gpus_per_trial=0"):
        RayExecutor(cpus_per_trial=0)
    with pytest.raises(ValueError, match="max_retries must be 0 or more, got -1"):
        RayExecutor(max_retries=-1)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    with pytest.raises(ImportError, match=r"pip install 'wslbench\[ray\]'"):
        import_ray()
    # Nothing to do needs no Ray at all.
    assert RayExecutor().run(counting_job, [], total=3, progress=False) == {}


def test_zoo_builder_starts_without_importing_ray():
    import subprocess

    code = ("import sys, zoo_builder.building.build, zoo_builder.cli, zoo_builder.building.ray_executor; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'ray')))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out) == []
