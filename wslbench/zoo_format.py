"""The on-disk zoo format: the one module that knows file names and layouts.

It is the published Phase Transition Model Zoo (PTMZ) layout, as written by Ray Tune::

    <zoo_root>/
      <trial_dir>/                        one folder per model
        params.json                       flat config, keys like "model::width"
        result.json                       JSON lines; line n = epoch n (line 0 = before training)
        checkpoint_000150/checkpoints     torch-saved state_dict ("module." prefixes allowed)
        checkpoint_000150/optimizer       optional, never read

plus wslbench's additions, which a reader never requires:

    <zoo_root>/zoo.json                   manifest (spec, grid, preset, versions, sha256s)
    <zoo_root>/summary.csv|.parquet       one row per model and epoch, published columns first
    <trial_dir>/checkpoint_*/model.safetensors   the same weights, loadable without pickle
    <trial_dir>/trial_complete.json       written last: the trial finished and its files hashes
    <trial_dir>/train.log                 the trial's log

zoo_builder writes through the functions here and wslbench reads through them. Every write is
atomic (temporary file, fsync, rename), and checkpoints load only through safetensors or
``torch.load(weights_only=True)``: a pickle that would run code is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import re
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

import torch

PARAMS_FILE = "params.json"
RESULT_FILE = "result.json"
MANIFEST_FILE = "zoo.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
TORCH_CHECKPOINT = "checkpoints"
SAFETENSORS_CHECKPOINT = "model.safetensors"
COMPLETE_MARKER = "trial_complete.json"
TRIAL_LOG = "train.log"
FORMAT_VERSION = 1

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
        params = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ZooFormatError(f"'{path}' is not valid JSON ({err}); restore or rebuild it") from err
    if not isinstance(params, dict):
        raise ZooFormatError(f"'{path}' must hold a JSON object, found {type(params).__name__}")
    return flatten_params(params)


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
    """Read result.json (JSON lines); a missing file means the model has no results yet."""
    path = Path(trial_dir) / RESULT_FILE
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
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
    st_bytes = save_safetensors(
        tensors, metadata={"model_args": json.dumps(dict(model_args), sort_keys=True),
                           "epoch": str(epoch), "format": "wslbench-zoo"},
    )
    atomic_write_bytes(folder / TORCH_CHECKPOINT, torch_bytes)
    atomic_write_bytes(folder / SAFETENSORS_CHECKPOINT, st_bytes)
    rel = folder.name
    return {
        f"{rel}/{TORCH_CHECKPOINT}": hashlib.sha256(torch_bytes).hexdigest(),
        f"{rel}/{SAFETENSORS_CHECKPOINT}": hashlib.sha256(st_bytes).hexdigest(),
    }


def _torch_bytes(obj: Any) -> bytes:
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
    out = {}
    for key, value in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


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
    """zoo.json: what a zoo is and a hash of every file that defines its content."""

    spec: str
    spec_version: int
    preset: str
    grid: dict[str, list[Any]]
    package_version: str
    created: str
    trials: dict[str, dict[str, Any]] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def content_hash(self) -> str:
        """Hash of everything but the creation time: equal zoos have equal hashes."""
        content = asdict(self)
        content.pop("created")
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
