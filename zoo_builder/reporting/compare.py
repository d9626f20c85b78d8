"""How well a rebuilt zoo reproduces a release: ``zoo-builder compare REBUILT RELEASE``.

Models are matched by grid point (every params.json entry but the seed, where the machine put
things, and the checkpoint schedule, which does not change training) and seed; grid points
that only one zoo has are counted and left out. For each target that both zoos hold, read at
each model's last epoch that has it (the final epoch for the training metrics, the annotated
epoch for landscape and downstream metrics):

- numeric targets: the Spearman correlation of the grid-point means over the matched seeds
  (does the rebuild order the phase diagram as the release does), the mean absolute
  difference per model and, as its scale, the release's standard deviation over models;
- the phase label: the fraction of models with the same label, and of grid points with the
  same majority label (a tie goes to the label first in sorted order).

And the weights: how many checkpoints of matched models, at the epochs both zoos hold, have
bit-identical tensors (from the manifests' tensor fingerprints).
"""

from __future__ import annotations

import json
import math
import textwrap
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wslbench import zoo_format as fmt
from wslbench.zoo import NON_GRID_KEYS, ModelRecord, Zoo

#: params.json entries that do not take part in matching (see the module docstring).
MATCH_IGNORED = NON_GRID_KEYS | {"training::checkpoint_epochs"}

#: Numeric targets compared, in report order: training metrics, the gap, landscape metrics,
#: then the downstream ones (where the zoos have them).
NUMERIC_METRICS = (
    "test_acc", "train_acc", "test_loss", "train_loss", "ggap",
    "representation_similarity", "curve_mc_train_error", "log_hessian_trace_train",
    "log_hessian_top_ev_val",
    "wiseft_acc_test_delta", "gitrebasin_acc_test_delta", "prune_acc_test_50",
    "prune_acc_test_90", "ensemble_gain", "transfer_acc",
)
LABEL_METRICS = ("phase",)


@dataclass
class MetricComparison:
    """One target compared over the matched models that hold it in both zoos."""

    metric: str
    models: int
    grid_points: int
    #: epochs the values were read at, in each zoo
    epochs_rebuilt: list[int]
    epochs_release: list[int]
    # numeric targets
    spearman: float | None = None
    mean_abs_diff: float | None = None
    release_std: float | None = None
    # the phase label
    agreement: float | None = None
    majority_agreement: float | None = None

    @property
    def relative_diff(self) -> float | None:
        """The mean absolute difference in units of the release's standard deviation."""
        if self.mean_abs_diff is None or not self.release_std:
            return None
        return self.mean_abs_diff / self.release_std


@dataclass
class Comparison:
    rebuilt: str
    release: str
    rebuilt_revision: str
    release_revision: str
    matched_models: int
    matched_grid_points: int
    grid_points_only_rebuilt: int
    grid_points_only_release: int
    #: models of matched grid points whose seed the other zoo lacks
    models_only_rebuilt: int
    models_only_release: int
    metrics: list[MetricComparison] = field(default_factory=list)
    #: targets that only one zoo holds (or neither, among the compared ones)
    not_in_both: list[str] = field(default_factory=list)
    #: checkpoints of matched models at epochs both zoos hold, and how many of them have
    #: bit-identical tensors (by the manifests' tensor fingerprints; None where a zoo has no
    #: manifest to read them from)
    checkpoints_compared: int | None = None
    checkpoints_identical: int | None = None
    checkpoint_epochs: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for entry, metric in zip(data["metrics"], self.metrics):
            entry["relative_diff"] = metric.relative_diff
        return _finite(data)

    def write_json(self, path: str | Path) -> Path:
        fmt.atomic_write_json(Path(path), self.to_dict())
        return Path(path)


def match_key(model: ModelRecord) -> tuple[str, str]:
    """(grid point, seed) of a model, comparable across zoos."""
    grid = {k: v for k, v in model.params.items() if k not in MATCH_IGNORED}
    return json.dumps(grid, sort_keys=True, default=str), json.dumps(model.seed)


