"""Build a zoo: plan its trials from a spec, run the unfinished ones, write summary and manifest.

Resumable by construction: every file is written atomically, a trial is finished only once its
``trial_complete.json`` exists (written last), and a build started again skips finished
trials and redoes every other one from scratch. A lock file keeps two builds out of one folder.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import multiprocessing
import os
import shutil
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

import wslbench
from wslbench import zoo_format as fmt
from zoo_builder.specs import ZooSpec

log = logging.getLogger(__name__)
LOCK_FILE = ".build.lock"


class BuildError(RuntimeError):
    """The build could not finish; the message says which trials failed and where their logs are."""


@dataclass(frozen=True)
class TrialJob:
    """What an executor needs to train one model."""

    name: str
    params: dict[str, Any]
    trial_dir: Path
    device: str = "cpu"


def zoo_id(spec: ZooSpec) -> str:
    """Five hex digits naming the experiment, like Ray Tune's trial-name prefix."""
    return hashlib.sha256(f"{spec.name}:v{spec.version}:{spec.preset}".encode()).hexdigest()[:5]


def build_zoo(spec: ZooSpec, out: str | os.PathLike, workers: int = 1, device: str = "cpu",
              progress: bool = True) -> Path:
    """Train every model of ``spec`` into ``out`` (resuming what is there); return the root."""
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    with build_lock(out):
        plans = {plan.folder_name(zoo_id(spec)): plan for plan in spec.trials()}
        _check_same_zoo(out, spec, plans)
        pending = [name for name in plans if fmt.read_trial_completion(out / name) is None]
        for name in pending:
            if (out / name).exists():
                log.info("redoing unfinished trial %s", name)
                shutil.rmtree(out / name)
        jobs = [TrialJob(name, plans[name].params, out / name, device) for name in pending]
        failures = LocalExecutor(workers).run(jobs, total=len(plans), progress=progress)
        if failures:
            listing = "\n".join(f"  {name}: {error} (log: {out / name / fmt.TRIAL_LOG})"
                                for name, error in failures.items())
            raise BuildError(f"{len(failures)} of {len(plans)} trials failed; finished trials "
                             f"are kept, run the build again to retry the rest:\n{listing}")
        finalize_zoo(out, spec, list(plans))
    return out


def _check_same_zoo(out: Path, spec: ZooSpec, plans: dict[str, Any]) -> None:
    """Refuse to mix two zoos in one folder."""
    manifest = fmt.read_manifest(out)
    if manifest and (manifest.spec, manifest.preset) != (spec.name, spec.preset):
        raise BuildError(f"'{out}' holds zoo {manifest.spec} (preset {manifest.preset}), not "
                         f"{spec.name} (preset {spec.preset}); choose another --out")
    foreign = [p.name for p in out.iterdir()
               if (p / fmt.PARAMS_FILE).is_file() and p.name not in plans]
    if foreign:
        raise BuildError(f"'{out}' holds {len(foreign)} model folder(s) that are not part of "
                         f"{spec.name} (preset {spec.preset}), e.g. '{foreign[0]}'; choose "
                         "another --out")


def finalize_zoo(out: Path, spec: ZooSpec, trial_names: list[str]) -> None:
    """Write the summary table and the manifest from the finished trials."""
    rows, trials = [], {}
    for name in trial_names:
        trial_dir = out / name
        completion = fmt.read_trial_completion(trial_dir)
        rows.extend(fmt.summary_rows(name, fmt.read_params(trial_dir), fmt.read_results(trial_dir)))
        trials[name] = completion
    fmt.write_summary(out, fmt.summary_frame(rows))
    fmt.write_manifest(out, fmt.ZooManifest(
        spec=spec.name, spec_version=spec.version, preset=spec.preset, grid=spec.grid,
        package_version=wslbench.__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), trials=trials,
    ))


@contextmanager
def build_lock(out: Path) -> Iterator[None]:
    """An exclusive lock on the zoo folder; released by the OS even when the build is killed."""
    with open(out / LOCK_FILE, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildError(f"another build is running in '{out}'; wait for it to finish") from None
        yield


# --------------------------------------------------------------------------- executors


class LocalExecutor:
    """Runs trials on this machine: in this process (workers=1) or in a process pool."""

    def __init__(self, workers: int = 1):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers

    def run(self, jobs: list[TrialJob], total: int, progress: bool = True) -> dict[str, str]:
        """Run ``jobs``; return {trial name: error} for those that failed."""
        failures: dict[str, str] = {}
        bar = tqdm(total=total, initial=total - len(jobs), unit="model", disable=not progress,
                   desc="building zoo")
        with bar:
            if self.workers == 1 or len(jobs) <= 1:
                for job in jobs:
                    error = run_trial_job(job)
                    if error:
                        failures[job.name] = error
                    bar.update()
                return failures
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker,
                                     initargs=(os.getpid(), threads)) as pool:
                running = {pool.submit(run_trial_job, job): job for job in jobs}
                while running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        job = running.pop(future)
                        try:
                            error = future.result()
                        except Exception as err:  # the worker process itself died
                            error = f"worker process failed: {type(err).__name__}: {err}"
                        if error:
                            failures[job.name] = error
                        bar.update()
        return failures


_parent_pid: int | None = None


def _init_worker(parent_pid: int, threads: int) -> None:
    """Pool workers use a share of the cores and die with the build that started them."""
    global _parent_pid
    _parent_pid = parent_pid
    import torch

    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _build_is_gone() -> bool:
    return _parent_pid is not None and os.getppid() != _parent_pid


@lru_cache(maxsize=4)
def _dataset(name: str):
    from zoo_builder.data import load_dataset

    return load_dataset(name)


def run_trial_job(job: TrialJob) -> str | None:
    """Train one trial with its own log file; return an error message instead of raising."""
    from zoo_builder.train import train_trial

    job.trial_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(job.trial_dir / fmt.TRIAL_LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    trial_logger = logging.getLogger("zoo_builder.train")
    trial_logger.addHandler(handler)
    trial_logger.setLevel(logging.INFO)
    try:
        trial_logger.info("training %s with params %s", job.name, job.params)
        train_trial(job.params, job.trial_dir, data=_dataset(job.params["dataset::name"]),
                    device=job.device, should_stop=_build_is_gone)
        return None
    except Exception as err:  # reported per trial; the build goes on with the others
        trial_logger.exception("trial %s failed", job.name)
        return f"{type(err).__name__}: {err}"
    finally:
        trial_logger.removeHandler(handler)
        handler.close()
