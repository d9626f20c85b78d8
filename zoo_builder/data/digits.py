"""sklearn's handwritten digits (1,797 8x8 grey images, 10 classes), shipped with scikit-learn.

The embedded default data set: it installs with the package, so the digits zoos build
anywhere. The train/test split is fixed and stratified (50/50, seed 0): half the data for
training leaves room for over-fitting, so the zoo shows a generalization gap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from zoo_builder.data.images import ImageData

TEST_FRACTION = 0.5
SPLIT_SEED = 0


def load_digits(data_root: Path | None = None) -> ImageData:
    """Load the digits as (N, 1, 8, 8) images in [0, 1]; ``data_root`` is not needed."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    return ImageData(torch.from_numpy(train_x), torch.from_numpy(train_y),
                     torch.from_numpy(test_x), torch.from_numpy(test_y), num_classes=10,
                     name="digits")
