"""Phase rules: each phase on hand-made rows, missing metrics, versions, and the real
published CIFAR-10 ResNet-18 metrics; and reading summaries (published anomalies included)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd
import pytest

from zoo_builder.annotating.phases import (DEFAULT_RULES, LABEL_KEYS, RELEASED_RULES, RULES_V1,
                                           RULES_V2, Phase, PhaseRules, label_key, label_phases,
                                           phase_counts, phase_rows, phase_table,
                                           rules_for_version)
from zoo_builder.reporting.summaries import (SummaryError, landscape_epoch_rows, load_summary,
                                   normalise_summary)

DATA = Path(__file__).parent / "data"
PUBLISHED_SUMMARIES = DATA / "ptmz_summary"
PUBLISHED = PUBLISHED_SUMMARIES / "cifar10_resnet18_final.csv"
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


# --------------------------------------------------------------------------- the rules, v1


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
    labels = label_phases(rows(spec), RULES_V1)
    assert labels.iloc[0] is expected
    assert labels.iloc[0] == expected.value  # a str enum: compares with the paper's name


def test_thresholds_are_inclusive_where_documented():
    r = RULES_V1
    small = r.train_loss_small * 0.999
    frame = rows({"loss": r.train_loss_small, "mc": -50},        # at the threshold: high
                 {"loss": small, "mc": -r.mc_zero_band},          # at the band edge: ~0
                 {"loss": small, "mc": -r.mc_zero_band - 1e-6},   # just past it: barrier
                 {"loss": small, "mc": 0, "cka": r.cka_large},    # CKA at threshold: large
                 {"loss": 0.5, "mc": r.mc_high_loss_split})       # mc at the split: I
    assert list(label_phases(frame, r)) == [Phase.I, Phase.IV_B, Phase.III, Phase.IV_B, Phase.I]


def test_train_loss_is_relative_to_log_num_classes():
    # 0.05 nats is high for 10 classes (0.05 / ln 10 = 0.022) but small for 100 (0.011).
    frame = pd.DataFrame({"train_loss": [0.05, 0.05], "curve_mc_train_error": [-10.0, -10.0],
                          "representation_similarity": [0.9, 0.9], "num_classes": [10, 100]})
    for rules in (RULES_V1, RULES_V2):  # v2: fewer than 8 models, so the floor is 0
        assert list(label_phases(frame, rules)) == [Phase.I, Phase.III]
        assert list(label_phases(frame.drop(columns="num_classes"), rules,
                                 num_classes=100)) == [Phase.III, Phase.III]
        with pytest.raises(SummaryError, match="num_classes"):
            label_phases(frame.drop(columns="num_classes"), rules)


@pytest.mark.parametrize("rules", [RULES_V1, RULES_V2], ids=["v1", "v2"])
def test_missing_metrics_give_none_never_a_guess(rules):
    frame = rows({"loss": 0.001, "mc": -0.1, "cka": float("nan")},   # IV needs CKA
                 {"loss": 0.001, "mc": float("nan")},                # every label needs mc
                 {"loss": float("nan"), "mc": -1.0},                 # ... and the train loss
                 {"loss": 0.001, "mc": -20.0, "cka": float("nan")},  # III does not need CKA
                 {"loss": 0.5, "mc": 5.0, "cka": float("nan")})      # II does not either
    table = phase_table(frame, rules)
    assert list(table["phase"]) == [None, None, None, Phase.III, Phase.II]
    assert table["phase_missing"].iloc[0] == "representation_similarity"
    assert table["phase_missing"].iloc[1] == "curve_mc_train_error"
    assert table["phase_missing"].iloc[2] == "train_loss"
    no_mc = rows({"loss": 0.001}).drop(columns="curve_mc_train_error")
    assert label_phases(no_mc, rules).iloc[0] is None


@pytest.mark.parametrize("rules", [RULES_V1, RULES_V2], ids=["v1", "v2"])
def test_hessian_is_a_consistency_check_not_a_criterion(rules):
    frame = rows({"loss": 0.5, "mc": -5, "trace": 8.0}, {"loss": 0.5, "mc": -5, "trace": 3.0},
                 {"loss": 0.001, "mc": -0.1, "trace": 3.0}, {"loss": 0.001, "mc": -0.1})
    table = phase_table(frame, rules)
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


def test_v1_stays_as_released_and_v2_is_the_default():
    assert DEFAULT_RULES is RULES_V2 and DEFAULT_RULES.version == "wslbench-phases-v2"
    assert set(RELEASED_RULES) == {"wslbench-phases-v1", "wslbench-phases-v2",
                                   "wslbench-phases-language-v1", "wslbench-phases-pinn-v1"}
    assert rules_for_version("wslbench-phases-v1") is RULES_V1
    # the numbers v1 was released with (docs/phases.md, section 2)
    assert (RULES_V1.train_loss_small, RULES_V1.mc_zero_band, RULES_V1.mc_high_loss_split,
            RULES_V1.cka_large, RULES_V1.log_hessian_trace_large) == (0.016, 2.2, 0.0, 0.85, 6.0)
    assert RULES_V1.train_loss_reference == "zero" and RULES_V1.epoch_metrics is None
    assert (RULES_V2.train_loss_small, RULES_V2.mc_zero_band, RULES_V2.mc_high_loss_split,
            RULES_V2.cka_large) == (0.017, 2.5, None, 0.86)
    with pytest.raises(ValueError, match="new version"):
        dataclasses.replace(RULES_V1, train_loss_reference="zoo_floor")
    # each released version is stored under its own key: `phase` keeps meaning v1
    assert label_key(RULES_V1) == "phase" and label_key(RULES_V2) == "phase_v2"
    assert set(LABEL_KEYS) == set(RELEASED_RULES)
    with pytest.raises(KeyError, match="not released"):
        label_key(RULES_V1.replace(version="mine"))


# --------------------------------------------------------------------------- the rules, v2


@pytest.mark.parametrize("spec, expected", [
    ({"loss": 0.5, "mc": -12.0}, Phase.I),
    ({"loss": 0.5, "mc": -2.6}, Phase.I),       # past the band: a barrier
    ({"loss": 0.5, "mc": -2.5}, Phase.II),      # at the band edge: connected, as in III/IV
    ({"loss": 0.5, "mc": -0.3}, Phase.II),      # v1: I (the sign decided)
    ({"loss": 0.5, "mc": 3.0}, Phase.II),
    ({"loss": 0.001, "mc": -2.6}, Phase.III),
    ({"loss": 0.001, "mc": -2.5, "cka": 0.95}, Phase.IV_B),
    ({"loss": 0.001, "mc": -0.5, "cka": 0.85}, Phase.IV_A),
    ({"loss": 0.001, "mc": -0.5, "cka": 0.86}, Phase.IV_B),
])
def test_v2_on_hand_made_rows(spec, expected):
    assert label_phases(rows(spec), RULES_V2).iloc[0] is expected


def test_v2_uses_one_connected_band_in_both_loss_branches():
    """Whatever the train loss, mc in [-band, 0] is "no barrier" and below -band a barrier:
    I <-> III and II <-> IV differ only in the train loss."""
    band = RULES_V2.mc_zero_band
    for mc in (-band - 5, -band - 1e-6, -band, -band / 2, 0.0, 0.5, 4.0):
        high = label_phases(rows({"loss": 0.5, "mc": mc}), RULES_V2).iloc[0]
        small = label_phases(rows({"loss": 0.001, "mc": mc}), RULES_V2).iloc[0]
        assert (high is Phase.I) == (small is Phase.III), mc


def test_v2_svhn_example_is_not_under_fitted_and_sized():
    """The published svhn_resnet18 width 128 / bs 128 at epoch 135: test accuracy 0.973, train
    loss 0.0169 ln 10, mc -1.58, CKA 0.91: v1 says phase I (under-fitted, under-sized) for one
    of the zoo's best models; v2 sees no barrier (and, at 0.017, a small train loss)."""
    frame = rows({"loss": 0.0169, "mc": -1.58, "cka": 0.91})
    assert label_phases(frame, RULES_V1).iloc[0] is Phase.I
    assert label_phases(frame, RULES_V2).iloc[0] is Phase.IV_B
    high = rows({"loss": 0.03, "mc": -1.58, "cka": 0.91})  # even with a high train loss
    assert label_phases(high, RULES_V2).iloc[0] is Phase.II


