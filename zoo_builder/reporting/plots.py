"""Phase diagrams: heatmaps of a zoo's metrics over its load x temperature grid, and the phases.

Axes follow the paper's phase plots (Figures 3-17; the reference notebook draws
``pivot_table(index=batch size, columns=width)`` as a seaborn heatmap): model width on x,
increasing to the right (more capacity = lower load), batch size on y, increasing downwards,
so the top row is the smallest batch = the noisiest training = the highest temperature. The
paper's "high-temperature low-load (top right)" corner (Sec. 4) is then the top right here too.

Needs matplotlib (``pip install wslbench[plots]``). Figures are drawn on their own Agg canvas:
no pyplot, no change to the caller's matplotlib backend.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from zoo_builder.annotating.phases import (Phase, PhaseRules, label_phases, phase_rows,
                                           rules_for_frame)
from zoo_builder.reporting.summaries import LANDSCAPE_COLUMNS, epoch_note, epoch_span, per_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Panel:
    """One heatmap: the column it shows, its title, colours and fixed range (None: the data's)."""

    column: str
    title: str
    cmap: str
    vmin: float | None = None
    vmax: float | None = None
    log_scale: bool = False
    centred: bool = False  # a range of the data made symmetric about 0 (deltas, gains)


# Colour convention: bright = the "good" end (small loss, high accuracy, small gap, high CKA,
# flat minimum); mode connectivity is diverging around 0 (red = barrier, blue = mc > 0).
# Fixed ranges are the reference plots' colour ranges (REFERENCE §4); the rest use the data.
PANELS = (
    Panel("train_loss", "train loss", "viridis_r", log_scale=True),
    Panel("test_acc", "test accuracy", "viridis"),
    Panel("ggap", "generalization gap (train - test acc)", "viridis_r"),
    Panel("representation_similarity", "CKA (seeds)", "viridis", 0.3, 0.8),
    Panel("curve_mc_train_error", "mode connectivity, train error %", "RdBu", -30.0, 30.0),
    Panel("log_hessian_trace_train", "log Hessian trace", "viridis_r", 3.0, 8.0),
    Panel("log_hessian_top_ev_val", "log Hessian top eigenvalue", "viridis_r", 0.0, 6.0),
)

#: Downstream results (zoo_builder.annotating.annotate, docs/phases.md): column pattern, title (the
#: pattern's group in it, "_" read as "."), colour map, centred at 0. A panel is drawn for
#: each column of the frame that matches and has a value. Deltas and gains are diverging
#: (blue = better than the single model / the members, red = worse).
DOWNSTREAM_PANELS = (
    (r"wiseft_acc_test_delta", "epoch average: test acc delta", "RdBu", True),
    (r"gitrebasin_acc_test_delta", "git re-basin average: test acc delta", "RdBu", True),
    (r"gitrebasin_naive_acc_test_delta", "plain seed average: test acc delta", "RdBu", True),
    (r"gitrebasin_barrier_before", "linear-path train-loss barrier", "viridis_r", False),
    (r"gitrebasin_barrier_after", "train-loss barrier after re-basin", "viridis_r", False),
    (r"prune_acc_test_(\d+(?:_\d+)?)", "test acc at {}% sparsity", "viridis", False),
    (r"wiseft_loss_test_delta", "epoch average: test loss delta", "RdBu_r", True),
    (r"wiseft_rel_l2_test_delta", "epoch average: test rel. L2 delta", "RdBu_r", True),
    (r"prune_loss_test_(\d+(?:_\d+)?)", "test loss at {}% sparsity", "viridis_r", False),
    (r"prune_rel_l2_test_(\d+(?:_\d+)?)", "test rel. L2 at {}% sparsity", "viridis_r", False),
    (r"ensemble_rel_l2_test", "seed ensemble: test rel. L2", "viridis_r", False),
    (r"ensemble_acc_test", "seed ensemble: test acc", "viridis", False),
    (r"ensemble_gain", "seed ensemble: gain over mean member", "RdBu", True),
    (r"transfer_acc_before", "transfer: target acc before", "viridis", False),
    (r"transfer_acc", "transfer: target acc after fine-tuning", "viridis", False),
    (r"transfer_acc_gain", "transfer: gain from fine-tuning", "RdBu", True),
    (r"wiseft_alpha_(\d+(?:_\d+)?)_transfer_acc", "Wise-FT alpha {}%: target acc", "viridis",
     False),
    (r"wiseft_alpha_(\d+(?:_\d+)?)_source_acc", "Wise-FT alpha {}%: source acc", "viridis",
     False),
)


#: Language zoos (the paper's Figure 16): perplexity next to next-token accuracy, mode
#: connectivity on the train loss (nats, the paper's GPT-2 protocol); no reference ranges
#: exist for these metrics, so every panel uses the data's range (mc centred at 0).
LANGUAGE_PANELS = (
    Panel("train_loss", "train loss (nats)", "viridis_r", log_scale=True),
    Panel("test_perplexity", "test perplexity", "viridis_r", log_scale=True),
    Panel("test_acc", "test next-token accuracy", "viridis"),
    Panel("representation_similarity", "CKA of logits (seeds)", "viridis"),
    Panel("curve_mc_train_loss", "mode connectivity, train loss", "RdBu", centred=True),
    Panel("log_hessian_trace_train", "log Hessian trace", "viridis_r"),
    Panel("log_hessian_top_ev_val", "log Hessian top eigenvalue", "viridis_r"),
)

#: PINN zoos (the paper's Figure 17): the PINN loss, the relative L2 error of the solution
#: (the zoo's performance metric), mode connectivity on both.
PINN_PANELS = (
    Panel("train_loss", "train loss (PINN objective)", "viridis_r", log_scale=True),
    Panel("test_rel_l2_error", "test relative L2 error", "viridis_r", log_scale=True),
    Panel("representation_similarity", "CKA of solutions (seeds)", "viridis"),
    Panel("curve_mc_train_loss", "mode connectivity, train loss", "RdBu", centred=True),
    Panel("curve_mc_test_rel_l2_error", "mode connectivity, test rel. L2", "RdBu",
          centred=True),
    Panel("log_hessian_trace_train", "log Hessian trace", "viridis_r"),
    Panel("log_hessian_top_ev_val", "log Hessian top eigenvalue", "viridis_r"),
)


@dataclass(frozen=True)
class DomainAxes:
    """The load and temperature axes of a domain's phase plots and their panels.

    Every domain is drawn with the highest temperature in the top row and the lowest load in
    the right column: batch sizes grow downwards and widths to the right; a PINN zoo's
    learning rates shrink downwards and its betas (the load: larger is harder) shrink to the
    right."""

    load_column: str
    temperature_column: str
    load_label: str
    temperature_label: str
    panels: tuple[Panel, ...]
    load_descending: bool = False
    temperature_descending: bool = False


DOMAIN_AXES = {
    "image_classification": DomainAxes("width", "batchsize",
                                       "width  (→ larger model, lower load)",
                                       "batchsize  (↑ smaller, higher temperature)", PANELS),
    "language_modeling": DomainAxes("width", "batchsize",
                                    "model dim  (→ larger model, lower load)",
                                    "batch size  (↑ smaller, higher temperature)",
                                    LANGUAGE_PANELS),
    "physics_informed": DomainAxes("beta", "lr", "convection beta  (→ smaller, lower load)",
                                   "learning rate  (↑ larger, higher temperature)", PINN_PANELS,
                                   load_descending=True, temperature_descending=True),
}


def domain_axes(frame: pd.DataFrame) -> DomainAxes:
    """The axes of the domain of ``frame``'s models (``workload`` column; none: images)."""
    workloads = (sorted({str(w) for w in frame["workload"].dropna()})
                 if "workload" in frame.columns else [])
    return DOMAIN_AXES.get(workloads[0] if len(workloads) == 1 else "image_classification",
                           DOMAIN_AXES["image_classification"])


def downstream_panels(frame: pd.DataFrame) -> list[Panel]:
    """A panel per downstream result column of ``frame`` that has a value, in the order of
    :data:`DOWNSTREAM_PANELS` (numbered columns by their number)."""
    panels = []
    for pattern, title, cmap, centred in DOWNSTREAM_PANELS:
        found = []
        for column in frame.columns:
            match = re.fullmatch(pattern, str(column))
            if match and pd.to_numeric(frame[column], errors="coerce").notna().any():
                number = match.group(1).replace("_", ".") if match.groups() else ""
                found.append((float(number or 0), column, title.format(number)))
        panels += [Panel(column, text, cmap, centred=centred) for _, column, text in sorted(found)]
    return panels


PHASE_COLOURS = {
    Phase.I: "#b2182b",
    Phase.II: "#f4a582",
    Phase.III: "#9e7bb5",
    Phase.IV_A: "#92c5de",
    Phase.IV_B: "#2166ac",
}
MISSING_FACE = "0.88"
MISSING_HATCH = "///"
SUBZOO_COLUMNS = ("lr", "wd", "init_type", "num_classes")


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "phase plots need matplotlib: pip install 'wslbench[plots]'") from err
    return Figure, FigureCanvasAgg


