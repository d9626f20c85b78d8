"""Held-out check of the phase rules: leave one published zoo out, fit, label it, compare.

``python -m zoo_builder.annotating.phase_validation <dir of published summaries>`` (or
:func:`leave_one_zoo_out`).

What "fitting" means here (:func:`fit_rules`). Each v2 threshold sits at the **natural gap**
of one population of the training zoos' models:

=====================  ==========================================  ==============  ======
threshold              population (per training zoo)               range           scale
=====================  ==========================================  ==============  ======
``train_loss_small``   train loss minus the sub-zoo floor, / ln C  [0.005, 0.05]   log
``mc_zero_band``       barrier heights -mc of small-loss models    [1.0, 3.5]      linear
``cka_large``          CKA of small-loss models within the band    [0.8, 0.9]      linear
=====================  ==========================================  ==============  ======

fitted in that order (each population uses the thresholds fitted before it). Per zoo, the
natural gap is the widest gap between consecutive values of its population whose middle lies
in the range (:func:`widest_gap`; log scale: geometric middle, values <= 0 left out); the
threshold is the **median over the training zoos** of those middles (a zoo without such a gap
has no vote), rounded to two significant digits (:func:`natural_gap`). The median gives every
zoo one vote, whatever its size, so cifar10_resnet18's 192 models (64 cells, landscape values
replicated over seeds) do not outvote the 49-64-model zoos. Ranges: the loss range lies
between the two modes of the pooled train loss (1e-3 and 0.1-1 of ln C); the mc range starts
above the connected cluster (most |mc| < 1) and stops at 3.5 because above it barrier heights
are a spread-out tail whose gaps lie between barriers, not between connected models and
barriers; the CKA range holds the connected small-loss models (none below 0.79). The released
v2 thresholds are this fit on all eight zoos; the fixed-threshold comparison uses them.

Per held-out zoo the report has the label counts under v1 and v2 (released thresholds) and
under the rules fitted without the zoo, the share of the zoo's labelled models whose fitted
label equals the released v2 label, and three of the paper's qualitative claims (Section 4.1)
on the fitted labels:

(a) ``best_in_iv_b``: "Phase IV-B, associated with the best test accuracy": at least half of
    the zoo's top decile of labelled models by test accuracy (at the label epoch) is IV-B;
(b) ``low_loss_larger``: "the high test performance region is contained in the region with
    low train loss. However, the low train loss region is significantly larger": the top
    decile is all III/IV, and III + IV holds more models than IV-B;
(c) ``vit_phase_iv``: "ViTs ... display a sharper transition from Phase II to IV": a ViT zoo
    has phase IV models (None for other architectures).

A claim is None where the zoo has no labelled model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from zoo_builder.annotating.phases import (CKA_COLUMN, MC_COLUMN, RULES_V1, RULES_V2, Phase,
                                           PhaseRules, phase_counts, phase_rows, phase_table)
from zoo_builder.reporting.summaries import load_summary, log_num_classes

#: (range, log scale) of the natural-gap search per threshold.
SEARCH = {
    "train_loss_small": ((0.005, 0.05), True),
    "mc_zero_band": ((1.0, 3.5), False),
    "cka_large": ((0.8, 0.9), False),
}
#: Share of a zoo's labelled models (at least 3) that make its "best test accuracy" region.
TOP_FRACTION = 0.1
COUNT_COLUMNS = [p.value for p in Phase] + ["unlabelled"]


@dataclass(frozen=True)
class PublishedZoo:
    """One published summary, reduced to one row per model at each rules' label epoch."""

    name: str
    rows_v1: pd.DataFrame
    rows_v2: pd.DataFrame

    @property
    def is_vit(self) -> bool:
        return "vit" in self.name


