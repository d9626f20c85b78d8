"""Run a build's trials as Ray Tune trials, on this machine or on a Ray cluster.

``zoo-builder build SPEC --executor ray [--address auto]`` trains every model of the zoo as
one Ray Tune trial. The trial runs the same job function as :class:`LocalExecutor` and writes
the same trial folder into the zoo, so a zoo looks the same whichever executor built it; Ray
Tune adds scheduling on a cluster (one trial per ``cpus_per_trial`` / ``gpus_per_trial``) and
retries of failed trials. Ray is imported only when a :class:`RayExecutor` runs, so the rest
of zoo_builder starts without it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tqdm.auto import tqdm

from zoo_builder.building.executors import Job

log = logging.getLogger(__name__)

#: Reported by a Ray trial whose job succeeded; a trial without it did not finish.
_SUCCEEDED = "job_succeeded"
#: Ray Tune loggers that print a full traceback for every failed attempt (and a warning per
#: trial not run when the run is interrupted); the executor reports these itself.
_NOISY_LOGGERS = ("ray.tune.execution.tune_controller", "ray.tune.tune",
                  "ray.tune.analysis.experiment_analysis")


class JobFailed(RuntimeError):
    """Raised in a Ray trial when its job returns an error, so that Ray Tune retries it."""


def import_ray() -> Any:
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
        import ray.tune  # noqa: F401  (the executor needs Tune, not only Ray core)
    except ImportError as err:
        raise ImportError(f"the Ray executor needs Ray Tune, which is missing ({err}); "
                          "install it with: pip install 'wslbench[ray]'") from err
    return ray


class RayExecutor:
    """Runs jobs as Ray Tune trials, one trial per job, retrying failed ones.

    ``address``: None starts a local Ray cluster for the run (and stops it afterwards);
    ``"auto"`` (the cluster started by ``ray start`` on this machine, or $RAY_ADDRESS),
    ``"host:6379"`` or ``"ray://host:10001"`` (Ray Client) connect to a running cluster,
    which is left running. When Ray is already initialized in this process (``ray.init``
    called by the caller), that connection is used as it is and left open.

    ``cpus_per_trial`` / ``gpus_per_trial``: the resources each trial reserves (fractions
    share a GPU); torch in a trial uses as many threads as it has whole CPUs.
    ``max_retries``: how many times a failed trial is started again before it counts as
    failed; a trial that fails at every attempt is returned as ``{job name: error}``.

    Where files go:

    - The zoo's trial folders are written by the job function itself, exactly as with the
      local executor; the zoo root gains no Ray file. On a cluster of several machines the
      zoo folder must therefore be on a filesystem every node mounts at the same path (NFS,
      Lustre, ...). A retried trial writes its folder again (its train.log keeps the lines
      of the failed attempts).
    - Ray Tune's own bookkeeping (experiment state, per-trial logs and error files) goes to
      ``storage_path`` (default: Ray's ``~/ray_results``; with Ray Client that is on the head
      node), under ``zoo_builder_<what>_<time>``, one folder per run.

    Resuming: Ctrl+C ends the Ray Tune run (its trials stop) and raises KeyboardInterrupt.
    An interrupted build is resumed by running the build again; it skips every trial whose
    folder is finished and hands only the others to this executor. Ray Tune's experiment
    restore is never needed (and not used).

    Code on the workers: every Ray worker must import zoo_builder. On a local cluster it does
    (the package is installed in the driver's environment). For a remote cluster install
    the package (``pip install 'wslbench[ray]'``, same version) on every node, or ship it
    with ``runtime_env`` (e.g. ``{"py_modules": ["/path/to/zoo_builder", ...]}`` or
    ``{"pip": [...]}``), which is passed to ``ray.init`` when this executor connects.
    Trials run in the driver's working directory on a local cluster; on a remote one, paths
    in the jobs (the zoo, ``RunOptions.data_root``, plugin files) must be absolute and the
    same on every node.

    Progress: a tqdm bar counts finished trials; Ray Tune's own reporter is silenced and a
    retry is logged as a warning. With Ray Client, Tune runs on the head node and so does the
    bar (its output appears in the cluster's logs).
    """

    def __init__(self, address: str | None = None, cpus_per_trial: float = 1,
                 gpus_per_trial: float = 0, max_retries: int = 2,
                 storage_path: str | os.PathLike | None = None,
                 runtime_env: dict[str, Any] | None = None):
        if cpus_per_trial < 0 or gpus_per_trial < 0 or cpus_per_trial + gpus_per_trial <= 0:
            raise ValueError(f"a trial needs some resources: got cpus_per_trial="
                             f"{cpus_per_trial}, gpus_per_trial={gpus_per_trial} (both >= 0, "
                             "at least one > 0)")
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
        self.address = address
        self.cpus_per_trial = cpus_per_trial
        self.gpus_per_trial = gpus_per_trial
        self.max_retries = max_retries
        self.storage_path = _storage_path(storage_path)
        self.runtime_env = runtime_env

    def run(self, function: Callable[[Job], str | None], jobs: Sequence[Job], total: int,
            progress: bool = True, desc: str = "") -> dict[str, str]:
        """Run ``function(job)`` for every job, each as one Ray Tune trial (``function`` is a
        module-level function returning an error message or None; jobs are picklable).
        ``total`` counts the jobs done before, for the progress bar. Return {job name:
        error} for the jobs that still failed after ``max_retries`` retries."""
        if not jobs:
            return {}
        ray = import_ray()
        started = self._connect(ray)
        try:
            self._check_resources(ray, started_locally=started and self.address is None)
            bar = tqdm(total=total, initial=total - len(jobs), disable=not progress, desc=desc)
            with bar:
                grid = self._fit(function, list(jobs), bar, desc)
            return self._failures(grid, list(jobs))
        finally:
            if started:  # stops a local cluster; only disconnects from a remote one
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Initialize Ray unless the caller has; return whether this executor did."""
        if ray.is_initialized():
            log.info("using the Ray cluster this process is connected to")
            return False
        if self.address is None:
            log.info("starting a local Ray cluster")
            ray.init(address="local", include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, runtime_env=self.runtime_env)
        elif self.address.startswith("ray://"):
            log.info("connecting to the Ray cluster at %s (Ray Client)", self.address)
            ray.init(address=self.address, runtime_env=self.runtime_env)
        else:
            log.info("connecting to the Ray cluster at %s", self.address)
            ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING,
                     runtime_env=self.runtime_env)
        return True

    def _check_resources(self, ray: Any, started_locally: bool) -> None:
        """A trial that no node can hold would wait forever: refuse it on a local cluster,
        warn on a connected one (its autoscaler may add such a node)."""
        available = ray.cluster_resources()
        for key, flag, need in (("CPU", "cpus_per_trial", self.cpus_per_trial),
                                ("GPU", "gpus_per_trial", self.gpus_per_trial)):
            have = available.get(key, 0)
            if need <= have:
                continue
            message = (f"each trial asks for {need} {key} ({flag}) but the Ray cluster has "
                       f"{have:g} in all")
            if started_locally:
                raise ValueError(f"{message}; lower {flag} or connect to a cluster that has "
                                 "them (address)")
            log.warning("%s; trials wait until a node with enough %s joins", message, key)

    def _fit(self, function: Callable[[Job], str | None], jobs: list[Job], bar: tqdm,
             desc: str) -> Any:
        from ray import tune

        trainable = tune.with_resources(
            tune.with_parameters(_run_job, function=function, jobs=jobs),
            {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial})
        names = [job.name for job in jobs]
        run_name = "zoo_builder_{}_{}".format(re.sub(r"\W+", "_", desc).strip("_") or "jobs",
                                              datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f"))
        tuner = tune.Tuner(
            trainable,
            param_space={"job": tune.grid_search(list(range(len(jobs))))},
            tune_config=tune.TuneConfig(reuse_actors=True,  # like a process pool's workers
                                        trial_name_creator=_TrialName(names),
                                        trial_dirname_creator=_TrialName(names)),
            run_config=tune.RunConfig(
                name=run_name, storage_path=self.storage_path, verbose=0,
                failure_config=tune.FailureConfig(max_failures=self.max_retries),
                callbacks=[_progress_callback(tune, bar, names, self.max_retries)]),
        )
        log.info("Ray Tune run %s (bookkeeping under %s)", run_name,
                 self.storage_path or "~/ray_results")
        # The legacy output engine at verbose=0 prints nothing (the new one still prints a
        # header); trials keep the driver's working directory, so relative paths mean the
        # same there as here on a local cluster.
        with _environment(RAY_AIR_NEW_OUTPUT="0", RAY_CHDIR_TO_TRIAL_DIR="0"), _quiet(
                _NOISY_LOGGERS), _signal_handlers_restored():
            return tuner.fit()

    def _failures(self, grid: Any, jobs: list[Job]) -> dict[str, str]:
        """{job name: error} for every job whose trial failed at every attempt. Raise
        KeyboardInterrupt when the run was stopped (Ctrl+C) before every trial ended."""
        failures: dict[str, str] = {}
        succeeded: set[str] = set()
        for result in grid:  # (result.config is None for a trial that never started)
            name = Path(result.path).name  # Ray's folder of the trial, named after its job
            if result.error is not None:
                failures[name] = f"{_error_message(result.error)} (failed " \
                                 f"{_attempts(self.max_retries)})"
            elif result.metrics.get(_SUCCEEDED):
                succeeded.add(name)
        unfinished = [job.name for job in jobs
                      if job.name not in failures and job.name not in succeeded]
        if unfinished:
            raise KeyboardInterrupt(
                f"the Ray Tune run was interrupted before {len(unfinished)} of {len(jobs)} "
                f"trials ended (e.g. {unfinished[0]}); run the same command again to finish "
                "them")
        return failures


def _run_job(config: dict[str, int], function: Callable[[Job], str | None],
             jobs: list[Job]) -> None:
    """The Ray Tune trainable: run one job; raise on its error so that Tune retries it."""
    from ray import tune

    job = jobs[config["job"]]
    options = getattr(job, "options", None)  # a TrialJob's RunOptions: the build's thread count
    if options is not None:
        import torch

        torch.set_num_threads(options.cpu_threads)
    error = function(job)
    if error:
        raise JobFailed(error)
    tune.report({_SUCCEEDED: 1})


class _TrialName:
    """Names a Ray trial (and its bookkeeping folder) after its job."""

    def __init__(self, names: list[str]):
        self.names = names

    def __call__(self, trial: Any) -> str:
        return self.names[trial.config["job"]]


def _progress_callback(tune: Any, bar: tqdm, names: list[str], max_retries: int) -> Any:
    """A Tune callback that advances ``bar`` per finished trial and logs every retry."""

    class Progress(tune.Callback):
        # Tune pickles its callbacks with the experiment state and a bar does not pickle:
        # it is an attribute (not a closure variable), left out of the pickled state.
        def __init__(self, bar: tqdm, names: list[str], max_retries: int) -> None:
            self.bar: tqdm | None = bar
            self.names = names
            self.max_retries = max_retries
            self.failed_attempts: dict[str, int] = {}
            self.failed = 0

        def __getstate__(self) -> dict[str, Any]:
            return {**self.__dict__, "bar": None}

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any):
            name = self.names[trial.config["job"]]
            count = self.failed_attempts[name] = self.failed_attempts.get(name, 0) + 1
            log.warning("trial %s failed (attempt %d of %d); retrying", name, count,
                        self.max_retries + 1)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any):
            if self.bar is not None:
                self.bar.update()

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any):
            self.failed += 1
            if self.bar is not None:
                self.bar.set_postfix(failed=self.failed)
                self.bar.update()

    return Progress(bar, names, max_retries)


