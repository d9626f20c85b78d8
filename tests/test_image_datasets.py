"""Image data set loaders, each on a tiny data set written in the exact official format."""

from __future__ import annotations

import codecs
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from zoo_builder.data import DatasetNotFoundError, load_dataset
from zoo_builder.data import tinyimagenet
from zoo_builder.data.common import extract_tar_safely
from zoo_builder.data.cifar import (CIFAR10_CLASSES, UnsafePickleError,
                                    restricted_load)
from zoo_builder.data.stl10 import STL10_CLASSES, STL10_TO_CIFAR10, stl10_to_cifar10_labels


# --- CIFAR ------------------------------------------------------------------------------------

def _cifar_images(count: int, offset: int) -> np.ndarray:
    """(count, 3072) uint8 rows; image i has the value offset+i at (channel 0, row 1, column 2),
    2 * (offset+i) at (channel 2, row 31, column 0), and a ramp elsewhere."""
    rows = (np.arange(count * 3072) % 251).astype(np.uint8).reshape(count, 3072)
    for i in range(count):
        rows[i, 0 * 1024 + 1 * 32 + 2] = offset + i
        rows[i, 2 * 1024 + 31 * 32 + 0] = 2 * (offset + i)
    return rows


def _write_cifar10(root, protocol_first: int = 2):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for number in range(1, 6):
        batch = {b"batch_label": b"training batch %d of 5" % number,
                 b"labels": [(number + i) % 10 for i in range(2)],
                 b"data": _cifar_images(2, offset=10 * number),
                 b"filenames": [b"img_%d.png" % i for i in range(2)]}
        with open(folder / f"data_batch_{number}", "wb") as file:
            # Batch 1 as a Python 2 style protocol-2 pickle, the rest as Python 3 writes them.
            pickle.dump(batch, file, protocol=protocol_first if number == 1 else None)
    test = {b"batch_label": b"testing batch 1 of 1", b"labels": [9, 0, 3],
            b"data": _cifar_images(3, offset=100), b"filenames": [b"a", b"b", b"c"]}
    with open(folder / "test_batch", "wb") as file:
        pickle.dump(test, file)
    return folder


def _check_cifar10(data):
    assert data.name == "cifar10" and data.num_classes == 10
    assert data.train_x.shape == (10, 3, 32, 32) and data.test_x.shape == (3, 3, 32, 32)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert data.train_y.tolist() == [(n + i) % 10 for n in range(1, 6) for i in range(2)]
    assert data.test_y.tolist() == [9, 0, 3]
    # Batch 3, image 1 is training image 5: the red plane comes first, rows are row-major.
    assert data.train_x[5, 0, 1, 2].item() == 31 and data.train_x[5, 2, 31, 0].item() == 62
    assert data.test_x[2, 0, 1, 2].item() == 102 and data.test_x[2, 2, 31, 0].item() == 204
    assert torch.equal(data.test_x[0].flatten(), torch.from_numpy(_cifar_images(3, 100)[0]))


def test_cifar10_reads_the_official_python_batches(tmp_path):
    _write_cifar10(tmp_path)
    _check_cifar10(load_dataset("cifar10", tmp_path))


def test_cifar100_reads_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, count in (("train", 4), ("test", 2)):
        content = {b"filenames": [b"x"] * count, b"batch_label": split.encode(),
                   b"fine_labels": [99 - i for i in range(count)],
                   b"coarse_labels": [i for i in range(count)], b"data": _cifar_images(count, 7)}
        with open(folder / split, "wb") as file:
            pickle.dump(content, file)
    data = load_dataset("cifar100", tmp_path)
    assert data.num_classes == 100 and data.name == "cifar100"
    assert data.train_x.shape == (4, 3, 32, 32) and data.test_x.shape == (2, 3, 32, 32)
    assert data.train_y.tolist() == [99, 98, 97, 96] and data.test_y.tolist() == [99, 98]
    assert data.train_x[3, 0, 1, 2].item() == 10 and data.train_x[3, 2, 31, 0].item() == 20


