"""sklearn's handwritten digits (1,797 8x8 grey images, 10 classes), shipped with scikit-learn.

The embedded default data set: it installs with the package, so the digits zoos build
anywhere. The train/test split is fixed and stratified (50/50, seed 0): half the data for
training leaves room for over-fitting, so the zoo shows a generalization gap.

``digits-rotated`` is the transfer target of the digits zoos (the embedded stand-in for the
paper's CIFAR-10 -> STL-10): the same images and split, every image rotated by a fixed angle
(45 degrees by default, well beyond the zoos' +-10 degree augmentation) and shifted by a fixed
number of pixels (1 by default, right and down), bilinear with black fill.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

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


def rotate_and_shift(images: torch.Tensor, degrees: float, shift: int) -> torch.Tensor:
    """Float (N, C, H, W) images rotated by ``degrees`` about their centre (clockwise as
    displayed, row 0 on top), then moved by ``shift`` pixels right and down; bilinear, black
    (0) where nothing maps."""
    n, _, height, width = images.shape
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    # affine_grid maps each output pixel to where it samples the input, in [-1, 1] units:
    # input = R(-angle) (output - offset), with the aspect terms for non-square images.
    offset_x, offset_y = 2.0 * shift / width, 2.0 * shift / height
    aspect = width / height
    a, b = cos, sin / aspect
    c, d = -sin * aspect, cos
    theta = torch.tensor([[a, b, -(a * offset_x + b * offset_y)],
                          [c, d, -(c * offset_x + d * offset_y)]], dtype=images.dtype)
    grid = F.affine_grid(theta.expand(n, 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def load_digits_rotated(data_root: Path | None = None, degrees: float = 45.0,
                        shift: int = 1) -> ImageData:
    """The digits with the split of :func:`load_digits`, every image rotated by ``degrees``
    and shifted by ``shift`` pixels (a fixed domain shift, for transfer)."""
    if int(shift) != shift:
        raise ValueError(f"digits-rotated: shift must be a whole number of pixels; got {shift}")
    base = load_digits(data_root)
    return ImageData(rotate_and_shift(base.train_x, float(degrees), int(shift)), base.train_y,
                     rotate_and_shift(base.test_x, float(degrees), int(shift)), base.test_y,
                     num_classes=10, name="digits-rotated")