def metric_value(model: ModelRecord, metric: str) -> tuple[int, Any] | None:
    """(epoch, value) of a target at the model's last epoch that holds it, or None."""
    for epoch in range(len(model.results) - 1, -1, -1):
        row = model.results[epoch]
        if metric == "ggap":
            if row.get("train_acc") is not None and row.get("test_acc") is not None:
                return epoch, float(row["train_acc"]) - float(row["test_acc"])
        elif row.get(metric) is not None:
            value = row[metric]
            return epoch, value if metric in LABEL_METRICS else float(value)
    return None


def compare_zoos(rebuilt: Zoo, release: Zoo) -> Comparison:
    """Compare every target of :data:`NUMERIC_METRICS` and :data:`LABEL_METRICS` that both
    zoos hold, over the models matched by grid point and seed."""
    ours = {match_key(m): m for m in rebuilt.models}
    theirs = {match_key(m): m for m in release.models}
    points_ours, points_theirs = {k[0] for k in ours}, {k[0] for k in theirs}
    shared_points = points_ours & points_theirs
    matched = sorted(set(ours) & set(theirs))
    comparison = Comparison(
        rebuilt=str(rebuilt.root), release=str(release.root),
        rebuilt_revision=rebuilt.revision, release_revision=release.revision,
        matched_models=len(matched), matched_grid_points=len({k[0] for k in matched}),
        grid_points_only_rebuilt=len(points_ours - points_theirs),
        grid_points_only_release=len(points_theirs - points_ours),
        models_only_rebuilt=sum(k[0] in shared_points and k not in theirs for k in ours),
        models_only_release=sum(k[0] in shared_points and k not in ours for k in theirs))
    for metric in NUMERIC_METRICS + LABEL_METRICS:
        pairs = {}
        for key in matched:
            a, b = metric_value(ours[key], metric), metric_value(theirs[key], metric)
            if a is not None and b is not None:
                pairs[key] = (a, b)
        if not pairs:
            comparison.not_in_both.append(metric)
            continue
        compare = _compare_labels if metric in LABEL_METRICS else _compare_numbers
        comparison.metrics.append(compare(metric, pairs))
    _compare_weights(comparison, rebuilt, release, [(ours[k], theirs[k]) for k in matched])
    return comparison


def _tensor_fingerprints(zoo: Zoo, model: ModelRecord) -> dict[str, str] | None:
    """Checkpoint folder -> tensors fingerprint, as the zoo's manifest records them."""
    if zoo.manifest is None or model.name not in zoo.manifest.trials:
        return None
    return zoo.manifest.trials[model.name].get("content", {}).get("tensors")


def _compare_weights(comparison: Comparison, rebuilt: Zoo, release: Zoo,
                     pairs: list[tuple[ModelRecord, ModelRecord]]) -> None:
    """Count the checkpoints of matched models, at the epochs both hold, whose tensors are
    bit-identical (the weights themselves, not the files: blind to metadata)."""
    compared = identical = 0
    epochs: set[str] = set()
    for ours, theirs in pairs:
        a, b = _tensor_fingerprints(rebuilt, ours), _tensor_fingerprints(release, theirs)
        if a is None or b is None:
            return
        for folder in sorted(set(a) & set(b)):
            compared += 1
            identical += a[folder] == b[folder]
            epochs.add(folder)
    comparison.checkpoints_compared, comparison.checkpoints_identical = compared, identical
    comparison.checkpoint_epochs = sorted(int(folder.rpartition("_")[2]) for folder in epochs)


def _base(metric: str, pairs: dict) -> dict[str, Any]:
    return dict(metric=metric, models=len(pairs), grid_points=len({k[0] for k in pairs}),
                epochs_rebuilt=sorted({a[0] for a, _ in pairs.values()}),
                epochs_release=sorted({b[0] for _, b in pairs.values()}))


def _by_grid_point(pairs: dict) -> dict[str, list[tuple[Any, Any]]]:
    groups: dict[str, list[tuple[Any, Any]]] = {}
    for (point, _), (a, b) in sorted(pairs.items()):
        groups.setdefault(point, []).append((a[1], b[1]))
    return groups


