"""The statistics and flat baselines: stat-gbm, stat-mlp (StatNN) and flat-mlp."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.mlp import MLPConfig
from helpers import TINY_MODEL_ARGS, write_synthetic_zoo
from wslbench.evaluate import evaluate
from wslbench.predictor import ModelSample, load_predictor_class
from wslbench.splits import SPLITS, make_split
from wslbench.tasks import TASKS
from wslbench.zoo import Zoo
from zoo_builder.models import build_model

BASELINES = ("stat-gbm", "stat-mlp", "flat-mlp")


def fc_max_and_stem_mean(state: dict[str, torch.Tensor]) -> float:
    """The known function of the linear-probe test: a max and a mean of two tensors."""
    return float(state["fc.weight"].max() + 0.5 * state["conv1.weight"].mean())


def fc_abs_mean(state: dict[str, torch.Tensor]) -> float:
    return float(state["fc.weight"].abs().mean())


def random_zoo(n: int, widths=(1,), shared_init: bool = False) -> list[ModelSample]:
    """``n`` models in memory, each a random init times a random scale in [0.1, 2.1].

    ``shared_init``: every model starts from one init (plus 10 % independent noise), as in
    zoos trained from one seed, where the flat weights of different models line up.
    """
    generator = torch.Generator().manual_seed(1)
    models = []
    for index in range(n):
        width = widths[index % len(widths)]
        args = {**TINY_MODEL_ARGS, "width": width}
        torch.manual_seed(0 if shared_init else index)
        state = build_model(args).state_dict()
        scale = float(torch.rand((), generator=generator)) * 2 + 0.1
        for key, value in state.items():
            if value.is_floating_point():
                noise = torch.randn(value.shape, generator=generator) * value.std(correction=0)
                state[key] = scale * (value + 0.1 * noise if shared_init else value)
        models.append(ModelSample(name=f"model{index}_w{width}", epoch=0, model_args=args,
                                  hyperparameters=None, _load=lambda state=state: state))
    return models


def targets_of(models: list[ModelSample], function) -> np.ndarray:
    return np.array([function(m.state_dict()) for m in models])


def tertile_labels(values: np.ndarray) -> np.ndarray:
    """Three string classes by the tertiles of ``values``: chance accuracy is 1/3."""
    low, high = np.quantile(values, [1 / 3, 2 / 3])
    return np.where(values < low, "low", np.where(values < high, "mid", "high")).astype(object)


def fit_predict(name: str, models: list[ModelSample], targets: np.ndarray, seed: int = 0,
                **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Fit on the first 60 %, validate on the next 20 %, predict the last 20 %."""
    n_train, n_val = int(0.6 * len(models)), int(0.2 * len(models))
    predictor = load_predictor_class(name)(seed=seed, **kwargs)
    predictor.fit(models[:n_train], targets[:n_train], models[n_train:n_train + n_val],
                  targets[n_train:n_train + n_val])
    return predictor.predict(models[n_train + n_val:]), targets[n_train + n_val:]


def assert_seeded(name: str, models: list[ModelSample], targets: np.ndarray, **kwargs) -> None:
    """Seed 3 twice gives the same predictions, whatever the global RNG's state; seed 4 others."""
    first, _ = fit_predict(name, models, targets, seed=3, **kwargs)
    torch.manual_seed(123)  # the global RNG's state must not matter
    again, _ = fit_predict(name, models, targets, seed=3, **kwargs)
    np.testing.assert_array_equal(first, again)
    other, _ = fit_predict(name, models, targets, seed=4, **kwargs)
    assert not np.array_equal(first, other)  # the seed is used


def r2(predicted: np.ndarray, targets: np.ndarray) -> float:
    return 1 - float(np.sum((targets - predicted) ** 2) / np.sum((targets - targets.mean()) ** 2))


@pytest.fixture(scope="module")
def synthetic_zoo(tmp_path_factory) -> Zoo:
    """60 random models on disk whose test_acc is :func:`fc_max_and_stem_mean`."""
    return Zoo.open(write_synthetic_zoo(tmp_path_factory.mktemp("zoo") / "zoo", n_points=60,
                                        seeds=(0,), target=fc_max_and_stem_mean))


@pytest.mark.parametrize("name", ["stat-gbm", "stat-mlp"])
def test_statistics_baselines_recover_a_known_function_through_evaluate(synthetic_zoo, name):
    zoo = synthetic_zoo
    result = evaluate(load_predictor_class(name), TASKS.get("test_acc"), zoo,
                      make_split(zoo, SPLITS.get("iid")))
    assert result.predictor["name"] == name
    assert result.scores["r2"]["value"] > 0.9
    assert result.scores["kendall_tau"]["value"] > 0.7


@pytest.mark.parametrize("name", ["stat-gbm", "stat-mlp"])
def test_statistics_baselines_work_across_widths(name):
    models = random_zoo(100, widths=(1, 2))
    predicted, targets = fit_predict(name, models, targets_of(models, fc_max_and_stem_mean))
    assert r2(predicted, targets) > 0.9


