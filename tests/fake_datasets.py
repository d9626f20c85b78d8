"""Tiny data sets written in the exact official formats, for tests of loaders and builds.

Each writer puts its files where the loader looks under ``root`` (the data root) and returns
what it wrote (images as uint8 (N, C, H, W) arrays, labels as int arrays) so that tests can
compare. Images are random but seeded.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def _images(rng: np.random.Generator, n: int, side: int = 32) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3, side, side), dtype=np.uint8)


def write_cifar10(root: Path, per_batch: int = 8, n_test: int = 16, seed: int = 0) -> dict:
    """cifar-10-batches-py/: data_batch_1..5 and test_batch (pickled dicts, bytes keys)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    written = {"train_x": [], "train_y": []}
    for index in range(1, 6):
        images, labels = _images(rng, per_batch), rng.integers(0, 10, per_batch)
        _pickle(folder / f"data_batch_{index}", {b"batch_label": f"training batch {index} of 5".encode(),
                                                  b"labels": labels.tolist(),
                                                  b"data": images.reshape(per_batch, -1)})
        written["train_x"].append(images)
        written["train_y"].append(labels)
    test_x, test_y = _images(rng, n_test), rng.integers(0, 10, n_test)
    _pickle(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1",
                                    b"labels": test_y.tolist(), b"data": test_x.reshape(n_test, -1)})
    _pickle(folder / "batches.meta", {b"label_names": [b"airplane", b"automobile", b"bird", b"cat",
                                                       b"deer", b"dog", b"frog", b"horse", b"ship",
                                                       b"truck"]})
    return {"train_x": np.concatenate(written["train_x"]),
            "train_y": np.concatenate(written["train_y"]), "test_x": test_x, "test_y": test_y}


def write_cifar100(root: Path, n_train: int = 40, n_test: int = 16, seed: int = 0) -> dict:
    """cifar-100-python/: train and test (pickled dicts with fine and coarse labels)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, fine = _images(rng, n), rng.integers(0, 100, n)
        _pickle(folder / split, {b"filenames": [f"{i}.png".encode() for i in range(n)],
                                 b"fine_labels": fine.tolist(),
                                 b"coarse_labels": (fine // 5).tolist(),
                                 b"data": images.reshape(n, -1)})
        out[f"{split}_x"], out[f"{split}_y"] = images, fine
    return out


def write_svhn(root: Path, n_train: int = 40, n_test: int = 16, seed: int = 0) -> dict:
    """svhn/train_32x32.mat and test_32x32.mat: X (32, 32, 3, N) uint8, y (N, 1) with 10 = 0."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    folder = Path(root) / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, digits = _images(rng, n), rng.integers(0, 10, n)
        savemat(folder / f"{split}_32x32.mat",
                {"X": images.transpose(2, 3, 1, 0), "y": np.where(digits == 0, 10, digits)[:, None]})
        out[f"{split}_x"], out[f"{split}_y"] = images, digits
    return out


def write_tinyimagenet(root: Path, classes: int = 3, per_class: int = 14, n_val: int = 16,
                       seed: int = 0) -> dict:
    """tiny-imagenet-200/: wnids.txt, train/<wnid>/images/*.JPEG, val/images + annotations."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(root) / "tiny-imagenet-200"
    wnids = [f"n{index:08d}" for index in range(classes)]
    (folder / "val" / "images").mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    for wnid in wnids:
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / f"{wnid}_{index}.JPEG", quality=95)
    lines = []
    for index in range(n_val):
        wnid = wnids[index % classes]
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "val" / "images" / f"val_{index}.JPEG", quality=95)
        lines.append(f"val_{index}.JPEG\t{wnid}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    return {"wnids": wnids}


def write_openwebtext(root: Path, documents: int = 24, seed: int = 0) -> list[str]:
    """openwebtext/: a Hugging Face dataset saved with save_to_disk, with a 'text' column."""
    import datasets

    rng = np.random.default_rng(seed)
    words = ["the", "model", "zoo", "phase", "weight", "space", "learning", "loss", "grid"]
    texts = [" ".join(rng.choice(words, size=60)) + "." for _ in range(documents)]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(Path(root) / "openwebtext"))
    return texts


#: data set name -> writer, for the data sets of the paper specs.
WRITERS = {"cifar10": write_cifar10, "cifar100": write_cifar100, "svhn": write_svhn,
           "tinyimagenet": write_tinyimagenet, "openwebtext": write_openwebtext}


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)