def slug(text: str) -> str:
    """A file-name stem from a title: ``"CIFAR-10 ResNet-18"`` -> ``"cifar_10_resnet_18"``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "zoo"


# --------------------------------------------------------------------------- the grid


@dataclass
class Grid:
    """Seed-averaged cells of a zoo: one matrix per metric, rows = temperature, cols = load."""

    loads: list
    temperatures: list
    cells: pd.DataFrame  # one row per (temperature, load) cell with a model, seed-averaged
    load_column: str
    temperature_column: str
    load_label: str | None = None
    temperature_label: str | None = None

    def matrix(self, column: str) -> np.ndarray:
        """``len(temperatures) x len(loads)`` values; NaN where a cell has no model or value."""
        if column not in self.cells.columns:
            return np.full((len(self.temperatures), len(self.loads)), np.nan)
        table = self.cells.pivot(index=self.temperature_column, columns=self.load_column,
                                 values=column)
        table = table.reindex(index=self.temperatures, columns=self.loads)
        values = table.to_numpy(dtype=float, copy=True)
        return np.where(np.isfinite(values), values, np.nan)


def phase_grid(frame: pd.DataFrame, load_column: str = "width",
               temperature_column: str = "batchsize", axes: DomainAxes | None = None) -> Grid:
    """Average a zoo's models per (load, temperature) cell; seeds become one cell.

    ``frame`` is a summary (per epoch, reduced with ``landscape_epoch_rows``) or one row per
    model. It must hold a single sub-zoo: several values of lr, wd, init_type or num_classes
    (e.g. the two weight decays of the published cifar100_vit) raise an error.
    """
    frame = per_model(frame)
    for column in (load_column, temperature_column):
        if column not in frame.columns:
            raise KeyError(f"the frame has no '{column}' column to put on a plot axis")
    for column in SUBZOO_COLUMNS:
        if column in frame.columns and column not in (load_column, temperature_column):
            values = sorted(frame[column].dropna().unique().tolist())
            if len(values) > 1:
                raise ValueError(
                    f"the frame mixes {len(values)} values of '{column}' ({values}); a phase "
                    f"diagram shows one sub-zoo: filter it first, e.g. "
                    f"frame[frame['{column}'] == {values[0]!r}]"
                )
    frame = frame.dropna(subset=[load_column, temperature_column])
    if frame.empty:
        raise ValueError("no model with both a load and a temperature value to plot")
    numeric = frame.select_dtypes(include="number").columns.difference(
        [load_column, temperature_column])
    grouped = frame.groupby([temperature_column, load_column])
    cells = grouped[list(numeric)].mean()
    cells["n_models"] = grouped.size()
    cells = cells.reset_index()
    loads = sorted(frame[load_column].unique())
    temperatures = sorted(frame[temperature_column].unique())
    if axes is not None:
        loads = loads[::-1] if axes.load_descending else loads
        temperatures = temperatures[::-1] if axes.temperature_descending else temperatures
    return Grid(loads=loads, temperatures=temperatures, cells=cells, load_column=load_column,
                temperature_column=temperature_column,
                load_label=axes.load_label if axes is not None else None,
                temperature_label=axes.temperature_label if axes is not None else None)


# --------------------------------------------------------------------------- drawing


def _format_tick(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _mark_missing(ax, missing: np.ndarray) -> None:
    """Grey, hatched squares on the cells without a value (never drawn as zero)."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    squares = [Rectangle((col, row), 1, 1) for row, col in zip(*np.nonzero(missing))]
    if squares:
        ax.add_collection(PatchCollection(squares, facecolor=MISSING_FACE, edgecolor="0.55",
                                          hatch=MISSING_HATCH, linewidth=0.3, zorder=0))