@pytest.mark.parametrize("max_input_dim", [4096, 512])  # the flat vector has 3060 entries
def test_flat_mlp_recovers_a_known_function_with_and_without_projection(max_input_dim):
    models = random_zoo(80, shared_init=True)
    predicted, targets = fit_predict("flat-mlp", models, targets_of(models, fc_abs_mean),
                                     max_input_dim=max_input_dim)
    assert r2(predicted, targets) > 0.9


@pytest.mark.parametrize("name", BASELINES)
def test_classification_targets_are_recovered(name):
    models = random_zoo(120, widths=(1,) if name == "flat-mlp" else (1, 2),
                        shared_init=name == "flat-mlp")
    labels = tertile_labels(targets_of(models, fc_abs_mean))
    predicted, truth = fit_predict(name, models, labels)
    assert set(predicted) <= {"low", "mid", "high"}
    assert np.mean(predicted == truth) > 0.75  # chance: 1/3


@pytest.mark.parametrize("name", BASELINES)
def test_same_seed_same_predictions(name):
    models = random_zoo(30, shared_init=True)
    targets = targets_of(models, fc_abs_mean)
    # one short configuration keeps the MLPs cheap; the grid search adds no randomness
    options = {} if name == "stat-gbm" else {"grid": [MLPConfig(max_epochs=50)]}
    assert_seeded(name, models, targets, **options)  # stat-gbm uses the seed for bagging


@pytest.mark.parametrize("name", ["stat-gbm", "stat-mlp"])
def test_one_training_class_and_a_tiny_validation_set(name):
    models = random_zoo(8)
    options = {} if name == "stat-gbm" else {"grid": [MLPConfig(max_epochs=50)]}
    predictor = load_predictor_class(name)(seed=0, **options)
    labels = np.array(["a"] * 6 + ["b"], dtype=object)
    predictor.fit(models[:6], labels[:6], models[6:7], labels[6:7])  # "b" unseen in training
    assert list(predictor.predict(models[7:])) == ["a"]
    labels = np.array(["a", "b"] * 3 + ["c"], dtype=object)  # no usable validation model
    predictor.fit(models[:6], labels[:6], models[6:7], labels[6:7])
    assert set(predictor.predict(models[6:])) <= {"a", "b"}
    targets = targets_of(models, fc_abs_mean)
    predictor.fit(models[:6], targets[:6], models[6:7], targets[6:7])
    assert np.isfinite(predictor.predict(models[7:])).all()


def test_flat_mlp_refuses_mixed_shapes_and_says_what_to_use():
    models = random_zoo(6, widths=(1, 2))
    predictor = load_predictor_class("flat-mlp")()
    with pytest.raises(ValueError) as error:
        predictor.fit(models[:4], np.arange(4.0), models[4:], np.arange(2.0))
    message = str(error.value)
    assert "'model1_w2'" in message and "'model0_w1'" in message
    assert "'conv1.weight' of shape [2, 1, 3, 3]" in message  # the first that differs
    assert "stat-mlp" in message and "gmn" in message


def test_stat_gbm_without_lightgbm_says_how_to_install(monkeypatch):
    from baselines.stat_gbm import StatGBM

    monkeypatch.setitem(sys.modules, "lightgbm", None)  # makes `import lightgbm` fail
    models = random_zoo(4)
    with pytest.raises(ImportError, match=r"pip install 'wslbench\[gbm\]'"):
        StatGBM().fit(models[:3], np.arange(3.0), models[3:], np.arange(1.0))


def test_baselines_are_listed_without_importing_them():
    wslbench = str(Path(sys.executable).with_name("wslbench"))
    listing = subprocess.run([wslbench, "ls", "models"], capture_output=True, text=True,
                             check=True).stdout
    for name in BASELINES:
        assert name in listing
    probe = ("import sys, wslbench.predictor as p; assert 'flat-mlp' in p.PREDICTORS; "
             "print(sorted(m for m in sys.modules if m.startswith(('lightgbm', 'baselines'))))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["linear-probe", "stat-gbm", "stat-mlp", "flat-mlp"])
def test_diverged_models_with_non_finite_weights_still_get_predictions(name):
    """Zoos hold models whose training blew up (inf / NaN weights, as in hot corners of the
    grid): baselines impute their features from the training models instead of failing."""
    models = random_zoo(40)
    targets = targets_of(models, fc_abs_mean)
    for index, bad in ((3, float("nan")), (20, float("inf")), (37, float("nan"))):
        state = models[index].state_dict()
        state["fc.weight"][0, 0] = bad  # in the training, validation and test parts
    predicted, _ = fit_predict(name, models, targets, **(
        {"grid": [MLPConfig(max_epochs=50)]} if "mlp" in name else {}))
    assert predicted.shape == (8,) and np.isfinite(predicted).all()


def test_features_far_outside_the_training_range_are_clipped():
    """A model with weights of 1e20 (a blown-up run, or another zoo) gets a prediction within
    the range the head saw, not one of any size."""
    models = random_zoo(40)
    targets = targets_of(models, fc_abs_mean)
    models[-1].state_dict()["fc.weight"].mul_(1e20)
    for name in ("linear-probe", "stat-mlp"):
        predicted, _ = fit_predict(name, models, targets, **(
            {"grid": [MLPConfig(max_epochs=50)]} if "mlp" in name else {}))
        assert abs(predicted[-1]) < 10 * np.abs(targets).max(), name
