"""Phase labels (Yang et al. 2021) from train loss, mode connectivity and CKA, by explicit rules.

The taxonomy (REFERENCE §4) in words:

=========  ==========  =======  =================  =====
phase      train loss  Hessian  mode connectivity  CKA
=========  ==========  =======  =================  =====
I          high        large    < 0                \\-
II         high        large    > 0                \\-
III        small       small    < 0                \\-
IV-A       small       small    ~ 0                small
IV-B       small       small    ~ 0                large
=========  ==========  =======  =================  =====

Two released versions (``RELEASED_RULES``; numbers and their justification in
``docs/phases.md``). **v2** (``RULES_V2``, ``DEFAULT_RULES``), at the last epoch with mode
connectivity and CKA (:func:`phase_rows`):

1. train loss *high* when ``(train_loss - L_min) / ln(C) >= train_loss_small``, with L_min the
   lowest train loss of the model's sub-zoo (:func:`train_loss_floor`), so zoos whose heavy
   augmentation keeps every loss above zero are measured from what they reach;
2. one band for "no barrier" in both branches: ``mc < -mc_zero_band`` (mode connectivity on
   train error, %) is a barrier: **I** (high loss) or **III** (small loss); otherwise **II**
   (high loss) or phase IV (small loss);
3. phase IV: **IV-A** when ``CKA < cka_large``, else **IV-B**.

**v1** (``RULES_V1``, as released), at the epoch with the most landscape metrics:

1. train loss, relative to ln(num_classes) (the loss of a uniform guess), is *high* when
   ``train_loss / ln(C) >= train_loss_small``; then mode connectivity on train error (%)
   splits **I** (``mc <= mc_high_loss_split``: a barrier, or none to speak of) from **II**
   (``mc > mc_high_loss_split``: the curve finds lower error than its under-trained ends);
2. train loss *small* and ``mc < -mc_zero_band``: a clear barrier, **III**;
3. train loss *small* and ``mc >= -mc_zero_band`` (no barrier): **IV-A** when
   ``CKA < cka_large``, else **IV-B**.

Annotation stores each released version's label under its own key (``LABEL_KEYS``:
``phase`` for v1, ``phase_v2`` for v2), so the released task ``phase@v1`` keeps its meaning.

The Hessian does not decide a label: in the table it separates the same two groups as the
train loss ({I, II} large, {III, IV} small), so it adds no information to the decision, and on
the published zoos its log trace agrees with the train-loss split for only 77% of the labelled
models at the best threshold (64% in svhn_resnet18; top eigenvalue: 37-49% at any threshold),
with scales that differ between architectures (ViT log traces are negative where ResNets are
3-9). It enters as a consistency flag, ``hessian_consistent``.

A label needs only the metrics its branch reads: train loss and mode connectivity always, CKA
only for IV-A/IV-B. Where a needed one is missing the label is None; nothing is imputed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pandas as pd

from zoo_builder.reporting.summaries import log_num_classes, per_model

MC_COLUMN = "curve_mc_train_error"
CKA_COLUMN = "representation_similarity"
HESSIAN_TRACE_COLUMN = "log_hessian_trace_train"
HESSIAN_TOP_EV_COLUMN = "log_hessian_top_ev_val"

#: ``PhaseRules.train_loss_reference``: the train loss itself (v1) or its excess over the
#: sub-zoo's lowest train loss (v2).
LOSS_FROM_ZERO = "zero"
LOSS_FROM_ZOO_FLOOR = "zoo_floor"
LOSS_REFERENCES = (LOSS_FROM_ZERO, LOSS_FROM_ZOO_FLOOR)
#: Columns that tell sub-zoos apart (settings that are neither load nor temperature); the train
#: loss floor is taken per sub-zoo.
SUBZOO_COLUMNS = ("zoo", "lr", "wd", "init_type", "num_classes")


class Phase(str, Enum):
    """The closed vocabulary of phase labels; the value is the label as written in the paper."""

    I = "I"  # noqa: E741 - the paper's name
    II = "II"
    III = "III"
    IV_A = "IV-A"
    IV_B = "IV-B"

    def __str__(self) -> str:
        return self.value

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]

    @property
    def interpolates(self) -> bool:
        """Phases III and IV have a small train loss; I and II do not."""
        return self in (Phase.III, Phase.IV_A, Phase.IV_B)


_DESCRIPTIONS = {
    Phase.I: "under-fitted, under-sized: high train loss, barrier between seeds (mc < 0)",
    Phase.II: "under-fitted: high train loss, no barrier between seeds (v1: mc > 0)",
    Phase.III: "under-sized: small train loss, barrier between seeds (mc < 0)",
    Phase.IV_A: "over-fitted: small train loss, connected (mc ~ 0), dissimilar outputs (small CKA)",
    Phase.IV_B: "generalizing: small train loss, connected (mc ~ 0), similar outputs (large CKA)",
}


@dataclass(frozen=True)
class PhaseRules:
    """Versioned thresholds of the phase rules; a change of any number is a new ``version``.

    Attributes:
        version: the name recorded with every label. Released versions (``RELEASED_RULES``)
            cannot be redefined with other numbers.
        train_loss_small: train loss is small when ``train_loss / ln(num_classes)`` is below.
        mc_zero_band: with a small train loss, ``mc >= -mc_zero_band`` (mode connectivity on
            train error, in percentage points) counts as "~0", below it as a barrier.
        mc_high_loss_split: with a high train loss, ``mc > mc_high_loss_split`` is phase II.
            None (v2): the same band as with a small loss, ``mc >= -mc_zero_band`` is II.
        cka_large: CKA at or above is "large" (IV-B), below "small" (IV-A).
        log_hessian_trace_large: for the consistency flag only: log trace at or above is
            "large" (expected in I/II), below "small" (III/IV). None: not checked.
        log_hessian_top_ev_large: the same for the log top eigenvalue; None: not checked.
        train_loss_reference: ``"zero"`` (v1): the train loss itself is compared, relative to
            ln(C); ``"zoo_floor"`` (v2): its excess over the sub-zoo's lowest train loss
            (:func:`train_loss_floor`), so zoos whose augmentation keeps every train loss
            above zero are measured from what they reach.
        floor_min_models: a sub-zoo with fewer models with a train loss has floor 0 (one model
            alone is no evidence of what its zoo can reach).
        epoch_metrics: the landscape metrics whose presence picks the label epoch of a
            per-epoch summary (:func:`phase_rows`); None (v1): all of them (the epoch with the
            most metrics).
        domain: the workload (``training::workload``) the thresholds were chosen for.
        mc_column: the mode connectivity the rules read (vision: train error in %; language:
            train loss in nats; PINN: the PINN training loss); ``mc_zero_band`` is in its unit.
        train_loss_unit: what the train loss is divided by before ``train_loss_small`` is
            applied: None (classifiers) is ln(num_classes) per row, a number a fixed unit
            (e.g. 1.0: nats, the loss itself).
        subzoo_columns: the columns that tell sub-zoos apart for the train-loss floor (never
            the zoo's temperature or load axis: the PINN zoo's temperature is ``lr``).
    """

    version: str
    train_loss_small: float
    mc_zero_band: float
    mc_high_loss_split: float | None
    cka_large: float
    log_hessian_trace_large: float | None = None
    log_hessian_top_ev_large: float | None = None
    train_loss_reference: str = LOSS_FROM_ZERO
    floor_min_models: int = 8
    epoch_metrics: tuple[str, ...] | None = None
    domain: str = "image_classification"
    mc_column: str = MC_COLUMN
    train_loss_unit: float | None = None
    subzoo_columns: tuple[str, ...] = SUBZOO_COLUMNS

    def __post_init__(self) -> None:
        if not self.version or not isinstance(self.version, str):
            raise ValueError("PhaseRules.version must be a non-empty string, e.g. 'my-rules-v1'")
        for name in ("train_loss_small", "mc_zero_band", "mc_high_loss_split", "cka_large",
                     "log_hessian_trace_large", "log_hessian_top_ev_large"):
            value = getattr(self, name)
            if value is None and name in ("mc_high_loss_split", "log_hessian_trace_large",
                                          "log_hessian_top_ev_large"):
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"PhaseRules.{name} must be a finite number, got {value!r}")
        if self.train_loss_unit is not None and not (
                isinstance(self.train_loss_unit, (int, float)) and self.train_loss_unit > 0):
            raise ValueError(f"PhaseRules.train_loss_unit must be None (ln C) or a positive "
                             f"number, got {self.train_loss_unit!r}")
        if self.train_loss_small <= 0:
            raise ValueError(
                f"PhaseRules.train_loss_small must be > 0 (a fraction of ln(num_classes)), got "
                f"{self.train_loss_small}")
        if self.mc_zero_band < 0:
            raise ValueError(f"PhaseRules.mc_zero_band must be >= 0, got {self.mc_zero_band}")
        if not 0 <= self.cka_large <= 1:
            raise ValueError(f"PhaseRules.cka_large must lie in [0, 1], got {self.cka_large}")
        if self.train_loss_reference not in LOSS_REFERENCES:
            raise ValueError(f"PhaseRules.train_loss_reference must be one of {LOSS_REFERENCES}, "
                             f"got {self.train_loss_reference!r}")
        if not isinstance(self.floor_min_models, int) or self.floor_min_models < 1:
            raise ValueError(f"PhaseRules.floor_min_models must be an integer >= 1, got "
                             f"{self.floor_min_models!r}")
        if self.epoch_metrics is not None and (
                not isinstance(self.epoch_metrics, tuple) or not self.epoch_metrics):
            raise ValueError("PhaseRules.epoch_metrics must be None or a non-empty tuple of "
                             f"landscape columns, got {self.epoch_metrics!r}")
        released = RELEASED_RULES.get(self.version) if "RELEASED_RULES" in globals() else None
        if released is not None and released != self:
            raise ValueError(
                f"phase rules version '{self.version}' is released with other thresholds "
                f"({released}); give changed rules a new version name"
            )

    def replace(self, **changes) -> "PhaseRules":
        """These rules with some numbers changed; ``version=`` must be given and new."""
        if "version" not in changes or changes["version"] == self.version:
            raise ValueError(
                "changed phase rules need a new version: pass replace(version='...', ...)")
        return dataclasses.replace(self, **changes)


#: Version 1 as released, chosen on the published PTMZ summaries (docs/phases.md, section 2).
RULES_V1 = PhaseRules(
    version="wslbench-phases-v1",
    train_loss_small=0.016,
    mc_zero_band=2.2,
    mc_high_loss_split=0.0,
    cka_large=0.85,
    log_hessian_trace_large=6.0,
    log_hessian_top_ev_large=None,
)

#: Version 2 (docs/phases.md, section 3): one "connected" band in both loss branches, train
#: loss measured from the sub-zoo's floor, labels at the last epoch with mode connectivity and
#: CKA. Thresholds at the natural gaps of the published zoos, checked leave-one-zoo-out
#: (:mod:`zoo_builder.annotating.phase_validation`).
RULES_V2 = PhaseRules(
    version="wslbench-phases-v2",
    train_loss_small=0.017,
    mc_zero_band=2.5,
    mc_high_loss_split=None,
    cka_large=0.86,
    log_hessian_trace_large=6.0,
    log_hessian_top_ev_large=None,
    train_loss_reference=LOSS_FROM_ZOO_FLOOR,
    floor_min_models=8,
    epoch_metrics=(MC_COLUMN, CKA_COLUMN),
)

#: Language models (docs/phases.md, section 7): v2's train-loss rule with C = the vocabulary
#: (next-token prediction is a classification over it; the loss is measured from the
#: sub-zoo's floor, since text has an entropy far above zero), mode connectivity on the train
#: loss in nats (the paper's GPT-2 protocol) instead of the train error.
RULES_LANGUAGE_V1 = PhaseRules(
    version="wslbench-phases-language-v1",
    train_loss_small=0.017,
    mc_zero_band=0.10,
    mc_high_loss_split=None,
    cka_large=0.86,
    log_hessian_trace_large=None,
    log_hessian_top_ev_large=None,
    train_loss_reference=LOSS_FROM_ZOO_FLOOR,
    floor_min_models=8,
    epoch_metrics=("curve_mc_train_loss", CKA_COLUMN),
    domain="language_modeling",
    mc_column="curve_mc_train_loss",
    train_loss_unit=None,
)

#: PINNs (docs/phases.md, section 7): the PINN training loss relative to 0.5, the loss of the
#: trivial solution u = 0 (the failure mode of hard convection problems), from zero: an exact
#: solution has zero loss. Mode connectivity on that loss, in the same unit. The learning rate
#: is the temperature axis, so it does not split sub-zoos.
RULES_PINN_V1 = PhaseRules(
    version="wslbench-phases-pinn-v1",
    train_loss_small=0.006,
    mc_zero_band=0.005,
    mc_high_loss_split=None,
    cka_large=0.99,
    log_hessian_trace_large=None,
    log_hessian_top_ev_large=None,
    train_loss_reference=LOSS_FROM_ZERO,
    floor_min_models=8,
    epoch_metrics=("curve_mc_train_loss", CKA_COLUMN),
    domain="physics_informed",
    mc_column="curve_mc_train_loss",
    train_loss_unit=0.5,
    subzoo_columns=("zoo", "wd", "init_type"),
)

#: The rules annotation, reports and plots use unless told otherwise (image classifiers; other
#: domains: :data:`DOMAIN_RULES`).
DEFAULT_RULES = RULES_V2

#: The current rules of each domain (``training::workload``); annotation stores their label
#: under :data:`DOMAIN_LABEL_KEY` (read by the task ``phase@v3``), and reports and plots of a
#: zoo use them by default (:func:`rules_for_frame`).
DOMAIN_RULES: dict[str, PhaseRules] = {
    "image_classification": RULES_V2,
    "language_modeling": RULES_LANGUAGE_V1,
    "physics_informed": RULES_PINN_V1,
}
DOMAIN_LABEL_KEY = "phase_v3"

#: Every released version by name; a released version never changes.
RELEASED_RULES: dict[str, PhaseRules] = {
    rules.version: rules for rules in (RULES_V1, RULES_V2, RULES_LANGUAGE_V1, RULES_PINN_V1)}

#: The result.json / summary key under which annotation stores each released version's label.
#: ``phase`` keeps meaning v1 (the released task ``phase@v1`` reads it, and zoos annotated
#: before v2 hold it); later versions get their own key, read by their own task version. The
#: domain rules share ``phase_v3`` (one per zoo, each label with its version beside it in
#: ``phase_v3_rules_version``), where image classifiers hold their v2 label.
LABEL_KEYS: dict[str, str] = {RULES_V1.version: "phase", RULES_V2.version: "phase_v2",
                              RULES_LANGUAGE_V1.version: DOMAIN_LABEL_KEY,
                              RULES_PINN_V1.version: DOMAIN_LABEL_KEY}


def rules_for_workload(workload: str | None) -> PhaseRules:
    """The current rules of a domain (None: an image classifier, as published zoos)."""
    workload = workload or "image_classification"
    if workload not in DOMAIN_RULES:
        raise KeyError(f"no phase rules for workload '{workload}'; rules exist for "
                       f"{sorted(DOMAIN_RULES)} (see docs/phases.md)")
    return DOMAIN_RULES[workload]


def rules_for_frame(frame: pd.DataFrame) -> PhaseRules:
    """The rules of the domain of a summary's models (its ``workload`` column; frames
    without one are image classifiers). A frame that mixes domains is refused."""
    if "workload" not in frame.columns:
        return DEFAULT_RULES
    workloads = sorted({str(w) for w in frame["workload"].dropna()})
    if len(workloads) > 1:
        raise ValueError(f"the frame mixes the workloads {workloads}; phase rules are per "
                         "domain: filter one first")
    return rules_for_workload(workloads[0] if workloads else None)


def zoo_label_rules(workload: str | None) -> dict[str, PhaseRules | None]:
    """What annotation stores for a zoo of ``workload``: result key -> rules (v1 and v2 under
    their keys as released, the domain's current rules under :data:`DOMAIN_LABEL_KEY`). v1 and
    v2 were chosen on image classifiers only: other domains get None under their keys."""
    images = (workload or "image_classification") == "image_classification"
    return {"phase": RULES_V1 if images else None, "phase_v2": RULES_V2 if images else None,
            DOMAIN_LABEL_KEY: rules_for_workload(workload)}


def rules_for_version(version: str) -> PhaseRules:
    """The released rules of ``version`` (to re-label with the rules a stored label names)."""
    if version not in RELEASED_RULES:
        raise KeyError(f"unknown phase rules version '{version}'; released: "
                       f"{sorted(RELEASED_RULES)}")
    return RELEASED_RULES[version]


def label_key(rules: PhaseRules) -> str:
    """The result.json key under which annotation stores labels of the released ``rules``."""
    if rules.version not in LABEL_KEYS:
        raise KeyError(f"phase rules '{rules.version}' are not released, so they have no stored "
                       f"key; released: {sorted(LABEL_KEYS)}")
    return LABEL_KEYS[rules.version]


def phase_rows(frame: pd.DataFrame, rules: PhaseRules = DEFAULT_RULES) -> pd.DataFrame:
    """One row per model at the epoch ``rules`` label (``rules.epoch_metrics``); a frame that
    already has one row per model is returned as it is."""
    return per_model(frame, rules.epoch_metrics)


def train_loss_floor(frame: pd.DataFrame, relative_loss: pd.Series,
                     rules: PhaseRules = DEFAULT_RULES) -> pd.Series:
    """Per row, the train loss (relative to ln C) that ``rules`` measure the loss from.

    ``"zero"``: 0. ``"zoo_floor"``: the lowest relative train loss among the rows of the same
    sub-zoo (equal values of the :data:`SUBZOO_COLUMNS` the frame has), or 0 where the sub-zoo
    has fewer than ``rules.floor_min_models`` rows with a train loss. So the label of a model
    depends on the zoo it is labelled with: label a whole zoo (or sub-zoo) at once.
    """
    floor = pd.Series(0.0, index=frame.index)
    if rules.train_loss_reference == LOSS_FROM_ZERO:
        return floor
    keys = [c for c in rules.subzoo_columns if c in frame.columns]
    groups = (frame[keys].astype(object).map(str).agg("|".join, axis=1) if keys
              else pd.Series("", index=frame.index))
    loss = pd.to_numeric(relative_loss, errors="coerce")
    loss = loss.where(np.isfinite(loss))
    for _, index in loss.groupby(groups).groups.items():
        values = loss.loc[index].dropna()
        if len(values) >= rules.floor_min_models:
            floor.loc[index] = max(float(values.min()), 0.0)
    return floor


def _train_loss_column(frame: pd.DataFrame, column: str | None) -> str:
    if column is not None:
        if column not in frame.columns:
            raise KeyError(f"train loss column '{column}' is not in the frame")
        return column
    # Rows from landscape_epoch_rows carry the train loss of the landscape checkpoint.
    for candidate in ("landscape_train_loss", "train_loss"):
        if candidate in frame.columns:
            return candidate
    raise KeyError("the frame has no 'train_loss' column; read it with load_summary()")


def phase_table(frame: pd.DataFrame, rules: PhaseRules = DEFAULT_RULES,
                num_classes: int | None = None,
                train_loss_column: str | None = None) -> pd.DataFrame:
    """Per row of ``frame``: ``phase`` (a :class:`Phase` or None), ``phase_rules_version``,
    ``phase_missing`` (the needed metrics that were missing, or None),
    ``hessian_consistent`` (True/False, None where not checked) and ``train_loss_floor`` (the
    relative train loss the rules measure from: 0, or the sub-zoo's lowest; see
    :func:`train_loss_floor`).

    ``num_classes`` overrides the frame's ``num_classes`` column. The train loss is
    ``landscape_train_loss`` where present (rows from ``landscape_epoch_rows``: the checkpoint
    the landscape metrics describe), else ``train_loss``, unless ``train_loss_column`` says.
    """
    loss_column = _train_loss_column(frame, train_loss_column)
    unit = (log_num_classes(frame, num_classes) if rules.train_loss_unit is None
            else rules.train_loss_unit)
    relative_loss = pd.to_numeric(frame[loss_column], errors="coerce") / unit
    floor = train_loss_floor(frame, relative_loss, rules)
    mc = _column(frame, rules.mc_column)
    cka = _column(frame, CKA_COLUMN)
    trace = _column(frame, HESSIAN_TRACE_COLUMN)
    top_ev = _column(frame, HESSIAN_TOP_EV_COLUMN)

    phases, missing, consistent = [], [], []
    for loss, m, c, tr, ev in zip(relative_loss - floor, mc, cka, trace, top_ev):
        phase, lacking = _decide(rules, loss, m, c, loss_column)
        phases.append(phase)
        missing.append(", ".join(lacking) if lacking else None)
        consistent.append(_hessian_check(rules, phase, tr, ev))
    out = pd.DataFrame({
        "phase": pd.Series(phases, index=frame.index, dtype=object),
        "phase_rules_version": rules.version,
        "phase_missing": pd.Series(missing, index=frame.index, dtype=object),
        "hessian_consistent": pd.Series(consistent, index=frame.index, dtype=object),
        "train_loss_floor": floor,
    }, index=frame.index)
    out.attrs["phase_rules"] = dataclasses.asdict(rules)
    return out


def label_phases(frame: pd.DataFrame, rules: PhaseRules = DEFAULT_RULES,
                 num_classes: int | None = None,
                 train_loss_column: str | None = None) -> pd.Series:
    """The phase of every row (a :class:`Phase`, or None where a needed metric is missing).

    The series is named ``phase`` and records the rules in ``.attrs["phase_rules_version"]``;
    :func:`phase_table` gives the version, the missing metrics and the Hessian check per row.
    """
    table = phase_table(frame, rules, num_classes=num_classes,
                        train_loss_column=train_loss_column)
    labels = table["phase"]
    labels.attrs = {"phase_rules_version": rules.version,
                    "phase_rules": dataclasses.asdict(rules)}
    return labels


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    if name not in frame.columns:
        return pd.Series(float("nan"), index=frame.index)
    return pd.to_numeric(frame[name], errors="coerce")


def _missing(value: float) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _decide(rules: PhaseRules, loss: float, mc: float, cka: float,
            loss_column: str) -> tuple[Phase | None, list[str]]:
    lacking = [name for name, value in ((loss_column, loss), (rules.mc_column, mc))
               if _missing(value)]
    if lacking:
        return None, lacking
    if loss >= rules.train_loss_small:
        if rules.mc_high_loss_split is None:  # v2: the band of the small-loss branch
            return (Phase.I if mc < -rules.mc_zero_band else Phase.II), []
        return (Phase.II if mc > rules.mc_high_loss_split else Phase.I), []
    if mc < -rules.mc_zero_band:
        return Phase.III, []
    if _missing(cka):
        return None, [CKA_COLUMN]
    return (Phase.IV_B if cka >= rules.cka_large else Phase.IV_A), []


def _hessian_check(rules: PhaseRules, phase: Phase | None, trace: float,
                   top_ev: float) -> bool | None:
    if phase is None:
        return None
    checks = []
    for threshold, value in ((rules.log_hessian_trace_large, trace),
                             (rules.log_hessian_top_ev_large, top_ev)):
        if threshold is None or _missing(value) or not math.isfinite(value):
            continue
        checks.append((value >= threshold) == (not phase.interpolates))
    return all(checks) if checks else None


def phase_counts(labels: pd.Series) -> pd.Series:
    """Counts of every phase (all five, zeros included) and of rows without a label."""
    counts = {phase.value: int((labels == phase).sum()) for phase in Phase}
    counts["unlabelled"] = int(labels.isna().sum())
    return pd.Series(counts, name="models")
