"""A zoo's metric distribution in the style of the paper's Tables 5-7, with its phase counts.

The paper reports, per zoo and at the end of training, ``mean ± std [min, max]`` of train loss,
test loss, train accuracy, test accuracy and the generalization gap (Table 5; Tables 6-7 do the
same for GPT-2 and the PINNs). ``zoo_report`` adds every landscape metric the zoo has (at each
model's label epoch under the rules, see ``phase_rows``) and the number of models per phase.
Statistics are pandas': missing values skipped, ``std`` with ddof=1, one value per model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from wslbench.zoo_format import atomic_write_bytes
from zoo_builder.annotating.phases import (Phase, PhaseRules, label_phases, phase_rows,
                                           rules_for_frame)
from zoo_builder.reporting.summaries import SummaryError, epoch_note

log = logging.getLogger(__name__)

#: (column, name) in the paper's column order, then the landscape metrics.
REPORT_METRICS = (
    ("train_loss", "Train Loss"),
    ("test_loss", "Test Loss"),
    ("train_acc", "Train Acc"),
    ("test_acc", "Test Acc"),
    ("ggap", "GGap"),
    ("train_perplexity", "Train Perplexity"),
    ("test_perplexity", "Test Perplexity"),
    ("test_rel_l2_error", "Test Rel. L2 Error"),
    ("representation_similarity", "CKA"),
    ("curve_mc_train_error", "MC train error %"),
    ("curve_mc_test_error", "MC test error %"),
    ("curve_mc_train_loss", "MC train loss"),
    ("curve_mc_test_loss", "MC test loss"),
    ("curve_mc_test_rel_l2_error", "MC test rel. L2 error"),
    ("log_hessian_trace_train", "log Hessian trace"),
    ("log_hessian_trace_val", "log Hessian trace (val)"),
    ("log_hessian_top_ev_train", "log Hessian top ev (train)"),
    ("log_hessian_top_ev_val", "log Hessian top ev"),
)
TABLE_COLUMNS = ["kind", "quantity", "name", "count", "mean", "std", "min", "max", "summary",
                 "phase_rules_version"]


def _summary(mean: float, std: float, low: float, high: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f}±{std:.{digits}f} [{low:.{digits}f},{high:.{digits}f}]"


def zoo_report(frame: pd.DataFrame, rules: PhaseRules | None = None,
               num_classes: int | None = None, title: str | None = None,
               ) -> tuple[str, pd.DataFrame]:
    """The distribution of a zoo's metrics and its phase counts, as text and as a table.

    ``frame``: a summary (reduced to one row per model by ``landscape_epoch_rows``) or one row
    per model. The table has one row per metric (``kind`` "metric": count, mean, std, min,
    max and the paper's ``mean±std [min,max]`` text) and one per phase (``kind`` "phase":
    count; ``unlabelled`` counts the models without a label), with the rules' version on the
    phase rows. ``rules`` None: the rules of the zoo's domain (:func:`rules_for_frame`; image
    classifiers: ``DEFAULT_RULES``). Language zoos report perplexity (the paper's Table 6),
    PINN zoos the test relative L2 error (Table 7); a metric the zoo lacks is left out.
    """
    rules = rules if rules is not None else rules_for_frame(frame)
    models = phase_rows(frame, rules)  # one row per model, at the epoch the rules label
    rows = []
    for column, name in REPORT_METRICS:
        if column not in models.columns:
            continue
        values = pd.to_numeric(models[column], errors="coerce")
        if values.notna().sum() == 0:
            continue
        stats = {"count": int(values.count()), "mean": values.mean(), "std": values.std(),
                 "min": values.min(), "max": values.max()}
        rows.append({"kind": "metric", "quantity": column, "name": name, **stats,
                     "summary": _summary(stats["mean"], stats["std"], stats["min"],
                                         stats["max"]),
                     "phase_rules_version": None})
    phase_note = None
    try:
        labels = label_phases(models, rules, num_classes=num_classes)
    except SummaryError as err:
        labels, phase_note = None, str(err)
    if labels is not None:
        total = len(labels)
        for phase in [*Phase, None]:
            count = int(labels.isna().sum()) if phase is None else int((labels == phase).sum())
            rows.append({"kind": "phase",
                         "quantity": "unlabelled" if phase is None else phase.value,
                         "name": "no label" if phase is None else phase.description,
                         "count": count, "summary": f"{count} ({100 * count / total:.1f}%)",
                         "phase_rules_version": rules.version})
    table = pd.DataFrame(rows).reindex(columns=TABLE_COLUMNS)
    return _text(models, table, title, phase_note, rules), table


def _text(models: pd.DataFrame, table: pd.DataFrame, title: str | None, phase_note: str | None,
          rules: PhaseRules) -> str:
    if title is None:
        title = str(models["zoo"].iloc[0]) if "zoo" in models.columns else "zoo"
    epochs = epoch_note(models)
    lines = [f"{title}: {len(models)} models" + (f" ({epochs})" if epochs else ""),
             "", f"{'metric':<28}{'mean±std [min,max]':<34}{'n':>5}"]
    for row in table[table["kind"] == "metric"].itertuples():
        lines.append(f"{row.name:<28}{row.summary:<34}{row.count:>5}")
    lines.append("")
    if phase_note is not None:
        lines.append(f"phases: not labelled ({phase_note})")
    else:
        lines.append(f"phases (rules {rules.version}, one label per model):")
        for row in table[table["kind"] == "phase"].itertuples():
            lines.append(f"  {row.quantity:<6}{row.summary:>14}   {row.name}")
    return "\n".join(lines) + "\n"


def write_report(frame: pd.DataFrame, out_csv: str | Path, rules: PhaseRules | None = None,
                 num_classes: int | None = None, title: str | None = None) -> Path:
    """Write ``zoo_report``'s table to ``out_csv`` (atomically) and return the path."""
    out_csv = Path(out_csv)
    _, table = zoo_report(frame, rules=rules, num_classes=num_classes, title=title)
    atomic_write_bytes(out_csv, table.to_csv(index=False).encode())
    log.info("wrote zoo report to %s", out_csv)
    return out_csv
