"""Build a zoo: plan its trials from a spec, run the unfinished ones, write summary and manifest.

Resumable by construction: every file is written atomically, a trial is finished only once its
``trial_complete.json`` exists (written last), and a build started again skips finished
trials and redoes every other one from scratch. A lock file keeps two builds out of one folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import wslbench
from wslbench import zoo_format as fmt
from zoo_builder.data import cached_dataset, dataset_options
from zoo_builder.building.executors import Executor, LocalExecutor, parent_is_gone
from zoo_builder.building.specs import ZooSpec
from zoo_builder.building.train import RunOptions

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
    options: RunOptions = RunOptions()


@dataclass(frozen=True)
class TrialBatch:
    """Trials of one grid point that train together (``RunOptions.seed_batch``, see
    zoo_builder.building.batched); named after its first trial."""

    trials: tuple[TrialJob, ...]
    options: RunOptions = RunOptions()

    @property
    def name(self) -> str:
        return self.trials[0].name


def seed_batches(jobs: list[TrialJob]) -> list[TrialJob | TrialBatch]:
    """The jobs with the trials of each grid point joined into one batch (models that cannot
    be batched stay alone; see :func:`zoo_builder.building.batched.seed_batch_blocker`)."""
    from zoo_builder.building.batched import group_by_grid_point, seed_batch_blocker

    batched: list[TrialJob | TrialBatch] = []
    for group in group_by_grid_point(jobs, lambda job: job.params):
        blocker = seed_batch_blocker(group[0].params)
        if blocker:
            log.info("trial %s trains alone: %s", group[0].name, blocker)
        batched.append(TrialBatch(tuple(group), group[0].options) if len(group) > 1
                       else group[0])
    return batched


def zoo_id(spec: ZooSpec) -> str:
    """Five hex digits naming the experiment, like Ray Tune's trial-name prefix."""
    return hashlib.sha256(f"{spec.name}:v{spec.version}:{spec.preset}".encode()).hexdigest()[:5]


def build_zoo(spec: ZooSpec, out: str | os.PathLike, workers: int = 1,
              options: RunOptions = RunOptions(), executor: Executor | None = None,
              progress: bool = True, loads: Sequence[Any] | None = None) -> Path:
    """Train every model of ``spec`` into ``out`` (resuming what is there); return the root.

    ``executor`` runs the trials (default: a :class:`LocalExecutor` with ``workers``
    processes of ``options.cpu_threads`` threads each, so that the weights do not depend on
    ``workers``); ``options`` say how to run them (device, precision, data root, ...).
    ``loads`` builds a slice: only the models of these load values, with the folder names,
    seeds and weights they have in the whole zoo (to check a rebuild against a release in
    part; a later build without ``loads`` into the same folder completes the zoo).
    """
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    with zoo_lock(out):
        plans = {plan.folder_name(zoo_id(spec)): plan for plan in spec.trials()}
        _check_same_zoo(out, spec, plans)
        if loads is not None:
            loads = check_load_values(spec, loads)
            plans = {name: plan for name, plan in plans.items()
                     if plan.params[spec.load.key] in loads}
        pending = [name for name in plans if fmt.read_trial_completion(out / name) is None]
        for name in pending:
            if (out / name).exists():
                log.info("redoing unfinished trial %s", name)
                shutil.rmtree(out / name)
        jobs = [TrialJob(name, plans[name].params, out / name, options) for name in pending]
        if options.seed_batch:
            jobs = seed_batches(jobs)
        if executor is None:  # worker processes with a fixed thread count: see RunOptions
            executor = LocalExecutor(workers, threads=options.cpu_threads)
        failures = executor.run(run_trial_job, jobs, total=len(plans) - len(pending) + len(jobs),
                                progress=progress, desc="building zoo")
        failures = {trial.name: failures[job.name] for job in jobs if job.name in failures
                    for trial in getattr(job, "trials", (job,))}
        if failures:
            listing = "\n".join(f"  {name}: {error} (log: {out / name / fmt.TRIAL_LOG})"
                                for name, error in failures.items())
            raise BuildError(f"{len(failures)} of {len(plans)} trials failed; finished trials "
                             f"are kept, run the build again to retry the rest:\n{listing}")
        finalize_zoo(out, spec, list(plans), loads)
    return out


