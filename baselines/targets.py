"""Targets as the baselines see them: numbers (regression) or labels (classification, e.g.
phases, which arrive as strings)."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def is_classification(targets: np.ndarray) -> bool:
    return np.asarray(targets).dtype.kind in "OUS"


def encode_labels(train_targets: np.ndarray, val_targets: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Class indices for string labels: ``(classes, y_train, y_val, val_known)``.

    ``classes`` are the sorted labels seen in training; validation models whose label never
    occurs in training cannot be scored, so ``y_val`` covers only those where ``val_known``.
    """
    classes, y_train = np.unique(np.asarray(train_targets, dtype=str), return_inverse=True)
    val_targets = np.asarray(val_targets, dtype=str)
    val_known = np.isin(val_targets, classes)
    return classes, y_train, np.searchsorted(classes, val_targets[val_known]), val_known


class StandardizedTargets:
    """Targets as ``gmn``, ``nfn`` and ``probegen`` train on them: regression targets
    standardized on the training models (a constant target keeps std 1), string labels as
    indices into the sorted training labels, -1 for a label never seen in training (left out
    of the loss)."""

    def __init__(self, train_targets: np.ndarray):
        self.classes: np.ndarray | None = None
        self.mean, self.std = 0.0, 1.0
        if is_classification(train_targets):
            self.classes = np.unique(np.asarray(train_targets, dtype=str))
        else:
            values = np.asarray(train_targets, dtype=np.float64)
            self.mean = float(values.mean())
            self.std = float(values.std()) if values.std() > 0 else 1.0

    @property
    def constant(self) -> str | None:
        """The one label seen in training, if only one was: there is nothing to separate."""
        if self.classes is not None and len(self.classes) < 2:
            return str(self.classes[0])
        return None

    @property
    def out_dim(self) -> int:
        return 1 if self.classes is None else len(self.classes)

    def encode(self, targets: np.ndarray) -> torch.Tensor:
        if self.classes is not None:
            lookup = {label: i for i, label in enumerate(self.classes)}
            return torch.tensor([lookup.get(str(t), -1) for t in targets], dtype=torch.long)
        values = np.asarray(targets, dtype=np.float64)
        return torch.tensor((values - self.mean) / self.std, dtype=torch.float32)

    def any_known(self, encoded: torch.Tensor) -> bool:
        """Whether encoded targets hold one that the loss can score."""
        return len(encoded) > 0 and bool((encoded >= 0).any() if self.classes is not None
                                         else True)

    def loss(self, output: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on the known labels, or the squared error of standardized values."""
        if self.classes is not None:
            keep = encoded >= 0
            return F.cross_entropy(output[keep], encoded[keep])
        return F.mse_loss(output[:, 0], encoded)

    def decode(self, output: torch.Tensor) -> np.ndarray:
        """Predictions from network outputs ``(N, out_dim)``: labels (object) or floats."""
        if self.classes is not None:
            return self.classes[output.argmax(1).numpy()].astype(object)
        return output[:, 0].double().numpy() * self.std + self.mean
