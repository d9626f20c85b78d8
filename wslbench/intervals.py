"""The uncertainty of every score: a seeded 95 % bootstrap over test grid points, and the
paired bootstrap that says whether two methods differ.

Why grid points: the seeds of one grid point share every hyperparameter and, for targets such
as CKA, ensemble gain, re-basin gain or mode connectivity, the target itself. They are not
independent test samples, so a bootstrap that resampled models would give intervals too
narrow by up to the square root of the number of seeds. A resample here draws the test part's
grid points with replacement, and each drawn grid point brings all its test samples (every
seed and, on the ``epochs`` split, every checkpoint).

How, exactly (so that anyone can recompute an interval from stored predictions):

- the test grid points are taken in sorted order of their ids (:func:`grid_point_id`);
  ``numpy.random.default_rng(seed).integers(0, G, size=(B, G))`` draws ``B`` resamples of
  ``G`` grid points (defaults: ``B = 1000``, ``seed = 0``); a resample counts how often each
  grid point is drawn, and every score is computed with those counts as sample weights, which
  equals scoring the duplicated samples;
- predictor seeds: the point estimate (``value``) is the mean over seeds of each seed's score
  on the whole test part; a resample's statistic is the mean over seeds of each seed's score
  on that same resample, so the interval is that of the seed-averaged score (the spread over
  seeds stays in ``std``);
- a resample on which a score is undefined for some seed (fewer than 2 distinct targets,
  constant predictions for Kendall tau) is *degenerate*: skipped and counted; the interval is
  the 2.5th and 97.5th percentile (numpy's linear interpolation) of the others;
- targets constant within every grid point (CKA, ensemble gain, ...): rank correlations are
  computed on grid-point means of predictions and targets, one unit per grid point, since
  ranking the seeds of one grid point against each other has no true order to find;
- a score is not given (``value`` null, with a ``reason``) when the test part has fewer than
  2 distinct targets or the score is undefined for a seed; an interval is not given when the
  test part has one grid point, or every resample is degenerate.

:func:`paired_difference` compares two methods on the same resamples: the difference of their
statistics on each resample, and its 95 % interval; not significant when it contains 0.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from wslbench.tasks import Score

RESAMPLES = 1000
SEED = 0
CONFIDENCE = 0.95
#: More than this share of degenerate resamples is reported as a warning: the interval then
#: comes from the resamples where the score exists, which favours some grid points.
DEGENERATE_WARNING = 0.10
#: Scores that only look at the order of predictions and targets: computed on grid-point
#: means where the targets are constant within grid points (Spearman would join them).
RANK_SCORES = frozenset({Score.KENDALL_TAU})


def grid_point_id(grid_point: str) -> str:
    """A short id of a grid point key (:attr:`wslbench.zoo.ModelRecord.grid_point`): the first
    16 hex digits of its sha256. Results and leaderboard entries record it per sample."""
    return hashlib.sha256(grid_point.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Bootstrap:
    """The bootstrap's settings; leaderboard entries must use the defaults."""

    resamples: int = RESAMPLES
    seed: int = SEED
    confidence: float = CONFIDENCE

    def counts(self, n_groups: int) -> np.ndarray:
        """How often each of ``n_groups`` grid points is drawn, one row per resample."""
        draws = np.random.default_rng(self.seed).integers(0, n_groups,
                                                          size=(self.resamples, n_groups))
        counts = np.zeros((self.resamples, n_groups), dtype=np.float64)
        np.add.at(counts, (np.arange(self.resamples)[:, None], draws), 1.0)
        return counts

    def interval(self, replicates: np.ndarray) -> tuple[float, float]:
        """The percentile interval of the (non-degenerate) replicates."""
        tail = (1 - self.confidence) / 2 * 100
        low, high = np.percentile(replicates, [tail, 100 - tail])
        return float(low), float(high)

    def to_json(self) -> dict[str, Any]:
        return {"unit": "grid_point", "method": "percentile", "resamples": self.resamples,
                "seed": self.seed, "confidence": self.confidence}


