"""TinyImageNet (200 classes, 64x64 colour) from the official JPEG folders.

The data root holds ``tiny-imagenet-200/`` as the official zip unpacks: ``wnids.txt``,
``train/<wnid>/images/*.JPEG`` (500 per class) and ``val/images/*.JPEG`` with
``val/val_annotations.txt`` (file, wnid, box). The official test images carry no labels, so
the validation set is the zoo's test set. Labels index the sorted wnids (the order of the
``train/`` folders, as torchvision's ImageFolder gives).

Decoding 110,000 JPEGs takes minutes, so the decoded uint8 arrays are cached as .npy files in
``tiny-imagenet-200/.wslbench_cache/``, next to a fingerprint of the file list (names and
sizes, so the cache survives moving the folder); a changed file list rebuilds the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from wslbench.zoo_format import atomic_open
from zoo_builder.data.common import require_files
from zoo_builder.data.images import ImageData

log = logging.getLogger(__name__)

TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
FOLDER = "tiny-imagenet-200"
CACHE_FOLDER = ".wslbench_cache"
_CACHE_VERSION = 1
_SIZE = 64
_ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def _is_jpeg(name: str) -> bool:
    return name.lower().endswith((".jpeg", ".jpg"))


def _file_lists(folder: Path) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """Sorted wnids, and (relative path, label) for the train and the val images."""
    wnids = sorted({line.strip() for line in (folder / "wnids.txt").read_text().splitlines()
                    if line.strip()})
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    train = []
    for wnid in wnids:
        images = folder / "train" / wnid / "images"
        if not images.is_dir():
            raise FileNotFoundError(f"tinyimagenet: class '{wnid}' from wnids.txt has no folder "
                                    f"'{images}'; is the extraction of {FOLDER} complete?")
        train += [(f"train/{wnid}/images/{name}", label_of[wnid])
                  for name in sorted(os.listdir(images)) if _is_jpeg(name)]
    test = []
    annotations = folder / "val" / "val_annotations.txt"
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in label_of:
            raise ValueError(f"'{annotations}' line {number}: expected 'file<TAB>wnid<TAB>...' "
                             f"with a wnid from wnids.txt; found {line!r}")
        test.append((f"val/images/{fields[0]}", label_of[fields[1]]))
    test.sort()
    missing = [path for path, _ in test if not (folder / path).is_file()]
    if missing:
        raise FileNotFoundError(f"tinyimagenet: {len(missing)} images named in '{annotations}' "
                                f"are missing, e.g. '{folder / missing[0]}'")
    return wnids, train, test


def _fingerprint(folder: Path, wnids: list[str], train: list[tuple[str, int]],
                 test: list[tuple[str, int]]) -> str:
    """Hash of the file list with each file's size and label: changes when any of them does."""
    digest = hashlib.sha256(f"v{_CACHE_VERSION}\n{'/'.join(wnids)}\n".encode())
    for path, label in train + test:
        digest.update(f"{path}\t{(folder / path).stat().st_size}\t{label}\n".encode())
    return digest.hexdigest()


def _decode(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))  # some images are greyscale
    if pixels.shape != (_SIZE, _SIZE, 3):
        raise ValueError(f"'{path}' is {pixels.shape[1]}x{pixels.shape[0]}; TinyImageNet images "
                         f"are {_SIZE}x{_SIZE}")
    return pixels.transpose(2, 0, 1)


def _decode_all(folder: Path, files: list[tuple[str, int]],
                desc: str) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(files), 3, _SIZE, _SIZE), dtype=np.uint8)
    # Pillow releases the GIL while decoding, so threads decode in parallel.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = pool.map(_decode, [folder / path for path, _ in files], chunksize=64)
        for index, pixels in enumerate(tqdm(decoded, total=len(files), desc=desc, disable=None)):
            images[index] = pixels
    return images, np.array([label for _, label in files], dtype=np.int64)


def _save_atomically(path: Path, array: np.ndarray) -> None:
    with atomic_open(path) as handle:
        np.save(handle, array, allow_pickle=False)


def _read_cache(cache: Path, fingerprint: str) -> dict[str, np.ndarray] | None:
    try:
        stored = json.loads((cache / "fingerprint.json").read_text())
        if stored.get("fingerprint") != fingerprint:
            log.info("tinyimagenet: the file list changed; rebuilding the cache in %s", cache)
            return None
        arrays = {name: np.load(cache / f"{name}.npy", allow_pickle=False) for name in _ARRAYS}
    except (OSError, ValueError) as error:
        log.info("tinyimagenet: no usable cache in %s (%s)", cache, error)
        return None
    if any(len(arrays[f"{split}{part}"]) != stored.get(f"{split}_count")
           for split in ("train", "test") for part in ("_x", "_y")):
        log.warning("tinyimagenet: cache in %s is inconsistent; rebuilding it", cache)
        return None
    return arrays


def _write_cache(cache: Path, fingerprint: str, arrays: dict[str, np.ndarray]) -> None:
    cache.mkdir(exist_ok=True)
    # The fingerprint goes first out and last in, so it never vouches for half-written arrays.
    (cache / "fingerprint.json").unlink(missing_ok=True)
    for name in _ARRAYS:
        _save_atomically(cache / f"{name}.npy", arrays[name])
    record = {"version": _CACHE_VERSION, "fingerprint": fingerprint,
              "train_count": len(arrays["train_x"]), "test_count": len(arrays["test_x"])}
    handle, temporary = tempfile.mkstemp(prefix=".fingerprint.", dir=cache)
    with os.fdopen(handle, "w") as file:
        json.dump(record, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, cache / "fingerprint.json")


def load_tinyimagenet(data_root: Path, cache: bool = True) -> ImageData:
    """TinyImageNet: 100,000 train and 10,000 test (official val) images (3, 64, 64) uint8,
    200 classes. ``cache=False`` decodes the JPEGs without reading or writing the cache."""
    folder = require_files(
        data_root / FOLDER, ["wnids.txt", "train", "val/images", "val/val_annotations.txt"],
        "tinyimagenet", f"Download {TINYIMAGENET_URL} and unzip it in '{data_root}' "
                        f"(it unpacks to {FOLDER}/).")
    wnids, train, test = _file_lists(folder)
    fingerprint = _fingerprint(folder, wnids, train, test)
    arrays = _read_cache(folder / CACHE_FOLDER, fingerprint) if cache else None
    if arrays is None:
        log.info("tinyimagenet: decoding %d JPEGs (once; the result is cached)",
                 len(train) + len(test))
        arrays = dict(zip(_ARRAYS, (*_decode_all(folder, train, "tinyimagenet train"),
                                    *_decode_all(folder, test, "tinyimagenet val"))))
        if cache:
            try:
                _write_cache(folder / CACHE_FOLDER, fingerprint, arrays)
            except OSError as error:
                log.warning("tinyimagenet: could not write the cache in %s (%s); the JPEGs will "
                            "be decoded again next time", folder / CACHE_FOLDER, error)
    return ImageData(*(torch.from_numpy(arrays[name]) for name in _ARRAYS), num_classes=len(wnids),
                     name="tinyimagenet")
