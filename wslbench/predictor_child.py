"""The process a predictor runs in during ``wslbench evaluate`` (``python -m
wslbench.predictor_child``; :mod:`wslbench.isolation` starts it).

It reads two JSON lines on stdin: first what to load (the predictor's reference, the import
path, torch settings), which it imports while the parent checks the zoo and stages the
weights; then the job: the samples of each split part (opaque names, epochs, configurations,
files in the stage folder), the targets of the train and validation parts, the seeds. It never
gets the targets of test models, nor any path of the zoo. It writes its answer, the
predictions of each seed or what went wrong, as one JSON file where the job says, and then
writes one byte to the "answered" pipe (the file descriptor the setup names), so that the
parent goes on scoring while this interpreter shuts down (tearing down torch takes ~0.5 s).
"""

from __future__ import annotations

import functools
import json
import numbers
import os
import random
import signal
import sys
import traceback
from pathlib import Path
from typing import Any


class PredictionShapeError(ValueError):
    """predict() returned something that is not one value per model."""


def main() -> int:
    setup = json.loads(sys.stdin.readline() or "null")
    if setup is None:  # the parent gave up before sending anything (e.g. a broken zoo)
        return 0
    sys.path[:0] = [p for p in setup["sys_path"] if p not in sys.path]
    answer_path = Path(setup["answer"])
    global _answered_fd
    _answered_fd = setup.get("answered_fd")
    try:
        predictor_class, identity = _load(setup)
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises it
        _answer(answer_path, {"ok": False, "error": describe_error(err, "while loading it",
                                                                   setup.get("file"))})
        return 0
    job = json.loads(sys.stdin.readline() or "null")
    if job is None:  # the parent stopped (its own checks failed); nothing to do
        return 0
    try:
        predictions = _run(predictor_class, job)
    except BaseException as err:  # noqa: BLE001
        stage = getattr(err, "_stage_where", "while running it")
        _answer(answer_path, {"ok": False, "identity": identity,
                              "error": describe_error(err, stage, identity.get("file"))})
        return 0
    import torch

    from wslbench.evaluate import hardware

    _answer(answer_path, {"ok": True, "identity": identity, "predictions": predictions,
                          "torch": torch.__version__, "hardware": hardware(job["device"])})
    return 0


def _load(setup: dict[str, Any]):
    import torch

    if setup["threads"] is not None:  # the parent's torch settings, where it has torch
        torch.set_num_threads(setup["threads"])
    if setup["mkldnn"] is not None:
        torch.backends.mkldnn.enabled = setup["mkldnn"]
    from wslbench.identity import predictor_identity
    from wslbench.predictor import load_predictor_class

    predictor_class = load_predictor_class(setup["predictor"])
    return predictor_class, predictor_identity(predictor_class, setup["predictor"])


def _samples(part: dict[str, Any], stage: Path) -> list:
    from wslbench import zoo_format as fmt
    from wslbench.predictor import ModelSample

    return [ModelSample(name=s["name"], epoch=s["epoch"], model_args=s["model_args"],
                        hyperparameters=s["hyperparameters"],
                        _load=functools.partial(fmt.load_state_dict, stage / s["name"],
                                                s["epoch"]),
                        zoo_revision=s["zoo_revision"], fingerprint=s["fingerprint"])
            for s in part["samples"]]


def _run(predictor_class: type, job: dict[str, Any]) -> dict[str, list]:
    import numpy as np
    import torch

    from wslbench.predictor import instantiate
    from wslbench.tasks import get_task

    task = get_task(job["task"])
    stage = Path(job["stage"])
    inputs = {part: _samples(job["parts"][part], stage) for part in ("train", "val", "test")}
    targets = {part: task.as_array(job["parts"][part]["targets"]) for part in ("train", "val")}
    predictions = {}
    for seed in job["seeds"]:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        predictor = _step("while constructing it", instantiate, predictor_class, seed,
                          job["device"])
        _step("in fit()", predictor.fit, inputs["train"], targets["train"], inputs["val"],
              targets["val"])
        output = _step("in predict()", predictor.predict, inputs["test"])
        predictions[str(seed)] = encode_predictions(output, len(inputs["test"]))
    return predictions