def _setup_axes(ax, grid: Grid, fontsize: float, xlabel: bool = True,
                ylabel: bool = True) -> None:
    nx, ny = len(grid.loads), len(grid.temperatures)
    ax.set_xlim(0, nx)
    ax.set_ylim(ny, 0)  # first (smallest) batch size on top: the highest temperature
    ax.set_xticks(np.arange(nx) + 0.5, [_format_tick(v) for v in grid.loads],
                  fontsize=fontsize - 1, rotation=0)
    ax.set_yticks(np.arange(ny) + 0.5, [_format_tick(v) for v in grid.temperatures],
                  fontsize=fontsize - 1)
    if xlabel:
        ax.set_xlabel(grid.load_label or f"{grid.load_column}  (→ larger model, lower load)",
                      fontsize=fontsize)
    if ylabel:
        ax.set_ylabel(grid.temperature_label
                      or f"{grid.temperature_column}  (↑ smaller, higher temperature)",
                      fontsize=fontsize)
    ax.tick_params(length=2)


def _draw_metric(fig, ax, grid: Grid, panel: Panel, fontsize: float, epoch: str | None = None,
                 **labels: bool) -> None:
    from matplotlib.colors import LogNorm, Normalize

    _setup_axes(ax, grid, fontsize, **labels)
    values = grid.matrix(panel.column)
    if panel.log_scale:
        values = np.where(values > 0, values, np.nan)
    _mark_missing(ax, np.isnan(values))
    finite = values[np.isfinite(values)]
    title = f"{panel.title}, epoch {epoch}" if epoch else panel.title
    if finite.size == 0:
        ax.set_title(f"{title}\n(no values)", fontsize=fontsize)
        return
    lo = panel.vmin if panel.vmin is not None else float(finite.min())
    hi = panel.vmax if panel.vmax is not None else float(finite.max())
    if panel.centred and panel.vmin is None and panel.vmax is None:
        lo, hi = -float(np.abs(finite).max()), float(np.abs(finite).max())
    if hi <= lo:
        lo, hi = (lo / 2, hi * 2) if panel.log_scale else (lo - 0.5, hi + 0.5)
    norm = LogNorm(lo, hi) if panel.log_scale else Normalize(lo, hi)
    mesh = ax.pcolormesh(np.ma.masked_invalid(values), cmap=panel.cmap, norm=norm,
                         edgecolors="white", linewidth=0.3, zorder=1)
    below, above = bool((finite < lo).any()), bool((finite > hi).any())
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max",
              (True, True): "both"}[(below, above)]
    bar = fig.colorbar(mesh, ax=ax, extend=extend, fraction=0.05, pad=0.03)
    bar.ax.tick_params(labelsize=fontsize - 2)
    fixed = panel.vmin is not None
    ax.set_title(f"{title}\n(colour range {'fixed' if fixed else 'of the data'}"
                 f"{', clipped' if extend != 'neither' else ''})", fontsize=fontsize)


