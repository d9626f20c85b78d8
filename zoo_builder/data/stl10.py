"""STL-10 (labelled part) from the official binary files, e.g. for transfer from CIFAR-10.

The data root holds ``stl10_binary/`` with ``train_X.bin``, ``train_y.bin``, ``test_X.bin`` and
``test_y.bin``: uint8 images of 3x96x96, each stored column-major (so a row-major reshape gives
the transposed image), and uint8 labels 1..10. The unlabelled split is not read. An unextracted
``stl10_binary.tar.gz`` in the data root is extracted on first use.

STL-10's classes differ from CIFAR-10's (STL-10 has monkey and no frog, and orders them
differently): :data:`STL10_TO_CIFAR10` maps one label space onto the other for transfer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from zoo_builder.data.common import dataset_folder
from zoo_builder.data.images import ImageData

STL10_URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"

#: STL-10 class names in label order (label 0 is the file's label 1).
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship",
                 "truck")

#: STL-10 label -> CIFAR-10 label of the same class (car -> automobile), or None for monkey,
#: which CIFAR-10 lacks. CIFAR-10's frog (6) has no STL-10 counterpart.
STL10_TO_CIFAR10: tuple[int | None, ...] = (0, 2, 1, 3, 4, 5, 7, None, 8, 9)

_SIZE = 96


def stl10_to_cifar10_labels(labels: torch.Tensor) -> torch.Tensor:
    """STL-10 labels as CIFAR-10 labels, -1 for monkey (drop those for CIFAR-10 transfer)."""
    table = torch.tensor([-1 if c is None else c for c in STL10_TO_CIFAR10], dtype=torch.int64,
                         device=labels.device)
    return table[labels]


def _read_images(path: Path) -> np.ndarray:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % (3 * _SIZE * _SIZE):
        raise ValueError(f"'{path}' has {raw.size} bytes, not a whole number of 3x96x96 images")
    # Column-major storage: a row-major reshape gives (N, C, W, H); swap back to (N, C, H, W).
    return np.ascontiguousarray(raw.reshape(-1, 3, _SIZE, _SIZE).transpose(0, 1, 3, 2))


def _read_labels(path: Path, count: int) -> np.ndarray:
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if len(labels) != count or (count and (labels.min() < 1 or labels.max() > 10)):
        raise ValueError(f"'{path}': expected {count} labels in 1..10; found {len(labels)}"
                         + (f" in {labels.min()}..{labels.max()}" if len(labels) else ""))
    return labels - 1


def resize_images(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """uint8 (N, C, H, W) images resized to (size, size), bilinear with antialiasing, as uint8."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=True)
        out[start:start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def load_stl10(data_root: Path, image_size: int = 96) -> ImageData:
    """STL-10: 5,000 train and 8,000 test images (3, image_size, image_size) uint8, 10 classes.

    ``image_size`` below 96 downsamples (e.g. 32 to feed CIFAR-10 models).
    """
    if not 1 <= int(image_size) <= _SIZE or int(image_size) != image_size:
        raise ValueError(f"stl10: image_size must be a whole number in 1..{_SIZE}; "
                         f"got {image_size}")
    files = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"]
    folder = dataset_folder(data_root, "stl10_binary", files, "stl10_binary.tar.gz", STL10_URL,
                            "stl10")
    splits = []
    for split in ("train", "test"):
        images = _read_images(folder / f"{split}_X.bin")
        labels = _read_labels(folder / f"{split}_y.bin", len(images))
        splits += [resize_images(torch.from_numpy(images), int(image_size)),
                   torch.from_numpy(labels)]
    return ImageData(*splits, num_classes=10, name="stl10")