def test_cifar10_archive_is_extracted_on_first_use(tmp_path):
    source = tmp_path / "source"
    _write_cifar10(source)
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    _check_cifar10(load_dataset("cifar10", root))
    assert (root / "cifar-10-batches-py" / "test_batch").is_file()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py",
                                                      "cifar-10-python.tar.gz"]


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink", "other_folder"])
def test_archive_extraction_refuses_members_outside_the_folder(tmp_path, kind):
    payload = tmp_path / "payload.txt"
    payload.write_text("x")
    archive = tmp_path / "root" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(payload, arcname="cifar-10-batches-py/fine.txt")
        if kind == "symlink":
            link = tarfile.TarInfo("cifar-10-batches-py/link")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
        else:
            name = {"traversal": "cifar-10-batches-py/../../evil.txt", "absolute": "/tmp/evil.txt",
                    "other_folder": "elsewhere/evil.txt"}[kind]
            tar.add(payload, arcname=name)
    with pytest.raises(ValueError, match="refusing to extract"):
        extract_tar_safely(archive, archive.parent, "cifar-10-batches-py")
    assert sorted(p.name for p in archive.parent.iterdir()) == ["cifar-10-python.tar.gz"]
    assert not (tmp_path / "evil.txt").exists()


class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _CallsEval:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


class _EncodesWithZlib:
    def __reduce__(self):
        return codecs.encode, (b"x" * 10, "zlib")


def test_a_pickle_calling_os_system_is_refused_and_nothing_runs(tmp_path):
    folder = _write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_3", "wb") as file:
        pickle.dump({b"data": _RunsCommand(marker), b"labels": [0]}, file)
    refused = "refusing to unpickle global '(posix|os|nt).system'"
    with pytest.raises(UnsafePickleError, match=refused):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [_CallsEval(), _EncodesWithZlib(), np.load, print])
def test_the_restricted_unpickler_allows_only_numpy_arrays(tmp_path, payload):
    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({b"data": payload}))
    with open(path, "rb") as file, pytest.raises(UnsafePickleError, match="refusing"):
        restricted_load(file)
    arrays = {b"a": np.arange(5, dtype=np.float32), b"b": np.zeros((2, 2), np.uint8), b"c": [1, 2]}
    for protocol in (2, 4, 5):
        path.write_bytes(pickle.dumps(arrays, protocol=protocol))
        with open(path, "rb") as file:
            loaded = restricted_load(file)
        assert all(np.array_equal(loaded[key], value) for key, value in arrays.items())
    # The official files were pickled by Python 2 with numpy 1, which named numpy.core.
    old_style = pickle.dumps(arrays, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray\n_reconstruct" in old_style
    path.write_bytes(old_style)
    with open(path, "rb") as file:
        assert np.array_equal(restricted_load(file)[b"b"], arrays[b"b"])


# --- SVHN -------------------------------------------------------------------------------------

def _svhn_arrays(count: int, seed: int):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (32, 32, 3, count), dtype=np.uint8)
    labels = (np.arange(count) % 10 + 1).astype(np.uint8).reshape(-1, 1)  # 1..10, 10 = digit 0
    return images, labels


def test_svhn_reads_the_official_mat_files(tmp_path):
    from scipy.io import savemat

    folder = tmp_path / "svhn"
    folder.mkdir()
    arrays = {name: _svhn_arrays(count, seed) for seed, (name, count) in
              enumerate((("train", 12), ("test", 5), ("extra", 3)))}
    for name, (images, labels) in arrays.items():
        savemat(folder / f"{name}_32x32.mat", {"X": images, "y": labels})
    data = load_dataset("svhn", tmp_path)
    assert data.name == "svhn" and data.num_classes == 10
    assert data.train_x.shape == (12, 3, 32, 32) and data.test_x.shape == (5, 3, 32, 32)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert data.train_y.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    train_images = arrays["train"][0]
    # X[row, column, channel, n] -> (n, channel, row, column).
    assert data.train_x[7, 2, 3, 30].item() == train_images[3, 30, 2, 7]
    assert data.train_x[7, 0, 30, 3].item() == train_images[30, 3, 0, 7]
    assert torch.equal(data.test_x[4, 1], torch.from_numpy(arrays["test"][0][:, :, 1, 4].copy()))
    with_extra = load_dataset("svhn", tmp_path, extra=True)
    assert with_extra.train_x.shape == (15, 3, 32, 32)
    assert torch.equal(with_extra.train_x[12:], torch.from_numpy(
        arrays["extra"][0].transpose(3, 2, 0, 1).copy()))
    assert with_extra.train_y[12:].tolist() == [1, 2, 3]


