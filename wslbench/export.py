"""Export a zoo as a Hugging Face ``datasets`` dataset, with parquet shards and Croissant metadata.

``wslbench export ZOO --out DIR`` (or :func:`export_zoo`) writes::

    DIR/dataset_dict.json, DIR/checkpoints/, DIR/metrics/   datasets.load_from_disk(DIR)
    DIR/parquet/checkpoints/train-00000.parquet ...        the same rows, for the Hub
    DIR/parquet/metrics/train-00000.parquet
    DIR/croissant.json                                      Croissant 1.0 metadata (JSON-LD)
    DIR/README.md                                           a dataset card naming the configs
    DIR/zoo.json                                            the zoo's manifest, where it has one

Two tables (``DatasetDict`` splits, Hub configs), joined on ``model`` and ``epoch``:

- ``checkpoints``: one row per model and checkpoint epoch: the model's name, trial id, grid
  point, its params.json as JSON, the published columns (width, seed, lr, wd, batchsize,
  init_type), the parameter count and the weights as a safetensors blob (any architecture fits
  one schema; :func:`load_weights_from_row` turns it back into tensors).
- ``metrics``: one row per model and epoch with every result.json metric as a column (the
  zoo's summary table), NaN or null where a model lacks it.

Rows are written in batches while checkpoints are read one at a time, so a zoo's weights are
never all in memory. Everything is written to a folder beside ``DIR`` and renamed into place
at the end: an interrupted export leaves no half dataset behind.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import wslbench
from wslbench import zoo_format as fmt
from wslbench.zoo import Zoo

if TYPE_CHECKING:  # torch and the dataset module load where weights are exported, so that
    import torch  # the `wslbench` command starts without them

CROISSANT_FILE = "croissant.json"
CROISSANT_1_0 = "http://mlcommons.org/croissant/1.0"
PARQUET_FORMAT = "application/x-parquet"
#: The largest value a parquet byte array holds; a bigger checkpoint cannot be a cell.
MAX_WEIGHTS_BYTES = 2**31 - 1

#: Licenses by default: our zoos are outputs of this package; published PTMZ zoos are CC-BY 4.0.
PACKAGE_LICENSE = "https://opensource.org/licenses/MIT"
PTMZ_LICENSE = "https://creativecommons.org/licenses/by/4.0/"

PAPER_CITATION = (
    "@article{schurholt2025phasetransitionzoo,\n"
    "  title   = {A Model Zoo on Phase Transitions in Neural Networks},\n"
    "  author  = {Sch{\\\"u}rholt, Konstantin and Meynent, L{\\'e}o and Zhou, Yefan and "
    "Lu, Haiquan and Yang, Yaoqing and Borth, Damian},\n"
    "  journal = {Journal of Data-centric Machine Learning Research},\n"
    "  year    = {2025}\n"
    "}"
)

#: The standard Croissant 1.0 JSON-LD context (as in the specification's examples).
CROISSANT_CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}

#: What each table holds.
TABLE_DESCRIPTIONS = {
    "checkpoints": "one row per model and checkpoint epoch: configuration and weights",
    "metrics": "one row per model and epoch: every result.json metric (the zoo's summary "
               "table); join with 'checkpoints' on model and epoch",
}

#: What each column holds, for the dataset card and the Croissant fields.
COLUMN_DESCRIPTIONS = {
    "model": "the model's trial folder name, unique in the zoo",
    "trial_id": "the Ray Tune trial id in the folder name",
    "epoch": "training epoch (0 = before training)",
    "grid_point": "JSON of the model's params without seed and paths: equal for the seeds "
                  "of one grid point",
    "params": "the model's params.json (flat 'section::key' entries) as JSON",
    "model_args": "architecture arguments (the 'model::' params) as JSON",
    "width": "the load axis: model width (channels, embedding or model dim)",
    "seed": "training seed",
    "lr": "learning rate",
    "wd": "weight decay",
    "batchsize": "batch size (the temperature axis)",
    "init_type": "weight initialisation",
    "beta": "PDE coefficient (the load axis of PINN zoos)",
    "n_params": "number of trainable weights (BatchNorm buffers excluded)",
    "weights": "the checkpoint's state_dict as safetensors bytes (keys without 'module.'; "
               "metadata holds model_args and epoch); load with safetensors.torch.load",
}


class ExportExistsError(FileExistsError, ValueError):
    """The export folder exists; a ValueError too, so the CLI reports it in one line."""


def _require_datasets():
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            "exporting a zoo needs the Hugging Face `datasets` package, which is not "
            f"installed ({err}); install it with: pip install 'wslbench[hf]'") from err
    return datasets


# --------------------------------------------------------------------------- weights


def weights_to_bytes(state_dict: Mapping[str, torch.Tensor],
                     metadata: Mapping[str, str] | None = None) -> bytes:
    """A state_dict as safetensors bytes (tensors that share memory are copied apart)."""
    from safetensors.torch import save

    from wslbench.dataset import ordered_state_dict

    tensors, seen = {}, set()
    for key, tensor in ordered_state_dict(state_dict).items():
        tensor = tensor.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if tensor.numel() and storage in seen:  # tied weights: safetensors refuses shared memory
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    return save(tensors, metadata=dict(metadata or {}))


def load_weights_from_row(row: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of one ``checkpoints`` row (from ``load_from_disk``, parquet or pandas)."""
    from safetensors.torch import load

    from wslbench.dataset import ordered_state_dict

    blob = row["weights"] if "weights" in row else None
    if blob is None:
        name = row["model"] if "model" in row else "?"
        raise ValueError(f"the checkpoints row of model '{name}' has no weights; was the zoo "
                         "exported with --no-weights? Export it again without that flag, or "
                         "load the checkpoint from the zoo itself")
    return ordered_state_dict(load(bytes(blob)))


