"""Running a predictor apart from the targets and the zoo (the parent side).

``wslbench evaluate`` keeps the zoo, the split and every target in its own process and runs
the predictor in a child process (:mod:`wslbench.predictor_child`, a fresh interpreter, not a
fork, so it inherits no memory). The child gets, on its stdin, the samples of each part with
opaque names, the targets of the training and validation parts, and a stage folder of
read-only *copies* of the checkpoints; it returns predictions, which the parent checks and
scores. The zoo's path is in none of the child's arguments, environment or working directory,
and while the child runs the parent hides its own command line (``--zoo``) and is not
dumpable (so its ``/proc`` memory, environment and open files are closed to same-user
processes).

This separates honest code from the targets; it is **not** a security sandbox: the child runs
as the same user, can read any file that user can (the zoo included, if it searches the disk
for it) and can use the network. Run code you do not trust in a container or a VM.
"""

from __future__ import annotations

import codecs
import collections
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from wslbench import zoo_format as fmt
from wslbench.paths import cache_dir
from wslbench.predictor import NotApplicableError

log = logging.getLogger(__name__)

#: Lines of the child's stderr quoted when it dies.
STDERR_TAIL = 15
#: Environment variables the child never gets: where zoos are.
PRIVATE_ENV = ("WSLBENCH_ZOOS",)
VERBOSE_HINT = "run `wslbench -v evaluate ...` for the full traceback"


class PredictorError(RuntimeError):
    """The user's predictor failed (raised, or returned something that is not predictions);
    the message names the predictor, the step, the user's file and line."""

    def __init__(self, message: str, traceback_text: str | None = None):
        super().__init__(message)
        self.traceback_text = traceback_text


class PredictorNotApplicableError(PredictorError, NotApplicableError):
    """The predictor said, in its own process, that it cannot handle this zoo or task
    (:class:`wslbench.predictor.NotApplicableError`): not a failure of its code."""


class PredictorProcessError(PredictorError):
    """The predictor's process died without an answer (a crash, a kill, out of memory)."""


class ChildTraceback(Exception):
    """The traceback of an error in the predictor's process, shown under ``-v``."""


# --------------------------------------------------------------------------- which predictor


def predictor_reference(predictor: str | type) -> tuple[str, str | None]:
    """``(reference, file)``: how the child loads ``predictor`` (a reference that
    :func:`wslbench.predictor.load_predictor_class` takes), without importing it here, and
    the file that defines it where one is known. A class must be importable by its module
    (or defined in a file), since the child imports it afresh."""
    if isinstance(predictor, str):
        from wslbench.predictor import _split_reference

        location, attr = _split_reference(predictor)
        if not location.endswith(".py"):
            return predictor, None  # a registered name, entry point or module path
        path = Path(location).expanduser().resolve()
        return (f"{path}:{attr}" if attr else str(path)), str(path)
    module = sys.modules.get(predictor.__module__)
    file = getattr(module, "__file__", None)
    qualname = predictor.__qualname__
    if "<locals>" in qualname:
        raise ValueError(
            f"predictor class {qualname} is defined inside a function; evaluate() runs "
            "predictors in a separate process, which imports the class afresh: define it at "
            "the top level of a module or a .py file")
    if predictor.__module__.startswith("wslbench_user_") or predictor.__module__ == "__main__":
        if not file:
            raise ValueError(f"predictor class {qualname} comes from no file; define it in a "
                             ".py file or an importable module")
        return f"{Path(file).resolve()}:{qualname}", str(Path(file).resolve())
    return f"{predictor.__module__}:{qualname}", file


# --------------------------------------------------------------------------- the stage


