"""Which code made a set of predictions: the identity a result records of its predictor.

A result names the predictor as it was given (a registered name, an entry point, a file or a
module path), its class, the distribution that installs it with that distribution's version,
the git commit of the repository its file lies in (and whether that file has uncommitted
changes), the sha256 of the file that defines the class and, for a predictor given as a file,
the file's source, so that ``wslbench leaderboard reproduce`` can run the same code again.
"""

from __future__ import annotations

import hashlib
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

#: Sources up to this size are stored in results of predictors given as files.
MAX_STORED_SOURCE = 256 * 1024


def predictor_identity(predictor_class: type, reference: str) -> dict[str, Any]:
    """The identity of ``predictor_class``, loaded from ``reference``."""
    from wslbench.predictor import PREDICTORS, entry_points

    module = sys.modules.get(predictor_class.__module__)
    file = getattr(module, "__file__", None) or _source_file(predictor_class)
    path = Path(file).resolve() if file else None
    given_as = ("registered" if reference in PREDICTORS else
                "entry point" if reference in entry_points() else
                "file" if reference.partition(".py:")[0].endswith(".py") or
                reference.endswith(".py") else "module")
    identity: dict[str, Any] = {
        "reference": reference, "given_as": given_as,
        "name": reference if given_as in ("registered", "entry point") else _name(predictor_class),
        "class": f"{predictor_class.__module__}:{predictor_class.__qualname__}",
        "file": str(path) if path else None,
        "sha256": None, "source": None, "distribution": None, "version": None,
        "git_commit": None, "git_dirty": None,
    }
    if path is not None and path.is_file():
        data = path.read_bytes()
        identity["sha256"] = hashlib.sha256(data).hexdigest()
        if given_as == "file" and len(data) <= MAX_STORED_SOURCE:
            identity["source"] = data.decode("utf-8", errors="replace")
        identity["git_commit"], identity["git_dirty"] = git_state(path)
    if given_as != "file":  # a file's code is its own, not an installed distribution's
        identity["distribution"], identity["version"] = _distribution(predictor_class.__module__)
    return identity


def _name(predictor_class: type) -> str:
    name = getattr(predictor_class, "name", None)
    return name if isinstance(name, str) and name else predictor_class.__name__


def _source_file(obj: Any) -> str | None:
    try:
        return inspect.getsourcefile(obj)
    except (TypeError, OSError):
        return None


def _distribution(module_name: str) -> tuple[str | None, str | None]:
    """The installed distribution that provides the module's top-level package, and its
    version (None for code that no distribution installs, e.g. a loose file)."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    top = module_name.split(".")[0]
    # Most distributions list their packages in top_level.txt, which is read in a few ms;
    # packages_distributions() reads every distribution's file list (~0.2 s), so it only
    # answers for the packages that no top_level.txt names.
    names = _declaring_top_level(top) or packages_distributions().get(top) or []
    for name in names:
        try:
            return name, version(name)
        except PackageNotFoundError:
            continue
    return None, None


def _declaring_top_level(top: str) -> list[str]:
    """The distributions whose ``top_level.txt`` names the package ``top``."""
    from importlib.metadata import distributions

    return [dist.metadata["Name"] for dist in distributions()
            if top in (dist.read_text("top_level.txt") or "").split()]


def git_state(path: Path) -> tuple[str | None, bool | None]:
    """The commit of the git repository that holds ``path``, and whether the file differs
    from that commit (None, None outside a repository or without git)."""
    folder = path.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None, None
        # --no-optional-locks: a status check must not take the index lock that a user's own
        # git command in the same repository may need at that moment.
        status = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--",
                                 path.name], cwd=folder, capture_output=True, text=True,
                                timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    return head.stdout.strip() or None, bool(status.stdout.strip())