def _compare_numbers(metric: str, pairs: dict) -> MetricComparison:
    from scipy.stats import spearmanr

    ours = np.array([a[1] for a, _ in pairs.values()])
    theirs = np.array([b[1] for _, b in pairs.values()])
    means = np.array([[np.mean([a for a, _ in values]), np.mean([b for _, b in values])]
                      for values in _by_grid_point(pairs).values()])
    spearman = None
    if len(means) >= 2 and np.ptp(means[:, 0]) > 0 and np.ptp(means[:, 1]) > 0:
        spearman = float(spearmanr(means[:, 0], means[:, 1]).statistic)
    return MetricComparison(
        **_base(metric, pairs), spearman=spearman,
        mean_abs_diff=float(np.mean(np.abs(ours - theirs))),
        release_std=float(np.std(theirs, ddof=1)) if len(theirs) > 1 else None)


def _majority(labels: list[str]) -> str:
    counts = Counter(labels)
    top = max(counts.values())
    return min(label for label, count in counts.items() if count == top)


def _compare_labels(metric: str, pairs: dict) -> MetricComparison:
    same = [str(a[1]) == str(b[1]) for a, b in pairs.values()]
    groups = _by_grid_point(pairs).values()
    majorities = [_majority([str(a) for a, _ in values]) == _majority([str(b) for _, b in values])
                  for values in groups]
    return MetricComparison(**_base(metric, pairs), agreement=float(np.mean(same)),
                            majority_agreement=float(np.mean(majorities)))


def _finite(obj: Any) -> Any:
    """JSON has no NaN: store it as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_finite(value) for value in obj]
    return obj


def _number(value: float | None, width: int, spec: str = ".4g") -> str:
    return f"{'n/a' if value is None else format(value, spec):>{width}}"


def format_comparison(comparison: Comparison) -> str:
    """The comparison as a text table, with the matching counts above it."""
    c = comparison
    lines = [
        f"rebuilt  {c.rebuilt} (revision {c.rebuilt_revision[:12]})",
        f"release  {c.release} (revision {c.release_revision[:12]})",
        f"matched  {c.matched_models} models in {c.matched_grid_points} grid points; "
        f"unmatched grid points: {c.grid_points_only_rebuilt} only in the rebuild, "
        f"{c.grid_points_only_release} only in the release; unmatched seeds of matched grid "
        f"points: {c.models_only_rebuilt} only in the rebuild, {c.models_only_release} only in "
        "the release",
    ]
    if c.checkpoints_compared is not None:
        lines.append(f"weights  {c.checkpoints_identical} of {c.checkpoints_compared} checkpoints "
                     "of matched models have bit-identical tensors (epochs "
                     f"{', '.join(map(str, c.checkpoint_epochs)) or 'none in common'})")
    lines.append("")
    header = (f"{'metric':<27} {'models':>6} {'points':>6} {'spearman':>8} {'MAD':>10} "
              f"{'release std':>11} {'MAD/std':>7}  epochs (rebuilt / release)")
    lines += [header, "-" * len(header)]
    for m in c.metrics:
        epochs = (f"{','.join(map(str, m.epochs_rebuilt))} / "
                  f"{','.join(map(str, m.epochs_release))}")
        if m.agreement is not None:
            cells = (f"same label: {m.agreement:.2f} of models, {m.majority_agreement:.2f} of "
                     "grid-point majorities")
            lines.append(f"{m.metric:<27} {m.models:>6} {m.grid_points:>6} {cells}  {epochs}")
            continue
        lines.append(f"{m.metric:<27} {m.models:>6} {m.grid_points:>6} "
                     f"{_number(m.spearman, 8, '.3f')} {_number(m.mean_abs_diff, 10)} "
                     f"{_number(m.release_std, 11)} {_number(m.relative_diff, 7, '.2f')}  "
                     f"{epochs}")
    if c.not_in_both:
        lines += ["", textwrap.fill(f"not in both zoos: {', '.join(c.not_in_both)}", width=100)]
    return "\n".join(lines)
