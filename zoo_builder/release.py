"""Cut a release from an annotated zoo: ``zoo-builder release ZOO --name NAME --version N``.

A release (see :mod:`wslbench.releases`) keeps what the benchmark reads and nothing else: per
model params.json, result.json and ``model.safetensors`` at the kept checkpoint epochs, a
trial_complete.json and manifest rewritten for those files, and the summary table as
summary.parquet (its CSV twin, 3 MB of text for the bench zoo, is left out so that the bench
release fits in 120 MB; ``zoo-builder report`` and pandas read the parquet). The torch
pickles, optimizer files and training logs stay behind. By default the kept epochs are those
the tasks read (each model's final epoch and its annotated one) plus the latest earlier
checkpoint epoch all models share, which the ``epochs`` split trains on: for the bench zoo
(checkpoints at 0, 20 and 40 of 40 epochs) that is 20 and 40.

The release is written into a staging folder beside ``out``, opened as a zoo and verified
against its manifest, moved into place in one rename, and recorded in the registry. An
existing release version is never overwritten, and a zoo whose models lack landscape targets
is refused (the message lists them) unless ``allow_partial``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from wslbench import releases
from wslbench import zoo_format as fmt
from wslbench.releases import ReleaseError, ReleaseRecord
from wslbench.zoo import ModelRecord, Zoo
from zoo_builder.annotating.annotate import DONE_KEYS, refresh_zoo_tables

log = logging.getLogger(__name__)

#: Keys whose presence at a checkpointed epoch means a model is annotated: the landscape
#: groups' markers and the phase label.
ANNOTATION_KEYS = (*(DONE_KEYS[group] for group in ("hessian", "cka", "mode_connectivity")),
                   "phase")


def make_release(source: str | os.PathLike, name: str, version: int,
                 out: str | os.PathLike | None = None, epochs: Sequence[int] | None = None,
                 allow_partial: bool = False, registry: str | os.PathLike | None = None,
                 progress: bool = True) -> ReleaseRecord:
    """Copy the zoo at ``source`` into release layout at ``out`` (default: beside the registry,
    ``<name>/v<version>``) and add its record to the registry; return the record."""
    zoo = Zoo.open(source)
    if zoo.manifest is None:
        raise ReleaseError(f"zoo '{zoo.root}' has no {fmt.MANIFEST_FILE}; a release is cut from a "
                           "zoo built by `zoo-builder build` (its manifest holds the file hashes "
                           "the release is checked against)")
    out = Path(out) if out is not None else (releases.registry_path(registry).parent / name
                                             / f"v{version}")
    out = out.expanduser().resolve()
    _check_new(name, version, out, registry)
    kept = tuple(sorted(epochs)) if epochs else default_epochs(zoo)
    _check_epochs(zoo, kept, allow_partial)
    if not allow_partial:
        _check_annotated(zoo)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        for model in tqdm(zoo.models, desc=f"releasing {name} v{version}", disable=not progress):
            copy_model(model, staging / model.name, kept, zoo.manifest.trials.get(model.name, {}))
        # The source's manifest without its trials, then the trials' records and the revision
        # recomputed from the copied files, as an annotation does after changing result.json.
        fmt.write_manifest(staging, dataclasses.replace(zoo.manifest, trials={}))
        refresh_zoo_tables(Zoo.open(staging))
        (staging / fmt.SUMMARY_CSV).unlink(missing_ok=True)
        released = Zoo.open(staging)
        problems = released.verify()
        if problems:
            raise ReleaseError(f"the release of '{zoo.root}' does not verify: "
                               + "; ".join(problems[:3]))
        revision = released.revision
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    record = ReleaseRecord(
        name=name, version=version, revision=revision, spec=zoo.manifest.spec,
        preset=zoo.manifest.preset, num_models=len(zoo), epochs=kept,
        size_bytes=releases.folder_size(out),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source_revision=zoo.revision, path=_record_path(out, registry))
    releases.add_record(record, registry)
    return record


def default_epochs(zoo: Zoo) -> tuple[int, ...]:
    """The checkpoint epochs tasks read (every task's epoch for every model), plus the latest
    earlier epoch that every model has a checkpoint at, for the ``epochs`` split."""
    from wslbench.tasks import TASK_VERSIONS

    tasks = [TASK_VERSIONS.get(name) for name in TASK_VERSIONS.names()]
    needed = {epoch for model in zoo.models for task in tasks
              if (epoch := task.epoch_of(model)) is not None and epoch in model.checkpoint_epochs}
    if not needed:
        raise ReleaseError(f"zoo '{zoo.root}': no task has a checkpointed epoch to read in any "
                           "model; nothing to release")
    shared = set.intersection(*(set(m.checkpoint_epochs) for m in zoo.models))
    earlier = [epoch for epoch in shared if epoch < min(needed)]
    return tuple(sorted(needed | ({max(earlier)} if earlier else set())))


def _check_new(name: str, version: int, out: Path, registry) -> None:
    """Releases are immutable: refuse a version the registry has or a folder that exists."""
    existing = [r for r in releases.read_index(registry) if r.name == name]
    if any(r.version == version for r in existing):
        raise ReleaseError(
            f"release {name}@v{version} exists in '{releases.registry_path(registry)}'; releases "
            f"never change: make version {max(r.version for r in existing) + 1} instead")
    if out.exists() and any(out.iterdir()):
        raise ReleaseError(f"'{out}' exists and is not empty; a release is never written over "
                           "another: choose another --out or version")


def _check_epochs(zoo: Zoo, kept: tuple[int, ...], allow_partial: bool) -> None:
    lacking = [m.name for m in zoo.models if not set(kept) <= set(m.checkpoint_epochs)]
    if lacking:
        raise ReleaseError(f"{len(lacking)} model(s) have no checkpoint at some of the epochs "
                           f"{list(kept)}, e.g. '{lacking[0]}'; choose --epochs among the "
                           "epochs every model has")
    needed = default_epochs(zoo)
    dropped = sorted(set(needed) - set(kept))
    if dropped and not allow_partial:
        raise ReleaseError(f"--epochs {list(kept)} drops epoch(s) {dropped}, which tasks or the "
                           f"epochs split read (they need {list(needed)}); keep them, or pass "
                           "--allow-partial to release a zoo that some tasks cannot use")


def missing_annotations(zoo: Zoo) -> dict[str, list[str]]:
    """Model name -> the annotation keys it lacks at every checkpointed epoch (listed at its
    last one), for the models that no checkpointed epoch annotates fully."""
    missing = {}
    for model in zoo.models:
        rows = [model.results[e] for e in model.checkpoint_epochs if e < len(model.results)]
        if not any(all(key in row for key in ANNOTATION_KEYS) for row in rows):
            last = rows[-1] if rows else {}
            missing[model.name] = [key for key in ANNOTATION_KEYS if key not in last]
    return missing


def _check_annotated(zoo: Zoo) -> None:
    missing = missing_annotations(zoo)
    if missing:
        listing = "\n".join(f"  {name}: {', '.join(keys)}"
                            for name, keys in list(missing.items())[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise ReleaseError(
            f"{len(missing)} of {len(zoo)} models of '{zoo.root}' lack landscape targets at "
            f"their checkpointed epochs:\n{listing}{more}\nrun `zoo-builder annotate "
            f"{zoo.root}` to finish them, or pass --allow-partial to release the zoo as it is")


def copy_model(model: ModelRecord, dest: Path, epochs: tuple[int, ...], recorded: dict) -> None:
    """Copy one model's params, results and safetensors at ``epochs``, checking each
    checkpoint against its ``recorded`` sha256 (the source manifest's entry), and mark the
    copy complete with the hashes of what was copied."""
    dest.mkdir(parents=True)
    for name in (fmt.PARAMS_FILE, fmt.RESULT_FILE):
        shutil.copyfile(model.path / name, dest / name)
    hashes = {}
    for epoch in epochs:
        source = fmt.checkpoint_dir(model.path, epoch) / fmt.SAFETENSORS_CHECKPOINT
        if not source.is_file():
            raise ReleaseError(f"trial '{model.path}' has no {fmt.SAFETENSORS_CHECKPOINT} at "
                               f"epoch {epoch} (looked for '{source}'); a release keeps only "
                               "safetensors checkpoints")
        rel = f"{source.parent.name}/{source.name}"
        target = dest / rel
        target.parent.mkdir()
        shutil.copyfile(source, target)
        hashes[rel] = fmt.sha256_file(target)
        expected = recorded.get("checkpoint_sha256", {}).get(rel)
        if expected is not None and expected != hashes[rel]:
            raise ReleaseError(f"'{source}' does not match its sha256 in the source zoo's "
                               f"{fmt.MANIFEST_FILE}; restore or rebuild that trial before "
                               "releasing")
    fmt.mark_trial_complete(dest, hashes)


def _record_path(out: Path, registry) -> str:
    """The release folder as the registry stores it: relative to the registry's folder when
    inside it (a repository stays movable), else absolute."""
    base = releases.registry_path(registry).parent.resolve()
    try:
        return out.relative_to(base).as_posix()
    except ValueError:
        log.warning("release folder '%s' is outside the registry's folder '%s': the registry "
                    "records its absolute path", out, base)
        return str(out)


def pack(record: ReleaseRecord, archive: str | os.PathLike, url: str | None = None,
         registry: str | os.PathLike | None = None) -> str:
    """Write the release as a reproducible tar.gz (``.tar``: plain tar) and return its sha256;
    with ``url``, record where the archive will be hosted, with that sha256."""
    folder = releases.materialize(record, registry)
    digest = releases.pack_release(folder, Path(archive), top=f"{record.name}-v{record.version}")
    if url is not None:
        releases.add_record(dataclasses.replace(record, url=url, sha256=digest), registry,
                            replace_existing=True)
    return digest
