"""The populations behind a domain's phase thresholds, on an annotated zoo (docs/phases.md §7).

    python benchmarks/domain_phase_thresholds.py ZOO [ZOO ...]

For each zoo (a language or PINN zoo annotated by ``zoo-builder annotate``), at the epoch its
domain's rules label (:func:`~zoo_builder.annotating.phases.rules_for_frame`), prints the
populations the thresholds are chosen on, as docs/phases.md §3 does for vision, in the order
the rules use them:

1. the train loss in the rules' unit (ln C, or the fixed ``train_loss_unit``), minus the
   floor the rules measure from;
2. barrier heights -mc (the rules' ``mc_column``, in its own unit) of the small-loss models,
   and of all models (``mc_zero_band_all``: where few models have a small loss);
3. CKA of the small-loss models without a barrier;

each sorted, with the widest gap (:func:`~zoo_builder.annotating.phase_validation.widest_gap`)
in a search range, then the label counts under the rules and with each threshold halved and
doubled (the sensitivity), and the phase map (load x temperature, the majority label per cell).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd

from zoo_builder.annotating.phase_validation import widest_gap
from zoo_builder.annotating.phases import (CKA_COLUMN, PhaseRules, label_phases, phase_counts,
                                           phase_rows, phase_table, rules_for_frame)
from zoo_builder.reporting.plots import domain_axes
from zoo_builder.reporting.summaries import load_summary, log_num_classes

#: Search ranges of the widest gap, in the rules' units: (low, high, log scale).
RANGES = {"train_loss_small": (0.005, 0.5, True), "mc_zero_band": (0.005, 0.5, True),
          "mc_zero_band_all": (0.005, 0.5, True),
          "cka_large": (0.5, 0.999, False)}


def populations(models: pd.DataFrame, rules: PhaseRules) -> dict[str, np.ndarray]:
    """The values each threshold splits (see the module docstring)."""
    table = phase_table(models, rules)
    unit = (log_num_classes(models) if rules.train_loss_unit is None
            else rules.train_loss_unit)
    loss = pd.to_numeric(models["landscape_train_loss"], errors="coerce") / unit
    excess = loss - table["train_loss_floor"]
    mc = pd.to_numeric(models[rules.mc_column], errors="coerce")
    small = excess < rules.train_loss_small
    connected = small & (mc >= -rules.mc_zero_band)
    return {"train_loss_small": excess.to_numpy(float),
            "mc_zero_band": (-mc[small & (mc < 0)]).to_numpy(float),
            # every model's barrier height, for zoos with too few small-loss models
            "mc_zero_band_all": (-mc[mc < 0]).to_numpy(float),
            "cka_large": pd.to_numeric(models.loc[connected, CKA_COLUMN],
                                       errors="coerce").to_numpy(float)}


def phase_map(models: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
    """Load x temperature table of the majority label per cell (ties: both, joined by /)."""
    axes = domain_axes(models)
    frame = models[[axes.load_column, axes.temperature_column]].copy()
    frame["phase"] = [None if pd.isna(v) else str(v) for v in labels]

    def majority(values: pd.Series) -> str:
        counts = values.dropna().value_counts()
        if counts.empty:
            return "-"
        top = counts[counts == counts.max()].index
        return "/".join(sorted(top))

    table = frame.pivot_table(index=axes.temperature_column, columns=axes.load_column,
                              values="phase", aggfunc=majority)
    table = table.sort_index(ascending=not axes.temperature_descending)
    return table[sorted(table.columns, reverse=axes.load_descending)]


def report(path: str) -> str:
    frame = load_summary(path)
    rules = rules_for_frame(frame)
    models = phase_rows(frame, rules)
    lines = [f"# {path}: {len(models)} models, rules {rules.version} "
             f"(unit {rules.train_loss_unit}, mc on {rules.mc_column})"]
    for name, values in populations(models, rules).items():
        low, high, log = RANGES[name]
        finite = np.sort(values[np.isfinite(values)])
        gap = widest_gap(finite, low, high, log) if len(finite) > 1 else None
        current = getattr(rules, name.replace("_all", ""))
        lines.append(f"{name} = {current}; widest gap in [{low}, {high}]: "
                     f"{'none' if gap is None else f'{gap:.3g}'}; {len(finite)} values:")
        lines.append("  " + " ".join(f"{v:.3g}" for v in finite))
    counts = phase_counts(label_phases(models, rules))
    lines.append(f"labels: {counts.to_dict()}")
    for name in ("train_loss_small", "mc_zero_band", "cka_large"):
        for factor in (0.5, 2.0):
            value = getattr(rules, name) * factor
            if name == "cka_large":
                value = min(value, 1.0)
            changed = dataclasses.replace(rules, version=f"{rules.version}-x{factor}",
                                          **{name: value})
            changed_counts = phase_counts(label_phases(models, changed))
            lines.append(f"  {name} x{factor} ({value:.3g}): {changed_counts.to_dict()}")
    lines.append("phase map (majority per cell):")
    lines.append(phase_map(models, label_phases(models, rules)).to_string())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoos", nargs="+", help="annotated language or PINN zoo folders")
    for path in parser.parse_args(argv).zoos:
        print(report(path), end="\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