def _draw_phases(ax, grid: Grid, labels: np.ndarray, fontsize: float, legend: bool,
                 rules: PhaseRules, epoch: str | None = None, **axis_labels: bool) -> None:
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    _setup_axes(ax, grid, fontsize, **axis_labels)
    _mark_missing(ax, np.equal(labels, None))
    phases = list(Phase)
    codes = np.full(labels.shape, np.nan)
    for index, phase in enumerate(phases):
        codes[labels == phase] = index
    cmap = ListedColormap([PHASE_COLOURS[p] for p in phases])
    norm = BoundaryNorm(np.arange(len(phases) + 1) - 0.5, len(phases))
    ax.pcolormesh(np.ma.masked_invalid(codes), cmap=cmap, norm=norm, edgecolors="white",
                  linewidth=0.3, zorder=1)
    for (row, col), label in np.ndenumerate(labels):
        if label is not None:
            dark = label in (Phase.I, Phase.IV_B, Phase.III)
            ax.text(col + 0.5, row + 0.5, label.value, ha="center", va="center",
                    fontsize=max(fontsize - 3, 5), color="white" if dark else "black", zorder=2)
    ax.set_title(f"phase{', epoch ' + epoch if epoch else ''}\n(rules {rules.version})",
                 fontsize=fontsize)
    if legend:
        handles = [Patch(facecolor=PHASE_COLOURS[p], label=f"{p.value}") for p in phases]
        handles.append(Patch(facecolor=MISSING_FACE, hatch=MISSING_HATCH, edgecolor="0.6",
                             label="no label / no model"))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  fontsize=fontsize - 2, frameon=False, borderaxespad=0)