# --- TinyImageNet -----------------------------------------------------------------------------

_WNIDS = ["n02000002", "n01000001", "n03000003"]  # deliberately unsorted in wnids.txt


def _colour(index: int) -> tuple[int, int, int]:
    return (40 + 50 * (index % 4), 200 - 60 * (index % 3), 30 + 15 * index)


def _write_tinyimagenet(root):
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "test" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(_WNIDS) + "\n")
    for number, wnid in enumerate(_WNIDS):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(2):
            Image.new("RGB", (64, 64), _colour(2 * number + i)).save(images / f"{wnid}_{i}.JPEG")
    # One greyscale training image, as the real set has.
    grey = folder / "train" / _WNIDS[2] / "images" / f"{_WNIDS[2]}_2.JPEG"
    Image.new("L", (64, 64), 90).save(grey)
    lines = []
    for i, wnid in enumerate([_WNIDS[1], _WNIDS[0], _WNIDS[2], _WNIDS[1]]):
        image = folder / "val" / "images" / f"val_{i}.JPEG"
        Image.new("RGB", (64, 64), _colour(10 + i)).save(image)
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    Image.new("RGB", (64, 64)).save(folder / "test" / "images" / "test_0.JPEG")
    return folder


def _mean_colour(image: torch.Tensor) -> list[float]:
    return image.float().mean(dim=(1, 2)).tolist()


def test_tinyimagenet_reads_jpeg_folders_and_caches_them(tmp_path, monkeypatch):
    folder = _write_tinyimagenet(tmp_path)
    data = load_dataset("tinyimagenet", tmp_path)
    assert data.name == "tinyimagenet" and data.num_classes == 3
    assert data.train_x.shape == (7, 3, 64, 64) and data.test_x.shape == (4, 3, 64, 64)
    assert data.train_x.dtype == torch.uint8 and data.test_y.dtype == torch.int64
    # Labels index the sorted wnids: n01 -> 0, n02 -> 1, n03 -> 2.
    assert data.train_y.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert data.test_y.tolist() == [0, 1, 2, 0]
    # Train image 0 is n01's first image, written with colour 2 (JPEG is near exact on flat
    # colour).
    assert _mean_colour(data.train_x[0]) == pytest.approx(_colour(2), abs=2)
    assert _mean_colour(data.train_x[2]) == pytest.approx(_colour(0), abs=2)
    assert torch.equal(data.train_x[6, 0], data.train_x[6, 1])  # greyscale -> three equal channels
    assert _mean_colour(data.train_x[6]) == pytest.approx([90] * 3, abs=2)
    assert _mean_colour(data.test_x[3]) == pytest.approx(_colour(13), abs=2)
    cache = folder / tinyimagenet.CACHE_FOLDER
    assert (cache / "fingerprint.json").is_file() and (cache / "train_x.npy").is_file()

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although the cache is valid")

    monkeypatch.setattr(tinyimagenet, "_decode", no_decoding)
    cached = load_dataset("tinyimagenet", tmp_path)
    assert all(torch.equal(getattr(cached, name), getattr(data, name))
               for name in ("train_x", "train_y", "test_x", "test_y"))

    # A new training image changes the file list: the cache is rebuilt, with the new image.
    from PIL import Image
    new_image = folder / "train" / _WNIDS[0] / "images" / "new.JPEG"
    Image.new("RGB", (64, 64), (1, 2, 250)).save(new_image)
    monkeypatch.undo()
    counting = []
    original = tinyimagenet._decode
    monkeypatch.setattr(tinyimagenet, "_decode",
                        lambda path: counting.append(path) or original(path))
    rebuilt = load_dataset("tinyimagenet", tmp_path)
    assert len(counting) == 8 + 4 and rebuilt.train_x.shape == (8, 3, 64, 64)
    assert rebuilt.train_y.tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    assert _mean_colour(rebuilt.train_x[4]) == pytest.approx([1, 2, 250], abs=3)
    counting.clear()
    load_dataset("tinyimagenet", tmp_path)
    assert counting == []