# --------------------------------------------------------------------------- tables


def _arrow_type(values: list[Any], text: bool = False):
    """One arrow type for a column's values across the zoo: inferred, float64 where every
    value is missing (NaN where missing), JSON text where the values mix types."""
    import pyarrow as pa

    try:
        inferred = pa.array(values, from_pandas=True).type
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None  # mixed: stored as JSON text
    if pa.types.is_null(inferred):
        return pa.string() if text else pa.float64()
    return inferred


def _column(values: list[Any], type_, as_json: bool = False):
    """An arrow array of a column: JSON text where the zoo mixes types in it, NaN rather than
    null for missing floats (what pandas and torch expect)."""
    import pyarrow as pa

    if as_json:
        return pa.array([None if _missing(v) else json.dumps(v, default=str) for v in values],
                        type=pa.string())
    if pa.types.is_floating(type_):
        return pa.array([math.nan if v is None else v for v in values], type=type_)
    return pa.array(values, type=type_, from_pandas=True)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _mixed(types: Mapping[str, Any]) -> frozenset[str]:
    """Columns whose values mix types across the zoo (typed None): stored as JSON text."""
    return frozenset(name for name, type_ in types.items() if type_ is None)


def _model_columns(zoo: Zoo) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per model, the columns every one of its checkpoint rows repeats, and their types."""
    columns = list(fmt.PARAM_COLUMNS) + [
        column for column in fmt.EXTRA_PARAM_COLUMNS
        if any(fmt.param_value(m.params, column) is not None for m in zoo.models)]
    rows = {}
    for model in zoo.models:
        row = {"model": model.name, "trial_id": model.trial_id, "grid_point": model.grid_point,
               "params": json.dumps(model.params, sort_keys=True, default=str),
               "model_args": json.dumps(model.model_args, sort_keys=True, default=str)}
        row.update({column: fmt.param_value(model.params, column) for column in columns})
        rows[model.name] = row
    names = list(next(iter(rows.values())))
    types = {name: _arrow_type([row[name] for row in rows.values()],
                               text=name in ("init_type",)) for name in names}
    return rows, types


@dataclass
class _ConfigWriter:
    """Writes one table in batches to parquet shards (for the Hub) and to one Arrow stream
    file (what ``datasets`` memory-maps), so only one batch is ever held in memory."""

    name: str
    schema: Any
    out_dir: Path
    scratch: Path
    shard_bytes: int
    batch_bytes: int
    no_statistics: tuple[str, ...] = ()
    json_columns: frozenset[str] = frozenset()
    shards: list[Path] = field(default_factory=list)
    rows: int = 0
    _buffer: list[dict[str, Any]] = field(default_factory=list)
    _buffered: int = 0
    _parquet: Any = None
    _in_shard: int = 0
    _arrow: Any = None

    def __post_init__(self) -> None:
        import pyarrow as pa

        self.scratch.mkdir(parents=True, exist_ok=True)
        self.arrow_path = self.scratch / f"{self.name}.arrow"
        self._arrow_sink = pa.OSFile(str(self.arrow_path), "wb")
        self._arrow = pa.ipc.new_stream(self._arrow_sink, self.schema)

    def add(self, row: dict[str, Any], nbytes: int = 256) -> None:
        self._buffer.append(row)
        self._buffered += nbytes
        if self._buffered >= self.batch_bytes:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._buffer:
            return
        batch = pa.RecordBatch.from_arrays(
            [_column([row.get(name) for row in self._buffer], self.schema.field(name).type,
                     name in self.json_columns) for name in self.schema.names],
            schema=self.schema)
        self._write(batch)
        self.rows += len(self._buffer)
        self._buffer, self._buffered = [], 0

    def _write(self, batch) -> None:
        import pyarrow.parquet as pq

        if self._parquet is None:
            path = self.out_dir / "parquet" / self.name / f"train-{len(self.shards):05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            statistics = [n for n in self.schema.names if n not in self.no_statistics]
            self._parquet = pq.ParquetWriter(str(path), self.schema, write_statistics=statistics,
                                             use_dictionary=statistics)
            self.shards.append(path)
            self._in_shard = 0
        self._parquet.write_batch(batch)
        self._arrow.write_batch(batch)
        self._in_shard += batch.nbytes
        if self._in_shard >= self.shard_bytes:
            self._parquet.close()
            self._parquet = None

    def close(self) -> None:
        import pyarrow as pa

        self._flush()
        if not self.shards:  # an empty table still gets its (empty) file
            self._write(pa.RecordBatch.from_pylist([], schema=self.schema))
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        self._arrow.close()
        self._arrow_sink.close()


def _write_checkpoints(zoo: Zoo, epochs, weights: bool, writer_args: dict,
                       progress: bool | None) -> _ConfigWriter:
    import pyarrow as pa
    from tqdm.auto import tqdm

    model_rows, types = _model_columns(zoo)
    fields = [pa.field("model", pa.string()), pa.field("trial_id", pa.string()),
              pa.field("epoch", pa.int64())]
    fields += [pa.field(name, types[name] or pa.string()) for name in types
               if name not in ("model", "trial_id")]
    fields.append(pa.field("n_params", pa.int64()))
    if weights:
        fields.append(pa.field("weights", pa.binary()))
    writer = _ConfigWriter("checkpoints", pa.schema(fields), no_statistics=("weights",),
                           json_columns=_mixed(types), **writer_args)
    from wslbench.dataset import select_checkpoints

    pairs = select_checkpoints(zoo.models, epochs)
    for model, epoch in tqdm(pairs, desc=f"exporting {zoo.name}", unit="checkpoint",
                             disable=None if progress is None else not progress):
        state = fmt.load_state_dict(model.path, epoch)
        row = {**model_rows[model.name], "epoch": epoch,
               "n_params": sum(t.numel() for k, t in state.items() if fmt.is_weight(k, t))}
        nbytes = 1024
        if weights:
            blob = weights_to_bytes(state, {
                "model": model.name, "epoch": str(epoch), "format": "wslbench-zoo-export",
                "model_args": json.dumps(model.model_args, sort_keys=True, default=str)})
            if len(blob) > MAX_WEIGHTS_BYTES:
                raise ValueError(
                    f"checkpoint of '{model.name}' at epoch {epoch} is {len(blob) / 2**30:.1f} "
                    "GiB, more than a parquet cell holds (2 GiB); export this zoo with "
                    "--no-weights and share its checkpoint files beside the dataset")
            row["weights"] = blob
            nbytes += len(blob)
        del state
        writer.add(row, nbytes)
    writer.close()
    return writer


def _write_metrics(zoo: Zoo, writer_args: dict) -> _ConfigWriter:
    """The summary table (every result.json metric per model and epoch) as one table."""
    import pyarrow as pa

    frame = zoo.summary()
    columns = {name: frame[name].tolist() for name in frame.columns}
    types = {name: _arrow_type(values, text=name in ("model", "trial_id", "init_type", "phase"))
             for name, values in columns.items()}
    schema = pa.schema([pa.field(name, types[name] or pa.string()) for name in columns])
    writer = _ConfigWriter("metrics", schema, json_columns=_mixed(types), **writer_args)
    for row in frame.to_dict("records"):
        writer.add(row)
    writer.close()
    return writer


# --------------------------------------------------------------------------- metadata


def _croissant_type(type_) -> str:
    import pyarrow as pa

    if pa.types.is_boolean(type_):
        return "sc:Boolean"
    if pa.types.is_integer(type_):
        return "sc:Integer"
    if pa.types.is_floating(type_):
        return "sc:Float"
    return "sc:Text"  # text, JSON text and the safetensors bytes


def _describe(name: str) -> str:
    if name in COLUMN_DESCRIPTIONS:
        return COLUMN_DESCRIPTIONS[name]
    return f"'{name}' from result.json at that epoch (missing where the model lacks it)"


def _zoo_description(zoo: Zoo) -> str:
    m = zoo.manifest
    text = (f"Model zoo '{zoo.name}': {len(zoo)} trained neural networks with their weights at "
            "checkpoints over training, their configurations and per-epoch metrics, exported by "
            f"wslbench {wslbench.__version__} for weight-space learning. Zoo revision "
            f"{zoo.revision}.")
    if m is not None:
        grid = "; ".join(f"{k} {v}" for k, v in m.grid.items())
        text += (f" Built by zoo-builder {m.package_version} from spec '{m.spec}' v"
                 f"{m.spec_version}, preset '{m.preset}', on {m.created}; grid: {grid}.")
    else:
        text += " A zoo in the published Phase Transition Model Zoo layout (no manifest)."
    return text


def croissant_metadata(zoo: Zoo, writers: Mapping[str, _ConfigWriter], out_dir: Path, *,
                       license: str, url: str | None, manifest_copy: Path | None = None) -> dict:
    """Croissant 1.0 JSON-LD for an export: every parquet file with its sha256, a file set and
    a record set per table, one field per column, and the copy of the zoo's manifest."""
    distribution, record_sets = [], []
    if manifest_copy is not None:
        distribution.append({
            "@type": "cr:FileObject", "@id": manifest_copy.name, "name": manifest_copy.name,
            "description": "the zoo's manifest: spec, grid, versions and the sha256 of every "
                           "checkpoint and result file",
            "contentUrl": manifest_copy.relative_to(out_dir).as_posix(),
            "encodingFormat": "application/json", "sha256": fmt.sha256_file(manifest_copy)})
    for config, writer in writers.items():
        for shard in writer.shards:
            rel = shard.relative_to(out_dir).as_posix()
            distribution.append({
                "@type": "cr:FileObject", "@id": rel, "name": rel,
                "description": f"a parquet shard of the '{config}' table",
                "contentUrl": rel, "encodingFormat": PARQUET_FORMAT,
                "sha256": fmt.sha256_file(shard)})
        file_set = f"parquet-{config}"
        distribution.append({
            "@type": "cr:FileSet", "@id": file_set, "name": file_set,
            "description": f"the parquet shards of the '{config}' table",
            "encodingFormat": PARQUET_FORMAT, "includes": f"parquet/{config}/*.parquet"})
        record_sets.append({
            "@type": "cr:RecordSet", "@id": config, "name": config,
            "description": TABLE_DESCRIPTIONS[config],
            "key": [{"@id": f"{config}/model"}, {"@id": f"{config}/epoch"}],
            "field": [{
                "@type": "cr:Field", "@id": f"{config}/{column.name}", "name": column.name,
                "description": _describe(column.name),
                "dataType": _croissant_type(column.type),
                "source": {"fileSet": {"@id": file_set}, "extract": {"column": column.name}},
            } for column in writer.schema]})
    manifest = zoo.manifest
    version = f"{manifest.spec_version if manifest else 1}.0.0+{zoo.revision[:12]}"
    metadata = {
        "@context": CROISSANT_CONTEXT,
        "@type": "sc:Dataset",
        "name": zoo.label,
        "description": _zoo_description(zoo),
        "conformsTo": CROISSANT_1_0,
        "license": license,
        "version": version,
        "identifier": f"wslbench-zoo-revision:{zoo.revision}",
        "datePublished": date.today().isoformat(),  # the day of the export
        "citeAs": PAPER_CITATION,
        "keywords": ["weight space learning", "model zoo", "phase transitions",
                     "neural network weights"],
        "distribution": distribution,
        "recordSet": record_sets,
    }
    if manifest is not None:
        metadata["dateCreated"] = manifest.created
    if url:
        metadata["url"] = url
    return metadata


