"""``stat-gbm``: gradient-boosted trees on weight statistics (Unterthiner et al. 2020).

The strongest predictor of that paper (R^2 > 0.98 for test accuracy on small CNN zoos):
LightGBM on the mean, variance and five quantiles of every weight and bias tensor
(:mod:`baselines.weight_stats`). Regression targets use an LGBMRegressor, classification
targets (strings, e.g. phases) an LGBMClassifier on label-encoded classes. Boosting stops
early on the validation models' loss; validation models of a class never seen in training
are left out of that loss, and without any validation model it runs ``fallback_rounds``.
The settings suit zoos of tens to hundreds of models: small trees, leaves of a few models,
a small learning rate. Training is deterministic for a seed (LightGBM's ``deterministic``
mode, row-wise histograms, one thread by default).

Needs lightgbm: ``pip install 'wslbench[gbm]'``.
"""

from __future__ import annotations

import inspect
import logging
from typing import Sequence

import numpy as np

from baselines.targets import encode_labels, is_classification
from baselines.weight_stats import featurize, featurize_like
from wslbench.predictor import ModelSample, Predictor

log = logging.getLogger(__name__)


def _lightgbm():
    try:
        import lightgbm
    except ImportError as err:
        raise ImportError("stat-gbm needs lightgbm, which is not installed; install it with "
                          "`pip install 'wslbench[gbm]'`") from err
    return lightgbm


class StatGBM(Predictor):
    """LightGBM on per-tensor weight statistics (Unterthiner et al. 2020)."""

    name = "stat-gbm"

    def __init__(self, seed: int = 0, n_estimators: int = 1000, learning_rate: float = 0.05,
                 num_leaves: int = 8, early_stopping_rounds: int = 50,
                 fallback_rounds: int = 200, n_jobs: int = 1):
        super().__init__(seed)
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.early_stopping_rounds = early_stopping_rounds
        self.fallback_rounds = fallback_rounds
        self.n_jobs = n_jobs
        self.model = None
        self.classes: np.ndarray | None = None
        self._fitted = False

    def _params(self, n_train: int, rounds: int) -> dict:
        return dict(
            n_estimators=rounds, learning_rate=self.learning_rate, num_leaves=self.num_leaves,
            # about a tenth of the training models per leaf, never fewer than 2
            min_child_samples=int(np.clip(n_train // 10, 2, 20)), min_data_in_bin=1,
            subsample=0.8, subsample_freq=1, colsample_bytree=0.8, reg_lambda=1.0,
            random_state=self.seed, deterministic=True, force_row_wise=True,
            n_jobs=self.n_jobs, verbosity=-1,
        )

    def fit(self, train, train_targets, val, val_targets) -> None:
        lightgbm = _lightgbm()
        if len(train) == 0:
            raise ValueError("StatGBM.fit() got no training models")
        x_train, self.feature_names = featurize(train)
        x_val = featurize(val)[0] if len(val) else np.empty((0, x_train.shape[1]))
        self.classification = is_classification(train_targets)
        if self.classification:
            self.classes, y_train, y_val, known = encode_labels(train_targets, val_targets)
            self._fitted = True
            if len(self.classes) < 2:  # one class seen: nothing to separate
                self.model = None
                return
            x_val = x_val[known]
            estimator = lightgbm.LGBMClassifier
        else:
            y_train = np.asarray(train_targets, dtype=np.float64)
            y_val = np.asarray(val_targets, dtype=np.float64)
            estimator = lightgbm.LGBMRegressor

        if len(x_val):
            self.model = estimator(**self._params(len(x_train), self.n_estimators))
            # lightgbm >= 4.6 names the validation data eval_X/eval_y, older ones eval_set
            evaluation = ({"eval_X": (x_val,), "eval_y": (y_val,)}
                          if "eval_X" in inspect.signature(self.model.fit).parameters
                          else {"eval_set": [(x_val, y_val)]})
            self.model.fit(x_train, y_train, **evaluation, callbacks=[
                lightgbm.early_stopping(self.early_stopping_rounds, verbose=False)])
            log.info("stat-gbm stopped at %d rounds", self.model.best_iteration_)
        else:
            log.warning("stat-gbm has no usable validation model; boosting %d rounds",
                        self.fallback_rounds)
            self.model = estimator(**self._params(len(x_train), self.fallback_rounds))
            self.model.fit(x_train, y_train)
        self._fitted = True

    def predict(self, models: Sequence[ModelSample]) -> np.ndarray:
        if not self._fitted:
            raise RuntimeError("StatGBM.predict() called before fit()")
        if self.classification and self.model is None:
            return np.full(len(models), self.classes[0], dtype=object)
        if len(models) == 0:
            return np.empty(0, dtype=object if self.classification else np.float64)
        predicted = self.model.predict(featurize_like(models, self.feature_names, self.name))
        if self.classification:
            return self.classes[np.asarray(predicted, dtype=int)].astype(object)
        return np.asarray(predicted, dtype=np.float64)
