"""The on-disk zoo format: the one module that knows file names and layouts.

It is the published Phase Transition Model Zoo (PTMZ) layout, as written by Ray Tune::

    <zoo_root>/
      <trial_dir>/                        one folder per model
        params.json                       flat config, keys like "model::width"
        result.json                       JSON lines; line n = epoch n (line 0 = before training)
        checkpoint_000150/checkpoints     torch-saved state_dict ("module." prefixes allowed)
        checkpoint_000150/optimizer       optional, never read

plus wslbench's additions, which a reader never requires:

    <zoo_root>/zoo.json                   manifest (spec, grid, preset, versions, sha256s,
                                          content revision; see docs/zoo_format.md)
    <zoo_root>/summary.csv|.parquet       one row per model and epoch, published columns first
    <trial_dir>/checkpoint_*/model.safetensors   the same weights, loadable without pickle
    <trial_dir>/trial_complete.json       written last: the trial finished and its files hashes
    <trial_dir>/train.log                 the trial's log

zoo_builder writes through the functions here and wslbench reads through them. Every write is
atomic (temporary file, fsync, rename), and checkpoints load only through safetensors or
``torch.load(weights_only=True)``: a pickle that would run code is refused.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import math
import os
import pickle
import re
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are read or written: reading a zoo's
    import torch  # files, hashes and targets (what `wslbench evaluate`'s parent does) needs none

log = logging.getLogger(__name__)

PARAMS_FILE = "params.json"
RESULT_FILE = "result.json"
MANIFEST_FILE = "zoo.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
TORCH_CHECKPOINT = "checkpoints"
SAFETENSORS_CHECKPOINT = "model.safetensors"
COMPLETE_MARKER = "trial_complete.json"
TRIAL_LOG = "train.log"
#: 2: the manifest records the content revision and per-file fingerprints (docs/zoo_format.md).
FORMAT_VERSION = 2

_CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d{6})$")
_TRIAL_ID = re.compile(r"^NN_tune_trainable_([0-9a-f]+_\d{5})_")

#: Columns of the published per-zoo summary tables, in their order.
SUMMARY_COLUMNS = [
    "model", "trial_id", "width", "seed", "lr", "wd", "batchsize", "init_type", "epoch",
    "train_loss", "train_acc", "test_loss", "test_acc", "representation_similarity",
    "curve_mc_train_error", "curve_mc_test_error", "log_hessian_trace_train",
    "log_hessian_top_ev_val",
]

#: Summary column -> the flat params.json keys that hold it, first match wins.
PARAM_COLUMNS = {
    "width": ("model::width", "model::dim", "model::embedding_dim", "model::model_dim"),
    "seed": ("seed", "training::seed"),
    "lr": ("optim::lr",),
    "wd": ("optim::wd",),
    "batchsize": ("training::batchsize",),
    "init_type": ("model::init_type",),
}


#: Further grid columns of zoos beyond the published ones, written where params hold them.
EXTRA_PARAM_COLUMNS = {"beta": ("dataset::beta",)}


class ZooFormatError(ValueError):
    """A file or folder does not follow the zoo format; the message names it and the fix."""


class ZooIntegrityError(ZooFormatError):
    """Files of a zoo differ from what its manifest records (a checkpoint, params.json or
    result.json changed, went missing or was truncated); ``problems`` names each trial and file."""

    def __init__(self, root: Path, problems: list[str]):
        self.root, self.problems = Path(root), list(problems)
        shown = "; ".join(self.problems[:3])
        more = f"; and {len(self.problems) - 3} more" if len(self.problems) > 3 else ""
        super().__init__(
            f"files of zoo '{self.root}' differ from their recorded hashes: {shown}{more}. Run "
            f"`wslbench verify {self.root}` to list every mismatch, then restore the files, or "
            "rebuild the trials (delete their folders and run `zoo-builder build` again)")


# --------------------------------------------------------------------------- atomic writes


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write that replaces ``path`` only when the block ends without error
    (written to a temporary file beside it, fsynced, renamed), so that readers see the old file
    or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Read once at import: reading it means setting it, which would race with other threads.
_UMASK = _read_umask()


#: The temporary files of :func:`atomic_open` (``.NAME.RANDOM.tmp``), left behind only by a
#: process killed mid-write.
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete what killed writers left in ``folder`` (call it under the folder's lock, so no
    running writer's file is taken); return the paths deleted."""
    stale = [p for p in Path(folder).iterdir() if _TEMPORARY.match(p.name) and p.is_file()
             and not p.is_symlink()]
    for path in stale:
        path.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted write", path)
    return stale


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path) as handle:
        handle.write(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical_hash(obj: Any) -> str:
    """sha256 of the canonical JSON form of ``obj`` (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- params


def flatten_params(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"width": 8}}`` -> ``{"model::width": 8}`` (the published params.json keys)."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}::{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, name))
        else:
            flat[name] = value
    return flat


def params_section(params: Mapping[str, Any], section: str) -> dict[str, Any]:
    """The entries of one section of flat params: ``("model::width": 8) -> {"width": 8}``."""
    prefix = f"{section}::"
    return {key[len(prefix):]: value for key, value in params.items() if key.startswith(prefix)}


def write_params(trial_dir: Path, params: Mapping[str, Any]) -> None:
    atomic_write_json(Path(trial_dir) / PARAMS_FILE, dict(params))


def read_params(trial_dir: Path) -> dict[str, Any]:
    path = Path(trial_dir) / PARAMS_FILE
    if not path.is_file():
        raise ZooFormatError(
            f"trial '{Path(trial_dir).name}' has no {PARAMS_FILE} (looked for '{path}'); every "
            "model folder of a zoo needs one: restore it from the published zoo, or rebuild the "
            "model with `zoo-builder build`, which redoes unfinished trials"
        )
    try:
        params = json.loads(path.read_text(), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError, and ints of >4300 digits
        raise ZooFormatError(f"'{path}' is not valid JSON ({_short(err)}); restore it from the "
                             "published zoo, or rebuild the trial") from err
    if not isinstance(params, dict):
        raise ZooFormatError(f"'{path}' must hold a JSON object, found {type(params).__name__}")
    flat = flatten_params(params)
    for key, value in flat.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ZooFormatError(
                f"'{path}': '{key}' is {value}, not a finite number (a number too large for a "
                "float, such as 1e999, reads as infinity); restore the file from the published "
                "zoo, or rebuild the trial")
    return flat


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _short(err: Exception) -> str:
    text = str(err)
    return text if len(text) <= 200 else text[:197] + "..."


def param_value(params: Mapping[str, Any], column: str) -> Any:
    """The value of a summary column (width, seed, lr, ...) in flat params, or None."""
    for key in {**PARAM_COLUMNS, **EXTRA_PARAM_COLUMNS}[column]:
        if key in params:
            return params[key]
    return None


# --------------------------------------------------------------------------- results


def _json_number(value: Any) -> Any:
    """JSON has no NaN/inf: store them as null, like the published zoos' empty cells."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results(trial_dir: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write result.json: one JSON object per line, line n = epoch n."""
    lines = [
        json.dumps({key: _json_number(value) for key, value in row.items()}, sort_keys=True)
        for row in rows
    ]
    atomic_write_bytes(Path(trial_dir) / RESULT_FILE, ("\n".join(lines) + "\n").encode())


def read_results(trial_dir: Path) -> list[dict[str, Any]]:
    """Read result.json (JSON lines); a missing file means the model has no results yet (a
    build in progress). A finished trial (one with trial_complete.json) whose result.json is
    empty is an error, never a model without results."""
    path = Path(trial_dir) / RESULT_FILE
    if not path.is_file():
        return []
    rows = _parse_results(path)
    if not rows and (Path(trial_dir) / COMPLETE_MARKER).is_file():
        raise ZooFormatError(
            f"'{path}' is empty, but its trial is finished (it has {COMPLETE_MARKER}); "
            "result.json holds one JSON object per epoch. Restore the file, "
            "or rebuild the trial (delete its folder and run `zoo-builder build` again)")
    return rows


def _parse_results(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise ZooFormatError(f"'{path}' is not text ({err}); result.json holds one JSON object "
                             "per epoch: restore or rebuild the trial") from err
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ZooFormatError(
                f"'{path}' line {number} is not valid JSON ({err}); result.json holds one JSON "
                "object per epoch. The file may be truncated: restore or rebuild the trial"
            ) from err
        if not isinstance(row, dict):
            raise ZooFormatError(f"'{path}' line {number} must be a JSON object")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- checkpoints


def checkpoint_dir(trial_dir: Path, epoch: int) -> Path:
    return Path(trial_dir) / f"checkpoint_{epoch:06d}"


def checkpoint_epochs(trial_dir: Path) -> list[int]:
    """Epochs that have a checkpoint folder holding weights, in increasing order."""
    epochs = []
    for entry in Path(trial_dir).iterdir():
        match = _CHECKPOINT_DIR.match(entry.name)
        if match and entry.is_dir() and (
            (entry / TORCH_CHECKPOINT).is_file() or (entry / SAFETENSORS_CHECKPOINT).is_file()
        ):
            epochs.append(int(match.group(1)))
    return sorted(epochs)


def sorted_safetensors_metadata(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its ``__metadata__`` entries in sorted order.

    The safetensors library keeps metadata in a hash map whose order changes from process to
    process, so two saves of the same tensors could differ in bytes (and sha256). Sorting
    the entries moves no byte of the tensors and keeps the header's length; where the
    rewritten header would not have the same length, ``data`` is returned as it is."""
    length = int.from_bytes(data[:8], "little")
    raw = data[8:8 + length]
    header = json.loads(raw)
    metadata = header.get("__metadata__")
    if not metadata:
        return data
    header["__metadata__"] = dict(sorted(metadata.items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (length - len(text))  # the library pads the header with spaces
    if len(text) != length or json.loads(text) != json.loads(raw):
        return data
    return data[:8] + text + data[8 + length:]


def save_checkpoint(
    trial_dir: Path, epoch: int, state_dict: Mapping[str, torch.Tensor],
    model_args: Mapping[str, Any],
) -> dict[str, str]:
    """Save a state_dict as the published torch file and as safetensors; return their sha256.

    The safetensors metadata carries ``model_args`` (JSON), so the checkpoint alone rebuilds
    its model.
    """
    from safetensors.torch import save as save_safetensors

    folder = checkpoint_dir(trial_dir, epoch)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
    torch_bytes = _torch_bytes(tensors)
    st_bytes = sorted_safetensors_metadata(save_safetensors(
        tensors, metadata={"model_args": json.dumps(dict(model_args), sort_keys=True),
                           "epoch": str(epoch), "format": "wslbench-zoo"},
    ))
    atomic_write_bytes(folder / TORCH_CHECKPOINT, torch_bytes)
    atomic_write_bytes(folder / SAFETENSORS_CHECKPOINT, st_bytes)
    rel = folder.name
    return {
        f"{rel}/{TORCH_CHECKPOINT}": hashlib.sha256(torch_bytes).hexdigest(),
        f"{rel}/{SAFETENSORS_CHECKPOINT}": hashlib.sha256(st_bytes).hexdigest(),
    }


def _torch_bytes(obj: Any) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


#: Key prefixes that DataParallel ("module.") and torch.compile ("_orig_mod.") leave behind.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


#: state_dict entries that are buffers (BatchNorm statistics), not weights.
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def is_weight(key: str, tensor: torch.Tensor) -> bool:
    """A trained weight or bias of a state_dict: floating point, not a BatchNorm buffer."""
    return tensor.is_floating_point() and not key.endswith(BUFFER_SUFFIXES)


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix that DataParallel/compiled models leave on published keys."""
    if not any(key.startswith(_WRAPPER_PREFIXES) for key in state_dict):
        return dict(state_dict)  # the common case: nothing to rename
    return {unwrapped_key(key): value for key, value in state_dict.items()}


def unwrapped_key(key: str) -> str:
    """A state_dict key without the wrapper prefixes (see :func:`strip_module_prefix`)."""
    for prefix in _WRAPPER_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def checkpoint_file(trial_dir: Path, epoch: int) -> Path:
    """The file that holds the weights of one checkpoint: safetensors where present, else the
    torch file."""
    folder = checkpoint_dir(trial_dir, epoch)
    for name in (SAFETENSORS_CHECKPOINT, TORCH_CHECKPOINT):
        if (folder / name).is_file():
            return folder / name
    available = checkpoint_epochs(trial_dir) if Path(trial_dir).is_dir() else []
    raise ZooFormatError(
        f"trial '{Path(trial_dir).name}' has no checkpoint at epoch {epoch} (expected "
        f"'{folder / TORCH_CHECKPOINT}' or '{folder / SAFETENSORS_CHECKPOINT}'); epochs with "
        f"checkpoints: {available or 'none'}"
    )


def load_state_dict(trial_dir: Path, epoch: int) -> dict[str, torch.Tensor]:
    """Load the weights of one checkpoint: safetensors where present, else the torch file.

    The torch file is read with ``weights_only=True``; anything that is not plain tensors and
    containers is refused, so an untrusted checkpoint cannot run code.
    """
    path = checkpoint_file(trial_dir, epoch)
    if path.name == SAFETENSORS_CHECKPOINT:
        return strip_module_prefix(_load_safetensors(path))
    return strip_module_prefix(_load_torch_state_dict(path))


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read the whole file and parse it from memory (about twice as fast for small models as
    ``load_file``'s memory map), keeping the file's tensor order, as ``load_file`` does."""
    from safetensors.torch import load

    try:
        data = path.read_bytes()
        tensors = load(data)
        order = _safetensors_order(data)
    except Exception as err:  # safetensors raises its own error type for every defect
        raise ZooFormatError(
            f"checkpoint '{path}' could not be read ({type(err).__name__}: {err}); it is "
            "truncated or corrupt: delete the trial folder and run `zoo-builder build` again "
            "to redo it, or restore the file"
        ) from err
    return {key: tensors[key] for key in order}


def _safetensors_order(data: bytes) -> list[str]:
    """The tensor names of a safetensors file in the order of their data (``load`` returns
    them in hash order, which changes between processes). The header is an 8-byte
    little-endian length and that much JSON; ``load`` has already validated it."""
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    header.pop("__metadata__", None)
    return sorted(header, key=lambda name: header[name]["data_offsets"][0])


def _load_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ZooFormatError(
            f"refusing to load checkpoint '{path}': it holds objects other than tensors, and "
            "unpickling them could run code. Only plain state_dicts are accepted; convert it "
            f"in a trusted environment to a state_dict or safetensors. ({err})"
        ) from err
    except Exception as err:
        raise ZooFormatError(
            f"checkpoint '{path}' could not be read ({type(err).__name__}: {err}); it is "
            "truncated or corrupt: restore it, or delete the trial folder and run "
            "`zoo-builder build` again to redo it"
        ) from err
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ZooFormatError(
            f"checkpoint '{path}' is not a state_dict (a mapping of names to tensors); found "
            f"{type(obj).__name__}"
        )
    return dict(obj)


def read_checkpoint_model_args(trial_dir: Path, epoch: int) -> dict[str, Any] | None:
    """The model arguments stored in a safetensors checkpoint's metadata, if any."""
    from safetensors import safe_open

    path = checkpoint_dir(trial_dir, epoch) / SAFETENSORS_CHECKPOINT
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:
        raise ZooFormatError(f"checkpoint '{path}' could not be read ({err})") from err
    return json.loads(metadata["model_args"]) if "model_args" in metadata else None


# --------------------------------------------------------------------------- trial status


def mark_trial_complete(trial_dir: Path, checkpoint_sha256: Mapping[str, str]) -> None:
    """Written last: a trial without this marker is unfinished and gets redone on resume."""
    atomic_write_json(Path(trial_dir) / COMPLETE_MARKER, {
        "checkpoint_sha256": dict(checkpoint_sha256),
        "result_sha256": sha256_file(Path(trial_dir) / RESULT_FILE),
    })


def read_trial_completion(trial_dir: Path) -> dict[str, Any] | None:
    path = Path(trial_dir) / COMPLETE_MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a marker that cannot be read marks nothing: the trial is redone


def trial_id_from_name(name: str) -> str:
    """``NN_tune_trainable_0ada0_00005_5_...`` -> ``0ada0_00005``; other names stay whole."""
    match = _TRIAL_ID.match(name)
    return match.group(1) if match else name


def find_trial_dirs(root: Path) -> list[Path]:
    """The model folders of a zoo, sorted by name, with clear errors for what is not a zoo."""
    root = Path(root)
    if not root.exists():
        raise ZooFormatError(f"zoo '{root}' does not exist; build one with `zoo-builder build`")
    if not root.is_dir():
        raise ZooFormatError(f"zoo '{root}' is a file, not a folder; pass the zoo's root folder")
    trials, strays = [], []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name.startswith((".", "_")):
            continue
        if entry.is_symlink():
            raise ZooFormatError(
                f"trial '{entry.name}' of zoo '{root}' is a symbolic link to "
                f"'{os.path.realpath(entry)}'; a zoo's model folders must be real folders inside "
                "it (reading through a link, and annotating, which writes into each model "
                "folder, would reach outside the zoo): replace the link with a copy of the folder")
        if (entry / PARAMS_FILE).is_file():
            trials.append(entry)
        elif (entry / RESULT_FILE).is_file() or any(
            _CHECKPOINT_DIR.match(child.name) for child in entry.iterdir()
        ):
            strays.append(entry)
    if strays:
        read_params(strays[0])  # raises the error that names the trial without params.json
    if not trials:
        raise ZooFormatError(
            f"'{root}' is not a zoo: no model folder with a {PARAMS_FILE} in it (expected one "
            "folder per model, as published or as written by `zoo-builder build`)"
        )
    return trials


# --------------------------------------------------------------------------- manifest


@dataclass
class ZooManifest:
    """zoo.json: what a zoo is, a hash of every file that defines its content, and its
    content revision (see :func:`content_revision`; empty in manifests of format 1).

    ``trials`` maps each trial folder to its :func:`trial_record`."""

    spec: str
    spec_version: int
    preset: str
    grid: dict[str, list[Any]]
    package_version: str
    created: str
    trials: dict[str, dict[str, Any]] = field(default_factory=dict)
    revision: str = ""
    format_version: int = FORMAT_VERSION

    def set_trials(self, records: Mapping[str, Mapping[str, Any]]) -> None:
        """Record the trials (name -> :func:`trial_record`) and the revision of their content."""
        self.trials = {name: dict(record) for name, record in records.items()}
        self.revision = content_revision(record["content"] for record in self.trials.values())
        self.format_version = FORMAT_VERSION

    def content_hash(self) -> str:
        """The revision of a format-1 manifest (one without ``revision``): a hash of everything
        but the creation time, file hashes included, so two builds of one spec differ in it
        (result.json holds timings). Kept so that such zoos keep the revision they had."""
        content = asdict(self)
        content.pop("created")
        if not content["revision"]:
            content.pop("revision")
        return canonical_hash(content)


def write_manifest(root: Path, manifest: ZooManifest) -> None:
    atomic_write_json(Path(root) / MANIFEST_FILE, asdict(manifest))


def read_manifest(root: Path) -> ZooManifest | None:
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return ZooManifest(**data)
    except (json.JSONDecodeError, TypeError) as err:
        raise ZooFormatError(
            f"manifest '{path}' is not a valid {MANIFEST_FILE} ({err}); rerun `zoo-builder build` "
            "on this zoo to rewrite it"
        ) from err


def published_content_hash(trial_dirs: Iterable[Path]) -> str:
    """The revision of a zoo without a manifest: a hash of every params.json and result.json,
    and of each checkpoint file's name and size (hashing the weights themselves would read the
    whole zoo; sizes catch a re-trained or truncated checkpoint, and survive a copy)."""
    digest = {}
    for trial in trial_dirs:
        result = trial / RESULT_FILE
        digest[trial.name] = [
            sha256_file(trial / PARAMS_FILE),
            sha256_file(result) if result.is_file() else None,
            {f"{folder.name}/{file.name}": file.stat().st_size
             for folder in sorted(trial.glob("checkpoint_*")) if folder.is_dir()
             for file in sorted(folder.iterdir()) if file.is_file()},
        ]
    return canonical_hash(digest)


# --------------------------------------------------------------------------- content revision
#
# A zoo's revision hashes what defines its data, and nothing about where, when or how fast it
# was made: per model its params, its targets (result.json without VOLATILE_RESULT_KEYS) and
# the tensors of every checkpoint (names, dtypes, shapes, bytes; not the file's header,
# metadata or key order, and the same for the torch file and the safetensors file). Two builds
# of one spec that give the same weights and metrics share it. The manifest records it with
# per-file fingerprints, so that a cheap check (check_integrity) and a full one (verify_zoo)
# can tell a changed file. docs/zoo_format.md describes all of it.

#: What the content revision hashes, as a version: a change gives every zoo a new revision.
REVISION_SCHEME = 1

#: result.json keys that say when, where and how fast a model was trained, not what it is:
#: left out of the content revision, as is every key that has the word "time" in it
#: (``time_this_iter_s``, ``time_eval_s``, ``warmup_time``: durations; see
#: :func:`is_volatile_result_key`). Ray Tune writes most of them in published zoos; our builds
#: write the two durations, and ``micro_batchsize`` where a batch was split to fit the device
#: (how the run was done, like every RunOptions setting). ``config`` repeats params.json.
VOLATILE_RESULT_KEYS = frozenset({
    "time_this_iter_s", "time_eval_s", "time_total_s", "time_since_restore", "timestamp",
    "date", "hostname", "node_ip", "pid", "timesteps_total", "timesteps_since_restore",
    "iterations_since_restore", "trial_id", "experiment_id", "experiment_tag", "logdir",
    "config", "micro_batchsize",
})

#: Checkpoint files up to this size are fingerprinted by their whole sha256 (about 1 ms for
#: 0.7 MB), so that any change is caught; larger ones by their size and a sha256 of
#: _SAMPLE_COUNT blocks of _SAMPLE_BLOCK bytes spread over the file, first and last included.
FULL_HASH_LIMIT = 8 << 20
_SAMPLE_BLOCK = 64 << 10
_SAMPLE_COUNT = 16

@functools.cache
def _dtype_names() -> dict[Any, str]:
    """Checkpoint dtypes by their safetensors names, so that a torch file and a safetensors
    file of the same tensors have the same fingerprint."""
    import torch

    return {
        getattr(torch, name): label for name, label in (
            ("float64", "F64"), ("float32", "F32"), ("float16", "F16"), ("bfloat16", "BF16"),
            ("int64", "I64"), ("int32", "I32"), ("int16", "I16"), ("int8", "I8"),
            ("uint8", "U8"), ("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64"),
            ("bool", "BOOL"), ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"))
        if hasattr(torch, name)
    }


def is_volatile_result_key(key: str) -> bool:
    """A result.json key that the content revision leaves out (:data:`VOLATILE_RESULT_KEYS`,
    or the word "time" in it)."""
    return key in VOLATILE_RESULT_KEYS or "time" in key.split("_")


def target_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """result.json rows without the keys that say when, where and how fast (the targets)."""
    return [{key: value for key, value in row.items() if not is_volatile_result_key(key)}
            for row in rows]


def file_fingerprint(path: Path) -> str:
    """A cheap fingerprint of a checkpoint file: ``<size>:sha256:<hex>`` (the whole file's
    sha256) up to :data:`FULL_HASH_LIMIT` bytes, ``<size>:sampled:<hex>`` above (sampled
    blocks; a change outside them escapes this check, not `wslbench verify`)."""
    path = Path(path)
    size = path.stat().st_size
    if size <= FULL_HASH_LIMIT:
        return f"{size}:sha256:{sha256_file(path)}"
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    with open(path, "rb") as handle:
        for index in range(_SAMPLE_COUNT):
            handle.seek((size - _SAMPLE_BLOCK) * index // (_SAMPLE_COUNT - 1))
            digest.update(handle.read(_SAMPLE_BLOCK))
    return f"{size}:sampled:{digest.hexdigest()}"


def tensors_fingerprint(path: Path) -> str:
    """sha256 of the tensors of one checkpoint file, sorted by name (wrapper prefixes
    stripped, as :func:`load_state_dict` does): each one's name, dtype, shape and raw
    (little-endian) bytes. Blind to file headers, safetensors metadata and key order; equal
    for the torch file and the safetensors file of one checkpoint."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.name != SAFETENSORS_CHECKPOINT:
        import torch

        for name, tensor in sorted(_load_torch_state_dict(path).items(),
                                   key=lambda item: unwrapped_key(item[0])):
            tensor = tensor.detach().cpu().contiguous()
            _update_tensor(digest, unwrapped_key(name),
                           _dtype_names().get(tensor.dtype, str(tensor.dtype)), list(tensor.shape),
                           tensor.reshape(-1).view(torch.uint8).numpy())
        return digest.hexdigest()
    data = memoryview(path.read_bytes())
    try:
        length = int.from_bytes(data[:8], "little")
        if len(data) < 8 or length > len(data) - 8:
            raise ValueError(f"header length {length} in a file of {len(data)} bytes")
        header = json.loads(bytes(data[8:8 + length]))
        header.pop("__metadata__", None)
        tensors = []
        for name, info in header.items():
            begin, end = info["data_offsets"]
            if not 0 <= begin <= end <= len(data) - 8 - length:
                raise ValueError(f"tensor '{name}' lies outside the file")
            tensors.append((unwrapped_key(name), str(info["dtype"]), list(info["shape"]),
                            data[8 + length + begin:8 + length + end]))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ZooFormatError(
            f"checkpoint '{path}' has no valid safetensors header ({type(err).__name__}: {err}); "
            "it is truncated or corrupt: restore it, or delete the trial folder and run "
            "`zoo-builder build` again to redo it") from err
    for name, dtype, shape, raw in sorted(tensors, key=lambda tensor: tensor[0]):
        _update_tensor(digest, name, dtype, shape, raw)
    return digest.hexdigest()


def _update_tensor(digest, name: str, dtype: str, shape: list[int], raw) -> None:
    """One tensor into a fingerprint: a JSON line of name, dtype, shape and byte count, then
    the bytes (``raw``: a 1-D byte buffer)."""
    digest.update(json.dumps([name, dtype, shape, len(raw)]).encode() + b"\n")
    digest.update(raw)


def model_content(trial_dir: Path) -> dict[str, Any]:
    """What defines one model, as digests: ``params`` (canonical JSON of params.json),
    ``targets`` (canonical JSON of :func:`target_rows`) and ``tensors`` (checkpoint folder ->
    :func:`tensors_fingerprint` of the file :func:`load_state_dict` reads)."""
    trial_dir = Path(trial_dir)
    return {
        "params": canonical_hash(read_params(trial_dir)),
        "targets": canonical_hash(target_rows(read_results(trial_dir))),
        "tensors": {checkpoint_dir(trial_dir, epoch).name:
                    tensors_fingerprint(checkpoint_file(trial_dir, epoch))
                    for epoch in checkpoint_epochs(trial_dir)},
    }


def content_revision(contents: Iterable[Mapping[str, Any]]) -> str:
    """The revision of a zoo from its models' :func:`model_content`: a sha256 of their
    digests, sorted (models are told apart by their params, not by folder names or order)."""
    models = sorted(canonical_hash(dict(content)) for content in contents)
    return canonical_hash({"scheme": REVISION_SCHEME, "models": models})


def trial_dir_revision(trial_dirs: Iterable[Path]) -> str:
    """The content revision computed from the files of these trials (what a manifest records
    at build and annotation time)."""
    return content_revision(model_content(trial) for trial in trial_dirs)


def trial_record(trial_dir: Path) -> dict[str, Any]:
    """The manifest entry of one finished trial: the sha256 of its params.json, result.json
    and checkpoint files, each checkpoint file's :func:`file_fingerprint`, and its
    :func:`model_content`. Files that differ from what trial_complete.json recorded when the
    trial finished raise :class:`ZooIntegrityError` (they were changed since)."""
    trial_dir = Path(trial_dir)
    completion = read_trial_completion(trial_dir) or {}
    recorded = dict(completion.get("checkpoint_sha256", {}))
    on_disk = {f"{checkpoint_dir(trial_dir, epoch).name}/{name}"
               for epoch in checkpoint_epochs(trial_dir)
               for name in (TORCH_CHECKPOINT, SAFETENSORS_CHECKPOINT)
               if (checkpoint_dir(trial_dir, epoch) / name).is_file()}
    problems, fingerprints, checkpoint_sha256 = [], {}, {}
    for rel in sorted(set(recorded) | on_disk):
        path = trial_dir / rel
        if not path.is_file():
            problems.append(_problem(trial_dir.name, rel, "missing"))
            continue
        fingerprints[rel] = file_fingerprint(path)
        checkpoint_sha256[rel] = _whole_sha256(fingerprints[rel]) or sha256_file(path)
        if rel in recorded and checkpoint_sha256[rel] != recorded[rel]:
            problems.append(_problem(trial_dir.name, rel, "changed since the trial finished "
                                     f"(sha256 differs from {COMPLETE_MARKER})"))
    result_sha256 = sha256_file(trial_dir / RESULT_FILE)
    if completion.get("result_sha256", result_sha256) != result_sha256:
        problems.append(_problem(trial_dir.name, RESULT_FILE, "changed since the trial "
                                 f"finished (sha256 differs from {COMPLETE_MARKER})"))
    if problems:
        raise ZooIntegrityError(trial_dir.parent, problems)
    return {"params_sha256": sha256_file(trial_dir / PARAMS_FILE),
            "result_sha256": result_sha256, "checkpoint_sha256": checkpoint_sha256,
            "checkpoint_fingerprint": fingerprints, "content": model_content(trial_dir)}


def _whole_sha256(fingerprint: str) -> str | None:
    _, kind, digest = fingerprint.split(":")
    return digest if kind == "sha256" else None


def _problem(trial: str, rel: str, what: str) -> str:
    return f"trial '{trial}' file '{rel}': {what}"


def recorded_files(record: Mapping[str, Any]) -> dict[str, str]:
    """The files of a trial that its manifest entry records, with their sha256."""
    files = {name: record[key] for name, key in ((PARAMS_FILE, "params_sha256"),
                                                  (RESULT_FILE, "result_sha256")) if key in record}
    files.update(record.get("checkpoint_sha256", {}))
    return files


def check_integrity(root: Path, manifest: ZooManifest, results: bool = True) -> None:
    """The cheap check before trusting a zoo: every checkpoint file the manifest records
    exists with its recorded size and :func:`file_fingerprint` (whole-file sha256 up to
    :data:`FULL_HASH_LIMIT`), params.json with its sha256, and, with ``results``, result.json
    with its sha256. Raises :class:`ZooIntegrityError` naming each trial and file that differs.

    Format-1 manifests record no fingerprints: their sha256 stands in for files up to
    :data:`FULL_HASH_LIMIT`, larger files are checked to exist."""
    root = Path(root)
    problems = []
    for trial, record in manifest.trials.items():
        fingerprints = record.get("checkpoint_fingerprint", {})
        for rel, sha256 in recorded_files(record).items():
            path = root / trial / rel
            is_checkpoint = rel not in (PARAMS_FILE, RESULT_FILE)
            if rel == RESULT_FILE and not results:
                continue
            if not path.is_file():
                problems.append(_problem(trial, rel, "missing"))
                continue
            expected = fingerprints.get(rel)
            size = path.stat().st_size
            if expected is not None and expected.split(":")[0] != str(size):
                problems.append(_problem(trial, rel, f"{size} bytes, {MANIFEST_FILE} records "
                                         f"{expected.split(':')[0]}"))
            elif expected is not None:
                if file_fingerprint(path) != expected:
                    problems.append(_problem(trial, rel, f"content differs from {MANIFEST_FILE}"))
            elif ((not is_checkpoint or size <= FULL_HASH_LIMIT)
                  and sha256_file(path) != sha256):
                hint = (" (an annotation that did not finish? run `zoo-builder annotate` "
                        "again)" if rel == RESULT_FILE else "")
                problems.append(_problem(trial, rel, f"sha256 differs from {MANIFEST_FILE}{hint}"))
    if problems:
        raise ZooIntegrityError(root, problems)


def verify_zoo(root: Path, manifest: ZooManifest,
               progress: bool | None = None) -> tuple[int, list[str]]:
    """The full check: every file the manifest records against its sha256, every checkpoint
    file's tensors against the recorded :func:`tensors_fingerprint`, each model's params and
    targets against their recorded digests, and the recorded revision against them. Returns
    the number of files checked and the problems (each naming trial and file)."""
    from tqdm.auto import tqdm

    root = Path(root)
    checked, problems = 0, []
    for trial, record in tqdm(manifest.trials.items(), desc="verifying", unit="model", delay=2,
                              disable=None if progress is None else not progress):
        trial_dir = root / trial
        if not trial_dir.is_dir():
            problems.append(f"trial '{trial}': folder '{trial_dir}' is missing")
            continue
        content = record.get("content", {})
        for rel, sha256 in recorded_files(record).items():
            path = trial_dir / rel
            if not path.is_file():
                problems.append(_problem(trial, rel, "missing"))
                continue
            checked += 1
            if sha256_file(path) != sha256:
                problems.append(_problem(trial, rel, f"sha256 differs from {MANIFEST_FILE}"))
            folder = rel.split("/")[0]
            if folder in content.get("tensors", {}):
                try:
                    if tensors_fingerprint(path) != content["tensors"][folder]:
                        problems.append(_problem(trial, rel, "tensors differ from their "
                                                 f"fingerprint in {MANIFEST_FILE}"))
                except ZooFormatError as err:
                    problems.append(_problem(trial, rel, str(err)))
        for key, rel, digest in (("params", PARAMS_FILE, lambda: read_params(trial_dir)),
                                 ("targets", RESULT_FILE,
                                  lambda: target_rows(read_results(trial_dir)))):
            if key not in content:
                continue
            try:
                if canonical_hash(digest()) != content[key]:
                    problems.append(_problem(trial, rel, f"{key} differ from their digest in "
                                             f"{MANIFEST_FILE}"))
            except ZooFormatError as err:
                problems.append(_problem(trial, rel, str(err)))
    on_disk = {path.name for path in root.iterdir() if (path / PARAMS_FILE).is_file()}
    for trial in sorted(on_disk - set(manifest.trials)):
        problems.append(f"trial '{trial}': not in {MANIFEST_FILE} (a model folder the zoo "
                        "does not record)")
    if manifest.revision and all("content" in r for r in manifest.trials.values()):
        recorded = content_revision(r["content"] for r in manifest.trials.values())
        if recorded != manifest.revision:
            problems.append(f"{MANIFEST_FILE}: revision {manifest.revision[:16]} is not the one "
                            f"of its trials' content ({recorded[:16]})")
    return checked, problems



# --------------------------------------------------------------------------- summary table


def summary_rows(name: str, params: Mapping[str, Any], results: list[dict[str, Any]]) -> list[dict]:
    """One summary row per epoch of one model: published columns, then any further metric."""
    fixed = {"model": name, "trial_id": trial_id_from_name(name)}
    fixed.update({column: param_value(params, column) for column in PARAM_COLUMNS})
    fixed.update({column: params[key] for column, keys in EXTRA_PARAM_COLUMNS.items()
                  for key in keys if key in params})
    rows = []
    for epoch, result in enumerate(results):
        row = dict(fixed)
        row["epoch"] = result.get("epoch", epoch)
        for key, value in result.items():
            # The model's own columns (width, lr, ...) come from params.json, never from a
            # per-epoch value of the same name.
            if key in fixed or key == "config" or isinstance(value, (dict, list)):
                continue
            row[key] = value
        rows.append(row)
    return rows


def summary_frame(rows: list[dict[str, Any]]):
    """A pandas DataFrame of summary rows: the published columns first, then the rest sorted."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    extra = sorted(c for c in frame.columns if c not in SUMMARY_COLUMNS)
    return frame.reindex(columns=SUMMARY_COLUMNS + extra)


def write_summary(root: Path, frame) -> None:
    """Write a summary DataFrame as summary.csv and summary.parquet, each atomically."""
    atomic_write_bytes(Path(root) / SUMMARY_CSV, frame.to_csv(index=False).encode())
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(Path(root) / SUMMARY_PARQUET, buffer.getvalue())