def test_v2_measures_the_train_loss_from_the_sub_zoo_floor():
    """A heavy-augmentation sub-zoo never gets below 0.27 ln C: v1 calls every model high
    loss; v2 measures from the sub-zoo's lowest loss, per sub-zoo (here: per weight decay)."""
    floor = 0.27
    losses = [floor, floor + 0.01, floor + 0.05, 0.4, 0.5, 0.6, 0.7, 0.8]
    heavy = pd.concat([rows(*({"loss": l, "mc": -40.0, "classes": 100} for l in losses))
                       .assign(wd=0.05),
                       rows(*({"loss": l / 100, "mc": -40.0, "classes": 100} for l in losses))
                       .assign(wd=5e-4)], ignore_index=True)
    heavy["train_loss"] = heavy["train_loss"] * math.log(100) / LN10
    v1 = label_phases(heavy, RULES_V1)
    table = phase_table(heavy, RULES_V2)
    assert list(v1[:8]) == [Phase.I] * 8
    assert list(table["phase"][:8]) == [Phase.III, Phase.III] + [Phase.I] * 6
    assert table["train_loss_floor"][:8].tolist() == pytest.approx([floor] * 8)
    assert table["train_loss_floor"][8:].tolist() == pytest.approx([floor / 100] * 8)
    # fewer than floor_min_models models: no evidence of the zoo's floor, so it is 0
    few = phase_table(heavy.iloc[:3], RULES_V2)
    assert few["train_loss_floor"].eq(0).all() and few["phase"].eq(Phase.I).all()


