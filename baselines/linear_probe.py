"""``linear-probe``: the paper's Table 1 protocol, a ridge regression on weight statistics.

Features are standardized on the training models; the ridge penalty is chosen from a log grid
by the validation models' squared error (the same choice as by validation R², and defined
even for a single validation model).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from baselines.weight_stats import featurize
from wslbench.predictor import ModelSample, Predictor

ALPHAS = tuple(np.logspace(-3, 4, 15))


class LinearProbe(Predictor):
    name = "linear-probe"

    def __init__(self, seed: int = 0, alphas: Sequence[float] = ALPHAS):
        super().__init__(seed)
        self.alphas = tuple(alphas)
        self.alpha: float | None = None
        self.model = None

    def _make(self, alpha: float):
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), Ridge(alpha=alpha))

    def fit(self, train, train_targets, val, val_targets) -> None:
        from sklearn.metrics import mean_squared_error

        x_train, _ = featurize(train)
        x_val, _ = featurize(val)
        best = None
        for alpha in self.alphas:
            model = self._make(alpha).fit(x_train, train_targets)
            error = mean_squared_error(val_targets, model.predict(x_val))
            if best is None or error < best[0]:
                best = (error, alpha, model)
        _, self.alpha, self.model = best

    def predict(self, models: Sequence[ModelSample]) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("LinearProbe.predict() called before fit()")
        return self.model.predict(featurize(models)[0])
