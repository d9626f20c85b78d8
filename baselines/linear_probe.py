"""``linear-probe``: the paper's Table 1 protocol, a linear model on weight statistics.

Features are made safe (:class:`baselines.weight_stats.TrainingRange`: a diverged model's
NaN statistic becomes the training median, and every feature is clipped to the training
range, so that a linear head cannot extrapolate without bound), then standardized on the
training models. For regression targets a ridge regression,
its penalty chosen from a log grid by the validation models' squared error (the same choice
as by validation R², and defined even for a single validation model). For classification
targets (strings, e.g. phases) a multinomial logistic regression, its inverse penalty chosen
by validation macro-F1. The chosen model is the one fit on the training models alone.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from baselines.targets import is_classification
from baselines.weight_stats import TrainingRange, featurize
from wslbench.predictor import ModelSample, Predictor

ALPHAS = tuple(np.logspace(-3, 4, 15))


class LinearProbe(Predictor):
    name = "linear-probe"

    def __init__(self, seed: int = 0, alphas: Sequence[float] = ALPHAS):
        super().__init__(seed)
        self.alphas = tuple(alphas)
        self.alpha: float | None = None
        self.model = None

    def _candidates(self, classification: bool):
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        for alpha in self.alphas:
            head = (LogisticRegression(C=1.0 / alpha, max_iter=2000) if classification
                    else Ridge(alpha=alpha))
            yield alpha, make_pipeline(TrainingRange(), StandardScaler(), head)

    def fit(self, train, train_targets, val, val_targets) -> None:
        from sklearn.dummy import DummyClassifier
        from sklearn.metrics import f1_score, mean_squared_error

        x_train, _ = featurize(train)
        x_val, _ = featurize(val)
        classification = is_classification(train_targets)
        if classification:
            train_targets = np.asarray(train_targets, dtype=str)
            val_targets = np.asarray(val_targets, dtype=str)
            if len(set(train_targets)) < 2:  # one class seen: nothing to separate
                self.alpha, self.model = None, DummyClassifier().fit(x_train, train_targets)
                return
        best = None
        for alpha, model in self._candidates(classification):
            model.fit(x_train, train_targets)
            predicted = model.predict(x_val)
            loss = (-f1_score(val_targets, predicted, average="macro", zero_division=0)
                    if classification else mean_squared_error(val_targets, predicted))
            if best is None or loss < best[0]:
                best = (loss, alpha, model)
        _, self.alpha, self.model = best

    def predict(self, models: Sequence[ModelSample]) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("LinearProbe.predict() called before fit()")
        return self.model.predict(featurize(models)[0])
