"""The leaderboard as files: entries, zoo references, validation that re-scores, rendering.

The package's parts: :mod:`.schema` (the strict schema of entries and references),
:mod:`.layout` (file paths and shared helpers), :mod:`.references`, :mod:`.entries` (checks
and ``validate``), :mod:`.submit` and :mod:`.render`; their public functions are here.

Layout of a leaderboard folder (``leaderboards/`` in the repository)::

    zoos/<zoo>/<revision[:16]>.json        reference: the splits and the true test targets of
                                           one zoo revision (zoos are not in git, so CI checks
                                           entries against these)
    entries/<zoo>/<revision[:16]>/<split>/<method>.json
                                           entry: one method on one zoo revision and split,
                                           every task submitted for it, with its per-model
                                           predictions
    README.md, index.html                  the rendered tables

Validation trusts no claimed number: it recomputes every score of every seed, and its 95 %
bootstrap interval over test grid points (:mod:`wslbench.intervals`), from the stored
predictions and the reference's targets and grid points. A reference is checked against its own sha256, and
against the zoo itself when a zoo of that revision is at hand. Every check returns a list of
problems (strings that name the file, the field and the fix) rather than raising, so that one
run reports everything that is wrong.
"""

from __future__ import annotations

from wslbench.leaderboard.common import LeaderboardError
from wslbench.leaderboard.entries import Checked, check_entry, load_entries, validate
from wslbench.leaderboard.layout import (
                                             default_root,
                                             entry_path,
                                             reference_path,
                                             task_key,
)
from wslbench.leaderboard.references import (
                                             add_zoo,
                                             check_reference,
                                             find_references,
                                             load_reference,
)
from wslbench.leaderboard.render import render, write_rendered
from wslbench.leaderboard.schema import (
                                             Entry,
                                             Method,
                                             Reference,
                                             SchemaError,
                                             TaskResult,
)
from wslbench.leaderboard.submit import load_result, submit

__all__ = ["Checked", "Entry", "LeaderboardError", "Method", "Reference", "SchemaError",
           "TaskResult", "add_zoo", "check_entry", "check_reference", "default_root",
           "entry_path", "find_references", "load_entries", "load_reference", "load_result",
           "reference_path", "render", "submit", "task_key", "validate", "write_rendered"]
