"""Summary tables of a zoo: published PTMZ summary CSVs and our zoos, read into one shape.

``load_summary`` reads one of

* a published per-zoo summary table (``<zoo>_summary.csv`` of ModelZoos/PhaseTransitionModelZoo,
  or the final-epoch extracts of it such as ``cifar10_resnet18_final.csv``),
* a zoo folder (ours or a published Ray Tune zoo), through :meth:`wslbench.zoo.Zoo.summary`,
* our ``summary.csv`` / ``summary.parquet`` written next to a zoo,

and returns one row per model and epoch with the published columns (see
:data:`wslbench.zoo_format.SUMMARY_COLUMNS`) plus ``ggap``, ``zoo`` and, where it can be known,
``num_classes``. ``landscape_epoch_rows`` reduces such a frame to one row per model.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from wslbench import zoo_format as fmt

log = logging.getLogger(__name__)

#: Train/test metrics every summary must have.
PERFORMANCE_COLUMNS = ("train_loss", "train_acc", "test_loss", "test_acc")

#: Loss-landscape metrics, published names first, then variants our zoos may add.
LANDSCAPE_COLUMNS = (
    "representation_similarity", "curve_mc_train_error", "curve_mc_test_error",
    "log_hessian_trace_train", "log_hessian_top_ev_val",
    "curve_mc_train_loss", "curve_mc_test_loss", "log_hessian_trace_val",
    "log_hessian_top_ev_train", "curve_mc_test_rel_l2_error",
)

#: Derived columns of language zoos: perplexity = exp(mean next-token loss in nats).
PERPLEXITY_COLUMNS = {"train_perplexity": "train_loss", "test_perplexity": "test_loss"}

#: Identity columns a summary needs besides the metrics (``width`` may come as ``embedding_dim``).
GRID_COLUMNS = ("width", "batchsize", "epoch")

#: Dataset names as they appear in zoo names (``cifar10_resnet18``) -> number of classes.
DATASET_CLASSES = {"tinyimagenet": 200, "cifar100": 100, "cifar10": 10, "svhn": 10,
                   "digits": 10, "mnist": 10}

_MODEL_BATCHSIZE = re.compile(r"training_batchsize=(\d+)")


class SummaryError(ValueError):
    """A file or folder that is not a zoo summary; the message says why and what to do."""


# --------------------------------------------------------------------------- reading


def load_summary(path: str | Path, num_classes: int | None = None) -> pd.DataFrame:
    """Read a published PTMZ summary CSV, a zoo folder, or our summary.csv/.parquet.

    Normalisation, each documented in ``docs/phases.md``:

    * ViT tables name the width axis ``embedding_dim``: it becomes ``width``.
    * ``batchsize`` is taken from the ``model`` (trial) string where the two disagree: the
      published cifar10/100_resnet50 zoos carry re-runs of the bs-1024 cell whose
      ``batchsize`` column says 128 (see the data README); the trial string is what was run.
    * ``ggap`` = ``train_acc`` - ``test_acc`` is added.
    * ``zoo`` (a name) and ``num_classes`` are added where known: from ``num_classes=``, from
      the models' ``model::o_dim``, or from the dataset named in the file name
      (``cifar100_vit_final.csv`` -> 100).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise SummaryError(
            f"summary '{path}' does not exist; pass a published <zoo>_summary.csv, a zoo folder, "
            "or a zoo's summary.csv / summary.parquet"
        )
    if path.is_dir():
        frame, name, classes = _read_zoo_folder(path)
    else:
        frame = _read_table(path)
        name = re.sub(r"_(final|summary)$", "", path.stem)
        classes = None
        if path.name in (fmt.SUMMARY_CSV, fmt.SUMMARY_PARQUET):  # ours, next to its models
            name = path.parent.name
            classes = _classes_of_zoo_root(path.parent)
        classes = classes or _classes_from_name(name)
    return normalise_summary(frame, source=str(path), zoo=name,
                             num_classes=num_classes if num_classes is not None else classes)


