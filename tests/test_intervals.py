"""Intervals: the bootstrap over test grid points, grid-point means, scores too small to give,
and the paired bootstrap (no zoo needed: test parts are made from arrays)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kendalltau

from wslbench.evaluate import score
from wslbench.intervals import (
    DEGENERATE_MARK,
    GRID_POINT_MEANS_MARK,
    Bootstrap,
    TestPart,
    format_score,
    paired_difference,
    score_task,
    score_with_interval,
    weighted_scores,
)
from wslbench.tasks import Score


def part_of(targets, grid_points) -> TestPart:
    return TestPart([f"m{i}" for i in range(len(targets))], list(targets), list(grid_points))


def noisy_part(n_points: int = 30, per_point: int = 1, seed: int = 0):
    """Targets with a spread, one grid point per ``per_point`` models; predictions = targets
    plus noise."""
    rng = np.random.default_rng(seed)
    targets = np.repeat(rng.normal(size=n_points), per_point) + rng.normal(
        scale=0.3, size=n_points * per_point)
    groups = np.repeat([f"g{i:03d}" for i in range(n_points)], per_point)
    return part_of(targets, groups), targets


def test_weighted_scores_are_the_plain_scores_of_the_duplicated_samples():
    rng = np.random.default_rng(1)
    labels = np.array(["I", "II", "III", "IV"], dtype=object)
    for _ in range(20):
        n = int(rng.integers(4, 30))
        y = np.round(rng.normal(size=n), 1)  # rounded: ties, as tau-b must handle
        p = np.round(y + rng.normal(size=n), 1)
        y_label, p_label = labels[rng.integers(0, 3, n)], labels[rng.integers(0, 4, n)]
        counts = rng.integers(0, 3, size=n)
        for name, truth, guess in ((Score.R2, y, p), (Score.KENDALL_TAU, y, p),
                                   (Score.ACCURACY, y_label, p_label),
                                   (Score.MACRO_F1, y_label, p_label)):
            assert weighted_scores(name, truth, guess, np.ones((1, n)))[0] == pytest.approx(
                score(name, truth, guess), abs=1e-12)
            if len(set(truth[counts > 0])) >= 2:
                duplicated = score(name, np.repeat(truth, counts), np.repeat(guess, counts))
                assert weighted_scores(name, truth, guess, counts[None])[0] == pytest.approx(
                    duplicated, abs=1e-12)


def test_the_bootstrap_is_over_grid_points_so_duplicated_seeds_do_not_shrink_it():
    single, targets = noisy_part(n_points=30)
    predictions = targets + np.random.default_rng(2).normal(scale=0.5, size=len(targets))
    width = np.diff(score_with_interval(Score.R2, single, {0: predictions}).ci95)[0]

    # Every grid point's model five times over (seeds that agree): the same information.
    copies = 5
    duplicated = part_of(np.repeat(targets, copies), np.repeat(single.groups, copies))
    stats = score_with_interval(Score.R2, duplicated, {0: np.repeat(predictions, copies)})
    assert np.diff(stats.ci95)[0] == pytest.approx(width, rel=1e-9)

    # Were each copy its own grid point (a bootstrap over models), the interval would shrink
    # by about sqrt(5): what the grid-point bootstrap must not do.
    as_models = part_of(np.repeat(targets, copies), [f"m{i}" for i in range(30 * copies)])
    naive = np.diff(score_with_interval(Score.R2, as_models,
                                        {0: np.repeat(predictions, copies)}).ci95)[0]
    assert naive < 0.6 * width


def test_intervals_are_deterministic_given_the_seed():
    part, targets = noisy_part(n_points=20, per_point=3)
    rng = np.random.default_rng(5)
    predictions = {seed: targets + rng.normal(scale=0.5, size=len(targets)) for seed in (0, 1)}
    first = score_task([Score.R2, Score.KENDALL_TAU], part, predictions)
    again = score_task([Score.R2, Score.KENDALL_TAU], part, predictions)
    other = score_task([Score.R2, Score.KENDALL_TAU], part, predictions, Bootstrap(seed=1))
    for name in ("r2", "kendall_tau"):
        assert first[name].to_json() == again[name].to_json()
        assert first[name].ci95 != other[name].ci95
        assert first[name].value == other[name].value
        low, high = first[name].ci95
        assert low <= first[name].value <= high
    assert first["r2"].value == pytest.approx(np.mean(first["r2"].per_seed))


def test_rank_correlation_on_grid_point_means_when_targets_are_constant_within_grid_points():
    rng = np.random.default_rng(3)
    per_point = rng.normal(size=12)
    targets = np.repeat(per_point, 3)  # e.g. CKA: one value for the seeds of a grid point
    groups = np.repeat([f"g{i:02d}" for i in range(12)], 3)
    predictions = targets + rng.normal(scale=0.5, size=len(targets))
    part = part_of(targets, groups)
    assert part.constant_within_grid_points
    stats = score_task([Score.R2, Score.KENDALL_TAU], part, {0: predictions})
    assert stats["kendall_tau"].grid_point_means and not stats["r2"].grid_point_means
    means = predictions.reshape(12, 3).mean(axis=1)
    assert stats["kendall_tau"].value == pytest.approx(kendalltau(per_point, means).statistic)
    assert stats["r2"].value == pytest.approx(score(Score.R2, targets, predictions))
    assert format_score(stats["kendall_tau"].to_json()).endswith(GRID_POINT_MEANS_MARK)

    # Targets that vary within a grid point are ranked model by model.
    varied = part_of(targets + rng.normal(scale=0.01, size=len(targets)), groups)
    assert not varied.constant_within_grid_points
    assert not score_with_interval(Score.KENDALL_TAU, varied, {0: predictions}).grid_point_means
    # One model per grid point: nothing to average, so no flag either.
    assert not part_of(per_point, [f"g{i}" for i in range(12)]).constant_within_grid_points


def test_a_test_part_too_small_to_score_says_why():
    same = score_with_interval(Score.R2, part_of([0.5, 0.5, 0.5], ["a", "a", "b"]),
                               {0: np.array([0.1, 0.2, 0.3])})
    assert (same.value, same.ci95, same.reason) == (None, None, "1 distinct target")
    assert format_score(same.to_json()) == "n/a (1 distinct target)"
    assert "nan" not in str(same.to_json())

    one_point = score_with_interval(Score.R2, part_of([0.1, 0.9], ["a", "a"]),
                                    {0: np.array([0.2, 0.7])})
    assert one_point.value is not None and one_point.ci95 is None
    assert format_score(one_point.to_json()).endswith("[no interval: 1 test grid point]")

    part, targets = noisy_part(n_points=5)
    constant = score_with_interval(Score.KENDALL_TAU, part, {0: np.zeros(5), 1: np.zeros(5)})
    assert constant.value is None and constant.reason == "constant predictions for seeds 0, 1"


def test_degenerate_resamples_are_skipped_and_counted():
    # Two grid points: half the resamples draw one of them twice, leaving 1 distinct target.
    part = part_of([0.2, 0.2, 0.8, 0.8], ["a", "a", "b", "b"])
    stats = score_with_interval(Score.R2, part, {0: np.array([0.3, 0.1, 0.7, 0.9])})
    assert 400 < stats.degenerate < 600
    assert stats.ci95 is not None and stats.reason is None
    assert format_score(stats.to_json()).endswith(DEGENERATE_MARK)

    many, targets = noisy_part(n_points=30)
    assert score_with_interval(Score.R2, many, {0: targets}).degenerate == 0


def test_the_paired_bootstrap_tells_a_worse_method_from_an_equal_one():
    part, targets = noisy_part(n_points=30, per_point=2)
    rng = np.random.default_rng(4)

    def stats(predictions):
        return score_with_interval(Score.R2, part, {0: predictions})

    good = stats(targets + rng.normal(scale=0.3, size=len(targets)))
    as_good = stats(targets + rng.normal(scale=0.3, size=len(targets)))
    worse = stats(0.3 * targets + rng.normal(scale=0.6, size=len(targets)))

    clear = paired_difference(good, worse, higher_is_better=True)
    assert clear.value > 0 and clear.first_better and clear.significant
    equal = paired_difference(good, as_good, higher_is_better=True)
    assert equal.ci95[0] < 0 < equal.ci95[1] and not equal.significant
    # Lower-is-better scores flip the sign; a method never differs from itself.
    assert paired_difference(good, worse, higher_is_better=False).ci95[1] < 0
    assert paired_difference(good, good, True).ci95 == (0.0, 0.0)
    # The pair's interval is narrower than the two intervals would suggest apart.
    assert np.diff(equal.ci95)[0] < np.diff(good.ci95)[0] + np.diff(as_good.ci95)[0]
