"""What every data loader shares: where data sets live, and the error for a missing one."""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

#: Environment variable naming the folder that holds the data sets (``--data-root`` wins).
DATA_ROOT_ENV = "WSLBENCH_DATA"


def default_data_root() -> Path:
    """$WSLBENCH_DATA, else ~/.cache/wslbench/data."""
    return Path(os.environ.get(DATA_ROOT_ENV, "~/.cache/wslbench/data")).expanduser()


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are not where the loader looks; the message says how to get them."""


def require_files(folder: Path, files: list[str], dataset: str, how_to_get: str) -> Path:
    """Return ``folder`` if every one of ``files`` (relative paths) is in it, else raise a
    :class:`DatasetNotFoundError` that names the missing files, the folder and how to get them."""
    missing = [name for name in files if not (folder / name).exists()]
    if missing:
        raise DatasetNotFoundError(
            f"{dataset}: missing {', '.join(missing)} in '{folder}'.\n{how_to_get}\n"
            f"(The data root is --data-root, else ${DATA_ROOT_ENV}, else ~/.cache/wslbench/data.)"
        )
    return folder


def extract_tar_safely(archive: Path, destination: Path, top_folder: str) -> Path:
    """Extract ``archive`` (whose members all lie under ``top_folder/``) into ``destination``.

    Only plain files and folders under ``top_folder`` are accepted: absolute paths, ``..``,
    links and devices raise ``ValueError`` before anything is written. Extraction goes to a
    temporary folder first and is renamed into place, so an interrupted run leaves no half
    data set behind. Returns ``destination / top_folder``.
    """
    target = destination / top_folder
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            parts = PurePosixPath(member.name).parts
            if (member.name.startswith(("/", "\\")) or ".." in parts or not parts
                    or parts[0] != top_folder or "\\" in member.name):
                raise ValueError(f"archive '{archive}' has member '{member.name}' outside "
                                 f"'{top_folder}/'; refusing to extract it")
            if not (member.isfile() or member.isdir()):
                raise ValueError(f"archive '{archive}' has member '{member.name}' that is not a "
                                 "plain file or folder (a link or device); refusing to extract it")
        log.info("extracting %s into %s", archive, destination)
        scratch = Path(tempfile.mkdtemp(prefix=f".{top_folder}.", dir=destination))
        try:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(scratch, members=members, filter="data")
            else:  # Python < 3.11.4; the members were checked above
                tar.extractall(scratch, members=members)
            try:
                os.replace(scratch / top_folder, target)
            except OSError:
                if not target.is_dir():  # else another process extracted it meanwhile
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def dataset_folder(data_root: Path, folder: str, files: list[str], archive: str, url: str,
                   dataset: str) -> Path:
    """``data_root / folder`` holding ``files``; extracts ``data_root / archive`` if the folder
    is missing but the archive is there, else raises ``DatasetNotFoundError`` saying how to get
    it."""
    path = data_root / folder
    if not path.exists() and (data_root / archive).is_file():
        extract_tar_safely(data_root / archive, data_root, folder)
    how_to_get = (f"Download {url} and extract it in '{data_root}' (it unpacks to {folder}/), "
                  f"or put {archive} in '{data_root}' and it is extracted on first use.")
    return require_files(path, files, dataset, how_to_get)
