"""``stat-mlp``: an MLP on weight statistics ("StatNN", Unterthiner et al. 2020).

The features are those of ``linear-probe`` (mean, variance and five quantiles of every weight
and bias tensor, :mod:`baselines.weight_stats`), standardized on the training models. The
MLP, its training and the choice of hidden width and weight decay on the validation models
are :mod:`baselines.mlp`'s. Statistics are per tensor, so zoos of mixed widths work as long as
their models share tensor names (one architecture).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from baselines.mlp import MLPPredictor
from baselines.weight_stats import featurize, featurize_like
from wslbench.predictor import ModelSample


class StatMLP(MLPPredictor):
    """StatNN: an MLP on per-tensor weight statistics (Unterthiner et al. 2020)."""

    name = "stat-mlp"

    def fit_features(self, train: Sequence[ModelSample]) -> np.ndarray:
        x, self.feature_names = featurize(train)
        return x

    def features(self, models: Sequence[ModelSample]) -> np.ndarray:
        return featurize_like(models, self.feature_names, self.name)
