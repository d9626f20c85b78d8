"""Features of many checkpoints: streamed from disk and cached per zoo revision.

A featurizer turns one state_dict into one row of numbers (weight statistics, norms, a
spectrum, ...). :func:`featurize` applies it to a list of :class:`ModelSample`, reading the
checkpoints one at a time (or ``workers`` at a time, in threads), so memory holds at most
one batch of checkpoints and never the zoo. Each row is cached under

    $WSLBENCH_CACHE/features/<name>-v<version>/<zoo revision>.npz

keyed by the sample's key (zoo revision, model, epoch, and the checkpoint file's fingerprint).
A zoo's revision hashes its content (our zoos: the params, targets and tensors of every model,
recorded in the manifest; published zoos: every params.json and result.json and each
checkpoint file's name and size), so a zoo whose content changed gets new rows. The
fingerprint (:func:`wslbench.zoo_format.file_fingerprint`: the file's size and the sha256 of
the whole file up to 8 MiB, of 16 sampled blocks above; the samples of `wslbench evaluate`
carry it) changes with the file, so a checkpoint changed in place after its zoo's revision
was recorded gets a new row, never a stale one, even where its size stays the same. A
featurizer whose numbers change gets a new version. A second call on the same checkpoints
loads no checkpoint (evaluate's samples read each file once, to fingerprint it). A cache
file that cannot be read is ignored with a warning and rebuilt; samples without a zoo
revision are never cached.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence, Union

import numpy as np
import torch

from wslbench import zoo_format as fmt
from wslbench.paths import cache_dir
from wslbench.predictor import ModelSample

log = logging.getLogger(__name__)

#: A function of one state_dict: a 1-D array of features, or the array and a name per feature.
Featurizer = Callable[[Mapping[str, torch.Tensor]],
                      Union[np.ndarray, "tuple[np.ndarray, Sequence[str]]"]]

#: Layout of the cache files; a change makes older files unreadable, hence rebuilt.
CACHE_FORMAT = 1

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# One computed row: the features and their names (None where the featurizer gives none).
_Row = tuple[np.ndarray, Union[tuple[str, ...], None]]


@dataclass(frozen=True)
class FeatureTable:
    """One row of features per sample, in the samples' order, and the name of each column
    (None if the featurizer names none)."""

    values: np.ndarray
    names: list[str] | None


class FeatureMismatchError(ValueError):
    """A sample's features differ in names or number from the first sample's."""

    def __init__(self, sample: str, differences: list[str]):
        self.sample, self.differences = sample, differences
        super().__init__(f"sample '{sample}' has other features than the first sample "
                         f"(differences: {differences}); one feature table needs one layout, "
                         "e.g. models of one architecture")


def feature_cache_dir(name: str, version: int) -> Path:
    """The folder of the cached features of featurizer ``name`` at ``version``."""
    return cache_dir() / "features" / f"{name}-v{version}"


def featurize(samples: Sequence[ModelSample], featurizer: Featurizer, name: str, version: int,
              batch_size: int = 64, cache: bool = True, workers: int = 0,
              progress: bool | None = None) -> FeatureTable:
    """The features of every sample, computed by ``featurizer`` or read from the cache.

    ``name`` and ``version`` identify the featurizer in the cache. Checkpoints are read and
    featurized one at a time, or by ``workers`` threads, ``batch_size`` checkpoints handed out
    at a time; a state_dict is dropped as soon as its row is computed, so at most
    ``min(workers, batch_size)`` (or one) checkpoints are in memory at once. ``progress``:
    a progress bar (None: only on a terminal, and only after two seconds).
    """
    if not _SAFE_NAME.match(name):
        raise ValueError(f"featurizer name {name!r} must be letters, digits, '.', '_' or '-' "
                         "(it names a cache folder), e.g. 'weight-stats'")
    if batch_size < 1 or workers < 0:
        raise ValueError(f"featurize() needs batch_size >= 1 and workers >= 0, got "
                         f"batch_size={batch_size}, workers={workers}")
    folder = feature_cache_dir(name, version)
    revisions = sorted({s.zoo_revision for s in samples if s.zoo_revision}) if cache else []
    cached = {rev: _read_cache(_cache_path(folder, rev)) for rev in revisions}

    # One id per distinct checkpoint: its key where cacheable, else its position.
    ids: list[str | int] = []
    rows: dict[str | int, _Row] = {}
    todo: dict[str | int, ModelSample] = {}
    for position, sample in enumerate(samples):
        ident: str | int = sample.key if cache and sample.zoo_revision else position
        ids.append(ident)
        if ident in rows or ident in todo:
            continue
        hit = cached.get(sample.zoo_revision, {}).get(ident) if isinstance(ident, str) else None
        if hit is not None:
            rows[ident] = hit
        else:
            todo[ident] = sample

    computed: dict[str | int, _Row] = {}
    try:
        _compute(todo, featurizer, name, batch_size, workers, progress, computed)
    finally:  # keep what was computed, even if a later checkpoint failed
        if revisions and computed:
            _write_new_rows(folder, computed, todo)
    rows.update(computed)
    return _stack([rows[i] for i in ids], samples)


def _compute(todo: Mapping[str | int, ModelSample], featurizer: Featurizer, name: str,
             batch_size: int, workers: int, progress: bool | None,
             computed: dict[str | int, _Row]) -> None:
    """Put the row of every sample of ``todo`` into ``computed`` as it comes, so that the
    rows computed before an error are kept."""
    from tqdm.auto import tqdm

    layouts: dict[tuple[str, ...], tuple[str, ...]] = {}

    def row(sample: ModelSample) -> _Row:
        return _as_row(featurizer(sample.state_dict()), sample, name, layouts)

    items = list(todo.items())
    bar = tqdm(total=len(items), desc=f"featurizing ({name})", unit="ckpt", delay=2,
               disable=True if not items else (None if progress is None else not progress))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="featurize") if workers else None
    try:
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            samples = [sample for _, sample in batch]
            results = pool.map(row, samples) if pool else map(row, samples)
            for (ident, _), result in zip(batch, results):
                computed[ident] = result
                bar.update()
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
        bar.close()


def _as_row(output, sample: ModelSample, name: str,
            layouts: dict[tuple[str, ...], tuple[str, ...]]) -> _Row:
    """Check a featurizer's output and give it the row form; equal name lists share one
    tuple (``layouts``), so that comparing and storing them stays cheap."""
    values, names = output if isinstance(output, tuple) else (output, None)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"featurizer '{name}' returned an array of shape {values.shape} for "
                         f"'{sample.name}' at epoch {sample.epoch}; it must return one 1-D row")
    if names is not None:
        names = tuple(names)
        if len(names) != values.size:
            raise ValueError(f"featurizer '{name}' returned {values.size} features but "
                             f"{len(names)} names for '{sample.name}' at epoch {sample.epoch}")
        names = layouts.setdefault(names, names)
    return values, names


def _stack(rows: list[_Row], samples: Sequence[ModelSample]) -> FeatureTable:
    """The rows as one matrix; every row must have the first row's feature names."""
    if not rows:
        return FeatureTable(np.empty((0, 0)), None)
    reference_values, reference = rows[0]
    for (values, names), sample in zip(rows, samples):
        if names is reference or (names == reference and values.size == reference_values.size):
            continue
        if reference is not None and names is not None:
            differences = sorted(set(reference) ^ set(names))[:3]
        else:
            differences = [f"{reference_values.size} features", f"{values.size} features"]
        raise FeatureMismatchError(sample.name, differences)
    return FeatureTable(np.stack([values for values, _ in rows]),
                        list(reference) if reference is not None else None)