def normalise_summary(frame: pd.DataFrame, source: str = "frame", zoo: str | None = None,
                      num_classes: int | None = None) -> pd.DataFrame:
    """Check that ``frame`` is a zoo summary; bring it into the shape ``load_summary`` returns."""
    frame = frame.copy()
    if "width" not in frame.columns and "embedding_dim" in frame.columns:
        frame = frame.rename(columns={"embedding_dim": "width"})
    missing = [c for c in (*GRID_COLUMNS, *PERFORMANCE_COLUMNS) if c not in frame.columns]
    if missing:
        raise SummaryError(
            f"'{source}' is not a zoo summary: it lacks the column(s) {missing} (found "
            f"{list(frame.columns)[:12]}{' ...' if len(frame.columns) > 12 else ''}); expected "
            f"the published summary columns {fmt.SUMMARY_COLUMNS}"
        )
    if frame.empty:
        raise SummaryError(f"'{source}' has the summary columns but no rows")
    numeric = [*GRID_COLUMNS, *PERFORMANCE_COLUMNS,
               *(c for c in LANDSCAPE_COLUMNS if c in frame.columns)]
    for column in numeric:
        try:
            frame[column] = pd.to_numeric(frame[column])
        except (ValueError, TypeError) as err:
            raise SummaryError(
                f"'{source}': column '{column}' must be numeric ({err}); is this a summary table?"
            ) from err
    _batchsize_from_model(frame, source)
    frame["ggap"] = frame["train_acc"] - frame["test_acc"]
    if zoo is not None and "zoo" not in frame.columns:
        frame["zoo"] = zoo
    if num_classes is not None:
        frame["num_classes"] = int(num_classes)
    return frame


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError,
            ValueError) as err:
        raise SummaryError(
            f"'{path}' could not be read as a summary table ({type(err).__name__}: {err})"
        ) from err
    raise SummaryError(
        f"'{path}' is not a summary table: expected a .csv or .parquet file or a zoo folder, "
        f"got a '{suffix or 'no suffix'}' file"
    )


def _read_zoo_folder(root: Path) -> tuple[pd.DataFrame, str, int | None]:
    from wslbench.zoo import Zoo

    zoo = Zoo.open(root)  # raises ZooFormatError naming what is wrong with the folder
    frame = zoo.summary()
    classes = {m.name: classes_of(m.params) for m in zoo.models}
    known = {c for c in classes.values() if c is not None}
    if known:
        frame["num_classes"] = pd.to_numeric(frame["model"].map(classes))
    workloads = {m.name: m.params.get("training::workload", "image_classification")
                 for m in zoo.models}
    frame["workload"] = frame["model"].map(workloads)
    add_perplexity(frame)
    return frame, zoo.name, None


def classes_of(params: dict) -> int | None:
    """The classes a model predicts over: ``model::o_dim`` of a classifier, the vocabulary
    (``model::vocab_size``) of a language model (next-token prediction classifies over it);
    None for a regression (PINNs)."""
    if params.get("model::o_dim") is not None:
        return int(params["model::o_dim"])
    if params.get("training::workload") == "language_modeling":
        return int(params["model::vocab_size"])
    return None


