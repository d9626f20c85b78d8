"""Annotate a zoo with loss-landscape metrics and phase labels, resumably.

The work unit is a grid point: its seeds are needed together for CKA and mode connectivity,
and a unit owns its trials' result.json files, so units run in parallel through the same
executors as the build. For every model, at each epoch asked for (default: its last
checkpointed epoch), the values go into result.json at that epoch under the published keys:

- ``log_hessian_top_ev_train``, ``log_hessian_trace_train``, ``log_hessian_top_ev_val``
  (natural log), beside the raw values with their uncertainty and Hessian-vector-product
  count (``hessian_trace_train``, ``hessian_trace_train_uncertainty``,
  ``hessian_trace_train_hvps``, ...); a negative curvature has no log and is stored raw only;
- ``representation_similarity``: mean linear CKA of the logits over all seed pairs of the
  grid point (the same value for each of its models, as published);
- ``curve_mc_train_error``, ``curve_mc_test_error`` (in %), ``curve_mc_train_loss``,
  ``curve_mc_test_loss``: Bezier mode connectivity, averaged over the seed pairs;
- ``phase`` and ``phase_rules_version``, from the metrics above (:mod:`zoo_builder.phases`).

A metric already stored is not computed again unless ``force`` is set; every write is atomic,
so an annotation killed at any moment resumes where it was. At the end the summary table
(and, for our zoos, the manifest) is rewritten.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from wslbench import zoo_format as fmt
from wslbench.zoo import ModelRecord, Zoo
from zoo_builder.data import ImageData, cached_dataset, dataset_options
from zoo_builder.data.images import Augmentation
from zoo_builder.executors import LocalExecutor
from zoo_builder.models import build_model, load_weights

log = logging.getLogger(__name__)

#: Metric groups a user can ask for; ``phase`` is derived from the other three.
METRIC_GROUPS = ("hessian", "cka", "mode_connectivity", "phase")

#: The key whose presence in a result row means that the group is done at that epoch.
DONE_KEYS = {
    "hessian": "hessian_trace_train",
    "cka": "representation_similarity",
    "mode_connectivity": "curve_mc_train_error",
}


@dataclass(frozen=True)
class AnnotationSettings:
    """Budgets of the metrics. Mode connectivity follows the reference protocol (10 epochs of
    curve training, lr 0.1, batch 128, 5 points); a shorter curve training leaves barriers
    that are not there (mc turns negative), so change it only knowingly."""

    hessian_samples: int = 200  # one batch of 200, as Yang et al. (2021)
    hessian_eig_max_iter: int = 100
    hessian_trace_hvps: int = 100
    cka_samples: int = 512
    mc_epochs: int = 10
    mc_lr: float = 0.1
    mc_batch_size: int = 128
    mc_eval_points: int = 5
    mc_augment: bool = False
    seed: int = 0


class AnnotationError(RuntimeError):
    """Annotation could not run or finish; the message names the models and the fix."""


@dataclass(frozen=True)
class GridPointJob:
    """Annotate the models (seeds) of one grid point at their epochs."""

    name: str
    trial_dirs: tuple[Path, ...]
    epochs: tuple[int, ...] | None
    groups: tuple[str, ...]
    force: bool
    settings: AnnotationSettings = field(default_factory=AnnotationSettings)
    device: str = "cpu"
    dataset: str | None = None
    data_root: str | None = None


def annotate_zoo(root: str | Path, groups: Sequence[str] = METRIC_GROUPS,
                 epochs: Sequence[int] | None = None, force: bool = False, workers: int = 1,
                 device: str = "cpu", settings: AnnotationSettings = AnnotationSettings(),
                 dataset: str | None = None, data_root: str | None = None,
                 progress: bool = True) -> Zoo:
    """Annotate every model of the zoo at ``root``; return the zoo read back.

    ``dataset`` names the training data where params.json does not (published zoos record
    only the path of a data dump); ``data_root`` is where the data sets lie."""
    from zoo_builder.build import zoo_lock

    unknown = sorted(set(groups) - set(METRIC_GROUPS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRIC_GROUPS)}")
    zoo = Zoo.open(root)
    jobs = [
        GridPointJob(name=f"grid point {index}", trial_dirs=tuple(m.path for m in models),
                     epochs=tuple(epochs) if epochs is not None else None,
                     groups=tuple(g for g in groups if g != "phase"), force=force,
                     settings=settings, device=device, dataset=dataset, data_root=data_root)
        for index, models in enumerate(grid_points(zoo).values())
    ]
    with zoo_lock(zoo.root):
        if any(g != "phase" for g in groups):
            failures = LocalExecutor(workers).run(annotate_grid_point, jobs, total=len(jobs),
                                                  progress=progress, desc="annotating zoo")
            if failures:
                listing = "\n".join(f"  {name}: {error}" for name, error in failures.items())
                raise AnnotationError(f"{len(failures)} of {len(jobs)} grid points failed; what "
                                      f"finished is stored, run again to retry:\n{listing}")
        if "phase" in groups:
            label_zoo_phases(Zoo.open(root), epochs)
        refresh_zoo_tables(Zoo.open(root))
    return Zoo.open(root)


def grid_points(zoo: Zoo) -> dict[str, list[ModelRecord]]:
    points: dict[str, list[ModelRecord]] = {}
    for model in zoo.models:
        points.setdefault(model.grid_point, []).append(model)
    return points


def annotation_epochs(model: ModelRecord, epochs: Sequence[int] | None) -> list[int]:
    """The epochs to annotate: those asked for (each needs a checkpoint), else the last one."""
    if epochs is None:
        if not model.checkpoint_epochs:
            raise AnnotationError(f"model '{model.path}' has no checkpoint to annotate")
        return [model.checkpoint_epochs[-1]]
    missing = [e for e in epochs if e not in model.checkpoint_epochs]
    if missing:
        raise AnnotationError(f"model '{model.path}' has no checkpoint at epoch(s) {missing}; "
                              f"checkpoints at {list(model.checkpoint_epochs)}")
    return list(epochs)


def dataset_for(model: ModelRecord, override: str | None = None,
                data_root: str | None = None) -> ImageData:
    """The training data of a model, which every landscape metric needs."""
    name = override or model.params.get("dataset::name")
    if name is None:
        raise AnnotationError(
            f"model '{model.path}' does not name its data set (no 'dataset::name' in "
            "params.json), so its loss landscape cannot be measured; pass --dataset with a "
            "data set zoo-builder knows (see zoo_builder.data.DATASETS)")
    if override is None:
        return cached_dataset(name, data_root, **dataset_options(model.params))
    return cached_dataset(name, data_root)


def load_model(model: ModelRecord, epoch: int, device: str) -> torch.nn.Module:
    network = load_weights(build_model(model.model_args), model.state_dict(epoch))
    return network.to(device).eval()


# --------------------------------------------------------------------------- one grid point


def annotate_grid_point(job: GridPointJob) -> str | None:
    """Compute the missing metrics of one grid point; an error message instead of raising."""
    try:
        models = [ModelRecord.read(path) for path in job.trial_dirs]
        data = dataset_for(models[0], job.dataset, job.data_root).to(job.device)
        epochs = sorted({e for m in models for e in annotation_epochs(m, job.epochs)})
        for epoch in epochs:
            if "hessian" in job.groups:
                for model in models:
                    if job.force or not _done(model, epoch, "hessian"):
                        _store(model, epoch, hessian_annotation(model, epoch, data, job))
            pair_groups = [g for g in ("cka", "mode_connectivity") if g in job.groups
                           and (job.force or not all(_done(m, epoch, g) for m in models))]
            if pair_groups and len(models) < 2:
                log.warning("%s has one seed: no CKA or mode connectivity", models[0].name)
                continue
            networks = [load_model(m, epoch, job.device) for m in models]
            values: dict[str, Any] = {}
            if "cka" in pair_groups:
                values.update(cka_annotation(networks, data, job.settings))
            if "mode_connectivity" in pair_groups:
                values.update(mode_connectivity_annotation(networks, models[0], data, job))
            for model in models:
                _store(model, epoch, values)
        return None
    except Exception as err:  # reported per grid point; the others go on
        log.exception("annotating %s failed", job.name)
        return f"{type(err).__name__}: {err}"


def _done(model: ModelRecord, epoch: int, group: str) -> bool:
    rows = fmt.read_results(model.path)
    return epoch < len(rows) and rows[epoch].get(DONE_KEYS[group]) is not None


def _store(model: ModelRecord, epoch: int, values: dict[str, Any]) -> None:
    """Merge ``values`` into result.json at ``epoch`` (atomic rewrite of the file)."""
    rows = fmt.read_results(model.path)
    if epoch >= len(rows):
        raise AnnotationError(f"'{model.path / fmt.RESULT_FILE}' has no line for epoch {epoch}")
    rows[epoch].update(values)
    fmt.write_results(model.path, rows)


def _log(value: float) -> float:
    return math.log(value) if value > 0 else float("nan")


def hessian_annotation(model: ModelRecord, epoch: int, data: ImageData,
                       job: GridPointJob) -> dict[str, Any]:
    """Top eigenvalue and trace on a fixed training subset, and the top eigenvalue on a fixed
    held-out subset (the published zoos keep the trace on training data only)."""
    from zoo_builder.landscape.hessian import (HessianOperator, fixed_subset, hessian_metrics,
                                               lanczos_top_eigenvalue)

    network = load_model(model, epoch, job.device)
    n, seed = job.settings.hessian_samples, job.settings.seed
    train_x, train_y = fixed_subset(data.train_x, data.train_y, n, seed)
    settings = job.settings
    metrics = hessian_metrics(network, data.normalize(train_x), train_y, seed=seed,
                              eig_max_iter=settings.hessian_eig_max_iter,
                              trace_hvps=settings.hessian_trace_hvps)
    val_x, val_y = fixed_subset(data.test_x, data.test_y, n, seed)
    top_ev_val = lanczos_top_eigenvalue(HessianOperator(network, data.normalize(val_x), val_y),
                                        max_iter=settings.hessian_eig_max_iter, seed=seed)
    metrics.update({"hessian_top_ev_val": top_ev_val.value,
                    "hessian_top_ev_val_uncertainty": top_ev_val.uncertainty,
                    "hessian_top_ev_val_hvps": top_ev_val.n_hvps})
    values: dict[str, Any] = {}
    for name, part in (("top_ev", "train"), ("trace", "train"), ("top_ev", "val")):
        source = f"hessian_{name}" if part == "train" else f"hessian_{name}_{part}"
        values[f"hessian_{name}_{part}"] = metrics[source]
        values[f"hessian_{name}_{part}_uncertainty"] = metrics[f"{source}_uncertainty"]
        values[f"hessian_{name}_{part}_hvps"] = metrics[f"{source}_hvps"]
        values[f"log_hessian_{name}_{part}"] = _log(metrics[source])
    return values


def cka_annotation(networks: list[torch.nn.Module], data: ImageData,
                   settings: AnnotationSettings) -> dict[str, Any]:
    """Mean linear CKA of the logits over all seed pairs, on a fixed held-out subset."""
    from zoo_builder.landscape.cka import seed_pair_cka
    from zoo_builder.landscape.hessian import fixed_subset

    images, _ = fixed_subset(data.test_x, data.test_y, settings.cka_samples, settings.seed)
    return {"representation_similarity": seed_pair_cka(networks, images, data.normalize),
            "cka_pairs": len(networks) * (len(networks) - 1) // 2}


def mode_connectivity_annotation(networks: list[torch.nn.Module], model: ModelRecord,
                                 data: ImageData, job: GridPointJob) -> dict[str, Any]:
    """Bezier mode connectivity, averaged over all seed pairs of the grid point."""
    from zoo_builder.landscape.mode_connectivity import bezier_mode_connectivity

    settings = job.settings
    augment = (Augmentation(**fmt.params_section(model.params, "augment"))
               if settings.mc_augment else None)
    pair_metrics = []
    for index, (a, b) in enumerate(itertools.combinations(networks, 2)):
        result = bezier_mode_connectivity(
            a, b, data, epochs=settings.mc_epochs, lr=settings.mc_lr,
            momentum=0.9, weight_decay=5e-4, batch_size=settings.mc_batch_size,
            n_eval_points=settings.mc_eval_points, augment=augment,
            seed=settings.seed + index, device=job.device)
        pair_metrics.append(result.to_metrics())
    values: dict[str, Any] = {key: sum(p[key] for p in pair_metrics) / len(pair_metrics)
                              for key in pair_metrics[0]}
    values["mc_pairs"] = len(pair_metrics)
    return values


# --------------------------------------------------------------------------- whole zoo


def label_zoo_phases(zoo: Zoo, epochs: Sequence[int] | None = None) -> None:
    """Label every model at its annotated epochs from the metrics stored there."""
    import pandas as pd

    from zoo_builder.phases import DEFAULT_RULES, label_phases

    rows, where = [], []
    for model in zoo.models:
        for epoch in annotation_epochs(model, epochs):
            if epoch < len(model.results):
                row = fmt.summary_rows(model.name, model.params, model.results)[epoch]
                row["num_classes"] = model.model_args.get("o_dim")
                rows.append(row)
                where.append((model, epoch))
    labels = label_phases(pd.DataFrame(rows), DEFAULT_RULES)
    for (model, epoch), label in zip(where, labels):
        _store(model, epoch, {"phase": None if label is None else str(label),
                              "phase_rules_version": DEFAULT_RULES.version})


def refresh_zoo_tables(zoo: Zoo) -> None:
    """Rewrite the summary table, and for our zoos the result hashes and the manifest."""
    fmt.write_summary(zoo.root, zoo.summary())
    if zoo.manifest is None:
        return
    trials = {}
    for model in zoo.models:
        completion = fmt.read_trial_completion(model.path)
        fmt.mark_trial_complete(model.path, completion["checkpoint_sha256"])
        trials[model.name] = fmt.read_trial_completion(model.path)
    zoo.manifest.trials = trials
    fmt.write_manifest(zoo.root, zoo.manifest)