def check_load_values(spec: ZooSpec, values: Sequence[Any]) -> list[Any]:
    """``values`` as the spec's load values (strings, as a command line gives them, match by
    their text); an error names any value the grid does not have."""
    by_text = {str(value): value for value in spec.load.values}
    found, missing = [], []
    for value in values:
        if value in spec.load.values:
            found.append(value)
        elif str(value) in by_text:
            found.append(by_text[str(value)])
        else:
            missing.append(str(value))
    if missing or not found:
        raise BuildError(f"{spec.load.label} {', '.join(missing) or '(none given)'} is not in "
                         f"the grid of {spec.name} (preset {spec.preset}); its values: "
                         f"{', '.join(map(str, spec.load.values))}")
    return found


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


def finalize_zoo(out: Path, spec: ZooSpec, trial_names: list[str],
                 loads: Sequence[Any] | None = None) -> None:
    """Write the summary table and the manifest (every file's hashes and the zoo's content
    revision, see :func:`wslbench.zoo_format.trial_record`) from the finished trials, after
    removing the temporary files of writes that a kill interrupted (the build holds the lock).
    A slice (``loads``) records only its load values in the manifest's grid."""
    fmt.remove_stale_temporaries(out)
    rows, trials = [], {}
    for name in trial_names:
        trial_dir = out / name
        rows.extend(fmt.summary_rows(name, fmt.read_params(trial_dir), fmt.read_results(trial_dir)))
        trials[name] = fmt.trial_record(trial_dir)
    fmt.write_summary(out, fmt.summary_frame(rows))
    manifest = fmt.ZooManifest(
        spec=spec.name, spec_version=spec.version, preset=spec.preset,
        grid={**spec.grid, **({spec.load.key: list(loads)} if loads is not None else {})},
        package_version=wslbench.__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    manifest.set_trials(trials)
    fmt.write_manifest(out, manifest)


@contextmanager
def zoo_lock(root: Path) -> Iterator[None]:
    """An exclusive lock on a zoo folder for a build or an annotation; the OS releases it even
    when the process is killed."""
    with open(root / LOCK_FILE, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildError(f"another build or annotation is running in '{root}'; wait for it "
                             "to finish") from None
        yield


def run_trial_job(job: TrialJob | TrialBatch) -> str | None:
    """Train one trial, or the trials of a seed batch together, each with its own log file;
    return an error message instead of raising."""
    from zoo_builder.building.specs import load_plugin
    from zoo_builder.building.train import train_trial

    trials = job.trials if isinstance(job, TrialBatch) else (job,)
    trial_logger = logging.getLogger("zoo_builder.building.train")
    handlers = []
    for trial in trials:
        trial.trial_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(trial.trial_dir / fmt.TRIAL_LOG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        trial_logger.addHandler(handler)
        handlers.append(handler)
    trial_logger.setLevel(logging.INFO)
    # The trial's log file gets every line; the console only when the command runs verbose.
    propagate, trial_logger.propagate = (trial_logger.propagate,
                                         logging.getLogger().isEnabledFor(logging.INFO))
    try:
        for plugin in job.options.plugins:
            load_plugin(plugin)
        for trial in trials:
            trial_logger.info("training %s with params %s", trial.name, trial.params)
        data = cached_dataset(trials[0].params["dataset::name"], job.options.data_root,
                              **dataset_options(trials[0].params))
        if isinstance(job, TrialBatch):
            from zoo_builder.building.batched import train_seed_batch

            train_seed_batch([(trial.params, trial.trial_dir) for trial in trials], data=data,
                             options=job.options, should_stop=parent_is_gone)
        else:
            train_trial(job.params, job.trial_dir, data=data, options=job.options,
                        should_stop=parent_is_gone)
        return None
    except Exception as err:  # reported per trial; the build goes on with the others
        trial_logger.exception("trial %s failed", job.name)
        return f"{type(err).__name__}: {err}"
    finally:
        for handler in handlers:
            trial_logger.removeHandler(handler)
            handler.close()
        trial_logger.propagate = propagate
