"""What every data loader shares: where data sets live, and the error for a missing one."""

from __future__ import annotations

import os
from pathlib import Path

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