def _dataset_card(zoo: Zoo, writers: Mapping[str, _ConfigWriter], license: str) -> str:
    """README.md with the Hub's YAML header, so the two tables load as two configs."""
    short = {PACKAGE_LICENSE: "mit", PTMZ_LICENSE: "cc-by-4.0"}.get(license, "other")
    lines = ["---", f"license: {short}", "tags:", "- weight-space-learning", "- model-zoo",
             "configs:"]
    for config in writers:
        lines += [f"- config_name: {config}", "  data_files:", "  - split: train",
                  f"    path: parquet/{config}/*.parquet"]
    lines += ["---", "", f"# {zoo.label}", "", _zoo_description(zoo), ""]
    for config, writer in writers.items():
        lines += [f"## `{config}` ({writer.rows} rows)", "", TABLE_DESCRIPTIONS[config], ""]
        lines += [f"- `{c.name}` ({c.type}): {_describe(c.name)}" for c in writer.schema]
        lines.append("")
    lines += ["Load the local copy with `datasets.load_from_disk`; the weights of a checkpoint "
              "row with `wslbench.export.load_weights_from_row(row)`. Croissant metadata: "
              f"`{CROISSANT_FILE}`.", "", "## Citation", "", "```bibtex", PAPER_CITATION, "```",
              ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    """Where an export went and what it holds."""

    out_dir: Path
    rows: dict[str, int]
    parquet_files: dict[str, list[Path]]


def export_zoo(zoo: Zoo | str | Path, out_dir: str | Path, epochs: str | Iterable[int] = "all",
               weights: bool = True, *, overwrite: bool = False, license: str | None = None,
               url: str | None = None, shard_bytes: int = 512 * 2**20,
               batch_bytes: int = 64 * 2**20, progress: bool | None = None) -> ExportResult:
    """Export a zoo to ``out_dir`` as a ``datasets`` DatasetDict, parquet shards and Croissant.

    Args:
        zoo: a Zoo or the path of a zoo root (ours or published).
        out_dir: the folder to create; an existing one needs ``overwrite=True``.
        epochs: ``"all"`` checkpoints, ``"final"`` (the last of each model), or epochs.
        weights: store the weights (else configs and metrics only).
        license: the license URL for the metadata (default: MIT, the package's license, for
            zoos built by zoo-builder; CC-BY 4.0, the published zoos', for zoos without a
            manifest). The training data's own license may apply on top.
        url: where the dataset is published, if known.
        shard_bytes, batch_bytes: parquet shard size and rows held in memory at once.
    """
    datasets = _require_datasets()
    zoo = zoo if isinstance(zoo, Zoo) else Zoo.open(zoo)
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not overwrite:
        raise ExportExistsError(f"export folder '{out_dir}' exists; pass --overwrite (or "
                              "overwrite=True) to replace it, or choose another --out")
    if out_dir == zoo.root or zoo.root in out_dir.parents or out_dir in zoo.root.parents:
        raise ValueError(f"export folder '{out_dir}' overlaps the zoo '{zoo.root}' (one is "
                         "inside the other); choose a folder beside the zoo")
    license = license or (PACKAGE_LICENSE if zoo.manifest is not None else PTMZ_LICENSE)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial",
                                    dir=out_dir.parent))
    staging.chmod(out_dir.parent.stat().st_mode & 0o777)  # mkdtemp's 0o700 would stick
    try:
        scratch = staging / "_scratch"
        writer_args = {"out_dir": staging, "scratch": scratch, "shard_bytes": shard_bytes,
                       "batch_bytes": batch_bytes}
        writers = {"checkpoints": _write_checkpoints(zoo, epochs, weights, writer_args, progress),
                   "metrics": _write_metrics(zoo, writer_args)}
        description = _zoo_description(zoo)
        tables = datasets.DatasetDict({
            config: datasets.Dataset.from_file(str(writer.arrow_path), info=datasets.DatasetInfo(
                description=f"{description} Table '{config}': {TABLE_DESCRIPTIONS[config]}.",
                citation=PAPER_CITATION, homepage=url or "", license=license))
            for config, writer in writers.items()})
        with _progress_bars(datasets, progress):
            tables.save_to_disk(str(staging))
        del tables
        shutil.rmtree(scratch)
        manifest_copy = None
        if zoo.manifest is not None:
            manifest_copy = staging / fmt.MANIFEST_FILE
            shutil.copyfile(zoo.root / fmt.MANIFEST_FILE, manifest_copy)
        fmt.atomic_write_bytes(staging / "README.md", _dataset_card(zoo, writers, license).encode())
        fmt.atomic_write_json(staging / CROISSANT_FILE, croissant_metadata(
            zoo, writers, staging, license=license, url=url, manifest_copy=manifest_copy))
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(
        out_dir=out_dir, rows={config: w.rows for config, w in writers.items()},
        parquet_files={config: [out_dir / s.relative_to(staging) for s in w.shards]
                       for config, w in writers.items()})


