"""SVHN (Street View House Numbers), cropped digits, from the official .mat files.

The data root holds ``svhn/train_32x32.mat`` and ``svhn/test_32x32.mat`` (and
``svhn/extra_32x32.mat`` for ``extra=True``), MATLAB files with ``X`` of shape (32, 32, 3, N)
uint8 and ``y`` of shape (N, 1), where label 10 stands for the digit 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from zoo_builder.data.common import require_files
from zoo_builder.data.images import ImageData

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
FOLDER = "svhn"


def _read_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and int64 digit labels 0..9 from one official .mat file."""
    from scipy.io import loadmat

    content = loadmat(path, variable_names=["X", "y"])
    if "X" not in content or "y" not in content:
        raise ValueError(f"'{path}' should hold variables X and y; found {sorted(content)}")
    images, labels = content["X"], np.asarray(content["y"]).reshape(-1).astype(np.int64)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3) \
            or images.shape[3] != len(labels):
        raise ValueError(f"'{path}': expected X uint8 (32, 32, 3, N) and N labels; found "
                         f"{images.dtype} {images.shape} and {len(labels)} labels")
    if len(labels) and (labels.min() < 1 or labels.max() > 10):
        raise ValueError(f"'{path}': labels should lie in 1..10 (10 is the digit 0); found "
                         f"{labels.min()}..{labels.max()}")
    labels[labels == 10] = 0
    # X[row, column, channel, n] -> (n, channel, row, column).
    images = np.ascontiguousarray(images.transpose(3, 2, 0, 1))
    return torch.from_numpy(images), torch.from_numpy(labels)


def load_svhn(data_root: Path, extra: bool = False) -> ImageData:
    """SVHN: 73,257 train (604,388 more with ``extra``) and 26,032 test images (3, 32, 32)."""
    train_files = ["train_32x32.mat"] + (["extra_32x32.mat"] if extra else [])
    folder = require_files(
        data_root / FOLDER, [*train_files, "test_32x32.mat"], "svhn",
        f"Download {', '.join(train_files)} and test_32x32.mat (format 2, cropped digits) from "
        f"{SVHN_URL} into '{data_root / FOLDER}'.")
    parts = [_read_mat(folder / name) for name in train_files]
    train_x, train_y = torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
    test_x, test_y = _read_mat(folder / "test_32x32.mat")
    return ImageData(train_x, train_y, test_x, test_y, num_classes=10, name="svhn")
