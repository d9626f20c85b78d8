"""Heavy-tailed self-regularization metrics (Martin & Mahoney): ``spectral-mlp`` and ``spectral-free``.

Every weight matrix of a model gets the metrics of its empirical spectral density (ESD), the
eigenvalues of ``W^T W``, computed as the ``weightwatcher`` package (0.7, default settings)
computes them:

* a linear or embedding weight ``(out, in)`` is one matrix;
* a convolution ``(out, in, kh, kw)`` is ``kh * kw`` matrices ``W[:, :, i, j]`` (Martin &
  Mahoney's treatment of Conv2D layers), each scaled by ``sqrt(1/2)`` (weightwatcher's
  ``conv2d_norm``, ``sqrt(rf / 2)`` with the count reset to one per slice, which is what
  0.7.7's reported spectral norms show); their eigenvalues are pooled into one ESD per layer;
* ``alpha``: the exponent of a power law fit to the tail of the ESD (eigenvalues above 1e-5)
  by Clauset et al.'s method: the continuous maximum-likelihood exponent for every candidate
  ``xmin``, keeping the one whose Kolmogorov-Smirnov distance is smallest; below 20
  eigenvalues weightwatcher's bias-corrected small-sample variant, below 8 none (NaN: the
  MLP imputes it from the training models; weightwatcher skips such layers).
* ``alpha_hat = alpha * log10(lambda_max)`` (weightwatcher's ``alpha_weighted``), the
  ``stable rank`` ``sum(lambda) / lambda_max``, the spectral norm ``lambda_max`` (as
  weightwatcher reports it: the squared largest singular value, here as log10) and the
  log10 Frobenius norm ``log10 sum(lambda)``.

We compute them with torch/numpy rather than calling weightwatcher: it installs beside the
pinned torch, but took 9.3 s for one width-16 ResNet-18 on the 2-core reference CPU (its
power-law fits run in Python loops), about 10 minutes for a 75-model zoo before any training;
this module takes well under a second per model. ``tests/test_spectral.py`` checks our numbers
against weightwatcher's where it is installed.

Two predictors:

* ``spectral-mlp``: the per-layer metrics of every weight matrix (5 per layer) plus their
  means over layers, fed to the MLP of :mod:`baselines.mlp` (standardized inputs, hidden width
  and weight decay chosen on validation). Layers are matched by tensor name, so models must
  share one architecture (any widths).
* ``spectral-free``: the data-free metric as the literature uses it (Martin, Peng & Mahoney
  2021): the mean of ``alpha_hat`` over layers, lower for better-trained models. It predicts
  ``-mean(alpha_hat)`` with no training and no use of the training targets: its predictions
  are on another scale than any target, so only rank scores (Kendall tau, Spearman) mean
  something; R^2 is reported as it comes (very negative). It predicts numbers only; a
  classification task raises NotApplicableError.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch

from baselines.mlp import DEFAULT_GRID, MLPConfig, MLPPredictor
from baselines.targets import is_classification
from wslbench import zoo_format as fmt
from wslbench.features import featurize as featurize_samples
from wslbench.predictor import ModelSample, NotApplicableError, Predictor

METRICS = ("alpha", "alpha_hat", "log_stable_rank", "log_spectral_norm", "log_norm")

#: Name and version of the features in the feature cache; bump when the numbers change.
FEATURES_NAME, FEATURES_VERSION = "spectral-metrics", 1

#: eigenvalues at or below this are left out of the power-law fit (weightwatcher's EVALS_THRESH)
EVALS_THRESHOLD = 1e-5
#: weightwatcher's MIN_NUM_EVALS (fewer: no fit), SMALL_N_CUTOFF and its small-sample k_min
MIN_EVALS, SMALL_N, MIN_TAIL = 8, 20, 8
#: candidate xmins are processed in chunks of this many, bounding memory at chunk * n floats
_CHUNK = 256


def weight_matrices(state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """The weight tensors that are matrices (2-D: linear, embedding) or convolutions (4-D)."""
    return [(key, tensor) for key, tensor in state_dict.items()
            if fmt.is_weight(key, tensor) and tensor.ndim in (2, 4)]


def eigenvalues(weight: torch.Tensor) -> np.ndarray:
    """The sorted ESD of a weight: eigenvalues of ``W^T W`` (squared singular values), for a
    convolution pooled over its kernel positions, each slice scaled by ``sqrt(1/2)``."""
    weight = weight.detach().to("cpu", torch.float64)
    if weight.ndim == 4:
        positions = weight.shape[2] * weight.shape[3]
        slices = weight.permute(2, 3, 0, 1).reshape(positions, *weight.shape[:2])
        slices = slices * math.sqrt(0.5)
    else:
        slices = weight.unsqueeze(0)
    singular = torch.linalg.svdvals(torch.nan_to_num(slices, nan=0.0, posinf=0.0, neginf=0.0))
    return np.sort((singular ** 2).reshape(-1).numpy())


def power_law_alpha(evals: np.ndarray) -> tuple[float, float]:
    """Clauset et al.'s continuous power-law fit to sorted ``evals``, as weightwatcher 0.7
    runs it: ``(alpha, xmin)``.

    For each candidate ``xmin = x[i]`` (every value but the largest), the maximum-likelihood
    exponent of the tail ``x[i:]`` is ``1 + n / sum(log(x / xmin))``, and its Kolmogorov-Smirnov
    distance is the largest gap between the fitted CDF ``1 - (x / xmin)^(1 - alpha)`` and the
    empirical one ``j / n``; the xmin with the smallest distance wins (the first on ties).
    Below :data:`SMALL_N` eigenvalues the exponent is bias-corrected (``n - 1`` for ``n``) and
    only tails of at least :data:`MIN_TAIL` values are candidates; below :data:`MIN_EVALS`
    there is no fit (NaN), as weightwatcher skips such layers.
    """
    x = evals[evals > EVALS_THRESHOLD]
    n_all = len(x)
    if n_all < MIN_EVALS:
        return float("nan"), float("nan")
    small = n_all < SMALL_N
    logs = np.log(x)
    tail_sums = np.cumsum(logs[::-1])[::-1]  # sum of logs[i:]
    offsets = np.arange(n_all)
    best = (np.inf, float("nan"), float("nan"))
    for start in range(0, n_all - 1, _CHUNK):
        i = np.arange(start, min(start + _CHUNK, n_all - 1))
        n = (n_all - i).astype(np.float64)
        spread = tail_sums[i] - n * logs[i]
        with np.errstate(divide="ignore", invalid="ignore"):
            alphas = 1 + (n - 1 if small else n) / spread
        # tail x[i + j] for j < n_i; positions beyond the tail are masked out
        index = np.minimum(i[:, None] + offsets[None, :], n_all - 1)
        in_tail = offsets[None, :] < n[:, None]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            fitted = 1 - np.exp((1 - alphas[:, None]) * (logs[index] - logs[i][:, None]))
            gaps = np.abs(fitted - offsets[None, :] / n[:, None])
        distances = np.where(in_tail, gaps, 0).max(axis=1)
        invalid = ~(alphas > 1) | ~np.isfinite(alphas)
        if small:
            invalid |= (n < MIN_TAIL) | (spread <= 1e-12)
        distances[invalid] = 1.0  # weightwatcher's distance of a candidate without a fit
        k = int(np.argmin(distances))
        if distances[k] < best[0]:
            best = (distances[k], float(alphas[k]), float(x[i[k]]))
    if not np.isfinite(best[0]) or best[0] >= 1.0:  # no candidate has a fit
        return float("nan"), float("nan")
    return best[1], best[2]


def layer_metrics(weight: torch.Tensor) -> dict[str, float]:
    """The metrics of one weight matrix or convolution; see the module docstring."""
    evals = eigenvalues(weight)
    lambda_max = float(evals[-1]) if len(evals) else 0.0
    total = float(evals.sum())
    if not lambda_max > 0:  # an all-zero (or empty) matrix has no spectrum to fit
        return dict.fromkeys(METRICS, float("nan"))
    alpha, _ = power_law_alpha(evals)
    return {"alpha": alpha, "alpha_hat": alpha * math.log10(lambda_max),
            "log_stable_rank": math.log10(total / lambda_max),
            "log_spectral_norm": math.log10(lambda_max), "log_norm": math.log10(total)}


def spectral_features(state_dict: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, list[str]]:
    """Per layer the :data:`METRICS`, then each metric's mean over layers (NaN ignored)."""
    matrices = weight_matrices(state_dict)
    if not matrices:
        raise NotApplicableError("spectral metrics need weight matrices or convolutions; the "
                                 "model has no 2-D or 4-D weight tensor")
    table = np.array([[metrics[m] for m in METRICS]
                      for metrics in (layer_metrics(w) for _, w in matrices)])
    with np.errstate(all="ignore"):
        means = [np.nanmean(column) if np.isfinite(column).any() else np.nan
                 for column in table.T]
    names = ([f"{key}:{metric}" for key, _ in matrices for metric in METRICS]
             + [f"mean:{metric}" for metric in METRICS])
    return np.concatenate([table.reshape(-1), means]), names


