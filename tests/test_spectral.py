"""Heavy-tailed spectral metrics (``spectral-mlp``, ``spectral-free``): the numbers against
weightwatcher's and a known power law, and the predictors on zoos of known targets."""

from __future__ import annotations

import contextlib
import io
import logging
import math

import numpy as np
import pytest
import torch

from baselines.mlp import MLPConfig
from baselines.spectral import (METRICS, eigenvalues, layer_metrics, power_law_alpha,
                                spectral_features, weight_matrices)
from test_baselines_simple import (assert_seeded, fc_abs_mean, fit_predict, r2, random_zoo,
                                  targets_of)
from wslbench.predictor import NotApplicableError, load_predictor_class
from zoo_builder.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

SHORT = {"grid": [MLPConfig(max_epochs=100)]}


def test_power_law_fit_recovers_the_exponent_of_pareto_samples():
    generator = np.random.default_rng(0)
    for alpha in (2.0, 3.5):
        # Pareto tail with density ~ x^-alpha above 1, plus a bulk below it that xmin must cut
        tail = (1 - generator.random(3000)) ** (-1 / (alpha - 1))
        bulk = generator.random(1000) * 0.9 + 0.05
        fitted, xmin = power_law_alpha(np.sort(np.concatenate([tail, bulk])))
        assert fitted == pytest.approx(alpha, abs=0.15)
        assert 0.9 <= xmin <= 1.5


def test_conv_eigenvalues_pool_the_kernel_positions():
    weight = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    expected = np.sort(np.concatenate([
        torch.linalg.svdvals(weight[:, :, i, j].double()).numpy() ** 2 / 2
        for i in range(3) for j in range(3)]))
    np.testing.assert_allclose(eigenvalues(weight), expected, rtol=1e-10)
    assert len(eigenvalues(torch.randn(5, 7))) == 5


def test_metrics_match_weightwatcher():
    """Every layer's alpha, alpha-hat, stable rank and spectral norm as weightwatcher 0.7
    computes them with default settings (small-sample fits included)."""
    weightwatcher = pytest.importorskip("weightwatcher")
    model = build_model({"type": "resnet18", "width": 4, "o_dim": 10, "channels_in": 1})
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            details = weightwatcher.WeightWatcher(model=model).analyze()
    finally:
        logging.disable(logging.NOTSET)
    ours = {key: layer_metrics(w) for key, w in weight_matrices(model.state_dict())}
    assert len(details) >= 15
    for _, row in details.iterrows():
        metrics = ours[f"{row.longname}.weight"]
        assert metrics["alpha"] == pytest.approx(row.alpha, rel=1e-6), row.longname
        assert metrics["alpha_hat"] == pytest.approx(row.alpha_weighted, rel=1e-6, abs=1e-9)
        assert 10 ** metrics["log_stable_rank"] == pytest.approx(row.stable_rank, rel=1e-6)
        assert 10 ** metrics["log_spectral_norm"] == pytest.approx(row.spectral_norm, rel=1e-6)


def test_features_name_every_matrix_and_the_layer_means():
    state = build_model({"type": "resnet18", "width": 1, "o_dim": 3, "channels_in": 1}).state_dict()
    values, names = spectral_features(state)
    matrices = [key for key, _ in weight_matrices(state)]
    assert len(values) == len(names) == (len(matrices) + 1) * len(METRICS)
    assert names[0] == f"{matrices[0]}:alpha" and names[-1] == "mean:log_norm"
    table = values[:-len(METRICS)].reshape(len(matrices), len(METRICS))
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(values[-len(METRICS):], np.nanmean(table, axis=0))


def test_spectral_mlp_recovers_a_known_function_across_widths():
    models = random_zoo(100, widths=(1, 2))
    predicted, targets = fit_predict("spectral-mlp", models, targets_of(models, fc_abs_mean))
    assert r2(predicted, targets) > 0.9


def test_spectral_mlp_same_seed_same_predictions():
    models = random_zoo(30)
    targets = targets_of(models, fc_abs_mean)
    assert_seeded("spectral-mlp", models, targets, **SHORT)


def test_spectral_free_is_minus_the_mean_alpha_hat_and_learns_nothing():
    models = random_zoo(20, widths=(1, 2))
    targets = targets_of(models, fc_abs_mean)
    predictor = load_predictor_class("spectral-free")(seed=0)
    predictor.fit(models[:10], targets[:10], models[10:15], targets[10:15])
    predicted = predictor.predict(models[15:])
    expected = []
    for model in models[15:]:
        hats = [layer_metrics(w)["alpha_hat"] for _, w in weight_matrices(model.state_dict())]
        expected.append(-np.nanmean(hats))
    np.testing.assert_allclose(predicted, expected, rtol=1e-9)
    other = load_predictor_class("spectral-free")(seed=5)
    other.fit(models[:10], targets[:10][::-1] * -3, models[10:15], targets[10:15])
    np.testing.assert_array_equal(other.predict(models[15:]), predicted)
    with pytest.raises(NotApplicableError, match="spectral-mlp"):
        predictor.fit(models[:4], np.array(["a", "b", "a", "b"], dtype=object), [], [])


def test_spectral_free_ranks_weights_with_heavier_tails_higher():
    """The metric's direction: weights with a heavier-tailed spectrum (smaller alpha) of the
    same spectral norm get a higher score, as Martin & Mahoney's better-trained layers do."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(64, 64, generator=generator) / 8
    u, _, v = torch.linalg.svd(base)
    ranks = torch.arange(1, 65, dtype=torch.float32)
    states = []
    for exponent in (0.3, 1.0):  # singular values ~ rank^-exponent: larger = heavier tail
        singular = 2 * ranks ** -exponent  # spectral norm 4: log10 > 0
        states.append({"fc.weight": u @ torch.diag(singular) @ v})
    scores = [-layer_metrics(s["fc.weight"])["alpha_hat"] for s in states]
    alphas = [layer_metrics(s["fc.weight"])["alpha"] for s in states]
    assert alphas[1] < alphas[0]
    assert scores[1] > scores[0]
    assert math.isclose(layer_metrics(states[0]["fc.weight"])["log_spectral_norm"],
                        math.log10(4), abs_tol=1e-5)


def test_issue_16_methods_are_registered_without_importing_them():
    import subprocess
    import sys

    probe = ("import sys, wslbench.predictor as p; "
             "assert all(n in p.PREDICTORS for n in ('probegen', 'nfn', 'spectral-mlp', "
             "'spectral-free')); "
             "print(sorted(m for m in sys.modules if m.startswith(('baselines', 'weightwatcher'))))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
    for name in ("probegen", "nfn", "spectral-mlp", "spectral-free"):
        assert callable(load_predictor_class(name)().fit)
