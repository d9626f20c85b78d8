"""CIFAR-10 and CIFAR-100 from their official "python version" archives.

The data root holds ``cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``,
``test_batch``) and ``cifar-100-python/`` (``train``, ``test``), as the official archives
unpack; an archive left unextracted in the data root is extracted on first use.

The batch files are pickles. The project never unpickles untrusted data, so they are read with
:class:`RestrictedUnpickler`, which rebuilds numpy arrays and refuses every other global: a
tampered file fails with :class:`UnsafePickleError` before anything in it runs.
"""

from __future__ import annotations

import importlib
import logging
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from zoo_builder.data.common import dataset_folder
from zoo_builder.data.images import ImageData

log = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"

#: CIFAR-10 class names, in label order (from the archive's ``batches.meta``).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")

_IMAGE_SHAPE = (3, 32, 32)


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that the restricted unpickler does not allow."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(text, "latin1");
    # any other codec (zlib, base64, ...) is refused.
    if encoding.replace("_", "-").lower() not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r} "
                                "(only latin1 text -> bytes is allowed)")
    return text.encode("latin1")


def _numpy_attr(module: str, name: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core; pickles name either, depending on who wrote them.
    for candidate in (module, module.replace("numpy.core", "numpy._core"),
                      module.replace("numpy._core", "numpy.core")):
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise UnsafePickleError(f"numpy has no {module}.{name}")


#: The globals a pickled dict of numpy arrays needs, and nothing else.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; any other global raises
    :class:`UnsafePickleError` (so ``os.system``, ``builtins.eval`` and the like never run)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"refusing to unpickle global '{module}.{name}': only numpy arrays are allowed "
                "in a data set file; is this file really the official one?")
        if module == "_codecs":
            return _latin1_encode
        if name in ("ndarray", "dtype"):
            return getattr(np, name)
        return _numpy_attr(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a pickle with persistent ids")


def restricted_load(file: BinaryIO) -> Any:
    """Unpickle ``file`` with :class:`RestrictedUnpickler`; Python 2 strings stay bytes."""
    return RestrictedUnpickler(file, encoding="bytes").load()


def _read_batch(path: Path, label_key: bytes,
                num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and int64 labels from one official batch file."""
    with open(path, "rb") as file:
        batch = restricted_load(file)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"'{path}' should hold a dict with keys b'data' and {label_key!r}; "
                         f"found {keys}")
    data = batch[b"data"]
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != np.prod(_IMAGE_SHAPE) or len(labels) != len(data)):
        raise ValueError(f"'{path}': expected b'data' as uint8 (N, 3072) with N labels; found "
                         f"{getattr(data, 'dtype', type(data).__name__)} "
                         f"{getattr(data, 'shape', '')} and {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"'{path}': labels should lie in [0, {num_classes}); found "
                         f"[{labels.min()}, {labels.max()}]")
    # Each row is the red plane, then green, then blue, each 32x32 in row-major order.
    images = np.ascontiguousarray(data.reshape(-1, *_IMAGE_SHAPE))
    return torch.from_numpy(images), torch.from_numpy(labels)


def _concat(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def load_cifar10(data_root: Path) -> ImageData:
    """CIFAR-10: 50,000 train and 10,000 test images (3, 32, 32) uint8, 10 classes."""
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    folder = dataset_folder(data_root, "cifar-10-batches-py", [*train_files, "test_batch"],
                            "cifar-10-python.tar.gz", CIFAR10_URL, "cifar10")
    train_x, train_y = _concat([_read_batch(folder / name, b"labels", 10) for name in train_files])
    test_x, test_y = _read_batch(folder / "test_batch", b"labels", 10)
    return ImageData(train_x, train_y, test_x, test_y, num_classes=10, name="cifar10")


def load_cifar100(data_root: Path) -> ImageData:
    """CIFAR-100 with its 100 fine labels: 50,000 train and 10,000 test images (3, 32, 32) uint8."""
    folder = dataset_folder(data_root, "cifar-100-python", ["train", "test"],
                            "cifar-100-python.tar.gz", CIFAR100_URL, "cifar100")
    train_x, train_y = _read_batch(folder / "train", b"fine_labels", 100)
    test_x, test_y = _read_batch(folder / "test", b"fine_labels", 100)
    return ImageData(train_x, train_y, test_x, test_y, num_classes=100, name="cifar100")