def test_v2_labels_at_the_last_epoch_with_mode_connectivity_and_cka():
    """The cifar100_resnet18 layout: epoch 115 has all five metrics, epoch 150 (the end) mode
    connectivity and CKA but no Hessian. v1 picks 115 (most metrics), v2 the end."""
    base = {"model": "m", "trial_id": "t", "width": 8, "batchsize": 16, "seed": 0,
            "test_loss": 1.0, "test_acc": 0.6, "train_acc": 0.9, "num_classes": 100}
    nan = float("nan")
    frame = normalise_summary(pd.DataFrame([
        {**base, "epoch": 115, "train_loss": 0.9, "representation_similarity": 0.80,
         "curve_mc_train_error": 12.0, "log_hessian_trace_train": 6.5},
        {**base, "epoch": 150, "train_loss": 0.01, "representation_similarity": 0.9,
         "curve_mc_train_error": -0.4, "log_hessian_trace_train": nan},
    ]), num_classes=100)
    assert phase_rows(frame, RULES_V1)["landscape_epoch"].iloc[0] == 115
    assert label_phases(phase_rows(frame, RULES_V1), RULES_V1).iloc[0] is Phase.II
    assert phase_rows(frame, RULES_V2)["landscape_epoch"].iloc[0] == 150
    assert label_phases(phase_rows(frame, RULES_V2), RULES_V2).iloc[0] is Phase.IV_B


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
    counts = phase_counts(label_phases(models, RULES_V1))
    # docs/phases.md reports these counts; a change here is a change of the rules' output
    assert counts.to_dict() == {"I": 40, "II": 0, "III": 74, "IV-A": 3, "IV-B": 75, "unlabelled": 0}
    v2 = phase_counts(label_phases(phase_rows(published, RULES_V2), RULES_V2))
    assert v2.to_dict() == counts.to_dict()  # everything at epoch 150, no model near an edge
    by_cell = models.assign(phase=label_phases(models, RULES_V1).map(str))
    phase_of = by_cell.groupby(["width", "batchsize"])["phase"].agg(lambda s: s.mode()[0])
    assert phase_of[(2, 128)] == "I"          # narrowest: never interpolates
    assert phase_of[(256, 1024)] == "III"     # largest batch: barrier between seeds
    assert phase_of[(256, 64)] == "IV-B"      # wide, moderate batch: the best test accuracy
    assert phase_of[(32, 512)] == "IV-A"      # connected but dissimilar (CKA 0.83)


def test_load_summary_normalises_published_files(tmp_path, published):
    assert {"width", "batchsize", "ggap", "num_classes", "zoo"} <= set(published.columns)
    assert published["zoo"].iloc[0] == "cifar10_resnet18"  # named after the file, less _final
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


# --------------------------------------------------------------------------- held-out check


def test_leave_one_zoo_out_on_the_published_summaries():
    from zoo_builder.annotating.phase_validation import leave_one_zoo_out

    table, fits = leave_one_zoo_out(PUBLISHED_SUMMARIES)
    assert len(table) == 8 and table["zoo"].is_unique
    for column in ("v1", "v2", "v2_lozo"):
        totals = table[column].map(lambda text: sum(int(n) for n in text.split(" / ")))
        assert (totals == table["models"]).all(), column
    row = table.set_index("zoo")
    assert row.loc["cifar10_resnet18", "v1"] == "40 / 0 / 74 / 3 / 75 / 0"
    assert row.loc["tinyimagenet_resnet18", "v2"] == "0 / 0 / 0 / 0 / 0 / 64"
    assert row.loc["cifar100_resnet18", "label_epoch"] == "150"  # v2: the last with MC + CKA
    # the released v2 thresholds are the fit on all zoos, and leaving a zoo out moves little
    released = {name: getattr(RULES_V2, name) for name in ("train_loss_small", "mc_zero_band",
                                                           "cka_large")}
    assert fits.set_index("held_out").loc["(all)"].to_dict() == released
    assert table["agreement"].dropna().min() >= 0.9
    assert bool(row.loc["cifar10_resnet18", "best_in_iv_b"])
    assert row.loc["cifar10_vit", "vit_phase_iv"] is False  # documented disagreement