def _error_message(error: BaseException) -> str:
    """The job's own error, without Ray's wrapping (RayTaskError.cause) and traceback."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    if isinstance(error, JobFailed):
        return str(error)
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _attempts(max_retries: int) -> str:
    if max_retries == 0:
        return "once; retries are off"
    return f"{max_retries + 1} times: the first attempt and {max_retries} " + (
        "retry" if max_retries == 1 else "retries")


def _storage_path(path: str | os.PathLike | None) -> str | None:
    """An absolute local path or a URI (s3://, gs://, ...); None keeps Ray's default."""
    if path is None:
        return None
    if "://" in str(path):
        return str(path)
    return str(Path(path).expanduser().resolve())


@contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """Set environment variables for a block and restore them afterwards."""
    saved = {key: os.environ.get(key) for key in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _signal_handlers_restored() -> Iterator[None]:
    """Tune takes over Ctrl+C (SIGINT, to end its run cleanly) and SIGUSR1 and leaves its
    handlers installed when the run ends; give this process its own handlers back."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Tune installs no handler outside the main thread
        return
    names = [name for name in ("SIGINT", "SIGUSR1") if hasattr(signal, name)]
    saved = {name: signal.getsignal(getattr(signal, name)) for name in names}
    try:
        yield
    finally:
        for name, handler in saved.items():
            if handler is not None:  # None: installed outside Python, cannot be restored
                signal.signal(getattr(signal, name), handler)


@contextmanager
def _quiet(names: Sequence[str]) -> Iterator[None]:
    """Silence some loggers for a block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