def read_published(directory: str | Path) -> list[PublishedZoo]:
    """Every ``*_final.csv`` (or other summary CSV) in ``directory``, sorted by name."""
    directory = Path(directory)
    files = sorted(directory.glob("*.csv"))
    if not files:
        raise FileNotFoundError(
            f"no summary CSV in '{directory}'; pass the folder of the published PTMZ summaries "
            "(e.g. tests/data/ptmz_summary, a copy of the published final-epoch rows)")
    zoos = []
    for path in files:
        frame = load_summary(path)
        name = path.stem.removesuffix("_final").removesuffix("_summary")
        zoos.append(PublishedZoo(name, phase_rows(frame, RULES_V1), phase_rows(frame, RULES_V2)))
    return zoos


def widest_gap(values: Sequence[float], low: float, high: float, log: bool) -> float | None:
    """The middle of the widest gap between consecutive ``values`` whose middle lies in
    [low, high] (geometric middle on the log scale, which ignores values <= 0); None if no
    gap's middle does."""
    points = np.asarray([v for v in values if np.isfinite(v) and (v > 0 or not log)], float)
    scale = np.log(np.unique(points)) if log else np.unique(points)
    middles = (scale[1:] + scale[:-1]) / 2
    bounds = (math.log(low), math.log(high)) if log else (low, high)
    inside = (middles >= bounds[0]) & (middles <= bounds[1])
    if not inside.any():
        return None
    widths = np.where(inside, np.diff(scale), -np.inf)
    middle = middles[int(np.argmax(widths))]
    return float(np.exp(middle) if log else middle)


def natural_gap(populations: Sequence[Sequence[float]], low: float, high: float,
                log: bool) -> float:
    """The median over zoos (those with a gap in range) of each zoo's :func:`widest_gap`,
    rounded to two significant digits: every zoo gets one vote, whatever its size."""
    middles = [m for m in (widest_gap(values, low, high, log) for values in populations)
               if m is not None]
    if not middles:
        raise ValueError("no zoo has a value to place the threshold on")
    return _round(float(np.median(middles)))


def _round(value: float, digits: int = 2) -> float:
    return float(f"{value:.{digits}g}") if value else 0.0


def _populations(rows: pd.DataFrame, rules: PhaseRules) -> dict[str, np.ndarray]:
    """The three populations of :func:`fit_rules` in one zoo under ``rules``."""
    table = phase_table(rows, rules)
    excess = (pd.to_numeric(rows["landscape_train_loss"], errors="coerce")
              / log_num_classes(rows) - table["train_loss_floor"])
    mc = pd.to_numeric(rows[MC_COLUMN], errors="coerce")
    cka = pd.to_numeric(rows[CKA_COLUMN], errors="coerce")
    labelled = mc.notna() & excess.notna()
    small = labelled & (excess < rules.train_loss_small)
    connected = small & (mc >= -rules.mc_zero_band)
    return {"train_loss_small": excess[labelled].to_numpy(),
            "mc_zero_band": (-mc[small]).to_numpy(),
            "cka_large": cka[connected].dropna().to_numpy()}


def fit_rules(zoos: Sequence[PublishedZoo], version: str = "wslbench-phases-v2-fit"
              ) -> PhaseRules:
    """v2's structure with thresholds at the natural gaps of ``zoos`` (module docstring)."""
    rules = RULES_V2.replace(version=version)
    for name, ((low, high), log) in SEARCH.items():
        populations = [_populations(z.rows_v2, rules)[name] for z in zoos]
        rules = dataclasses.replace(rules, **{name: natural_gap(populations, low, high, log)})
    return rules