@contextmanager
def _progress_bars(datasets, progress: bool | None):
    """``datasets``' progress bars off for the block when ``progress`` is False."""
    turn_off = progress is False and not datasets.are_progress_bars_disabled()
    if turn_off:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if turn_off:
            datasets.enable_progress_bars()


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Rename the finished export to ``out_dir``; an old one is removed only after that."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{staging.name}")
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


# --------------------------------------------------------------------------- CLI


def cmd_export(args: argparse.Namespace) -> int:
    result = export_zoo(args.zoo, args.out, epochs=args.epochs, weights=args.weights,
                        overwrite=args.overwrite, license=args.license, url=args.url)
    for config, rows in result.rows.items():
        files = result.parquet_files[config]
        size = sum(f.stat().st_size for f in files)
        print(f"{config}: {rows} rows, {len(files)} parquet file(s), {size / 2**20:.1f} MiB")
    print(f"exported to {result.out_dir} (datasets.load_from_disk; Croissant: "
          f"{result.out_dir / CROISSANT_FILE})")
    return 0


def add_export_command(subparsers) -> argparse.ArgumentParser:
    """Register ``export ZOO --out DIR [--epochs final|all] [--no-weights]``."""
    parser = subparsers.add_parser(
        "export", help="export a zoo as a Hugging Face dataset (parquet) with Croissant metadata",
        description="Export a zoo as a Hugging Face dataset (load_from_disk, plus parquet "
                    "shards for the Hub) with Croissant metadata: one table of checkpoints "
                    "(configs and weights), one of per-epoch metrics.")
    parser.add_argument("zoo", help="path to a zoo root folder (ours or published)")
    parser.add_argument("--out", required=True, help="the folder to write (must not exist "
                                                     "unless --overwrite)")
    parser.add_argument("--epochs", choices=["all", "final"], default="all",
                        help="every checkpoint, or each model's last one (default: all)")
    parser.add_argument("--no-weights", dest="weights", action="store_false",
                        help="configs and metrics only, no weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--license", help="license URL for the metadata (default: MIT for "
                                          "zoos built here, CC-BY 4.0 for published zoos)")
    parser.add_argument("--url", help="where the dataset is published, for the metadata")
    parser.set_defaults(run=cmd_export)
    return parser
