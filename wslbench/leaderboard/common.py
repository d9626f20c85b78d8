"""What every part of the leaderboard shares: its error and its constants."""

from __future__ import annotations

import re

#: 2: scores carry a 95 % bootstrap interval over test grid points, tasks record each
#: sample's grid point; entries and references of schema 1 are still read and validated.
ENTRY_SCHEMA_VERSION = 2
#: 2: references hold each split's test models' grid points.
REFERENCE_SCHEMA_VERSION = 2
#: Stored and recomputed scores agree to this relative tolerance (plus a tiny absolute one,
#: for scores that are exactly zero).
REL_TOL, ABS_TOL = 1e-9, 1e-12
#: How many unknown or missing sample ids a message names.
SHOW = 3
URL = re.compile(r"^https?://[^\s<>\"'`()|]+$")
REPO_PATH = re.compile(r"^(?!/)(?!.*(?:^|/)\.\.(?:/|$))[\w.\-/]+$")
SCORE_LABELS = {"r2": "R²", "kendall_tau": "Kendall τ", "accuracy": "accuracy",
                "macro_f1": "macro-F1"}


class LeaderboardError(ValueError):
    """A submission or a leaderboard file cannot be used; the message says why and what to do."""