def add_perplexity(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``train_perplexity`` and ``test_perplexity`` (exp of the loss) to the rows of
    language models (``workload`` column), in place; the paper's GPT-2 tables and plots report
    perplexity where the vision zoos report accuracy."""
    if "workload" not in frame.columns:
        return frame
    language = frame["workload"] == "language_modeling"
    if language.any():
        for column, loss in PERPLEXITY_COLUMNS.items():
            if loss in frame.columns:
                values = pd.to_numeric(frame[loss], errors="coerce").clip(upper=700).map(
                    math.exp, na_action="ignore")  # 700: below float64's overflow
                frame[column] = values.where(language)
    return frame


def _classes_of_zoo_root(root: Path) -> int | None:
    """``model::o_dim`` of the first model of the zoo at ``root``, if ``root`` is one."""
    try:
        trials = fmt.find_trial_dirs(root)
        value = fmt.read_params(trials[0]).get("model::o_dim")
    except (fmt.ZooFormatError, OSError):
        return None
    return int(value) if value is not None else None


def _classes_from_name(name: str) -> int | None:
    """Classes of the dataset a zoo name mentions: ``ptmz_cifar100_vit`` -> 100."""
    for token in re.split(r"[^a-z0-9]+", name.lower()):
        if token in DATASET_CLASSES:
            return DATASET_CLASSES[token]
    return None


def _batchsize_from_model(frame: pd.DataFrame, source: str) -> None:
    """Where the trial string's ``training_batchsize=`` disagrees with the column, trust it."""
    if "model" not in frame.columns:
        return
    parsed = pd.to_numeric(
        frame["model"].astype(str).str.extract(_MODEL_BATCHSIZE, expand=False), errors="coerce")
    wrong = parsed.notna() & (parsed != frame["batchsize"])
    if wrong.any():
        ids = frame.loc[wrong, "trial_id" if "trial_id" in frame.columns else "model"]
        log.warning(
            "'%s': %d row(s) have a batchsize column that disagrees with training_batchsize= in "
            "their model string (trial(s) %s); using the model string", source, int(wrong.sum()),
            sorted(set(map(str, ids))))
        frame.loc[wrong, "batchsize"] = parsed[wrong]
        if frame["batchsize"].notna().all():
            frame["batchsize"] = frame["batchsize"].astype("int64")


# --------------------------------------------------------------------------- one row per model


def model_key(frame: pd.DataFrame) -> str:
    """The column that names a model: ``model`` (the trial folder) or else ``trial_id``."""
    for column in ("model", "trial_id"):
        if column in frame.columns and frame[column].notna().all():
            return column
    raise SummaryError(
        "the summary has no complete 'model' or 'trial_id' column to tell its models apart"
    )


def landscape_epoch_rows(frame: pd.DataFrame,
                         columns: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per model: landscape metrics at the model's landscape epoch, train/test at its end.

    ``columns``: the landscape metrics whose presence picks the landscape epoch (default: all
    of them). Phase rules v2 pass the metrics their label reads (mode connectivity and CKA),
    so a model is labelled at the last epoch that has those, whatever else it lacks.

    * ``final_epoch``: the model's last epoch. ``train_loss``, ``train_acc``, ``test_loss``,
      ``test_acc``, ``ggap`` and every other non-landscape column come from it (Table 5 of the
      paper reports models at the end of training).
    * ``landscape_epoch``: the epoch whose row carries the **most** landscape metrics, the
      latest of those on a tie; the final epoch where no row has any. All landscape columns
      come from this one epoch, never mixed across epochs.
    * ``landscape_train_loss``, ``landscape_train_acc``, ``landscape_test_loss``,
      ``landscape_test_acc``: train/test metrics of the same checkpoint as the landscape
      metrics; phase labels use ``landscape_train_loss`` (one checkpoint per label).

    Why "most metrics" and not "the last epoch with any landscape value": in the published
    svhn_resnet18 the final epoch 150 carries only CKA while epoch 135 carries all five
    metrics, and in cifar100_resnet18 epoch 150 has CKA and mode connectivity but no Hessian
    while epoch 115 has all five. Taking the last epoch would drop mode connectivity (so no
    phase label) for every SVHN model and the Hessian for CIFAR-100; taking each metric from
    its own last epoch would mix checkpoints in one label. In the other published zoos the two
    rules agree (cifar10_resnet50: 125, cifar10_resnet18 and cifar100_resnet50: 150, ViTs: 300).
    """
    missing = [c for c in ("epoch", *PERFORMANCE_COLUMNS) if c not in frame.columns]
    if missing:
        raise SummaryError(
            f"landscape_epoch_rows needs a per-epoch summary (columns epoch, train/test metrics); "
            f"missing {missing}. Read one with load_summary()"
        )
    key = model_key(frame)
    present = [c for c in LANDSCAPE_COLUMNS if c in frame.columns]
    counted = present if columns is None else [c for c in columns if c in frame.columns]
    work = frame.reset_index(drop=True).copy()
    work["_n_landscape"] = work[counted].notna().sum(axis=1) if counted else 0
    final_idx = work.sort_values([key, "epoch"]).groupby(key, sort=False).tail(1).index
    land_idx = (work.sort_values([key, "_n_landscape", "epoch"])
                .groupby(key, sort=False).tail(1).index)
    final = work.loc[final_idx].set_index(key)
    land = work.loc[land_idx].set_index(key).reindex(final.index)
    no_landscape = land["_n_landscape"] == 0
    out = final.drop(columns=["_n_landscape", "epoch"]).copy()
    out.insert(0, "final_epoch", final["epoch"])
    out.insert(1, "landscape_epoch", land["epoch"].where(~no_landscape, final["epoch"]))
    for column in present:
        out[column] = land[column]
    for column in PERFORMANCE_COLUMNS:
        out[f"landscape_{column}"] = land[column].where(~no_landscape, final[column])
    if "ggap" not in out.columns:
        out["ggap"] = out["train_acc"] - out["test_acc"]
    out = out.reset_index()
    order = [key] + [c for c in out.columns if c != key]
    return out[order].sort_values(["width", "batchsize", key]).reset_index(drop=True)


def is_per_epoch(frame: pd.DataFrame) -> bool:
    """True for a per-epoch summary (for ``landscape_epoch_rows``), False for rows per model."""
    return "epoch" in frame.columns and "landscape_epoch" not in frame.columns


def per_model(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """``frame`` as one row per model: reduced with ``landscape_epoch_rows`` if it is per epoch
    (``columns`` as there)."""
    return landscape_epoch_rows(frame, columns) if is_per_epoch(frame) else frame


def epoch_span(frame: pd.DataFrame, column: str) -> str | None:
    """The epochs of ``column`` (``final_epoch`` or ``landscape_epoch``) as "150" or "115-150";
    for ``landscape_epoch`` only over models that have a landscape value. None if there are none.
    """
    if column not in frame.columns:
        return None
    rows = frame
    if column == "landscape_epoch":
        present = [c for c in LANDSCAPE_COLUMNS if c in frame.columns]
        rows = frame[frame[present].notna().any(axis=1)] if present else frame.iloc[:0]
    values = sorted({int(v) for v in rows[column].dropna()})
    if not values:
        return None
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


def epoch_note(frame: pd.DataFrame) -> str:
    """E.g. "train/test at epoch 150; landscape at epoch 135" (rows of landscape_epoch_rows)."""
    notes = []
    for column, name in (("final_epoch", "train/test at epoch"),
                         ("landscape_epoch", "landscape at epoch")):
        span = epoch_span(frame, column)
        if span is not None:
            notes.append(f"{name} {span}")
    return "; ".join(notes)


def log_num_classes(frame: pd.DataFrame, num_classes: int | None = None) -> pd.Series:
    """ln(number of classes) per row: the loss of a uniform prediction, the train-loss scale."""
    if num_classes is not None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        return pd.Series(math.log(num_classes), index=frame.index)
    if "num_classes" not in frame.columns:
        raise SummaryError(
            "the frame has no 'num_classes' column, and train losses are compared relative to "
            "ln(num_classes): pass num_classes= (10 for CIFAR-10/SVHN/digits, 100 for CIFAR-100, "
            "200 for TinyImageNet), or read the frame with load_summary(), which adds it where "
            "the zoo says"
        )
    classes = pd.to_numeric(frame["num_classes"], errors="coerce")
    return classes.where(classes >= 2).map(math.log, na_action="ignore")
