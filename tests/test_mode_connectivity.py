"""Bezier-curve mode connectivity (REFERENCE §3) and the BatchNorm re-estimation it relies on."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from wslbench import zoo_format as fmt
from zoo_builder.data import ImageData, load_dataset
from zoo_builder.data.images import Augmentation
from zoo_builder.annotating.landscape.batchnorm import recompute_batchnorm_statistics
from zoo_builder.annotating.landscape.problems import ImageClassificationLandscape
from zoo_builder.annotating.landscape.mode_connectivity import (
    EndValues, ModeConnectivityResult, bezier_mode_connectivity, bezier_point, curve_connectivity,
    curve_learning_rate,
)
from zoo_builder.models import build_model, resnet18
from zoo_builder.building.catalog import SPECS
from zoo_builder.building.train import train_trial
from zoo_builder.building.workloads import evaluate_classifier as evaluate

#: The ends of the curves: seeds 0 and 1 of a digits ResNet-18 at width 8, batch 32, trained
#: 3 epochs by the real trainer (about 80 % train accuracy; a clear barrier on the line).
END_PARAMS = {"model::width": 8, "training::batchsize": 32, "training::epochs_train": 3,
              "training::checkpoint_epochs": []}


#: Tiny networks: one thread is faster, and two spin on a shared machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def seed_pair(digits, tmp_path_factory) -> list[nn.Module]:
    """Two seeds of one grid point of the digits zoo (``END_PARAMS``)."""
    plans = SPECS.get("digits-resnet18").with_preset("tiny").trials()
    models = []
    for seed in (0, 1):
        params = {**plans[0].params, **END_PARAMS, "seed": seed}
        trial = tmp_path_factory.mktemp(f"seed{seed}")
        train_trial(params, trial, data=digits)
        model = build_model(fmt.params_section(params, "model"))
        model.load_state_dict(fmt.load_state_dict(trial, params["training::epochs_train"]))
        models.append(model)
    return models


# --------------------------------------------------------------------------- the mc formula


def test_curve_connectivity_on_hand_made_curves():
    assert curve_connectivity([10, 12, 30, 12, 10]) == -20  # a barrier
    assert curve_connectivity([10, 8, 2, 8, 10]) == 8  # the curve finds lower loss
    assert curve_connectivity([5, 5, 5, 5, 5]) == 0  # flat
    # Only interior points compete (the reference lets the ends compete too, so a monotone
    # curve gave half the ends' gap signed by the first end: -5 here and +5 reversed).
    assert curve_connectivity([10, 9, 8, 7, 0]) == -4
    assert curve_connectivity([0, 7, 8, 9, 10]) == -4
    # a tie between deviations of opposite sign (-2.5 / +2.5) goes to the barrier
    assert curve_connectivity([0, 2.5, 5, 7.5, 10]) == -2.5
    assert curve_connectivity([0, 1, 0]) == -1 and curve_connectivity([4, 1, 0]) == 1
    assert math.isnan(curve_connectivity([1, float("nan"), 1]))
    with pytest.raises(ValueError, match="at least 3 values"):
        curve_connectivity([1, 2])


def test_curve_connectivity_does_not_depend_on_which_end_comes_first():
    rng = np.random.default_rng(17)
    for trial in range(2000):
        n = int(rng.integers(3, 12))
        if trial % 3 == 0:  # coarse values: many exact ties, of both signs
            curve = rng.integers(0, 6, size=n).astype(float) * 2.5
        else:
            curve = rng.normal(0, 10, size=n) + rng.uniform(-30, 30) * np.linspace(0, 1, n)
        forward, backward = curve_connectivity(curve), curve_connectivity(curve[::-1])
        assert forward == backward, (curve, forward, backward)
        middle = (curve[0] + curve[-1]) / 2
        assert abs(forward) == pytest.approx(np.abs(curve[1:-1] - middle).max())


def test_learning_rate_schedule_is_computed_from_the_base_rate():
    rates = [curve_learning_rate(0.1, step / 100) for step in range(101)]
    assert rates[0] == rates[50] == 0.1
    assert rates[70] == pytest.approx(0.1 * (1 - 0.2 / 0.4 * 0.99))
    assert rates[90] == pytest.approx(0.001) and rates[100] == pytest.approx(0.001)
    assert all(later <= earlier for earlier, later in zip(rates, rates[1:]))


def test_untrained_bezier_curve_is_the_straight_line():
    start, end = {"w": torch.randn(3, 4)}, {"w": torch.randn(3, 4)}
    middle = {"w": (start["w"] + end["w"]) / 2}
    for t in (0.0, 0.3, 0.5, 1.0):
        point = bezier_point(start, middle, end, t)["w"]
        assert torch.allclose(point, (1 - t) * start["w"] + t * end["w"], atol=1e-6)


# --------------------------------------------------------------------------- BatchNorm


def test_batchnorm_recompute_gives_the_mean_over_all_images():
    torch.manual_seed(0)
    model = resnet18(width=2, num_classes=10, in_channels=1)
    model.bn1.momentum = 0.3
    model.bn1.running_mean.fill_(5.0)
    model.eval()
    model.layer1.train()  # a mixed mode must come back as it was
    inputs = []
    hook = model.bn1.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    images = torch.rand(300, 1, 8, 8)
    recompute_batchnorm_statistics(model, images, lambda x: 2 * x - 1, batch_size=128)
    hook.remove()

    assert [len(batch) for batch in inputs] == [100, 100, 100]  # near-equal batches
    activations = torch.cat(inputs)
    expected_mean = activations.mean(dim=(0, 2, 3))
    assert torch.allclose(model.bn1.running_mean, expected_mean, atol=1e-5)
    per_batch_var = torch.stack([batch.var(dim=(0, 2, 3)) for batch in inputs])  # unbiased
    assert torch.allclose(model.bn1.running_var, per_batch_var.mean(dim=0), rtol=1e-4)
    assert model.bn1.momentum == 0.3 and model.layer1[0].bn1.momentum == 0.1
    assert not model.training and model.layer1.training and not model.layer2.training


def test_batchnorm_recompute_weights_an_uneven_last_batch_by_its_size():
    torch.manual_seed(1)
    model = resnet18(width=2, num_classes=10, in_channels=1).train()
    inputs = []
    hook = model.bn1.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    recompute_batchnorm_statistics(model, torch.rand(7, 1, 8, 8), batch_size=3)
    hook.remove()
    assert [len(batch) for batch in inputs] == [3, 2, 2]
    assert torch.allclose(model.bn1.running_mean, torch.cat(inputs).mean(dim=(0, 2, 3)),
                          atol=1e-5)
    assert model.training


def test_batchnorm_recompute_leaves_models_without_batchnorm_alone():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    before = copy.deepcopy(model.state_dict())
    recompute_batchnorm_statistics(model, torch.rand(4, 1, 8, 8))
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    with pytest.raises(ValueError, match="no images"):
        recompute_batchnorm_statistics(resnet18(width=2, in_channels=1), torch.rand(0, 1, 8, 8))


# --------------------------------------------------------------------------- curves


def test_mode_connectivity_of_a_model_with_itself_is_zero(seed_pair, digits):
    model = seed_pair[0]
    before = copy.deepcopy(model.state_dict())
    line = bezier_mode_connectivity(model, model, digits, steps=0)
    assert isinstance(line, ModeConnectivityResult) and line.t == [0.0, 0.25, 0.5, 0.75, 1.0]
    metrics = line.to_metrics()
    assert sorted(metrics) == ["curve_mc_test_error", "curve_mc_test_loss",
                               "curve_mc_train_error", "curve_mc_train_loss"]
    # Interior points (1-t)² θ + 2t(1-t) θ + t² θ equal θ up to float rounding.
    assert all(abs(value) < 1e-5 for value in metrics.values())
    # The ends are measured with BatchNorm statistics recomputed on the training images.
    reference = copy.deepcopy(model)
    recompute_batchnorm_statistics(reference, digits.train_x, digits.normalize, batch_size=128)
    loss, acc = evaluate(reference, digits, digits.train_x, digits.train_y)
    assert line.curves["train_loss"][0] == pytest.approx(loss)
    assert line.curves["train_error"][-1] == pytest.approx(100 * (1 - acc))

    # Training moves the middle only a little off a curve that is already a (trained) point.
    trained = bezier_mode_connectivity(model, model, digits, steps=7, lr=0.01, seed=3)
    assert abs(trained.mc["train_error"]) < 2.0 and abs(trained.mc["test_error"]) < 2.0
    assert abs(trained.mc["train_loss"]) < 0.05 and abs(trained.mc["test_loss"]) < 0.05
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_two_seeds_have_a_barrier_that_curve_training_lowers(seed_pair, digits):
    first, second = seed_pair
    line = bezier_mode_connectivity(first, second, digits, steps=0)
    ends = max(line.curves["train_error"][0], line.curves["train_error"][-1])
    assert line.curves["train_error"][2] > ends  # the straight line's midpoint is worse than both
    assert line.mc["train_error"] < 0 and line.mc["test_error"] < 0 and line.mc["train_loss"] < 0

    curve = bezier_mode_connectivity(first, second, digits, steps=14, seed=0)
    assert curve.curves["train_error"][0] == line.curves["train_error"][0]  # the ends stay fixed
    assert curve.curves["test_loss"][-1] == line.curves["test_loss"][-1]
    assert curve.mc["train_error"] > line.mc["train_error"]
    assert curve.mc["train_loss"] > line.mc["train_loss"]
    assert curve.mc["test_error"] > line.mc["test_error"]


def test_curve_training_is_seeded_and_takes_an_augmentation(digits):
    n = 256
    small = ImageData(digits.train_x[:n], digits.train_y[:n], digits.test_x[:n],
                      digits.test_y[:n], num_classes=10, name="digits")
    torch.manual_seed(0)
    first = resnet18(width=2, num_classes=10, in_channels=1)
    second = resnet18(width=2, num_classes=10, in_channels=1)
    augment = Augmentation(crop_padding=1, rotation_degrees=10.0)
    runs = [bezier_mode_connectivity(first, second, small, steps=4, batch_size=64,
                                     n_eval_points=3, augment=augment, seed=seed)
            for seed in (5, 5, 6)]
    assert runs[0].t == [0.0, 0.5, 1.0]
    assert runs[0].curves["train_loss"] == runs[1].curves["train_loss"]
    assert runs[0].curves["train_loss"][1] != runs[2].curves["train_loss"][1]
    assert runs[0].curves["train_loss"][0] == runs[2].curves["train_loss"][0]


def test_the_seed_pairs_of_a_grid_point_measure_each_end_once_with_the_same_values(digits):
    """EndValues: three seeds, three curves, six ends but three models: three end
    measurements, and every curve equals the one measured without sharing, bit for bit."""
    n = 256
    small = ImageData(digits.train_x[:n], digits.train_y[:n], digits.test_x[:n],
                      digits.test_y[:n], num_classes=10, name="digits")
    torch.manual_seed(0)
    models = [resnet18(width=2, num_classes=10, in_channels=1) for _ in range(3)]
    problem = ImageClassificationLandscape({}, small)
    measured = []
    point_metrics = problem.point_metrics
    problem.point_metrics = lambda model: measured.append(1) or point_metrics(model)
    pairs = [(0, 1), (0, 2), (1, 2)]

    def curves(end_values):
        measured.clear()
        out = [bezier_mode_connectivity(models[i], models[j], problem, steps=2, batch_size=64,
                                        n_eval_points=3, seed=k, end_values=end_values)
               for k, (i, j) in enumerate(pairs)]
        return out, len(measured)

    alone, alone_count = curves(None)
    shared, shared_count = curves(EndValues())
    assert (alone_count, shared_count) == (9, 6)
    for a, b in zip(alone, shared):
        assert a.curves == b.curves and a.mc == b.mc


def test_mode_connectivity_needs_one_architecture(digits):
    narrow = resnet18(width=2, num_classes=10, in_channels=1)
    wide = resnet18(width=4, num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match=r"same architecture.*conv1.weight: \(2, 1, 3, 3\) vs"):
        bezier_mode_connectivity(narrow, wide, digits, steps=0)
    with pytest.raises(ValueError, match="n_eval_points must be at least 3"):
        bezier_mode_connectivity(narrow, narrow, digits, steps=0, n_eval_points=2)


def test_the_curve_budget_is_optimizer_steps_whatever_the_data_set_size(digits, monkeypatch):
    steps_taken = []
    original_step = torch.optim.SGD.step

    def counted_step(self, *args, **kwargs):
        steps_taken.append(1)
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", counted_step)
    torch.manual_seed(0)
    first = resnet18(width=1, num_classes=10, in_channels=1)
    second = resnet18(width=1, num_classes=10, in_channels=1)
    for n in (128, 300, len(digits.train_x)):  # 1, 2 and 7 batches of 128 per shuffle
        data = ImageData(digits.train_x[:n], digits.train_y[:n], digits.test_x[:64],
                         digits.test_y[:64], num_classes=10, name="digits")
        steps_taken.clear()
        result = bezier_mode_connectivity(first, second, data, steps=20, n_eval_points=3)
        assert len(steps_taken) == 20
        metrics = result.to_metrics()
        assert metrics["curve_steps"] == 20
        assert metrics["curve_converged"] in (0.0, 1.0)
        assert math.isfinite(metrics["curve_loss_final"])


def test_curve_convergence_is_judged_on_the_loss_before_the_rate_decays():
    from zoo_builder.annotating.landscape.mode_connectivity import CurveTraining

    ln10 = math.log(10)
    still_falling = CurveTraining.from_losses(list(np.linspace(2.0, 0.5, 100)), ln10)
    assert not still_falling.converged
    assert still_falling.loss_drop == pytest.approx((1.5 * 0.2) / ln10, rel=0.05)
    flat = CurveTraining.from_losses([2.0] * 10 + [0.3] * 90, ln10)
    assert flat.converged and flat.loss_drop == pytest.approx(0.0)
    assert flat.steps == 100 and flat.loss_final == pytest.approx(0.3)
    # Near zero a halving loss is a tiny drop in units of ln(C): converged, where a relative
    # drop (50%) would never be.
    near_zero = CurveTraining.from_losses([0.04] * 30 + [0.02] * 70, ln10)
    assert near_zero.converged and near_zero.loss_drop == pytest.approx(0.02 / ln10)