def featurize(models: Sequence[ModelSample]) -> tuple[np.ndarray, list[str]]:
    """The spectral features of many models (cached per zoo revision); non-finite become NaN."""
    table = featurize_samples(models, spectral_features, FEATURES_NAME, FEATURES_VERSION)
    return np.where(np.isfinite(table.values), table.values, np.nan), table.names or []


class SpectralMLP(MLPPredictor):
    """Per-layer heavy-tail metrics (alpha, alpha-hat, stable rank, spectral and Frobenius
    norm) and their layer means, read by :mod:`baselines.mlp`'s MLP."""

    name = "spectral-mlp"

    def __init__(self, seed: int = 0, grid: Sequence[MLPConfig] = DEFAULT_GRID):
        super().__init__(seed, grid)

    def fit_features(self, train: Sequence[ModelSample]) -> np.ndarray:
        x, self.feature_names = featurize(train)
        return x

    def features(self, models: Sequence[ModelSample]) -> np.ndarray:
        x, names = featurize(models)
        if names != self.feature_names:
            raise NotApplicableError(
                f"{self.name}: the models have other weight matrices than the training models "
                f"(e.g. {sorted(set(names) ^ set(self.feature_names))[:3]}); per-layer metrics "
                "need one architecture; spectral-free works across architectures")
        return x


class SpectralFree(Predictor):
    """The data-free quality metric: ``-mean over layers of alpha_hat``; no training."""

    name = "spectral-free"

    def fit(self, train, train_targets, val, val_targets) -> None:
        if is_classification(train_targets):
            raise NotApplicableError(
                "spectral-free predicts a number (minus the mean alpha-hat), not a label; use "
                "spectral-mlp for classification tasks")
        self._fitted = True  # nothing is learned: the formula is fixed

    def predict(self, models: Sequence[ModelSample]) -> np.ndarray:
        if not getattr(self, "_fitted", False):
            raise RuntimeError("SpectralFree.predict() called before fit()")
        if len(models) == 0:
            return np.empty(0)
        table = featurize_samples(models, spectral_features, FEATURES_NAME, FEATURES_VERSION)
        column = table.names.index("mean:alpha_hat")
        score = -table.values[:, column]
        # a model without any fitted layer (all weights zero or diverged) gets the worst score
        # seen, so that it ranks last rather than breaking the rank scores with NaN
        finite = np.isfinite(score)
        fill = score[finite].min() if finite.any() else 0.0
        return np.where(finite, score, fill)
