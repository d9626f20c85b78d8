"""Executors: run independent jobs (training a model, annotating a grid point) on this machine.

:class:`LocalExecutor` runs them in this process (workers=1) or in a pool of processes that
split the cores and die with the process that started them, so a killed build or annotation
leaves no orphan writing into the zoo. A job that fails is reported, never dropped.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable, Protocol, Sequence

from tqdm.auto import tqdm


class Job(Protocol):
    name: str


class Executor(Protocol):
    """Runs independent jobs; :class:`LocalExecutor` here, a Ray Tune one for clusters."""

    def run(self, function: Callable[[Job], str | None], jobs: Sequence[Job], total: int,
            progress: bool = True, desc: str = "") -> dict[str, str]:
        """Run ``function(job)`` for every job; return {job name: error} for the failures."""
        ...


class LocalExecutor:
    """Runs jobs on this machine: in this process (workers=1) or in a process pool.

    ``threads`` fixes the intra-op threads of every job: the jobs then always run in worker
    processes (also with workers=1) that take that thread count when they start, so that the
    result does not depend on the number of workers. Without it, pool workers share the cores
    (cores // workers threads each) and workers=1 runs in this process.
    """

    def __init__(self, workers: int = 1, threads: int | None = None):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.workers = workers
        self.threads = threads

    def run(self, function: Callable[[Job], str | None], jobs: Sequence[Job], total: int,
            progress: bool = True, desc: str = "") -> dict[str, str]:
        """Run ``function(job)`` for every job (a module-level function, so that worker
        processes can import it; it returns an error message or None). ``total`` counts the
        jobs done before, for the progress bar. Return {job name: error} for the failures."""
        failures: dict[str, str] = {}
        bar = tqdm(total=total, initial=total - len(jobs), disable=not progress, desc=desc)
        with bar:
            if self.threads is None and (self.workers == 1 or len(jobs) <= 1):
                for job in jobs:
                    error = function(job)
                    if error:
                        failures[job.name] = error
                    bar.update()
                return failures
            threads = self.threads or max(1, (os.cpu_count() or 1) // self.workers)
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker,
                                     initargs=(os.getpid(), threads)) as pool:
                running = {pool.submit(function, job): job for job in jobs}
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
    """Pool workers use a share of the cores and die with the process that started them."""
    global _parent_pid
    _parent_pid = parent_pid
    import torch

    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def parent_is_gone() -> bool:
    """In a pool worker: whether the process that started the pool has died."""
    return _parent_pid is not None and os.getppid() != _parent_pid
