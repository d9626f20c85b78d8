"""Downstream methods: epoch averaging / Wise-FT, magnitude pruning, seed ensembles, transfer,
and their annotation of the tiny digits zoo (stored, summarised, plotted, resumable)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from wslbench import zoo_format as fmt
from wslbench.zoo import Zoo
from zoo_builder.annotating.annotate import (DOWNSTREAM_GROUPS, AnnotationError, AnnotationSettings,
                                  annotate_zoo, check_downstream_zoo, done_keys, expand_groups,
                                  percent_label)
from zoo_builder.data import ImageData, load_dataset
from zoo_builder.data.digits import rotate_and_shift
from zoo_builder.annotating.downstream.averaging import average_checkpoints, interpolate
from zoo_builder.annotating.downstream.ensembling import ensemble_accuracy
from zoo_builder.annotating.downstream.pruning import (default_prunable, finetune_pruned,
                                            global_magnitude_prune, prunable_weights)
from zoo_builder.annotating.downstream.transfer import transfer
from zoo_builder.models import build_model

torch.set_num_threads(1)

ARGS = {"type": "resnet18", "width": 2, "o_dim": 10, "channels_in": 1}

FAST = AnnotationSettings(average_window=2, barrier_points=3, prune_sparsities=(0.5, 0.9),
                          transfer_epochs=1, finetune_batch_size=256,
                          wiseft_alphas=(0.0, 0.5, 1.0))


def random_state(seed: int) -> dict[str, torch.Tensor]:
    """A ResNet state dict with random weights and random BatchNorm statistics."""
    torch.manual_seed(seed)
    state = build_model(ARGS).state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "bias")):
            value.normal_()
        elif key.endswith("running_var") or (key.endswith("weight") and value.dim() == 1):
            value.uniform_(0.5, 2.0)
        elif key.endswith("num_batches_tracked"):
            value.fill_(seed)
    return state


@pytest.fixture(scope="module")
def digits() -> ImageData:
    return load_dataset("digits")


# --------------------------------------------------------------------------- averaging


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_averaging_identical_checkpoints_is_the_identity(n):
    state = random_state(0)
    averaged = average_checkpoints([state] * n)
    assert list(averaged) == list(state)
    for key, value in state.items():
        assert averaged[key].dtype == value.dtype
        assert torch.equal(averaged[key], value), key  # bit for bit


def test_averaging_includes_every_buffer():
    states = [random_state(seed) for seed in (1, 2, 3)]
    averaged = average_checkpoints(states)
    for key in ("bn1.running_mean", "bn1.running_var", "layer1.0.bn1.running_var",
                "bn1.weight", "fc.bias", "conv1.weight"):
        expected = torch.stack([s[key] for s in states]).mean(dim=0)
        torch.testing.assert_close(averaged[key], expected)
        assert not torch.equal(averaged[key], states[0][key])
    assert int(averaged["bn1.num_batches_tracked"]) == 3  # counters: the latest checkpoint's


def test_interpolation_gives_its_ends_and_the_line_between():
    theta0, theta1 = random_state(1), random_state(2)
    for alpha, end in ((0.0, theta0), (1.0, theta1)):
        mixed = interpolate(theta0, theta1, alpha)
        assert all(torch.equal(mixed[k], end[k]) for k in end)  # buffers and counters too
    half = interpolate(theta0, theta1, 0.25)
    torch.testing.assert_close(half["bn1.running_var"],
                               0.75 * theta0["bn1.running_var"] + 0.25 * theta1["bn1.running_var"])
    with pytest.raises(ValueError, match="other entries"):
        interpolate(theta0, {k: v for k, v in theta1.items() if k != "fc.bias"}, 0.5)


# --------------------------------------------------------------------------- pruning


def _prunable_magnitudes(state, names):
    return np.concatenate([state[k].abs().flatten().numpy() for k in names])


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.95, 1.0])
def test_pruning_removes_exactly_the_smallest_weights(sparsity):
    state = random_state(4)
    network = build_model(ARGS)
    names = prunable_weights(network)
    assert names == [k for k, v in state.items() if default_prunable(k, v)]  # conv + fc only
    assert "fc.weight" in names and not any("bn" in k or k.endswith("bias") for k in names)
    pruned, masks = global_magnitude_prune(state, sparsity, names)
    magnitudes = _prunable_magnitudes(state, names)
    n, k = magnitudes.size, round(sparsity * magnitudes.size)
    assert not (magnitudes == 0).any()
    removed = ~np.concatenate([masks[name].flatten().numpy() for name in names])
    assert removed.sum() == k
    assert (_prunable_magnitudes(pruned, names) == 0).sum() == k
    expected = np.zeros(n, dtype=bool)
    expected[np.argsort(magnitudes, kind="stable")[:k]] = True
    assert np.array_equal(removed, expected)
    for key in state:  # everything else untouched; the input is not modified
        if key not in names:
            assert torch.equal(pruned[key], state[key])
    assert torch.equal(state["conv1.weight"], random_state(4)["conv1.weight"])


def test_pruning_breaks_ties_by_position():
    state = {"a.weight": torch.tensor([[1.0, -1.0], [2.0, 1.0]]),
             "b.weight": torch.tensor([[-1.0, 3.0]]), "a.bias": torch.tensor([0.1, 0.1])}
    pruned, masks = global_magnitude_prune(state, 0.5)  # k = round(0.5 * 6) = 3 of four 1s
    assert masks["a.weight"].tolist() == [[False, False], [True, False]]
    assert masks["b.weight"].tolist() == [[True, True]]
    assert set(masks) == {"a.weight", "b.weight"}
    with pytest.raises(ValueError, match="sparsity must lie in"):
        global_magnitude_prune(state, 1.5)


def test_fine_tuning_keeps_pruned_weights_at_zero(digits):
    torch.manual_seed(0)
    network = build_model(ARGS)
    state = network.state_dict()
    pruned, masks = global_magnitude_prune(state, 0.6, prunable_weights(network))
    network.load_state_dict(pruned)
    small = ImageData(digits.train_x[:256], digits.train_y[:256], digits.test_x[:64],
                      digits.test_y[:64], 10, "digits")
    finetune_pruned(network, masks, small, epochs=2, lr=0.05, batch_size=64)
    after = network.state_dict()
    for name, mask in masks.items():
        assert (after[name][~mask] == 0).all(), name
    changed = ~torch.isclose(after["conv1.weight"], pruned["conv1.weight"])
    assert changed[masks["conv1.weight"]].any()  # the kept weights did train


# --------------------------------------------------------------------------- ensembles


def test_ensemble_of_identical_networks_gains_nothing(digits):
    torch.manual_seed(0)
    network = build_model(ARGS).eval()
    result = ensemble_accuracy([network, network, network], digits)
    assert result.gain == 0.0
    assert result.accuracy == result.mean_member_accuracy == result.member_accuracies[0]
    other = build_model(ARGS).eval()
    mixed = ensemble_accuracy([network, other], digits)
    assert mixed.member_accuracies[0] == result.accuracy
    assert mixed.gain == pytest.approx(mixed.accuracy - sum(mixed.member_accuracies) / 2)


# --------------------------------------------------------------------------- transfer


def test_rotated_digits_are_a_fixed_shift_of_the_same_split(digits):
    rotated = load_dataset("digits-rotated")
    assert rotated.train_x.shape == digits.train_x.shape
    assert torch.equal(rotated.train_y, digits.train_y)
    assert torch.equal(rotated.test_y, digits.test_y)
    assert not torch.allclose(rotated.train_x, digits.train_x)
    torch.testing.assert_close(rotate_and_shift(digits.test_x, 0.0, 0), digits.test_x)
    pixel = torch.zeros(1, 1, 8, 8)
    pixel[0, 0, 2, 5] = 1.0
    assert rotate_and_shift(pixel, 0.0, 1)[0, 0].nonzero().tolist() == [[3, 6]]
    assert rotate_and_shift(pixel, 90.0, 0)[0, 0].nonzero().tolist() == [[5, 5]]


def test_stl10_is_relabelled_into_cifar10_classes_and_targets_are_named():
    from zoo_builder.annotating.downstream.transfer import stl10_as_cifar10, transfer_data

    # one image of each STL-10 class: airplane, bird, car, cat, deer, dog, horse, monkey, ...
    labels = torch.arange(10)
    stl = ImageData(torch.zeros(10, 3, 4, 4, dtype=torch.uint8), labels,
                    torch.zeros(10, 3, 4, 4, dtype=torch.uint8), labels, 10, "stl10")
    mapped = stl10_as_cifar10(stl)
    assert mapped.train_y.tolist() == [0, 2, 1, 3, 4, 5, 7, 8, 9]  # monkey dropped
    assert len(mapped.test_x) == 9
    assert transfer_data("digits").name == "digits-rotated"
    with pytest.raises(ValueError, match="--transfer-dataset"):
        transfer_data("svhn")


def test_transfer_fine_tunes_a_zoo_model_and_draws_the_wiseft_curve(tiny_zoo, digits):
    model = Zoo.open(tiny_zoo).models[-1]
    network = build_model(model.model_args)
    network.load_state_dict(model.state_dict())
    before = {k: v.clone() for k, v in network.state_dict().items()}
    target = load_dataset("digits-rotated")
    result = transfer(network, digits, target, epochs=1, lr=0.01, batch_size=128,
                      alphas=(0.0, 0.5, 1.0))
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert result.target_acc[0] == result.acc_before
    assert result.target_acc[-1] == result.acc_after
    assert result.source_acc[0] == pytest.approx(model.metric("test_acc"), abs=1e-9)
    assert all(0.0 <= a <= 1.0 for a in (*result.target_acc, *result.source_acc))


# --------------------------------------------------------------------------- annotation


@pytest.fixture(scope="module")
def annotated(tiny_zoo, tmp_path_factory) -> Path:
    root = Path(shutil.copytree(tiny_zoo, tmp_path_factory.mktemp("downstream") / "zoo"))
    annotate_zoo(root, groups=["downstream"], settings=FAST, progress=False)
    return root


EXPECTED_KEYS = (
    "wiseft_acc_test", "wiseft_acc_test_delta", "wiseft_n_checkpoints",
    "gitrebasin_acc_test", "gitrebasin_acc_test_delta", "gitrebasin_naive_acc_test_delta",
    "gitrebasin_barrier_before", "gitrebasin_barrier_after", "gitrebasin_acc_barrier_before",
    "gitrebasin_acc_barrier_after", "gitrebasin_n_models",
    "prune_acc_test_50", "prune_acc_test_90", "prune_finetune_epochs",
    "ensemble_acc_test", "ensemble_member_acc_test", "ensemble_gain", "ensemble_loss_test",
    "ensemble_size",
    "transfer_acc", "transfer_acc_before", "transfer_acc_gain", "transfer_dataset",
    "transfer_epochs", "wiseft_alpha_0_transfer_acc", "wiseft_alpha_50_transfer_acc",
    "wiseft_alpha_100_transfer_acc", "wiseft_alpha_0_source_acc", "wiseft_alpha_50_source_acc",
    "wiseft_alpha_100_source_acc",
)


def test_downstream_annotation_stores_every_key(annotated):
    zoo = Zoo.open(annotated)
    by_point: dict[str, set] = {}
    for model in zoo.models:
        last = model.checkpoint_epochs[-1]
        row = model.results[last]
        missing = [key for key in EXPECTED_KEYS if row.get(key) is None]
        assert not missing, (model.name, missing)
        assert row["wiseft_n_checkpoints"] == 2  # epochs 1 and 2 of the window (0, 2]
        assert row["transfer_dataset"] == "digits-rotated"
        assert row["wiseft_alpha_0_source_acc"] == pytest.approx(row["test_acc"], abs=1e-9)
        assert row["wiseft_alpha_100_transfer_acc"] == row["transfer_acc"]
        assert row["wiseft_acc_test_delta"] == pytest.approx(
            row["wiseft_acc_test"] - row["test_acc"], abs=1e-9)
        assert "ensemble_acc_test" not in model.results[0]  # only the annotated epoch
        by_point.setdefault(model.grid_point, set()).add(
            (row["gitrebasin_acc_test_delta"], row["ensemble_gain"]))
    assert all(len(values) == 1 for values in by_point.values())  # shared by the seeds
    summary = pd.read_csv(annotated / fmt.SUMMARY_CSV)
    for key in EXPECTED_KEYS:
        assert summary[key].notna().sum() == len(zoo), key
    assert zoo.verify() == []


def test_downstream_annotation_resumes_without_recomputing(annotated, monkeypatch):
    import zoo_builder.annotating.annotate as annotate

    def fail(*args, **kwargs):
        raise AssertionError("recomputed a stored metric")

    for name in ("epoch_average_annotation", "rebasin_annotation", "pruning_annotation",
                 "ensemble_annotation", "transfer_annotation"):
        monkeypatch.setattr(annotate, name, fail)
    before = {p: p.read_bytes() for p in annotated.glob(f"*/{fmt.RESULT_FILE}")}
    annotate_zoo(annotated, groups=list(DOWNSTREAM_GROUPS), settings=FAST, progress=False)
    after = {p: p.read_bytes() for p in annotated.glob(f"*/{fmt.RESULT_FILE}")}
    assert before == after


def test_downstream_results_are_plotted(annotated, tmp_path):
    from zoo_builder.reporting.plots import downstream_panels, plot_phase_diagrams
    from zoo_builder.reporting.summaries import load_summary

    frame = load_summary(annotated)
    panels = {p.column: p for p in downstream_panels(frame)}
    assert {"wiseft_acc_test_delta", "gitrebasin_acc_test_delta", "prune_acc_test_90",
            "ensemble_gain", "transfer_acc", "wiseft_alpha_50_source_acc"} <= set(panels)
    assert panels["ensemble_gain"].centred and not panels["transfer_acc"].centred
    drawn = ["wiseft_acc_test_delta", "prune_acc_test_50"]  # two panels keep the test fast
    frame = frame.drop(columns=[c for c in panels if c not in drawn])
    written = {p.name for p in plot_phase_diagrams(frame, tmp_path, "tiny")}
    assert {"tiny_wiseft_acc_test_delta.png", "tiny_prune_acc_test_50.svg",
            "tiny_downstream_overview.png"} <= written


def test_a_window_with_one_checkpoint_warns_and_stores_nothing(tiny_zoo, tmp_path, caplog):
    root = Path(shutil.copytree(tiny_zoo, tmp_path / "zoo"))
    settings = AnnotationSettings(average_window=1)
    with caplog.at_level(logging.WARNING, logger="zoo_builder.annotating.annotate"):
        annotate_zoo(root, groups=["epoch_average"], settings=settings, progress=False)
    assert "widen the window" in caplog.text
    assert all(m.metric("wiseft_acc_test_delta") is None for m in Zoo.open(root).models)


def test_groups_settings_and_keys():
    assert expand_groups(["downstream", "cka"]) == ["cka", *DOWNSTREAM_GROUPS]
    with pytest.raises(ValueError, match="unknown metrics"):
        expand_groups(["pruning", "sparsity"])
    assert [percent_label(x) for x in (0, 0.5, 0.95, 1, 0.125)] == ["0", "50", "95", "100",
                                                                    "12_5"]
    assert done_keys("pruning", FAST) == ("prune_acc_test_50", "prune_acc_test_90")
    assert "wiseft_alpha_50_source_acc" in done_keys("transfer", FAST)
    with pytest.raises(ValueError, match="prune_sparsities"):
        AnnotationSettings(prune_sparsities=(0.5, 80))

    class FakeModel:
        name = "gpt"
        params = {"training::workload": "language_modeling"}

    class FakeZoo:
        root = Path("/zoo")
        models = [FakeModel()]

    with pytest.raises(AnnotationError, match="image-classification zoo"):
        check_downstream_zoo(FakeZoo(), ["rebasin"])
    with pytest.raises(AnnotationError, match="image-classification zoo"):
        check_downstream_zoo(FakeZoo(), ["transfer"])
    check_downstream_zoo(FakeZoo(), ["hessian", "pruning", "epoch_average", "ensemble"])
    language = {"training::workload": "language_modeling"}
    assert done_keys("pruning", FAST, language) == ("prune_acc_test_50", "prune_acc_test_90")
    assert done_keys("ensemble", FAST, {"training::workload": "physics_informed"}) == (
        "ensemble_rel_l2_test",)


def test_annotation_takes_the_averaging_window_and_curve_budget_from_the_zoo_spec(tiny_zoo):
    """A rebuild of a release is annotated as the release was with no flags: the bench
    preset averages epochs 20 and 40 (window 21) and trains curves for the spec's 560 steps;
    a preset without its own window keeps the default; given settings win."""
    from zoo_builder.annotating.annotate import DEFAULT_AVERAGE_WINDOW, settings_for

    release = Zoo.resolve("digits-resnet18-bench")
    resolved = settings_for(release, AnnotationSettings())
    assert (resolved.average_window, resolved.mc_steps) == (21, 560)
    assert {20, 40} == {e for e in release.models[0].checkpoint_epochs if e > 40 - 21}
    tiny = settings_for(Zoo.open(tiny_zoo), AnnotationSettings())
    assert (tiny.average_window, tiny.mc_steps) == (DEFAULT_AVERAGE_WINDOW, 560)
    given = settings_for(release, AnnotationSettings(average_window=3, mc_steps=70))
    assert (given.average_window, given.mc_steps) == (3, 70)


def test_cli_annotate_flags(tmp_path):
    from zoo_builder.cli import build_parser

    args = build_parser().parse_args(
        ["annotate", str(tmp_path), "--metrics", "downstream", "--average-window", "10",
         "--prune-sparsities", "0.5", "0.99", "--transfer-epochs", "2",
         "--wiseft-alphas", "0", "1"])
    assert args.metrics == ["downstream"] and args.average_window == 10
    assert args.prune_sparsities == [0.5, 0.99] and args.wiseft_alphas == [0.0, 1.0]
    defaults = build_parser().parse_args(["annotate", str(tmp_path)])
    assert defaults.prune_sparsities == [0.5, 0.8, 0.9, 0.95] and defaults.average_window is None
