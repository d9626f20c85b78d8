"""Phase rules: each phase on hand-made rows, missing metrics, versions, and the real
published CIFAR-10 ResNet-18 metrics; and reading summaries (published anomalies included)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd
import pytest

from zoo_builder.annotating.phases import (DEFAULT_RULES, RELEASED_RULES, Phase, PhaseRules, label_phases,
                                phase_counts, phase_table, rules_for_version)
from zoo_builder.reporting.summaries import (SummaryError, landscape_epoch_rows, load_summary,
                                   normalise_summary)

DATA = Path(__file__).parent / "data"
PUBLISHED = DATA / "ptmz_cifar10_resnet18_final.csv"
LN10 = math.log(10)


def rows(*specs: dict) -> pd.DataFrame:
    """Rows with the columns the rules read; ``loss`` is in units of ln(10)."""
    records = []
    for spec in specs:
        records.append({"train_loss": spec.get("loss", 0.001) * LN10,
                        "curve_mc_train_error": spec.get("mc", 0.0),
                        "representation_similarity": spec.get("cka", 0.9),
                        "log_hessian_trace_train": spec.get("trace", float("nan")),
                        "num_classes": spec.get("classes", 10)})
    return pd.DataFrame(records)


# --------------------------------------------------------------------------- the rules


@pytest.mark.parametrize("spec, expected", [
    ({"loss": 0.5, "mc": -12.0}, Phase.I),
    ({"loss": 0.5, "mc": -0.3}, Phase.I),      # high loss: the sign decides
    ({"loss": 0.5, "mc": 3.0}, Phase.II),
    ({"loss": 0.001, "mc": -10.0}, Phase.III),
    ({"loss": 0.001, "mc": -0.5, "cka": 0.70}, Phase.IV_A),
    ({"loss": 0.001, "mc": -0.5, "cka": 0.95}, Phase.IV_B),
    ({"loss": 0.001, "mc": 1.0, "cka": 0.95}, Phase.IV_B),  # small loss, mc > 0: no barrier
])
def test_each_phase_on_a_hand_made_row(spec, expected):
    labels = label_phases(rows(spec))
    assert labels.iloc[0] is expected
    assert labels.iloc[0] == expected.value  # a str enum: compares with the paper's name


def test_thresholds_are_inclusive_where_documented():
    r = DEFAULT_RULES
    small = r.train_loss_small * 0.999
    frame = rows({"loss": r.train_loss_small, "mc": -50},        # at the threshold: high
                 {"loss": small, "mc": -r.mc_zero_band},          # at the band edge: ~0
                 {"loss": small, "mc": -r.mc_zero_band - 1e-6},   # just past it: barrier
                 {"loss": small, "mc": 0, "cka": r.cka_large},    # CKA at threshold: large
                 {"loss": 0.5, "mc": r.mc_high_loss_split})       # mc at the split: I
    assert list(label_phases(frame)) == [Phase.I, Phase.IV_B, Phase.III, Phase.IV_B, Phase.I]


def test_train_loss_is_relative_to_log_num_classes():
    # 0.05 nats is high for 10 classes (0.05 / ln 10 = 0.022) but small for 100 (0.011).
    frame = pd.DataFrame({"train_loss": [0.05, 0.05], "curve_mc_train_error": [-10.0, -10.0],
                          "representation_similarity": [0.9, 0.9], "num_classes": [10, 100]})
    assert list(label_phases(frame)) == [Phase.I, Phase.III]
    assert list(label_phases(frame.drop(columns="num_classes"), num_classes=100)) == \
        [Phase.III, Phase.III]
    with pytest.raises(SummaryError, match="num_classes"):
        label_phases(frame.drop(columns="num_classes"))


def test_missing_metrics_give_none_never_a_guess():
    frame = rows({"loss": 0.001, "mc": -0.1, "cka": float("nan")},   # IV needs CKA
                 {"loss": 0.001, "mc": float("nan")},                # every label needs mc
                 {"loss": float("nan"), "mc": -1.0},                 # ... and the train loss
                 {"loss": 0.001, "mc": -20.0, "cka": float("nan")},  # III does not need CKA
                 {"loss": 0.5, "mc": 5.0, "cka": float("nan")})      # II does not either
    table = phase_table(frame)
    assert list(table["phase"]) == [None, None, None, Phase.III, Phase.II]
    assert table["phase_missing"].iloc[0] == "representation_similarity"
    assert table["phase_missing"].iloc[1] == "curve_mc_train_error"
    assert table["phase_missing"].iloc[2] == "train_loss"
    no_mc = rows({"loss": 0.001}).drop(columns="curve_mc_train_error")
    assert label_phases(no_mc).iloc[0] is None


def test_hessian_is_a_consistency_check_not_a_criterion():
    frame = rows({"loss": 0.5, "mc": -5, "trace": 8.0}, {"loss": 0.5, "mc": -5, "trace": 3.0},
                 {"loss": 0.001, "mc": -0.1, "trace": 3.0}, {"loss": 0.001, "mc": -0.1})
    table = phase_table(frame)
    assert list(table["phase"]) == [Phase.I, Phase.I, Phase.IV_B, Phase.IV_B]
    assert list(table["hessian_consistent"]) == [True, False, True, None]


def test_rules_are_versioned_and_recorded_with_every_label():
    labels = label_phases(rows({}, {"loss": 0.5, "mc": -3}))
    assert labels.attrs["phase_rules_version"] == DEFAULT_RULES.version
    table = phase_table(rows({}, {"loss": 0.5}))
    assert set(table["phase_rules_version"]) == {DEFAULT_RULES.version}
    assert rules_for_version(DEFAULT_RULES.version) is DEFAULT_RULES
    assert RELEASED_RULES[DEFAULT_RULES.version] == DEFAULT_RULES
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_RULES.cka_large = 0.5  # type: ignore[misc]
    # a change of a number under a released version is refused; a new version is fine
    with pytest.raises(ValueError, match="new version"):
        dataclasses.replace(DEFAULT_RULES, cka_large=0.5)
    with pytest.raises(ValueError, match="new version"):
        DEFAULT_RULES.replace(cka_large=0.5)
    strict = DEFAULT_RULES.replace(version="strict-cka", cka_large=0.99)
    assert label_phases(rows({"cka": 0.95}), strict).iloc[0] is Phase.IV_A
    assert phase_table(rows({}), strict)["phase_rules_version"].iloc[0] == "strict-cka"
    with pytest.raises(ValueError, match="cka_large"):
        PhaseRules("bad", train_loss_small=0.01, mc_zero_band=1, mc_high_loss_split=0,
                   cka_large=1.5)
    with pytest.raises(KeyError, match="released"):
        rules_for_version("no-such-rules")


def test_phase_is_a_closed_vocabulary():
    assert [p.value for p in Phase] == ["I", "II", "III", "IV-A", "IV-B"]
    assert Phase("IV-B") is Phase.IV_B and str(Phase.IV_A) == "IV-A"
    with pytest.raises(ValueError):
        Phase("V")
    assert all(p.description for p in Phase)


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def published() -> pd.DataFrame:
    return load_summary(PUBLISHED)


def test_published_cifar10_resnet18_has_several_phases(published):
    models = landscape_epoch_rows(published)
    assert len(models) == 192 and models["num_classes"].eq(10).all()
    counts = phase_counts(label_phases(models))
    # docs/phases.md reports these counts; a change here is a change of the rules' output
    assert counts.to_dict() == {"I": 40, "II": 0, "III": 74, "IV-A": 3, "IV-B": 75, "unlabelled": 0}
    by_cell = models.assign(phase=label_phases(models).map(str))
    phase_of = by_cell.groupby(["width", "batchsize"])["phase"].agg(lambda s: s.mode()[0])
    assert phase_of[(2, 128)] == "I"          # narrowest: never interpolates
    assert phase_of[(256, 1024)] == "III"     # largest batch: barrier between seeds
    assert phase_of[(256, 64)] == "IV-B"      # wide, moderate batch: the best test accuracy
    assert phase_of[(32, 512)] == "IV-A"      # connected but dissimilar (CKA 0.83)


def test_load_summary_normalises_published_files(tmp_path, published):
    assert {"width", "batchsize", "ggap", "num_classes", "zoo"} <= set(published.columns)
    assert published["zoo"].iloc[0] == "ptmz_cifar10_resnet18"
    assert (published["ggap"] == published["train_acc"] - published["test_acc"]).all()
    # ViT files name the width embedding_dim; the trial string's batch size wins
    raw = pd.read_csv(PUBLISHED).head(3).rename(columns={"width": "embedding_dim"})
    raw.loc[0, "batchsize"] = 128  # the model string says training_batchsize=1024
    vit = tmp_path / "cifar100_vit_final.csv"
    raw.to_csv(vit, index=False)
    frame = load_summary(vit)
    assert "width" in frame.columns and "embedding_dim" not in frame.columns
    assert frame.loc[0, "batchsize"] == 1024 and frame["num_classes"].eq(100).all()


def test_load_summary_errors_name_the_problem(tmp_path):
    with pytest.raises(SummaryError, match="does not exist"):
        load_summary(tmp_path / "nothing.csv")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(SummaryError, match="not a summary table"):
        load_summary(text)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(SummaryError, match="lacks the column"):
        load_summary(other)
    words = pd.read_csv(PUBLISHED).head(2)
    words["train_loss"] = ["low", "high"]
    with pytest.raises(SummaryError, match="train_loss.*numeric"):
        normalise_summary(words)


def test_load_summary_reads_our_zoo_folder(tmp_path):
    from helpers import write_published_zoo

    root = write_published_zoo(tmp_path / "zoo", epochs=2)
    frame = load_summary(root)
    assert len(frame) == 2 * 2 * 2 * 3  # widths x batch sizes x seeds x epochs 0..2
    assert frame["num_classes"].eq(3).all() and "ggap" in frame.columns
    models = landscape_epoch_rows(frame)
    assert len(models) == 8 and models["final_epoch"].eq(2).all()
    assert models["landscape_epoch"].eq(2).all()  # no landscape value: the final epoch
    assert label_phases(models).isna().all()      # no mode connectivity: no label
    # our summary.csv / summary.parquet next to the models read the same
    from wslbench import zoo_format as fmt
    from wslbench.zoo import Zoo

    fmt.write_summary(root, Zoo.open(root).summary())
    for name in (fmt.SUMMARY_CSV, fmt.SUMMARY_PARQUET):
        again = load_summary(root / name)
        assert len(again) == len(frame) and again["num_classes"].eq(3).all()
        assert again["zoo"].iloc[0] == "zoo"


def test_landscape_epoch_rows_take_the_most_complete_landscape_epoch():
    base = {"model": "m", "trial_id": "t", "width": 8, "batchsize": 64, "seed": 0,
            "test_loss": 1.0, "test_acc": 0.5, "train_acc": 0.9}
    nan = float("nan")
    frame = normalise_summary(pd.DataFrame([
        # epoch 135 carries everything, the final epoch 150 only CKA (the SVHN layout)
        {**base, "epoch": 135, "train_loss": 0.30, "representation_similarity": 0.80,
         "curve_mc_train_error": -1.0, "log_hessian_trace_train": 5.0},
        {**base, "epoch": 150, "train_loss": 0.01, "representation_similarity": 0.90,
         "curve_mc_train_error": nan, "log_hessian_trace_train": nan},
        {**base, "epoch": 140, "train_loss": 0.20, "representation_similarity": nan,
         "curve_mc_train_error": nan, "log_hessian_trace_train": nan},
    ]), num_classes=10)
    row = landscape_epoch_rows(frame).iloc[0]
    assert row["final_epoch"] == 150 and row["landscape_epoch"] == 135
    assert row["train_loss"] == 0.01 and row["landscape_train_loss"] == 0.30
    assert row["representation_similarity"] == 0.80  # not mixed with epoch 150's CKA
    assert row["curve_mc_train_error"] == -1.0