def _phase_labels(grid: Grid, models: pd.DataFrame, rules: PhaseRules,
                  num_classes: int | None) -> np.ndarray:
    """The phase of each cell: the label most of its models get; on a tie (or where no model
    has a label) the label of the cell's seed-averaged metrics, the numbers the heatmaps show.

    A majority, not the averaged metrics, decides first: one under-trained seed (e.g. the
    published cifar10_resnet18 width 32, batch size 16, seed 1) would otherwise lift the
    cell's mean train loss and relabel its two interpolating siblings.
    """
    model_labels = label_phases(models, rules, num_classes=num_classes)
    per_cell = label_phases(grid.cells, rules, num_classes=num_classes)
    rows = {value: index for index, value in enumerate(grid.temperatures)}
    cols = {value: index for index, value in enumerate(grid.loads)}
    out = np.full((len(rows), len(cols)), None, dtype=object)
    for temperature, load, label in zip(grid.cells[grid.temperature_column],
                                        grid.cells[grid.load_column], per_cell):
        if label is not None and not pd.isna(label):
            out[rows[temperature], cols[load]] = Phase(label)
    votes = pd.DataFrame({"t": models[grid.temperature_column].to_numpy(),
                          "l": models[grid.load_column].to_numpy(),
                          "phase": [None if pd.isna(v) else str(v) for v in model_labels]})
    for (temperature, load), group in votes.dropna(subset=["phase"]).groupby(["t", "l"]):
        counts = group["phase"].value_counts()
        if len(counts) == 1 or counts.iloc[0] > counts.iloc[1]:
            out[rows[temperature], cols[load]] = Phase(counts.index[0])
    return out


