"""Where wslbench keeps what it makes (split files, feature caches, built zoos) and finds zoos
by name."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$WSLBENCH_CACHE``, or ``~/.cache/wslbench``."""
    return Path(os.environ.get("WSLBENCH_CACHE", Path.home() / ".cache" / "wslbench"))


def zoo_dirs() -> list[Path]:
    """Folders whose subfolders are zoos known by name: ``$WSLBENCH_ZOOS`` (a path list),
    then the cache's ``zoos`` folder, where the quickstart builds."""
    extra = [Path(p).expanduser() for p in os.environ.get("WSLBENCH_ZOOS", "").split(os.pathsep) if p]
    return [*extra, cache_dir() / "zoos"]


def known_zoos() -> dict[str, Path]:
    """Zoo name -> folder: the releases present on this machine (their newest version; see
    :mod:`wslbench.releases`), then every zoo in :func:`zoo_dirs` (the first of a name wins)."""
    from wslbench.releases import local_releases

    found: dict[str, Path] = local_releases()
    for folder in zoo_dirs():
        if folder.is_dir():
            for child in sorted(folder.iterdir()):
                if child.is_dir() and child.name not in found:
                    found[child.name] = child
    return found