# --- STL-10 -----------------------------------------------------------------------------------

def test_stl10_reads_column_major_binaries_and_resizes(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    written = {}
    for split, count in (("train", 4), ("test", 3)):
        images = rng.integers(0, 256, (count, 3, 96, 96), dtype=np.uint8)  # (N, C, H, W)
        images[0] = 0
        images[0, 1, 5, 80] = 255  # row 5, column 80 of the green channel
        images[1] = np.array([10, 120, 240], dtype=np.uint8).reshape(3, 1, 1)  # flat colour
        # The official files store each channel column by column.
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        labels = np.arange(1, count + 1, dtype=np.uint8) + (6 if split == "test" else 0)
        (folder / f"{split}_y.bin").write_bytes(labels.tobytes())
        written[split] = images
    data = load_dataset("stl10", tmp_path)
    assert data.name == "stl10" and data.num_classes == 10
    assert data.train_x.shape == (4, 3, 96, 96) and data.test_x.shape == (3, 3, 96, 96)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert data.train_y.tolist() == [0, 1, 2, 3] and data.test_y.tolist() == [6, 7, 8]
    assert data.train_x[0, 1, 5, 80].item() == 255 and data.train_x[0, 1, 80, 5].item() == 0
    assert torch.equal(data.test_x, torch.from_numpy(written["test"]))

    small = load_dataset("stl10", tmp_path, image_size=32)
    assert small.train_x.shape == (4, 3, 32, 32) and small.train_x.dtype == torch.uint8
    assert small.train_x[1, :, 7, 21].tolist() == [10, 120, 240]  # flat colour survives
    expected = F.interpolate(torch.from_numpy(written["train"][2:3]).float(), size=(32, 32),
                             mode="bilinear", antialias=True, align_corners=False)
    assert (small.train_x[2].float() - expected[0]).abs().max() <= 0.5 + 1e-4
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("stl10", tmp_path, image_size=200)


def test_stl10_to_cifar10_mapping_matches_class_names():
    for stl, cifar in enumerate(STL10_TO_CIFAR10):
        name = STL10_CLASSES[stl]
        if cifar is None:
            assert name == "monkey"
        else:
            assert CIFAR10_CLASSES[cifar] == {"car": "automobile"}.get(name, name)
    assert "frog" not in STL10_CLASSES and CIFAR10_CLASSES.index("frog") not in STL10_TO_CIFAR10
    labels = stl10_to_cifar10_labels(torch.tensor([0, 2, 7, 9]))
    assert labels.tolist() == [0, 1, -1, 9]


# --- Missing data sets ------------------------------------------------------------------------

@pytest.mark.parametrize("name, folder, url, missing", [
    ("cifar10", "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
     "data_batch_1"),
    ("cifar100", "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
     "train"),
    ("svhn", "svhn", "http://ufldl.stanford.edu/housenumbers/", "train_32x32.mat"),
    ("tinyimagenet", "tiny-imagenet-200", "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
     "wnids.txt"),
    ("stl10", "stl10_binary", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
     "train_X.bin"),
])
def test_a_missing_data_set_names_the_folder_files_and_url(tmp_path, name, folder, url, missing):
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset(name, tmp_path)
    message = str(error.value)
    assert str(tmp_path / folder) in message and url in message and missing in message


def test_a_partly_missing_data_set_names_only_the_missing_files(tmp_path):
    folder = _write_cifar10(tmp_path)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing data_batch_4 in") as error:
        load_dataset("cifar10", tmp_path)
    assert "data_batch_3" not in str(error.value)
