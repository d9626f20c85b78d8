"""One small registry for zoo specs, tasks and predictors.

Entries are objects or lazy ``"module:attr"`` strings, imported on first use, so that listing
names never imports optional heavy dependencies. Duplicate names raise; an unknown name says
what is close and what exists.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


def import_object(target: str):
    """Import ``"package.module:attr"`` and return the attribute, with a clear error."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{target!r} is not of the form 'package.module:attr'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"cannot import module {module_name!r} for {target!r}: {err}") from err
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as err:
        raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from err
    return obj


class UnknownNameError(KeyError):
    """An unknown registry name; printed as its message, not as a quoted key."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, entry: T | str, replace: bool = False) -> T | str:
        """Add ``name``; ``replace`` knowingly swaps an entry (e.g. a task's newest version)."""
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}; {hint}known: {', '.join(self.names())}")
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = import_object(entry)
            self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def registration_order(self) -> list[str]:
        """The names in the order they were registered (e.g. splits from ``iid`` on)."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