class CheckpointStage:
    """A private folder holding each sample's checkpoint as a read-only copy, under an
    opaque name.

    The samples a predictor gets load their weights from here, so neither their loader (a
    path) nor their name leads to a model's trial folder: not to its result.json (the
    targets) nor to its trial name (the hyperparameters). Files are copies (a copy-on-write
    clone where the file system offers one), never hard links, so writing into them cannot
    reach the zoo; the folder is removed when the stage closes. While it is open, a stage
    holds a lock file beside its folder (the folder's name plus ``.lock``, outside what the
    predictor is given), so the folders of runs that were killed (no lock holder) are removed
    when the next stage opens.
    """

    @staticmethod
    def lock_path(folder: Path) -> Path:
        return folder.with_name(folder.name + ".lock")

    def __init__(self, base: Path | None = None):
        base = Path(base) if base is not None else cache_dir() / "stage"
        base.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="run-", dir=base))
        self._lock = open(self.lock_path(self.folder), "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        remove_abandoned_stages(base, keep=self.folder)
        self.sources: dict[str, Path] = {}  # opaque name -> trial folder, for error messages
        #: opaque name -> the staged file's fingerprint (:func:`wslbench.zoo_format.file_fingerprint`)
        self.fingerprints: dict[str, str] = {}

    @staticmethod
    def opaque_name(zoo_revision: str, sample_id: str) -> str:
        """A name that identifies a sample (stable across runs, for feature caches) and
        says nothing about it."""
        return "model-" + fmt.canonical_hash([zoo_revision, sample_id])[:20]

    def add(self, trial_dir: Path, epoch: int, name: str) -> Path:
        """Copy the checkpoint of ``trial_dir`` at ``epoch`` in as trial ``name``, read-only."""
        source = fmt.checkpoint_file(trial_dir, epoch)
        target = fmt.checkpoint_dir(self.folder / name, epoch) / source.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fingerprints[name] = copy_file(source, target)
            os.chmod(target, stat.S_IRUSR | stat.S_IRGRP)
        self.sources[name] = Path(trial_dir)
        return self.folder / name

    def in_zoo_terms(self, text: str) -> str:
        """``text`` with every stage path replaced by the trial folder it stands for, so an
        error about a staged checkpoint names the zoo's file (the stage is gone by then)."""
        for name, trial in self.sources.items():
            text = text.replace(str(self.folder / name), str(trial))
        for name, trial in self.sources.items():  # a bare opaque name: say which trial
            text = re.sub(rf"\b{name}\b", lambda m, t=trial: f"{m[0]} (trial '{t.name}')",
                          text)
        return text

    def close(self) -> None:
        _remove_stage_folder(self.folder)
        self.lock_path(self.folder).unlink(missing_ok=True)
        self._lock.close()

    def __enter__(self) -> "CheckpointStage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _remove_stage_folder(folder: Path) -> None:
    for path, dirs, files in os.walk(folder):  # read-only files may be in folders
        try:                                     # made read-only too
            os.chmod(path, stat.S_IRWXU)
        except FileNotFoundError:  # removed meanwhile by another run's sweep
            pass
    shutil.rmtree(folder, ignore_errors=True)


def _remove_if_abandoned(folder: Path, keep: Path | None) -> bool:
    """Remove ``folder`` if its run is gone (see :func:`remove_abandoned_stages`). The lock
    is held while the folder is removed, so that runs starting together, which sweep the
    same folders, do not remove one folder at once."""
    if folder == keep or not folder.is_dir() or time.time() - folder.stat().st_mtime < 60:
        return False
    lock_path = CheckpointStage.lock_path(folder)
    if not lock_path.exists():
        if time.time() - folder.stat().st_mtime < 3600:
            return False  # maybe a stage between mkdtemp and its lock
        _remove_stage_folder(folder)
        return True
    with open(lock_path) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a run in progress, or another sweep removing it
            return False
        if not folder.is_dir():
            return False  # removed by a sweep that held the lock before us
        _remove_stage_folder(folder)
        lock_path.unlink(missing_ok=True)
    return True


def remove_abandoned_stages(base: Path, keep: Path | None = None) -> list[Path]:
    """Remove the stage folders under ``base`` whose run is gone: a folder whose lock no
    process holds (its run was killed before it could clean up), or that has no lock and is
    over an hour old (left by a version before the locks). Folders younger than a minute are
    left alone (a stage takes its lock just after making its folder). Return what was
    removed."""
    removed = []
    for folder in base.glob("run-*"):
        try:
            if _remove_if_abandoned(folder, keep):
                removed.append(folder)
        except FileNotFoundError:  # another run's sweep removed it first
            continue
    if removed:
        log.info("removed %d stage folder(s) of runs that were killed, under %s",
                 len(removed), base)
    return removed


_FICLONE = 0x40049409  # linux/fs.h: clone a file's extents (btrfs, xfs, ...)


def copy_file(source: Path, target: Path) -> str:
    """A copy of ``source`` at ``target``; returns its fingerprint
    (:func:`wslbench.zoo_format.file_fingerprint`). A file that the fingerprint hashes whole
    is read once, for both; a larger one is cloned (copy-on-write) where the file system
    can, else copied."""
    if os.stat(source).st_size <= fmt.FULL_HASH_LIMIT:
        data = Path(source).read_bytes()
        with open(target, "wb") as handle:
            handle.write(data)
        return f"{len(data)}:sha256:{hashlib.sha256(data).hexdigest()}"
    _clone_or_copy(source, target)
    return fmt.file_fingerprint(target)


def _clone_or_copy(source: Path, target: Path) -> None:
    if sys.platform.startswith("linux"):
        import fcntl

        with open(source, "rb") as src, open(target, "wb") as dst:
            try:
                fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
                return
            except OSError:
                pass
    shutil.copyfile(source, target)


# --------------------------------------------------------------------------- the child process


class PredictorProcess:
    """The child process of one evaluation. Start it first (it imports the predictor while
    the parent checks the zoo and stages the weights), then :meth:`run` a job."""

    def __init__(self, predictor: str | type, zoo_roots: Sequence[Path], device: str | None):
        self.reference, self.file = predictor_reference(predictor)
        self.label = _label(self.reference)
        self.zoo_roots = [Path(r).resolve() for r in zoo_roots]
        self.device = device
        self._answer_dir = Path(tempfile.mkdtemp(prefix="wslbench-answer-"))
        self.answer_path = self._answer_dir / "answer.json"
        self._tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._hidden = _HiddenParent(self.zoo_roots, self._answer_dir)
        workdir = self._working_dir()  # before the parent itself moves out of it
        #: where the evaluation stages checkpoints (absolute: the parent moves meanwhile)
        self.stage_base = cache_dir().expanduser().resolve() / "stage"
        env = child_environment(self.zoo_roots)
        sys_path = [path for path in (os.path.abspath(p or os.curdir) for p in sys.path)
                    if not any(_related(Path(path), root) for root in self.zoo_roots)]
        # The child writes a byte here once its answer file is complete, so that the
        # parent need not wait for it to exit (an interpreter with torch takes ~0.5 s to
        # shut down); the pipe's end-of-file without a byte means it stopped unanswered.
        self._answered_read, answered_write = os.pipe()
        self.answered = False
        self._hidden.__enter__()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "wslbench.predictor_child"], stdin=subprocess.PIPE,
                stderr=subprocess.PIPE, env=env,
                cwd=workdir, close_fds=True, pass_fds=(answered_write,))
        except BaseException:
            self._hidden.__exit__(None, None, None)
            os.close(self._answered_read)
            raise
        finally:
            os.close(answered_write)
        self._reader = threading.Thread(target=self._forward_stderr, daemon=True)
        self._reader.start()
        self._send({"predictor": self.reference, "file": self.file,
                    "sys_path": sys_path,
                    **_torch_settings(),
                    "answer": str(self.answer_path), "answered_fd": answered_write})

    def _working_dir(self) -> str:
        """The user's working directory, unless a zoo lies in it or it lies in a zoo: then
        an empty private folder."""
        here = Path.cwd().resolve()
        if any(_related(here, root) for root in self.zoo_roots):
            return str(self._answer_dir)
        return str(here)

    def _send(self, message: Mapping[str, Any] | None) -> None:
        try:
            self.process.stdin.write((json.dumps(message) + "\n").encode())
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child has stopped; its answer (or its death) says why

    def _forward_stderr(self) -> None:
        """Pass the child's stderr through (warnings, progress bars) and keep its last lines."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        partial = ""
        stream = self.process.stderr
        while True:
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                break
            text = decoder.decode(chunk)
            try:
                sys.stderr.write(text)
                sys.stderr.flush()
            except (ValueError, OSError):
                pass
            lines = re.split(r"[\r\n]", partial + text)
            partial = lines.pop()
            self._tail.extend(line for line in lines if line.strip())
        if partial.strip():
            self._tail.append(partial)
        stream.close()

    def run(self, job: Mapping[str, Any], stage: CheckpointStage) -> dict[str, Any]:
        """Send ``job``, wait for the child, and return its answer (identity and encoded
        predictions per seed); errors of the predictor raise :class:`PredictorError`."""
        self._send({**job, "stage": str(stage.folder), "device": self.device})
        self.process.stdin.close()
        try:
            self.answered = self._wait_answered()
            answer = self._read_answer() if self.answered else None
            if answer is None:
                code = self.process.wait()
        except BaseException:  # Ctrl-C: take the child down too
            self.process.kill()
            self.process.wait()
            raise
        if answer is None:
            self._reader.join(timeout=5)  # the last lines of its stderr
            answer = self._read_answer()
        if answer is None:
            raise PredictorProcessError(stage.in_zoo_terms(self._death(code)))
        if not answer["ok"]:
            error = answer["error"]
            details = stage.in_zoo_terms(error["traceback"])
            if (error["module"], error["type"]) == ("wslbench.predictor", "NotApplicableError"):
                raise PredictorNotApplicableError(
                    f"predictor {self.label} does not apply: "
                    f"{stage.in_zoo_terms(error['message'])}", details)
            raise PredictorError(stage.in_zoo_terms(self._describe(error)),
                                 details) from ChildTraceback(details)
        return answer

    def _wait_answered(self) -> bool:
        """Block until the child says its answer is written (True) or stops without saying
        so (False). The pipe alone could stay open after the child's death, held by a
        process the predictor started, so the child's exit is checked as well."""
        while True:
            ready, _, _ = select.select([self._answered_read], [], [], 0.5)
            if ready:
                return os.read(self._answered_read, 1) == b"1"
            if self.process.poll() is not None:
                ready, _, _ = select.select([self._answered_read], [], [], 0)
                return bool(ready) and os.read(self._answered_read, 1) == b"1"

    def _read_answer(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.answer_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def _death(self, code: int) -> str:
        how = f"exit code {code}"
        if code < 0:
            try:
                how = f"signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"signal {-code}"
            if -code == signal.SIGKILL:
                how += " (killed: out of memory?)"
        tail = "\n  ".join(self._tail) or "(nothing)"
        return (f"the process running predictor {self.label} died ({how}) before it returned "
                f"predictions; the last lines of its stderr:\n  {tail}")

    def _describe(self, error: Mapping[str, Any]) -> str:
        """One message for an error the child reported: what, where in the user's code, and
        how to see more."""
        kind = error["type"] if error["module"] in ("builtins", "__main__") else \
            f"{error['module']}.{error['type']}"
        where = error.get("where")
        if error["type"] == "SyntaxError" and where:
            return (f"predictor file '{where['file']}' line {where['line']} has a syntax "
                    f"error: {error['message']}; fix the file ({VERBOSE_HINT})")
        if error["type"] == "PredictionShapeError":
            return f"predictor {self.label}: {error['message']}"
        at = ""
        if where:
            function = f" in {where['function']}" if where.get("function") else ""
            code = f": {where['code']}" if where.get("code") else ""
            at = f"\n  at {where['file']}:{where['line']}{function}{code}"
        return (f"predictor {self.label} failed {error['stage']}: {kind}: "
                f"{error['message']}{at}\n({VERBOSE_HINT})")

    def close(self) -> None:
        """Stop the child unless it answered: one that answered is shutting down (its
        ``atexit`` handlers run), which the parent does not wait for; one that did not is of
        no use (the parent stopped before the job ended, e.g. on a broken zoo)."""
        if not self.answered and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        try:
            self.process.stdin.close()
        except OSError:
            pass
        os.close(self._answered_read)
        if self.process.poll() is not None:
            self._reader.join(timeout=5)  # it closes the stderr pipe at its end
        self._hidden.__exit__(None, None, None)
        shutil.rmtree(self._answer_dir, ignore_errors=True)

    def __enter__(self) -> "PredictorProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _related(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root``, lies in it or holds it (then it leads to the zoo)."""
    return path == root or root in path.parents or path in root.parents


def _torch_settings() -> dict[str, Any]:
    """The parent's thread count and oneDNN switch for the child to copy, where the parent
    has imported torch (``wslbench evaluate`` does not; then the child keeps torch's own)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {"threads": None, "mkldnn": None}
    return {"threads": torch.get_num_threads(), "mkldnn": bool(torch.backends.mkldnn.enabled)}


def _label(reference: str) -> str:
    return f"'{reference}'"


def child_environment(zoo_roots: Sequence[Path]) -> dict[str, str]:
    """The parent's environment without the variables that say where zoos are: the zoo
    search path, and any variable whose value names a zoo's folder. Relative wslbench
    folders are made absolute (the child may work in another folder)."""
    names = [str(r) for r in zoo_roots]
    env = {key: value for key, value in os.environ.items()
           if key not in PRIVATE_ENV and not any(n in value for n in names)}
    for key in ("WSLBENCH_CACHE", "WSLBENCH_DATA"):
        if env.get(key):
            env[key] = str(Path(env[key]).expanduser().resolve())
    return env


# --------------------------------------------------------------------------- the parent, hidden


class _HiddenParent:
    """While the child runs: the parent's working directory is an empty private folder (the
    user's may hold the zoo), its command line reads as a neutral title (it may hold
    ``--zoo PATH``), every zoo path in its original environment block (what
    ``/proc/PID/environ`` shows) is masked with ``*``, and the parent is not dumpable, which
    closes its ``/proc/PID/{environ,mem,cwd,fd,maps}`` to other processes of the same user
    (not to root). All is restored afterwards. Linux only; elsewhere nothing is changed.

    The masks write into the process's own argument and environment strings, which Python
    copied at start-up (``sys.argv``, ``os.environ``); the environment keeps its lengths, so
    C code that reads a masked variable meanwhile sees stars, never a broken string."""

    TITLE = b"wslbench (arguments hidden while a predictor runs)"
    _PR_SET_DUMPABLE, _PR_GET_DUMPABLE = 4, 3

    def __init__(self, zoo_roots: Sequence[Path], neutral: Path):
        self._names = [str(r).encode() for r in zoo_roots]
        self._neutral = neutral
        self._saved: list[tuple[int, bytes]] = []
        self._dumpable: int | None = None
        self._cwd: str | None = None

    def __enter__(self) -> "_HiddenParent":
        if not sys.platform.startswith("linux"):
            return self
        self._cwd = os.getcwd()
        os.chdir(self._neutral)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._dumpable = libc.prctl(self._PR_GET_DUMPABLE, 0, 0, 0, 0)
            libc.prctl(self._PR_SET_DUMPABLE, 0, 0, 0, 0)
        except (OSError, AttributeError):
            self._dumpable = None
        try:
            fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
            # fields 48-51 of proc(5): arg_start, arg_end, env_start, env_end
            arg_start, arg_end, env_start, env_end = (int(f) for f in fields[45:49])
        except (OSError, ValueError):
            return self
        if 0 < arg_start < arg_end:
            title = self.TITLE[:arg_end - arg_start - 1]
            self._overwrite(arg_start, title + b"\0" * (arg_end - arg_start - len(title)))
        if 0 < env_start < env_end:
            block = ctypes.string_at(env_start, env_end - env_start)
            masked = block
            for name in self._names:
                masked = masked.replace(name, b"*" * len(name))
            if masked != block:
                self._overwrite(env_start, masked)
        return self

    def _overwrite(self, address: int, data: bytes) -> None:
        self._saved.append((address, ctypes.string_at(address, len(data))))
        ctypes.memmove(address, data, len(data))

    def __exit__(self, *exc) -> None:
        if self._cwd is not None:
            os.chdir(self._cwd)
            self._cwd = None
        for address, data in reversed(self._saved):
            ctypes.memmove(address, data, len(data))
        self._saved.clear()
        if self._dumpable is not None and self._dumpable > 0:
            ctypes.CDLL(None).prctl(self._PR_SET_DUMPABLE, self._dumpable, 0, 0, 0)
            self._dumpable = None


# --------------------------------------------------------------------------- checking predictions


def check_predictions(encoded: Sequence[Any], sample_ids: Sequence[str], classification: bool,
                      label: str, seed: int) -> list[float | str]:
    """The child's encoded predictions of one seed as values, or a :class:`PredictorError`
    that names the predictor, the seed, the first offending test model and what to return."""
    expected = ("labels (strings, e.g. 'I' or 'IV-A')" if classification
                else "finite numbers")
    problems: dict[str, list[str]] = {}
    for sample_id, value in zip(sample_ids, encoded):
        what = _problem(value, classification)
        if what is not None:
            problems.setdefault(what, []).append(sample_id)
    if problems:
        what, ids = next(iter(problems.items()))
        more = f" and {len(ids) - 1} more" if len(ids) > 1 else ""
        raise PredictorError(
            f"predict() of predictor {label} returned {what} for test model '{ids[0]}'{more} "
            f"(seed {seed}); this task needs {expected}, one per model")
    return list(encoded)


def _problem(value: Any, classification: bool) -> str | None:
    if isinstance(value, dict):
        return f"a {value['unsupported']} ({value['repr']})"
    if classification:
        return None if isinstance(value, str) else f"the number {value!r}, not a label"
    if isinstance(value, str):
        return f"the string {value!r}" + (" (a number as text)" if _numeric(value) else "")
    if not np.isfinite(value):
        return "NaN" if np.isnan(value) else f"{value}"
    return None


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@contextmanager
def running(predictor: str | type, zoo_roots: Sequence[Path], device: str | None
            ) -> Iterator[PredictorProcess]:
    """A started :class:`PredictorProcess`, closed (and the parent un-hidden) on exit."""
    process = PredictorProcess(predictor, zoo_roots, device)
    try:
        yield process
    finally:
        process.close()