def plot_phase_diagrams(frame: pd.DataFrame, out_dir: str | Path, title: str,
                        rules: PhaseRules | None = None, num_classes: int | None = None,
                        prefix: str | None = None, load_column: str | None = None,
                        temperature_column: str | None = None,
                        ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
                        ) -> list[Path]:
    """Draw every metric and the phase map of a zoo; return the files written.

    One PNG and one SVG per panel (``<prefix>_<metric>.png|svg``: train loss, test accuracy,
    generalization gap, CKA, mode connectivity on train error, log Hessian trace and top
    eigenvalue, and ``<prefix>_phase_map``), plus ``<prefix>_overview.png`` with all panels.
    Models are averaged per cell (seeds); the phase map shows each cell's majority label
    (tie: the label of the averaged metrics). Cells without a model or value are grey and
    hatched, never drawn as zero. ``prefix`` defaults to a slug of ``title``. ``ranges``
    overrides colour ranges per column, e.g. ``{"representation_similarity": (None, None)}``
    for the data's range instead of the reference plots' [0.3, 0.8].

    Downstream results (:data:`DOWNSTREAM_PANELS`: epoch averaging, re-basin, pruning,
    ensembles, transfer), where the frame has them, get a panel each too, and
    ``<prefix>_downstream_overview.png`` shows them together; deltas and gains use a
    diverging colour map centred at 0.

    ``rules``, the axes and the panels default to the domain's (``workload`` column, see
    :data:`DOMAIN_AXES`): language zoos show perplexity and mode connectivity on the loss,
    PINN zoos the relative L2 error and mode connectivity on the loss and on that error.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    axes_spec = domain_axes(frame)
    rules = rules if rules is not None else rules_for_frame(frame)
    load_column = load_column or axes_spec.load_column
    temperature_column = temperature_column or axes_spec.temperature_column
    models = phase_rows(frame, rules)  # every panel at the epoch the rules label
    extra = downstream_panels(models)
    known = [panel.column for panel in (*axes_spec.panels, *extra)]
    unknown = sorted(set(ranges or {}) - set(known))
    if unknown:
        raise KeyError(f"ranges for unknown panel(s) {unknown}; panels: {known}")
    panels = [dataclasses.replace(p, vmin=ranges[p.column][0], vmax=ranges[p.column][1])
              if ranges and p.column in ranges else p for p in axes_spec.panels]
    extra = [dataclasses.replace(p, vmin=ranges[p.column][0], vmax=ranges[p.column][1])
             if ranges and p.column in ranges else p for p in extra]
    grid = phase_grid(models, load_column, temperature_column, axes=axes_spec)
    labels = _phase_labels(grid, models, rules, num_classes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = prefix or slug(title)
    note = epoch_note(models)
    # train loss/accuracy panels show the final epoch; landscape panels and the phases (which
    # use the train loss of the landscape checkpoint) show the landscape epoch
    final_span = epoch_span(models, "final_epoch")
    landscape_span = epoch_span(models, "landscape_epoch") or final_span
    epochs = {p.column: landscape_span if p.column in LANDSCAPE_COLUMNS else final_span
              for p in (*panels, *extra)}
    subtitle = f"{title}: {len(models)} models, {len(grid.cells)} cells, seeds averaged"
    if note:
        subtitle += f" ({note})"
    written: list[Path] = []

    def save(fig, stem: str, formats: tuple[str, ...], dpi: int) -> None:
        # Fixed margins instead of bbox_inches="tight": that draws every figure twice.
        FigureCanvasAgg(fig)
        for suffix in formats:
            path = out_dir / f"{stem}.{suffix}"
            fig.savefig(path, dpi=dpi)
            written.append(path)

    # single panels
    fig = Figure(figsize=(6.4, 4.4))
    fig.subplots_adjust(left=0.14, right=0.72, bottom=0.13, top=0.80)
    _draw_phases(fig.add_subplot(), grid, labels, 10, legend=True, rules=rules,
                 epoch=landscape_span)
    fig.suptitle(subtitle, fontsize=8, wrap=True)
    save(fig, f"{prefix}_phase_map", ("png", "svg"), 100)
    for panel in (*panels, *extra):
        fig = Figure(figsize=(5.6, 4.4))
        fig.subplots_adjust(left=0.16, right=0.87, bottom=0.13, top=0.80)
        _draw_metric(fig, fig.add_subplot(), grid, panel, 10, epoch=epochs[panel.column])
        fig.suptitle(subtitle, fontsize=8, wrap=True)
        save(fig, f"{prefix}_{panel.column}", ("png", "svg"), 100)

    # overview: phase map first, then the panels, 2 rows x 4 columns, outer axis labels only
    fig = Figure(figsize=(19, 8.6))
    fig.subplots_adjust(left=0.05, right=0.955, bottom=0.08, top=0.87, wspace=0.5, hspace=0.42)
    axes = fig.subplots(2, 4)
    _draw_phases(axes[0, 0], grid, labels, 10, legend=True, rules=rules, epoch=landscape_span,
                 xlabel=False)
    for index, (ax, panel) in enumerate(zip(axes.flat[1:], panels), start=1):
        row, col = divmod(index, 4)
        _draw_metric(fig, ax, grid, panel, 10, epoch=epochs[panel.column], xlabel=row == 1,
                     ylabel=col == 0)
    fig.suptitle(subtitle, fontsize=13)
    save(fig, f"{prefix}_overview", ("png",), 72)

    if extra:  # downstream results: 4 panels a row
        rows = -(-len(extra) // 4)
        height = 4.3 * rows + 1.2  # inches: the rows, then margins for the titles and labels
        fig = Figure(figsize=(19, height))
        fig.subplots_adjust(left=0.05, right=0.955, bottom=0.6 / height, top=1 - 1.1 / height,
                            wspace=0.5, hspace=0.42)
        axes = np.atleast_2d(fig.subplots(rows, 4))
        for index, (ax, panel) in enumerate(zip(axes.flat, extra)):
            row, col = divmod(index, 4)
            _draw_metric(fig, ax, grid, panel, 10, epoch=epochs[panel.column],
                         xlabel=row == rows - 1, ylabel=col == 0)
        for ax in list(axes.flat)[len(extra):]:
            ax.set_visible(False)
        fig.suptitle(f"{subtitle}: downstream results", fontsize=13, y=1 - 0.25 / height)
        save(fig, f"{prefix}_downstream_overview", ("png",), 72)
    log.info("wrote %d phase plot files to %s", len(written), out_dir)
    return written

