"""export_zoo: a Hugging Face dataset that round-trips through load_from_disk, parquet shards
with the same rows, and Croissant metadata whose files and hashes check out."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

datasets = pytest.importorskip("datasets")

from helpers import write_published_zoo  # noqa: E402
from wslbench import zoo_format as fmt  # noqa: E402
from wslbench.commands import run_command  # noqa: E402
from wslbench.export import (CROISSANT_CONTEXT, add_export_command, export_zoo,  # noqa: E402
                             load_weights_from_row, weights_to_bytes)
from wslbench.zoo import Zoo  # noqa: E402


@pytest.fixture(scope="module")
def exported(tiny_zoo, tmp_path_factory) -> Path:
    """The tiny zoo exported once with every checkpoint and its weights."""
    out = tmp_path_factory.mktemp("export") / "digits-tiny"
    result = export_zoo(tiny_zoo, out, progress=False)
    assert result.out_dir == out
    return out


def same(a, b) -> bool:
    """Equal values, NaN equal to NaN and to a missing value."""
    missing = lambda v: v is None or (isinstance(v, float) and math.isnan(v))  # noqa: E731
    if missing(a) or missing(b):
        return missing(a) and missing(b)
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-12)
    return a == b


def test_round_trip_through_load_from_disk(tiny_zoo, exported):
    zoo = Zoo.open(tiny_zoo)
    loaded = datasets.load_from_disk(str(exported))
    assert set(loaded) == {"checkpoints", "metrics"}
    assert loaded["checkpoints"].num_rows == sum(len(m.checkpoint_epochs) for m in zoo.models)
    assert loaded["metrics"].num_rows == sum(len(m.results) for m in zoo.models)
    first = loaded["checkpoints"][0]
    model = zoo.models[0]
    assert (first["model"], first["epoch"]) == (model.name, model.checkpoint_epochs[0])
    assert json.loads(first["params"]) == model.params
    assert json.loads(first["model_args"]) == model.model_args
    assert first["grid_point"] == model.grid_point
    assert (first["width"], first["batchsize"], first["seed"], first["lr"]) == (
        model.model_args["width"], model.params["training::batchsize"], model.seed,
        model.params["optim::lr"])


def test_metric_values_equal_result_json(tiny_zoo, exported):
    zoo = Zoo.open(tiny_zoo)
    metrics = datasets.load_from_disk(str(exported))["metrics"]
    rows = {(row["model"], row["epoch"]): row for row in metrics}
    result_keys = {key for m in zoo.models for r in m.results for key in r} - {"config"}
    assert result_keys <= set(metrics.column_names)
    for model in zoo.models:
        for epoch, result in enumerate(model.results):
            row = rows[(model.name, epoch)]
            for key in result_keys:
                assert same(row[key], result.get(key)), (model.name, epoch, key)


def test_weights_from_a_row_equal_the_checkpoint(tiny_zoo, exported):
    zoo = Zoo.open(tiny_zoo)
    for row in datasets.load_from_disk(str(exported))["checkpoints"]:
        model = zoo.model(row["model"])
        expected = fmt.load_state_dict(model.path, row["epoch"])
        tensors = load_weights_from_row(row)
        assert set(tensors) == set(expected)
        assert all(torch.equal(tensors[k], expected[k]) for k in expected)
        assert row["n_params"] == sum(p.numel() for p in model_parameters(row))


def model_parameters(row):
    from zoo_builder.models import build_model

    return build_model(json.loads(row["model_args"])).parameters()


def test_parquet_files_hold_the_same_rows(exported):
    loaded = datasets.load_from_disk(str(exported))
    for config in ("checkpoints", "metrics"):
        files = sorted((exported / "parquet" / config).glob("*.parquet"))
        assert files
        frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        pd.testing.assert_frame_equal(frame, loaded[config].to_pandas())


def check_croissant(out: Path, expected_files: int | None = None) -> dict:
    """Structural checks of croissant.json that run whether or not mlcroissant is there."""
    meta = json.loads((out / "croissant.json").read_text())
    for key in ("@context", "@type", "name", "description", "license", "version", "citeAs",
                "conformsTo", "distribution", "recordSet", "identifier"):
        assert meta.get(key), key
    assert meta["@type"] == "sc:Dataset"
    assert meta["conformsTo"] == "http://mlcommons.org/croissant/1.0"
    assert meta["@context"] == CROISSANT_CONTEXT
    objects = [d for d in meta["distribution"] if d["@type"] == "cr:FileObject"]
    sets = {d["@id"]: d for d in meta["distribution"] if d["@type"] == "cr:FileSet"}
    parquet = sorted(p.relative_to(out).as_posix() for p in out.glob("parquet/*/*.parquet"))
    assert sorted(o["contentUrl"] for o in objects
                  if o["encodingFormat"] == "application/x-parquet") == parquet
    if expected_files is not None:
        assert len(parquet) == expected_files
    for obj in objects:
        assert obj["sha256"] == fmt.sha256_file(out / obj["contentUrl"]), obj["contentUrl"]
    assert {rs["@id"] for rs in meta["recordSet"]} == {"checkpoints", "metrics"}
    for record_set in meta["recordSet"]:
        config = record_set["@id"]
        columns = pd.read_parquet(next(out.glob(f"parquet/{config}/*.parquet"))).columns
        assert [f["name"] for f in record_set["field"]] == list(columns)
        for field in record_set["field"]:
            assert field["@type"] == "cr:Field"
            assert field["dataType"] in ("sc:Text", "sc:Integer", "sc:Float", "sc:Boolean")
            file_set = sets[field["source"]["fileSet"]["@id"]]
            assert file_set["includes"] == f"parquet/{config}/*.parquet"
            assert field["source"]["extract"]["column"] == field["name"]
    return meta


def test_croissant_metadata_describes_every_file(tiny_zoo, exported):
    meta = check_croissant(exported, expected_files=2)
    zoo = Zoo.open(tiny_zoo)
    assert zoo.revision in meta["identifier"] and zoo.revision in meta["description"]
    assert meta["version"].startswith(f"{zoo.manifest.spec_version}.0.0+")
    assert meta["license"] == "https://opensource.org/licenses/MIT"
    assert "preset 'tiny'" in meta["description"]
    manifest = [d for d in meta["distribution"] if d["@id"] == "zoo.json"]
    assert manifest and json.loads((exported / "zoo.json").read_text())["spec"] == zoo.manifest.spec
    types = {f["name"]: f["dataType"] for rs in meta["recordSet"] if rs["@id"] == "checkpoints"
             for f in rs["field"]}
    assert types["epoch"] == "sc:Integer" and types["lr"] == "sc:Float"
    assert types["weights"] == "sc:Text" and types["model"] == "sc:Text"


def test_mlcroissant_validates_and_reads_the_export(exported):
    mlc = pytest.importorskip("mlcroissant")
    dataset = mlc.Dataset(jsonld=str(exported / "croissant.json"))
    assert not dataset.metadata.ctx.issues.errors
    records = list(dataset.records(record_set="checkpoints"))
    loaded = datasets.load_from_disk(str(exported))["checkpoints"]
    assert len(records) == loaded.num_rows
    assert records[0]["checkpoints/weights"] == loaded[0]["weights"]
    assert records[0]["checkpoints/epoch"] == loaded[0]["epoch"]


def test_published_zoo_exports_in_shards(tmp_path):
    root = write_published_zoo(tmp_path / "published")
    out = tmp_path / "export"
    # tiny shards and batches: one row per row group, a new parquet file after each
    result = export_zoo(root, out, epochs="final", shard_bytes=1, batch_bytes=1,
                        progress=False)
    zoo = Zoo.open(root)
    assert result.rows == {"checkpoints": len(zoo), "metrics": sum(len(m.results)
                                                                   for m in zoo.models)}
    assert len(result.parquet_files["checkpoints"]) == len(zoo)
    loaded = datasets.load_from_disk(str(out))
    for row in loaded["checkpoints"]:
        model = zoo.model(row["model"])
        expected = fmt.load_state_dict(model.path, row["epoch"])  # the torch file, no prefix
        tensors = load_weights_from_row(row)
        assert all(torch.equal(tensors[k], expected[k]) for k in expected)
        assert set(tensors) == set(expected) and not any(k.startswith("module.") for k in tensors)
    frame = pd.concat(pd.read_parquet(f) for f in result.parquet_files["checkpoints"])
    assert frame["model"].tolist() == loaded["checkpoints"]["model"]
    meta = check_croissant(out, expected_files=len(zoo) + len(result.parquet_files["metrics"]))
    assert meta["license"] == "https://creativecommons.org/licenses/by/4.0/"
    assert not (out / "zoo.json").exists()
    # the mixed "config" dicts of result.json are not columns; the metrics are
    assert "config" not in loaded["metrics"].column_names
    assert loaded["metrics"]["test_acc"][:2] == pytest.approx([0.25, 0.35])


def test_no_weights_final_epochs(tiny_zoo, tmp_path):
    out = tmp_path / "light"
    export_zoo(tiny_zoo, out, epochs="final", weights=False, progress=False)
    checkpoints = datasets.load_from_disk(str(out))["checkpoints"]
    assert checkpoints.num_rows == len(Zoo.open(tiny_zoo))
    assert "weights" not in checkpoints.column_names
    with pytest.raises(ValueError, match="--no-weights"):
        load_weights_from_row(checkpoints[0])
    check_croissant(out)


def test_existing_output_is_kept_unless_overwrite(tiny_zoo, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_zoo(tiny_zoo, out, epochs="final", weights=False, progress=False)
    # an export that fails half-way leaves the old folder as it was and no staging folder
    import wslbench.export as export

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "croissant_metadata", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_zoo(tiny_zoo, out, epochs="final", weights=False, overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "keep").read_text() == "x"
    monkeypatch.undo()
    export_zoo(tiny_zoo, out, epochs="final", weights=False, overwrite=True, progress=False)
    assert not (out / "keep").exists() and (out / "croissant.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_into_or_around_the_zoo_is_refused(tmp_path):
    root = write_published_zoo(tmp_path / "zoos" / "published", widths=(1,), batchsizes=(32,))
    for out in (root / "export", tmp_path / "zoos"):
        with pytest.raises(ValueError, match="overlaps the zoo"):
            export_zoo(root, out, overwrite=True, progress=False)
    assert len(Zoo.open(root)) == 2


def test_tied_weights_are_stored_apart():
    shared = torch.arange(6.0).reshape(2, 3)
    tensors = load_weights_from_row({"weights": weights_to_bytes(
        {"wte.weight": shared, "lm_head.weight": shared, "step": torch.tensor(3)})})
    assert list(tensors) == ["lm_head.weight", "step", "wte.weight"]
    assert torch.equal(tensors["wte.weight"], shared) and torch.equal(tensors["lm_head.weight"],
                                                                      shared)


def test_export_command(tiny_zoo, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="wslbench")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_export_command(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cli"
    code = run_command(parser, ["export", str(tiny_zoo), "--out", str(out), "--epochs",
                                "final", "--no-weights"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "checkpoints: 12 rows" in printed and str(out) in printed
    assert run_command(parser, ["export", str(tiny_zoo), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_missing_datasets_names_the_extra(tiny_zoo, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'wslbench\[hf\]'"):
        export_zoo(tiny_zoo, tmp_path / "x")


def test_importing_the_command_loads_no_heavy_dependency():
    code = ("import sys, wslbench.export, wslbench.dataset; "
            "print(sorted(m for m in ('datasets', 'pyarrow', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