def claims(rows: pd.DataFrame, labels: pd.Series, is_vit: bool) -> dict[str, object]:
    """The paper's claims (a)-(c) on one zoo's labels (module docstring)."""
    labelled = labels.notna()
    out: dict[str, object] = {"best_in_iv_b": None, "top_iv_b_share": None,
                              "low_loss_larger": None, "vit_phase_iv": None}
    if not labelled.any():
        return out
    accuracy = pd.to_numeric(rows["landscape_test_acc"], errors="coerce")[labelled]
    k = max(3, math.ceil(TOP_FRACTION * int(labelled.sum())))
    top = labels[accuracy.sort_values(ascending=False).index[:k]]
    share = float((top == Phase.IV_B).mean())
    low_loss = labels[labelled].map(lambda p: p.interpolates)
    n_iv_b = int((labels == Phase.IV_B).sum())
    out.update(best_in_iv_b=share >= 0.5, top_iv_b_share=round(share, 2),
               low_loss_larger=bool(top.map(lambda p: p.interpolates).all()
                                    and int(low_loss.sum()) > n_iv_b))
    if is_vit:
        out["vit_phase_iv"] = bool(labels.isin([Phase.IV_A, Phase.IV_B]).any())
    return out


def _counts(labels: pd.Series) -> str:
    counts = phase_counts(labels)
    return " / ".join(str(int(counts[c])) for c in COUNT_COLUMNS)


def leave_one_zoo_out(directory: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit on all zoos but one, label the one left out; one row per held-out zoo.

    Returns (table, fits): ``table`` has per zoo the counts (``I / II / III / IV-A / IV-B /
    unlabelled``) under v1, v2 and the fit without the zoo, ``agreement`` (fitted vs released
    v2, over models labelled by both) and the claims; ``fits`` the fitted thresholds per
    held-out zoo, with a last row ``(all)`` for the fit on every zoo.
    """
    zoos = read_published(directory)
    rows, fits = [], []
    for held_out in zoos:
        training = [z for z in zoos if z is not held_out]
        fitted = fit_rules(training, version=f"wslbench-phases-v2-lozo-{held_out.name}")
        fits.append({"held_out": held_out.name, **_thresholds(fitted)})
        v1 = phase_table(held_out.rows_v1, RULES_V1)["phase"]
        v2 = phase_table(held_out.rows_v2, RULES_V2)["phase"]
        lozo = phase_table(held_out.rows_v2, fitted)["phase"]
        both = v2.notna() & lozo.notna()
        agreement = float((v2[both] == lozo[both]).mean()) if both.any() else None
        epochs = sorted({int(e) for e in held_out.rows_v2.loc[v2.notna(), "landscape_epoch"]})
        rows.append({"zoo": held_out.name, "models": len(held_out.rows_v2),
                     "label_epoch": "-".join(map(str, epochs)) or "-",
                     "v1": _counts(v1), "v2": _counts(v2), "v2_lozo": _counts(lozo),
                     "agreement": None if agreement is None else round(agreement, 3),
                     **claims(held_out.rows_v2, lozo, held_out.is_vit)})
    fits.append({"held_out": "(all)", **_thresholds(fit_rules(zoos))})
    return pd.DataFrame(rows), pd.DataFrame(fits)


def _thresholds(rules: PhaseRules) -> dict[str, float]:
    return {name: getattr(rules, name) for name in SEARCH}


def markdown(table: pd.DataFrame) -> str:
    """The table as the markdown docs/phases.md shows."""
    def cell(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, (bool, np.bool_)):
            return "yes" if value else "**no**"
        return str(value)

    header = "| " + " | ".join(table.columns) + " |"
    lines = [header, "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in table.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m zoo_builder.annotating.phase_validation <summaries dir> [--csv FILE]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m zoo_builder.annotating.phase_validation",
        description="leave-one-zoo-out check of the phase rules v2 on published PTMZ summaries")
    parser.add_argument("summaries", help="folder of published PTMZ summary CSVs, e.g. "
                                          "tests/data/ptmz_summary")
    parser.add_argument("--csv", help="also write the per-zoo table as CSV here")
    args = parser.parse_args(argv)
    table, fits = leave_one_zoo_out(args.summaries)
    print("held-out zoos (counts: I / II / III / IV-A / IV-B / unlabelled):")
    print(markdown(table))
    print("\nthresholds fitted without each zoo:")
    print(markdown(fits))
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"table written to {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
