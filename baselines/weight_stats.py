"""Weight-statistics features (Unterthiner et al. 2020), shared by the statistics baselines.

For every weight and bias tensor of a model: mean, variance and the 0/25/50/75/100 %
quantiles. BatchNorm running statistics are buffers, not weights, and are left out.

The numbers are those of ``torch.quantile`` (``'linear'`` interpolation) and ``torch.var``
(``unbiased=False``) in float64, but computed in numpy without sorting a large tensor: its
few order statistics are selected from a narrow window that a small sample brackets, which
makes a ResNet-18 several times faster to featurize. Features go through
:func:`wslbench.features.featurize`, so they are streamed from the checkpoints one at a time
and cached per zoo revision.
"""

from __future__ import annotations

import warnings
import functools
from typing import Mapping, Sequence

import numpy as np
import torch

from wslbench import zoo_format as fmt
from wslbench.features import FeatureMismatchError
from wslbench.features import featurize as featurize_samples
from wslbench.predictor import ModelSample

STATISTICS = ("mean", "var", "q0", "q25", "q50", "q75", "q100")
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)

#: Name and version of the features in the feature cache: bump the version whenever the
#: numbers or their order change, so that no stale cached row is ever read.
FEATURES_NAME, FEATURES_VERSION = "weight-stats", 1

#: Tensors up to this size are sorted; larger ones have their order statistics selected.
_SORT_UP_TO = 4096
#: Values drawn to bracket each order statistic, and the margin (in sample ranks) either side.
_SAMPLE_SIZE, _MARGIN = 1024, 40