class TestPart:
    """The scored samples of one task on one split: ids, true targets and grid points, with
    what every score needs prepared once (shared by all seeds and methods).

    ``targets`` are numbers (regression) or labels (strings, classification).
    """

    __test__ = False  # not a pytest class

    def __init__(self, ids: Sequence[str], targets: Sequence[Any], grid_points: Sequence[str]):
        if not len(ids) == len(targets) == len(grid_points):
            raise ValueError(f"{len(ids)} sample ids, {len(targets)} targets and "
                             f"{len(grid_points)} grid points; one of each per sample")
        self.ids = list(ids)
        self.labels = any(isinstance(t, str) for t in targets)
        self.targets = np.array(list(targets), dtype=object if self.labels else np.float64)
        self.groups = sorted(set(grid_points))
        index = {g: i for i, g in enumerate(self.groups)}
        self.group_of = np.array([index[g] for g in grid_points], dtype=np.int64)
        self.sizes = np.bincount(self.group_of, minlength=len(self.groups))
        constant = all(len({_key(t) for t in self.targets[self.group_of == g]}) == 1
                       for g in range(len(self.groups)))
        #: Targets identical for every sample of each grid point, some grid point having
        #: several samples (else grid-point means would change nothing).
        self.constant_within_grid_points = constant and bool(np.any(self.sizes > 1))
        first = np.array([np.flatnonzero(self.group_of == g)[0] for g in range(len(self.groups))],
                         dtype=np.int64)
        self.group_targets = self.targets[first]

    @property
    def n_grid_points(self) -> int:
        return len(self.groups)

    @property
    def distinct_targets(self) -> int:
        return len({_key(t) for t in self.targets})

    def uses_grid_point_means(self, score: Score) -> bool:
        return self.constant_within_grid_points and score in RANK_SCORES

    def units(self, score: Score, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
        """(targets, predictions, grid point of each unit) the score is computed on: the
        samples, or the grid points with their mean predictions."""
        if self.uses_grid_point_means(score):
            values = np.asarray(predicted, dtype=np.float64)
            # fsum: the same means whatever the order of the samples (results and entries
            # list them differently), so that ties between grid points are the same too
            means = np.array([math.fsum(values[self.group_of == g]) / self.sizes[g]
                              for g in range(self.n_grid_points)])
            return self.group_targets, means, np.arange(self.n_grid_points)
        return self.targets, predicted, self.group_of


def _key(value: Any) -> Any:
    return value if isinstance(value, str) else float(value)


# --------------------------------------------------------------------------- weighted scores


def weighted_scores(score: Score, targets: np.ndarray, predicted: np.ndarray,
                    weights: np.ndarray) -> np.ndarray:
    """``score`` of ``predicted`` against ``targets`` under each row of ``weights`` (resamples
    x units; integer counts), NaN where it is undefined: fewer than 2 distinct targets with
    weight, constant predictions for Kendall tau. Unit weights give the plain score
    (:func:`wslbench.evaluate.score`, to rounding)."""
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    classes, inverse = np.unique([_key(t) for t in targets], return_inverse=True)
    present = weights @ np.eye(len(classes))[inverse] > 0
    defined = present.sum(axis=1) >= 2
    total = weights.sum(axis=1)
    if score in (Score.ACCURACY, Score.MACRO_F1):
        truth = np.array([str(t) for t in targets], dtype=object)
        guess = np.array([str(p) for p in predicted], dtype=object)
        if score is Score.ACCURACY:
            values = weights @ (truth == guess).astype(np.float64) / total
        else:
            values = _macro_f1(truth, guess, weights)
    else:
        y = np.asarray(targets, dtype=np.float64)
        p = np.asarray(predicted, dtype=np.float64)
        if not np.all(np.isfinite(p)):
            return np.full(len(weights), np.nan)
        if score is Score.R2:
            values = _r2(y, p, weights, total)
        elif score is Score.KENDALL_TAU:
            values = _kendall_tau_b(y, p, weights, total)
        else:
            raise ValueError(f"unknown score {score!r}")
    values = np.where(defined & np.isfinite(values), values, np.nan)
    return values


def _r2(y: np.ndarray, p: np.ndarray, weights: np.ndarray, total: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = weights @ y / total
        spread = (weights * (y[None, :] - mean[:, None]) ** 2).sum(axis=1)
        residual = weights @ (y - p) ** 2
        return np.where(spread > 0, 1 - residual / spread, np.nan)


def _kendall_tau_b(y: np.ndarray, p: np.ndarray, weights: np.ndarray,
                   total: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of the weighted samples (scipy's ``kendalltau`` on the duplicated
    samples): (concordant - discordant) / sqrt of the pairs untied in each variable.

    With counts w: concordant - discordant = w'Sw / 2 (S the product of the pairwise signs),
    and the pairs not tied in y number (N^2 - w'T_y w) / 2, T_y the pairwise ties (diagonal
    included). Counts and signs are small integers, so the float sums are exact."""
    signs = np.sign(y[:, None] - y[None, :]) * np.sign(p[:, None] - p[None, :])
    concordance = ((weights @ signs) * weights).sum(axis=1)
    square = total ** 2
    untied_y = square - ((weights @ (y[:, None] == y[None, :]).astype(np.float64))
                         * weights).sum(axis=1)
    untied_p = square - ((weights @ (p[:, None] == p[None, :]).astype(np.float64))
                         * weights).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = concordance / np.sqrt(untied_y * untied_p)
    return np.where((untied_y > 0) & (untied_p > 0), np.clip(tau, -1.0, 1.0), np.nan)


def _macro_f1(truth: np.ndarray, guess: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Macro-F1 over the labels present (with weight) in the targets or the predictions, a
    label's F1 being 2 TP / (true + predicted) (sklearn, ``zero_division=0``)."""
    f1_sum = np.zeros(len(weights))
    n_labels = np.zeros(len(weights))
    for label in sorted(set(truth) | set(guess)):
        is_true, is_guess = truth == label, guess == label
        hits = weights @ (is_true & is_guess).astype(np.float64)
        both = weights @ is_true.astype(np.float64) + weights @ is_guess.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            f1_sum += np.where(both > 0, 2 * hits / both, 0.0)
        n_labels += both > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return f1_sum / n_labels


# --------------------------------------------------------------------------- scores with intervals


@dataclass
class ScoreInterval:
    """One score of one task: the point estimate, its interval, and why either is missing.

    ``value``: mean over seeds of the score on the whole test part (None: not defined);
    ``ci95``: the bootstrap interval (None: see ``reason``); ``std``: the population std
    over seeds; ``per_seed``: each seed's score; ``grid_point_means``: computed on
    grid-point means; ``degenerate``: resamples skipped; ``reason``: why ``value`` or
    ``ci95`` is None.
    """

    value: float | None
    ci95: tuple[float, float] | None
    std: float | None
    per_seed: list[float | None]
    grid_point_means: bool
    degenerate: int
    reason: str | None
    #: The statistic on every resample (NaN: degenerate); kept for paired tests, not stored.
    replicates: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "ci95": None if self.ci95 is None else list(self.ci95),
                "std": self.std, "per_seed": list(self.per_seed),
                "grid_point_means": self.grid_point_means, "degenerate": self.degenerate,
                "reason": self.reason}


def score_with_interval(score: Score, part: TestPart, predictions: Mapping[Any, np.ndarray],
                        bootstrap: Bootstrap = Bootstrap()) -> ScoreInterval:
    """``score`` of each seed's predictions (seed -> array in the order of ``part.ids``),
    their mean and its bootstrap interval over grid points."""
    gp_means = part.uses_grid_point_means(score)
    missing = ScoreInterval(None, None, None, [None] * len(predictions), gp_means, 0, None)
    if part.distinct_targets < 2:
        missing.reason = _plural(part.distinct_targets, "distinct target")
        return missing
    per_seed, units = [], []
    for predicted in predictions.values():
        y, p, unit_group = part.units(score, np.asarray(predicted))
        units.append((y, p, unit_group))
        per_seed.append(float(weighted_scores(score, y, p, np.ones((1, len(y))))[0]))
    seeds = list(predictions)
    undefined = [i for i, v in enumerate(per_seed) if math.isnan(v)]
    per_seed_json = [None if math.isnan(v) else v for v in per_seed]
    if undefined:
        missing.per_seed = per_seed_json
        missing.reason = _why_undefined(score, part, units[undefined[0]][1],
                                        [seeds[i] for i in undefined], gp_means)
        return missing
    value = float(np.mean(per_seed))
    std = float(np.std(per_seed))
    result = ScoreInterval(value, None, std, per_seed_json, gp_means, 0, None)
    if part.n_grid_points < 2:
        result.reason = "1 test grid point"
        return result
    counts = bootstrap.counts(part.n_grid_points)
    replicates = np.mean([weighted_scores(score, y, p, counts[:, unit_group])
                          for y, p, unit_group in units], axis=0)
    result.replicates = replicates
    valid = replicates[~np.isnan(replicates)]
    result.degenerate = int(len(replicates) - len(valid))
    if not len(valid):
        result.reason = f"all {bootstrap.resamples} resamples degenerate"
        return result
    result.ci95 = bootstrap.interval(valid)
    return result


def _why_undefined(score: Score, part: TestPart, predicted: np.ndarray, seeds: list,
                   gp_means: bool) -> str:
    """Why a score has no value for ``seeds`` (``predicted``: the first one's units)."""
    which = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(str(s) for s in seeds)}"
    if not part.labels and not np.all(np.isfinite(np.asarray(predicted, dtype=np.float64))):
        return f"non-finite predictions for {which}"
    if score is Score.KENDALL_TAU and len({float(v) for v in predicted}) < 2:
        what = "grid-point mean predictions" if gp_means else "predictions"
        return f"constant {what} for {which}"
    return f"undefined for {which}"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def score_task(scores: Sequence[Score], part: TestPart, predictions: Mapping[Any, np.ndarray],
               bootstrap: Bootstrap = Bootstrap()) -> dict[str, ScoreInterval]:
    """Every score of a task, by score name."""
    return {s.value: score_with_interval(s, part, predictions, bootstrap) for s in scores}


def bootstrap_info(part: TestPart, bootstrap: Bootstrap = Bootstrap()) -> dict[str, Any]:
    """What a result and an entry record of the bootstrap: the settings, the number of test
    grid points, and whether the targets are constant within grid points."""
    return {**bootstrap.to_json(), "n_grid_points": part.n_grid_points,
            "targets_constant_within_grid_points": part.constant_within_grid_points}


def degenerate_warning(stats: Mapping[str, Any], resamples: int = RESAMPLES) -> bool:
    """Whether more than :data:`DEGENERATE_WARNING` of the resamples were degenerate."""
    return stats.get("degenerate", 0) > DEGENERATE_WARNING * resamples


#: Markers after a score, and what they mean (the tables' footnotes).
GRID_POINT_MEANS_MARK = "†"
DEGENERATE_MARK = "‡"
FOOTNOTES = {
    GRID_POINT_MEANS_MARK: "on grid-point means of predictions and targets: the targets are "
                           "constant within each grid point",
    DEGENERATE_MARK: f"more than {DEGENERATE_WARNING:.0%} of the {RESAMPLES} bootstrap "
                     "resamples were degenerate (the score undefined on them) and skipped",
}


def format_score(stats: Mapping[str, Any]) -> str:
    """A score as tables print it: ``0.853 [0.79, 0.90]`` (value, 95 % interval), ``n/a (1
    distinct target)`` without a value, ``0.853 [no interval: 1 test grid point]`` without an
    interval; then the marks of :data:`FOOTNOTES` that apply."""
    value, ci95 = stats["value"], stats["ci95"]
    if value is None:
        return f"n/a ({stats['reason']})"
    text = f"{value:.3f} " + (f"[{ci95[0]:.2f}, {ci95[1]:.2f}]" if ci95 is not None
                              else f"[no interval: {stats['reason']}]")
    return text + score_marks(stats)


def score_marks(stats: Mapping[str, Any]) -> str:
    """The footnote marks of a score (empty when none applies)."""
    return ((GRID_POINT_MEANS_MARK if stats.get("grid_point_means") else "")
            + (DEGENERATE_MARK if degenerate_warning(stats) else ""))


# --------------------------------------------------------------------------- paired bootstrap


@dataclass(frozen=True)
class PairedDifference:
    """How much better the first method is than the second (in the task's better direction)
    on the whole test part, its interval over the same resamples, and whether it is
    significant (the interval excludes 0). ``ci95`` is None where no resample serves."""

    value: float
    ci95: tuple[float, float] | None
    degenerate: int

    @property
    def significant(self) -> bool:
        return self.ci95 is not None and (self.ci95[0] > 0 or self.ci95[1] < 0)

    @property
    def first_better(self) -> bool:
        """The first method is significantly better than the second."""
        return self.ci95 is not None and self.ci95[0] > 0


def paired_difference(first: ScoreInterval, second: ScoreInterval, higher_is_better: bool,
                      bootstrap: Bootstrap = Bootstrap()) -> PairedDifference | None:
    """The paired bootstrap of two methods' scores on the same test part, from their
    replicates (both made by :func:`score_with_interval` with the same ``bootstrap``, so
    resample ``b`` draws the same grid points for both). None when either has no value or
    no replicates."""
    if first.value is None or second.value is None or first.replicates is None \
            or second.replicates is None:
        return None
    sign = 1.0 if higher_is_better else -1.0
    diffs = sign * (first.replicates - second.replicates)
    valid = diffs[~np.isnan(diffs)]
    ci95 = bootstrap.interval(valid) if len(valid) else None
    return PairedDifference(sign * (first.value - second.value), ci95, int(len(diffs) - len(valid)))