# --------------------------------------------------------------------------- cache files


def _cache_path(folder: Path, revision: str) -> Path:
    stem = revision if _SAFE_NAME.match(revision) else hashlib.sha256(revision.encode()).hexdigest()
    return folder / f"{stem}.npz"


def _read_cache(path: Path) -> dict[str, _Row]:
    """The rows of one cache file; a missing file is empty, a broken one too (with a warning)."""
    if not path.is_file():
        return {}
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
            if int(data["format"]) != CACHE_FORMAT:
                raise ValueError(f"cache format {int(data['format'])}, expected {CACHE_FORMAT}")
            keys, values, offsets = data["keys"], data["values"], data["offsets"]
            layout_of = data["layout"]
            layouts = [tuple(names) for names in json.loads(str(data["layouts"]))]
        if (keys.ndim != 1 or offsets.shape != (len(keys) + 1,) or layout_of.shape != keys.shape
                or offsets[0] != 0 or offsets[-1] != values.size or np.any(np.diff(offsets) < 0)
                or np.any(layout_of >= len(layouts)) or np.any(layout_of < -1)):
            raise ValueError("its arrays do not fit together")
        rows = {}
        for key, start, stop, layout in zip(keys.tolist(), offsets[:-1].tolist(),
                                            offsets[1:].tolist(), layout_of.tolist()):
            names = layouts[layout] if layout >= 0 else None
            if names is not None and len(names) != stop - start:
                raise ValueError(f"row '{key}' has {stop - start} values and {len(names)} names")
            rows[key] = (values[start:stop], names)
        return rows
    except Exception as err:  # a truncated zip, a foreign file, a missing array: rebuild
        log.warning("feature cache '%s' cannot be read (%s: %s); ignoring it, the features "
                    "are computed again and the file rewritten", path, type(err).__name__, err)
        return {}


def _write_new_rows(folder: Path, computed: Mapping[str | int, _Row],
                    samples: Mapping[str | int, ModelSample]) -> None:
    """Add the computed rows to their zoo revisions' cache files (read again first: another
    process may have added rows meanwhile)."""
    by_revision: dict[str, dict[str, _Row]] = {}
    for ident, row in computed.items():
        if isinstance(ident, str):
            by_revision.setdefault(samples[ident].zoo_revision, {})[ident] = row
    for revision, new in by_revision.items():
        path = _cache_path(folder, revision)
        _write_cache(path, {**_read_cache(path), **new})


def _write_cache(path: Path, rows: Mapping[str, _Row]) -> None:
    layouts: dict[tuple[str, ...], int] = {}
    layout_of = [layouts.setdefault(names, len(layouts)) if names is not None else -1
                 for _, names in rows.values()]
    sizes = [values.size for values, _ in rows.values()]
    buffer = io.BytesIO()
    np.savez(buffer, format=np.int64(CACHE_FORMAT), keys=np.array(list(rows), dtype=str),
             values=(np.concatenate([values for values, _ in rows.values()]) if rows
                     else np.empty(0)),
             offsets=np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]),
             layout=np.array(layout_of, dtype=np.int64),
             layouts=np.array(json.dumps([list(names) for names in layouts])))
    fmt.atomic_write_bytes(path, buffer.getvalue())