def _step(where: str, function, *args):
    """Call ``function``; an error remembers which step of the protocol raised it."""
    try:
        return function(*args)
    except BaseException as err:
        try:
            err._stage_where = where
        except AttributeError:  # an exception type without a __dict__
            pass
        raise


def encode_predictions(output: Any, n: int) -> list:
    """predict()'s output as JSON values, one per model: numbers (NaN and infinities kept, for
    the parent to name), strings, and ``{"unsupported": type, "repr": ...}`` for anything else
    (booleans, complex numbers, dicts, None), which the parent refuses by name."""
    import numpy as np

    if isinstance(output, dict):
        raise PredictionShapeError(f"predict() returned a dict (keys {list(output)[:3]}); return "
                                   "a sequence or array with one value per model, in order")
    try:
        array = np.asarray(output, dtype=object)
    except (ValueError, TypeError) as err:
        raise PredictionShapeError(f"predict() returned {type(output).__name__}, which is not "
                                   f"an array of one value per model ({err})") from err
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise PredictionShapeError(f"predict() returned an array of shape {array.shape}; return "
                                   f"one value per model, shape ({n},)")
    if len(array) != n:
        raise PredictionShapeError(f"predict() returned {len(array)} values for {n} test models; "
                                   "return one value per model, in order")
    return [_encode(value) for value in array]


def _encode(value: Any) -> Any:
    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        return {"unsupported": "bool", "repr": repr(bool(value))}
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Real):
        return float(value)
    return {"unsupported": type(value).__name__, "repr": repr(value)[:60]}


def describe_error(err: BaseException, stage: str, user_file: str | None) -> dict[str, Any]:
    """What the parent needs to name an error: its type and message, the user's line that
    raised it (the deepest frame in the predictor's file, else outside wslbench, the standard
    library and installed packages; none if wslbench itself raised it), and the traceback."""
    where = None
    if isinstance(err, SyntaxError) and err.filename:
        where = {"file": err.filename, "line": err.lineno, "function": None,
                 "code": (err.text or "").strip()}
    else:
        frames = traceback.extract_tb(err.__traceback__)
        libraries = _library_dirs()
        users = [f for f in frames if user_file and _same_file(f.filename, user_file)] or [
            f for f in frames if not f.filename.startswith("<")
            and not os.path.realpath(f.filename).startswith(libraries)]
        if users:
            frame = users[-1]
            where = {"file": frame.filename, "line": frame.lineno, "function": frame.name,
                     "code": (frame.line or "").strip()}
    return {"type": type(err).__name__, "module": type(err).__module__, "message": str(err),
            "stage": stage, "where": where,
            "traceback": "".join(traceback.format_exception(err))}


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _library_dirs() -> tuple[str, ...]:
    """Folders of code that is not the user's: wslbench, the standard library, packages."""
    import sysconfig

    import wslbench

    paths = sysconfig.get_paths()
    folders = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    folders.add(os.path.dirname(wslbench.__file__))
    return tuple(os.path.realpath(f) + os.sep for f in folders)


#: Seconds the process may take to shut down after it answered, before SIGALRM ends it.
SHUTDOWN_LIMIT_S = 60
#: The write end of the pipe on which the parent waits for the answer (None: it waits for
#: this process to exit).
_answered_fd: int | None = None


def _answer(path: Path, answer: dict[str, Any]) -> None:
    """Write the answer file whole, then tell the parent it is there."""
    from wslbench import zoo_format as fmt

    fmt.atomic_write_bytes(path, json.dumps(answer, allow_nan=True).encode())
    if _answered_fd is not None:
        try:
            os.write(_answered_fd, b"1")
            os.close(_answered_fd)
        except OSError:
            pass  # the parent is gone; nobody is waiting
        # Nobody waits for the shutdown either: bound it, should an exit handler hang.
        signal.alarm(SHUTDOWN_LIMIT_S)


if __name__ == "__main__":
    sys.exit(main())
