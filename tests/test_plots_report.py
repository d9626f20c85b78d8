"""Phase plots (PNG + SVG for a published zoo and for a small grid with holes) and the
Table-5-style report, whose numbers must be plain pandas statistics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from zoo_builder.annotating.phases import DEFAULT_RULES, label_phases
from zoo_builder.reporting.report import write_report, zoo_report
from zoo_builder.reporting.summaries import landscape_epoch_rows, load_summary, normalise_summary

pytest.importorskip("matplotlib")

from zoo_builder.reporting.plots import PANELS, phase_grid, plot_phase_diagrams  # noqa: E402

PUBLISHED = Path(__file__).parent / "data" / "ptmz_summary" / "cifar10_resnet18_final.csv"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def published() -> pd.DataFrame:
    return load_summary(PUBLISHED)


def synthetic_frame() -> pd.DataFrame:
    """3 widths x 3 batch sizes x 2 seeds, one cell without models, one without landscape."""
    records = []
    for width in (1, 2, 4):
        for batchsize in (16, 64, 256):
            if (width, batchsize) == (4, 256):
                continue  # an empty cell: must show as missing, never as zero
            for seed in (0, 1):
                landscape = (width, batchsize) != (1, 16)
                records.append({
                    "model": f"m_w{width}_b{batchsize}_s{seed}", "width": width,
                    "batchsize": batchsize, "seed": seed, "epoch": 5,
                    "train_loss": 0.5 / width ** 2, "train_acc": 0.9, "test_loss": 1.0,
                    "test_acc": 0.5 + 0.1 * width / 4,
                    "representation_similarity": 0.6 + 0.1 * width if landscape else math.nan,
                    "curve_mc_train_error": -10.0 / width if landscape else math.nan,
                    "log_hessian_trace_train": 8.0 - width if landscape else math.nan,
                })
    return normalise_summary(pd.DataFrame(records), zoo="synthetic", num_classes=10)


def check_files(paths: list[Path], prefix: str) -> None:
    names = {p.name for p in paths}
    for stem in ["phase_map", *(panel.column for panel in PANELS)]:
        for suffix in ("png", "svg"):
            assert f"{prefix}_{stem}.{suffix}" in names
    for path in paths:
        assert path.is_file() and path.stat().st_size > 1000
        head = path.read_bytes()[:200]
        assert head.startswith(PNG_MAGIC) if path.suffix == ".png" else b"<svg" in head
    overview = [p for p in paths if p.name == f"{prefix}_overview.png"]
    assert overview and overview[0].stat().st_size < 300_000


def test_plots_of_a_published_zoo(tmp_path, published):
    paths = plot_phase_diagrams(published, tmp_path, "CIFAR-10 ResNet-18")
    check_files(paths, "cifar_10_resnet_18")


def test_plots_of_a_small_grid_with_missing_cells(tmp_path):
    frame = synthetic_frame()
    grid = phase_grid(frame)
    assert grid.loads == [1, 2, 4] and grid.temperatures == [16, 64, 256]
    loss = grid.matrix("train_loss")
    assert np.isnan(loss[2, 2])                       # the cell without models
    assert np.isnan(grid.matrix("curve_mc_train_error")[0, 0])  # the one without landscape
    assert loss[0, 1] == pytest.approx(0.5 / 4)       # seeds averaged
    assert np.isnan(grid.matrix("log_hessian_top_ev_val")).all()  # a metric nobody has
    paths = plot_phase_diagrams(frame, tmp_path / "out", "tiny grid", prefix="tiny")
    check_files(paths, "tiny")


def test_plots_refuse_mixed_sub_zoos(tmp_path, published):
    mixed = published.assign(wd=np.where(published["seed"] == 0, 5e-4, 5e-2))
    with pytest.raises(ValueError, match="wd"):
        plot_phase_diagrams(mixed, tmp_path, "mixed")


def test_report_numbers_are_pandas_statistics(published):
    text, table = zoo_report(published)
    models = landscape_epoch_rows(published)
    metrics = table[table["kind"] == "metric"].set_index("quantity")
    for column in ["train_loss", "test_loss", "train_acc", "test_acc", "ggap",
                   "representation_similarity", "curve_mc_train_error",
                   "log_hessian_trace_train", "log_hessian_top_ev_val"]:
        values = models[column]
        assert metrics.loc[column, "count"] == values.count()
        for stat in ("mean", "std", "min", "max"):
            assert metrics.loc[column, stat] == pytest.approx(getattr(values, stat)())
    assert list(metrics.index[:5]) == ["train_loss", "test_loss", "train_acc", "test_acc",
                                       "ggap"]  # the paper's Table 5 order
    assert metrics.loc["test_acc", "summary"] == "0.82±0.08 [0.65,0.91]"
    phases = table[table["kind"] == "phase"].set_index("quantity")["count"]
    expected = label_phases(models).map(lambda p: "unlabelled" if p is None else str(p))
    assert phases.to_dict() == {**{k: 0 for k in phases.index},
                                **expected.value_counts().to_dict()}
    assert phases.sum() == len(models) == 192
    assert set(table.loc[table["kind"] == "phase", "phase_rules_version"]) == \
        {DEFAULT_RULES.version}
    assert "Test Acc" in text and "IV-B" in text and DEFAULT_RULES.version in text


def test_paper_table5_row_is_reproduced_without_batch_size_8(published):
    """The paper's Table 5 row for R-18 / C-10 matches the published rows without bs 8."""
    models = landscape_epoch_rows(published)
    _, table = zoo_report(models[models["batchsize"] != 8])
    summary = table.set_index("quantity")["summary"]
    assert summary["train_loss"] == "0.08±0.19 [0.00,0.66]"
    assert summary["test_loss"] == "0.67±0.34 [0.32,1.98]"
    assert summary["train_acc"] == "0.97±0.06 [0.77,1.00]"
    assert summary["test_acc"] == "0.82±0.08 [0.65,0.91]"
    assert summary["ggap"] == "0.16±0.07 [0.04,0.35]"


def test_write_report_round_trips(tmp_path):
    frame = synthetic_frame()
    path = write_report(frame, tmp_path / "report.csv")
    back = pd.read_csv(path)
    _, table = zoo_report(frame)
    assert list(back.columns) == list(table.columns)
    assert back["mean"].tolist() == pytest.approx(table["mean"].tolist(), nan_ok=True)
    unlabelled = back.set_index("quantity").loc["unlabelled", "count"]
    assert unlabelled == 2  # the two models without landscape metrics


def test_report_without_num_classes_still_reports_metrics():
    frame = synthetic_frame().drop(columns="num_classes")
    text, table = zoo_report(frame)
    assert (table["kind"] == "metric").any() and not (table["kind"] == "phase").any()
    assert "not labelled" in text and "num_classes" in text
