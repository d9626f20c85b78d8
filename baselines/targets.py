"""Targets as the baselines see them: numbers (regression) or labels (classification, e.g.
phases, which arrive as strings)."""

from __future__ import annotations

import numpy as np


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