@functools.lru_cache(maxsize=None)
def _quantile_ranks(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each quantile of ``n`` sorted values: the ranks below and above it, and the weight
    of the upper one, as torch.quantile computes them (``q * (n - 1)`` in float64)."""
    ranks = np.asarray(QUANTILES, dtype=np.float64) * (n - 1)
    below = np.floor(ranks)
    return below.astype(np.int64), np.ceil(ranks).astype(np.int64), ranks - below


def _lerp(low: np.ndarray, high: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """torch.lerp's formula, so that quantiles match torch's to the last bit (inf too)."""
    return np.where(weight < 0.5, low + weight * (high - low), high - (high - low) * (1 - weight))


@functools.lru_cache(maxsize=None)
def _sample_index(n: int) -> np.ndarray:
    """Fixed pseudo-random positions in a tensor of ``n`` values; a regular stride could
    line up with a convolution's kernel layout and sample one kernel position only."""
    return np.random.default_rng(n).choice(n, size=_SAMPLE_SIZE, replace=False)


def _order_statistics(values: np.ndarray, ranks: np.ndarray) -> dict[int, float]:
    """The values at ``ranks`` (0-based) of the sorted finite ``values``, without sorting them.

    A sorted random sample brackets each rank by a value range; one pass counts the values
    below the range and keeps those inside, and only those are partitioned. Where the sample
    misses (the rank falls outside the range), the whole tensor is partitioned: the result is
    exact either way.
    """
    n = values.size
    out = {0: float(values.min()), n - 1: float(values.max())}
    wanted = sorted({int(rank) for rank in ranks} - set(out))
    sample = np.sort(values[_sample_index(n)])
    missed = []
    while wanted:
        # the ranks below and above one quantile are adjacent: one window serves both
        group = [rank for rank in wanted if rank - wanted[0] <= 1]
        wanted = wanted[len(group):]
        position = group[0] * _SAMPLE_SIZE // n
        low = sample[max(position - _MARGIN, 0)]
        high = sample[min(position + _MARGIN, _SAMPLE_SIZE - 1)]
        below = int(np.count_nonzero(values < low))
        window = values[(values >= low) & (values <= high)]
        if below <= group[0] and group[-1] < below + window.size:
            window = np.partition(window, [rank - below for rank in group])
            out.update({rank: float(window[rank - below]) for rank in group})
        else:
            missed.extend(group)
    if missed:
        selected = np.partition(values, missed)
        out.update({rank: float(selected[rank]) for rank in missed})
    return out


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A flat numpy view of a floating tensor; half and bfloat16 widened exactly to float32."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu" or tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.to("cpu", torch.float64 if tensor.dtype == torch.float64 else torch.float32)
    return tensor.numpy().reshape(-1)


def _statistics(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """A ``(len(arrays), 7)`` table of the statistics of flat arrays.

    Small arrays of one size are sorted together (one stacked matrix); large finite ones
    have their order statistics selected one at a time. Every quantile is then interpolated
    in one go, from the values below and above it, as torch.quantile does; an array holding
    a NaN gets NaN quantiles (NaN sorts last).
    """
    count = len(arrays)
    moments = np.empty((count, 2))
    low, high, weight = (np.empty((count, len(QUANTILES))) for _ in range(3))
    has_nan = np.zeros(count, dtype=bool)
    by_size: dict[int, list[int]] = {}  # small arrays by size, sorted together
    unsorted: list[list[int]] = []  # large ones with inf or NaN: sorted alone
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN, as in torch
        for index, values in enumerate(arrays):
            if values.size == 0:
                raise ValueError("weight statistics of an empty tensor are undefined; leave "
                                 "it out")
            if values.size <= _SORT_UP_TO:
                by_size.setdefault(values.size, []).append(index)
                continue
            centred = values.astype(np.float64)
            mean = centred.sum() / values.size
            if not np.isfinite(mean):  # inf or NaN: sort it, as torch does
                unsorted.append([index])
                continue
            centred -= mean
            moments[index] = mean, np.dot(centred, centred) / values.size
            below, above, weight[index] = _quantile_ranks(values.size)
            ordered = _order_statistics(values, np.concatenate([below, above]))
            low[index] = [ordered[rank] for rank in below.tolist()]
            high[index] = [ordered[rank] for rank in above.tolist()]
        for indices in [*by_size.values(), *unsorted]:
            ordered = np.sort(np.stack([arrays[i] for i in indices]), axis=1).astype(np.float64)
            n = ordered.shape[1]
            mean = ordered.mean(axis=1)
            centred = ordered - mean[:, None]
            moments[indices, 0] = mean
            moments[indices, 1] = np.einsum("ij,ij->i", centred, centred) / n if n > 1 else 0.0
            below, above, weight[indices] = _quantile_ranks(n)
            low[indices], high[indices] = ordered[:, below], ordered[:, above]
            has_nan[indices] = np.isnan(ordered[:, -1])
        quantiles = _lerp(low, high, weight)
    quantiles[has_nan] = np.nan
    return np.concatenate([moments, quantiles], axis=1)


def tensor_statistics(tensor: torch.Tensor) -> list[float]:
    """Mean, population variance and the 0/25/50/75/100 % quantiles of a tensor in float64:
    ``torch.quantile``'s numbers (linear interpolation; all NaN if a value is NaN)."""
    return _statistics([_as_numpy(tensor)])[0].tolist()


def weight_statistics(state_dict: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, list[str]]:
    """The feature vector of one model and the name of each feature."""
    keys = [key for key, tensor in state_dict.items() if fmt.is_weight(key, tensor)]
    empty = [key for key in keys if state_dict[key].numel() == 0]
    if empty:
        raise ValueError(f"weight tensor '{empty[0]}' is empty; weight statistics need at "
                         "least one value per tensor")
    table = _statistics([_as_numpy(state_dict[key]) for key in keys])
    return table.reshape(-1), [f"{key}:{stat}" for key in keys for stat in STATISTICS]


def featurize(models: Sequence[ModelSample], workers: int = 0) -> tuple[np.ndarray, list[str]]:
    """Stack the statistics of many models; they must share tensor names (one architecture).

    Checkpoints are read one at a time (``workers`` threads read and featurize them in
    parallel) and the rows are cached per zoo revision, so a second call reads no checkpoint.
    A statistic that is not finite (a diverged model's weights hold inf or NaN) is NaN, for
    the predictor to impute from its training models.
    """
    try:
        table = featurize_samples(models, weight_statistics, FEATURES_NAME, FEATURES_VERSION,
                                  workers=workers)
    except FeatureMismatchError as err:
        raise ValueError(f"model '{err.sample}' has other tensors than the first model "
                         f"(differences: {err.differences}); weight statistics need one "
                         "architecture") from err
    values = np.where(np.isfinite(table.values), table.values, np.nan)
    return values, table.names or []


def featurize_like(models: Sequence[ModelSample], feature_names: list[str],
                   predictor: str) -> np.ndarray:
    """The statistics of ``models``, which must have the tensors of the training models
    (``feature_names``, as :func:`featurize` named them there)."""
    x, names = featurize(models)
    if names != feature_names:
        raise ValueError(f"{predictor}: the models have other tensors than the training "
                         f"models (e.g. {sorted(set(names) ^ set(feature_names))[:3]}); "
                         "weight statistics need one architecture")
    return x


class TrainingRange:
    """Make feature rows safe for a model fit on the training rows: a non-finite entry (a
    diverged model's) becomes the training median, and every entry is clipped to the range
    the training rows span. Linear and MLP heads extrapolate without bound; a zoo with
    diverged models (weights of 1e20) or another data set (cross-zoo) would otherwise get
    predictions of any size. A scikit-learn transformer (``fit`` / ``transform``)."""

    def fit(self, x: np.ndarray, y=None) -> "TrainingRange":
        finite = np.where(np.isfinite(x), x, np.nan)
        with warnings.catch_warnings():  # a column without a finite value: 0
            warnings.simplefilter("ignore", RuntimeWarning)
            self.fill_ = np.nan_to_num(np.nanmedian(finite, axis=0))
            self.low_ = np.nan_to_num(np.nanmin(finite, axis=0))
            self.high_ = np.nan_to_num(np.nanmax(finite, axis=0))
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = np.where(np.isfinite(x), x, self.fill_)
        return np.clip(x, self.low_, self.high_)

    def fit_transform(self, x: np.ndarray, y=None) -> np.ndarray:
        return self.fit(x).transform(x)

    def get_params(self, deep: bool = True) -> dict:  # for sklearn.clone
        return {}

    def set_params(self, **params) -> "TrainingRange":
        return self
