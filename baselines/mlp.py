"""The MLP training shared by ``stat-mlp`` and ``flat-mlp``: one loop, early stopping on validation.

A subclass of :class:`MLPPredictor` says how models become feature vectors; this module does
the rest: standardize the features on the training models, encode the targets (standardized
floats for regression, class indices for classification), train one MLP per configuration of a
small grid with Adam(W) and early stopping on the validation loss (the best state is kept),
and predict with the configuration of the lowest validation loss. Everything is seeded.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from baselines.targets import encode_labels, is_classification
from baselines.training import torch_threads, train_early_stopping
from baselines.weight_stats import TrainingRange
from wslbench.predictor import ModelSample, Predictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MLPConfig:
    """One MLP and how it is trained; the defaults suit zoos of tens to hundreds of models."""

    hidden: int = 64
    depth: int = 2
    weight_decay: float = 0.01
    learning_rate: float = 3e-3
    dropout: float = 0.0
    batch_size: int = 32
    max_epochs: int = 400
    patience: int = 30


#: hidden width x weight decay, chosen on validation. AdamW's decay is decoupled (each step
#: shrinks the weights by learning_rate * weight_decay), so it bites only from ~0.1 upwards.
DEFAULT_GRID = tuple(MLPConfig(hidden=h, weight_decay=wd) for h in (32, 128) for wd in (0.01, 1.0))


def scale_floor(std: np.ndarray, relative: float = 1e-2) -> np.ndarray:
    """``std`` with a floor at ``relative`` times its mean, so that coordinates (nearly)
    constant on the training models are not blown up on others."""
    floor = relative * float(np.mean(std)) if std.size else 0.0
    return np.maximum(std, max(floor, 1e-12))


class Standardizer:
    """Per-coordinate standardization learned on the training rows, with a floor on the std,
    then a division by sqrt(#coordinates) so that a row has a root-mean-square norm of one.

    Adam moves every first-layer weight by about the learning rate per step; on d inputs of
    unit scale that moves a pre-activation by up to lr * d, far too fast for thousands of
    inputs (the MLP then memorizes noise coordinates before it finds the shared direction).
    """

    def fit(self, x: np.ndarray) -> "Standardizer":
        self.range = TrainingRange()  # non-finite entries filled, all clipped to training range
        x = self.range.fit_transform(x)
        self.mean = x.mean(axis=0)
        self.std = scale_floor(x.std(axis=0)) * np.sqrt(max(x.shape[1], 1))
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (self.range.transform(x) - self.mean) / self.std


def build_mlp(n_inputs: int, n_outputs: int, config: MLPConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_inputs
    for _ in range(config.depth):
        layers += [nn.Linear(width, config.hidden), nn.ReLU()]
        if config.dropout:
            layers.append(nn.Dropout(config.dropout))
        width = config.hidden
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


def train_mlp(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
              n_outputs: int, classification: bool, config: MLPConfig,
              seed: int) -> tuple[nn.Sequential, float]:
    """Train one MLP; return it at its best validation loss, and that loss.

    Regression minimizes the squared error of (standardized) float targets, classification
    the cross-entropy of integer class indices. Without validation rows the training loss
    is monitored instead, so training runs until that stops improving.
    """
    with torch.random.fork_rng(devices=[]):  # seeded initialization, global RNG untouched
        torch.manual_seed(seed)
        model = build_mlp(x_train.shape[1], n_outputs, config)
    generator = torch.Generator().manual_seed(seed)
    xt, xv = torch.from_numpy(x_train).float(), torch.from_numpy(x_val).float()
    if classification:
        yt, yv = torch.from_numpy(y_train).long(), torch.from_numpy(y_val).long()
        loss_fn: nn.Module = nn.CrossEntropyLoss()
    else:
        yt, yv = (torch.from_numpy(y).float().reshape(-1, 1) for y in (y_train, y_val))
        loss_fn = nn.MSELoss()
    if len(xv) == 0:
        xv, yv = xt, yt
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    batch_size = min(config.batch_size, len(xt))

    def epoch_batches():
        order = torch.randperm(len(xt), generator=generator)
        return (order[start:start + batch_size] for start in range(0, len(xt), batch_size))

    stopped = train_early_stopping(model, optimizer, epoch_batches,
                                   lambda batch: loss_fn(model(xt[batch]), yt[batch]),
                                   lambda: loss_fn(model(xv), yv), config.max_epochs,
                                   config.patience)
    return model, stopped.loss


class MLPPredictor(Predictor):
    """An MLP on per-model feature vectors; subclasses define the features.

    Regression targets are standardized on the training models; classification targets
    (strings) become class indices. Validation models whose class never occurs in training
    are left out of the validation loss. A single training class is predicted as is.
    """

    name = "mlp"

    def __init__(self, seed: int = 0, grid: Sequence[MLPConfig] = DEFAULT_GRID):
        super().__init__(seed)
        if not grid:
            raise ValueError(f"{type(self).__name__} needs at least one MLPConfig in grid")
        self.grid = tuple(grid)
        self.config: MLPConfig | None = None
        self.model: nn.Sequential | None = None
        self.classes: np.ndarray | None = None
        self._fitted = False

    @abc.abstractmethod
    def fit_features(self, train: Sequence[ModelSample]) -> np.ndarray:
        """Learn whatever the features need from the training models; their feature rows."""

    @abc.abstractmethod
    def features(self, models: Sequence[ModelSample]) -> np.ndarray:
        """Feature rows of any models, after :meth:`fit_features`."""

    def fit(self, train, train_targets, val, val_targets) -> None:
        if len(train) == 0:
            raise ValueError(f"{type(self).__name__}.fit() got no training models")
        self.classification = is_classification(train_targets)
        x_train = self.fit_features(train)
        x_val = self.features(val) if len(val) else np.empty((0, x_train.shape[1]))
        self.scaler = Standardizer().fit(x_train)
        x_train, x_val = self.scaler.transform(x_train), self.scaler.transform(x_val)

        if self.classification:
            self.classes, y_train, y_val, known = encode_labels(train_targets, val_targets)
            self._fitted = True
            if len(self.classes) < 2:  # one class seen: nothing to separate
                self.model = None
                return
            x_val = x_val[known]
            n_outputs = len(self.classes)
        else:
            train_targets = np.asarray(train_targets, dtype=np.float64)
            self.target_mean = float(train_targets.mean())
            self.target_std = float(scale_floor(np.array([train_targets.std()]), 0)[0])
            y_train = (train_targets - self.target_mean) / self.target_std
            y_val = (np.asarray(val_targets, dtype=np.float64) - self.target_mean) / self.target_std
            n_outputs = 1

        best = None
        for config in self.grid:
            with torch_threads(1):  # more threads cost more than they save here
                model, loss = train_mlp(x_train, y_train, x_val, y_val, n_outputs,
                                        self.classification, config, self.seed)
            log.debug("%s %s: validation loss %.4g", self.name, config, loss)
            if best is None or loss < best[0]:
                best = (loss, config, model)
        _, self.config, self.model = best
        self._fitted = True
        log.info("%s chose %s", self.name, self.config)

    def predict(self, models: Sequence[ModelSample]) -> np.ndarray:
        if not self._fitted:
            raise RuntimeError(f"{type(self).__name__}.predict() called before fit()")
        if len(models) == 0:
            return np.empty(0, dtype=object if self.classification else np.float64)
        if self.classification and self.model is None:
            return np.full(len(models), self.classes[0], dtype=object)
        x = torch.from_numpy(self.scaler.transform(self.features(models))).float()
        with torch.no_grad(), torch_threads(1):
            out = self.model(x).numpy()
        if self.classification:
            return self.classes[out.argmax(axis=1)].astype(object)
        return out[:, 0] * self.target_std + self.target_mean
