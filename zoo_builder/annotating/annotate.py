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
  ``curve_mc_test_loss``: Bezier mode connectivity, averaged over the seed pairs, with the
  curve training's budget and convergence: ``curve_steps``, ``curve_loss_final`` (mean loss
  along the curve over the last 10% of steps), ``curve_loss_drop`` (drop between the
  10-30% and 30-50% windows, in units of ln(C)) and ``curve_converged`` (the fraction of pairs that converged);
- ``phase`` and ``phase_rules_version`` (rules v1, as released), ``phase_v2`` (rules v2) and
  ``phase_v3`` with ``phase_v3_rules_version`` (the current rules of the zoo's domain: v2 for
  image classifiers, ``wslbench-phases-language-v1``, ``wslbench-phases-pinn-v1``), from the
  metrics above (:mod:`zoo_builder.annotating.phases`).

What "the loss", "the data" and "the logits" are depends on the zoo's workload
(:mod:`zoo_builder.annotating.landscape.problems`): language models are measured on seeded
token windows (CKA of the logits at the last position; mode connectivity adds
``curve_mc_train_loss``/``curve_mc_test_loss`` in nats, the paper's GPT-2 metric, to the
next-token errors ``curve_mc_*_error``; LayerNorm keeps no running statistics, so nothing is
recomputed at a curve point), PINNs on their whole training loss (residual + initial +
boundary), CKA of their solutions at the collocation points, and mode connectivity on that
loss, the test MSE and the relative L2 error (``curve_mc_train_loss``, ``curve_mc_test_loss``,
``curve_mc_test_rel_l2_error``; no ``curve_mc_*_error``: a PINN has no prediction error).

Downstream methods (:mod:`zoo_builder.annotating.downstream`, REFERENCE §5), asked for by group
name or all at once as ``downstream``, are not computed by default. Image classifiers get all
of them as below; language and PINN zoos get ``epoch_average``, ``pruning`` and ``ensemble``
judged by their own test metrics m (language: ``acc_test`` next-token accuracy and
``loss_test`` in nats; PINN: ``rel_l2_test``): ``wiseft_<m>``, ``wiseft_<m>_delta``,
``prune_<m>_<pct>``, ``ensemble_<m>``, ``ensemble_member_<m>`` and ``ensemble_gain``
(positive: the ensemble is better, also for an error). ``rebasin`` and ``transfer`` do not
apply to them: weight matching knows the permutation symmetries of ResNets and ViTs only, and
neither zoo has a second data set of its input kind to transfer to.
Accuracies are fractions in [0, 1], deltas and gains differences of them; the model itself is
the checkpoint at the annotated epoch, evaluated as it is on the test set:

- ``epoch_average`` (the paper's Wise-FT curve): the uniform average of the model's
  checkpoints with epoch > annotated epoch - ``average_window`` (parameters and buffers),
  BatchNorm statistics re-estimated on the training images: ``wiseft_acc_test`` and
  ``wiseft_acc_test_delta`` (minus the model's), ``wiseft_n_checkpoints`` (how many were
  averaged; fewer than 2 in the window: nothing is stored and a warning says to widen it);
- ``rebasin`` (Git re-basin, per grid point, the same values for each of its models): the
  other seeds aligned to the first seed's basin by weight matching and averaged with it,
  BatchNorm re-estimated: ``gitrebasin_acc_test``, ``gitrebasin_acc_test_delta`` (minus the
  first seed's accuracy), ``gitrebasin_naive_acc_test_delta`` (the same average without
  alignment, the control), ``gitrebasin_barrier_before`` and ``gitrebasin_barrier_after``
  (train-loss barrier along the straight line from the first to the second seed, before and
  after aligning the second, BatchNorm re-estimated at every point; ``_acc_barrier_`` the
  same in train accuracy), ``gitrebasin_n_models``;
- ``pruning``: global magnitude pruning of the convolution and linear weights to each of
  ``prune_sparsities`` (optionally fine-tuned with the mask fixed for
  ``prune_finetune_epochs``): ``prune_acc_test_<pct>``, e.g. ``prune_acc_test_90`` at
  sparsity 0.9, and ``prune_finetune_epochs``;
- ``ensemble`` (per grid point): the seeds' averaged softmax outputs: ``ensemble_acc_test``,
  ``ensemble_member_acc_test`` (mean over the seeds), ``ensemble_gain`` (the difference),
  ``ensemble_loss_test`` (cross-entropy of the averaged probabilities), ``ensemble_size``;
- ``transfer``: the whole model fine-tuned on a second data set (digits -> ``digits-rotated``,
  CIFAR-10 -> STL-10; ``transfer_dataset``): ``transfer_acc_before``, ``transfer_acc`` (target
  test accuracy before and after), ``transfer_acc_gain``, ``transfer_dataset``,
  ``transfer_epochs``, and the Wise-FT curve between the model and its fine-tuned version at
  each alpha of ``wiseft_alphas``, in percent: ``wiseft_alpha_<pct>_transfer_acc`` and
  ``wiseft_alpha_<pct>_source_acc`` (e.g. ``wiseft_alpha_25_source_acc``: alpha 0.25, the
  interpolated model's accuracy on the source's test set).

A metric already stored is not computed again unless ``force`` is set; every write is atomic,
so an annotation killed at any moment resumes where it was. At the end the summary table
(and, for our zoos, the manifest) is rewritten.
"""

from __future__ import annotations

import copy
import dataclasses
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
from zoo_builder.building.executors import LocalExecutor
from zoo_builder.models import build_model, load_weights

log = logging.getLogger(__name__)

#: Loss-landscape groups, computed by default; ``phase`` is derived from the other three.
LANDSCAPE_GROUPS = ("hessian", "cka", "mode_connectivity", "phase")

#: Downstream methods (image classification only), computed when asked for.
DOWNSTREAM_GROUPS = ("epoch_average", "rebasin", "pruning", "ensemble", "transfer")

#: Metric groups a user can ask for.
METRIC_GROUPS = LANDSCAPE_GROUPS + DOWNSTREAM_GROUPS

#: Names that stand for several groups.
GROUP_SETS = {"landscape": LANDSCAPE_GROUPS, "downstream": DOWNSTREAM_GROUPS,
              "all": METRIC_GROUPS}

#: Groups measured on the seeds of a grid point together (one value for all of them).
SEED_GROUPS = ("cka", "mode_connectivity", "rebasin", "ensemble")

#: The key whose presence in a result row means that the group is done at that epoch;
#: ``pruning`` and ``transfer`` need every key of their settings (see :func:`done_keys`).
DONE_KEYS = {
    "hessian": "hessian_trace_train",
    "cka": "representation_similarity",
    "mode_connectivity": "curve_mc_train_error",
    "epoch_average": "wiseft_acc_test_delta",
    "rebasin": "gitrebasin_acc_test_delta",
    "ensemble": "ensemble_acc_test",
    "transfer": "transfer_acc",
}


#: Epochs the weight-averaging method averages over where neither the settings nor the zoo's
#: spec say (``AnnotationSettings.average_window``).
DEFAULT_AVERAGE_WINDOW = 5


@dataclass(frozen=True)
class AnnotationSettings:
    """Budgets of the metrics. Mode connectivity follows the reference protocol (lr 0.1, batch
    128, 5 points) with a budget in optimizer steps: ``mc_steps`` None takes the zoo spec's
    ``curve_steps`` (where its convergence was checked), else the reference's 3,900 steps
    (10 CIFAR epochs). A shorter curve training leaves barriers that are not there (mc turns
    negative): each pair's convergence is stored (``curve_converged``), see
    :mod:`zoo_builder.annotating.landscape.mode_connectivity`."""

    hessian_samples: int = 200  # one batch of 200, as Yang et al. (2021)
    hessian_eig_max_iter: int = 100
    hessian_trace_hvps: int = 100
    # the seeds' Hessian products in one stacked pass where they stack (same values up to
    # float rounding; see hessian_annotations); False: one model at a time
    hessian_seed_batch: bool = True
    cka_samples: int = 512
    mc_steps: int | None = None
    mc_lr: float | None = None  # None: the workload's (SGD 0.1; PINNs: Adam 1e-3)
    mc_batch_size: int = 128
    mc_eval_points: int = 5
    mc_augment: bool = False
    seed: int = 0
    # downstream methods
    # epochs: checkpoints with epoch > annotated - window are averaged; None: the zoo spec's
    # (preset's) ``average_window``, else DEFAULT_AVERAGE_WINDOW
    average_window: int | None = None
    barrier_points: int = 5  # points on the linear path between two seeds (ends included)
    prune_sparsities: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
    prune_finetune_epochs: int = 0
    prune_finetune_lr: float = 0.01
    transfer_dataset: str | None = None  # None: the default target of the zoo's data set
    transfer_epochs: int = 5
    transfer_lr: float = 0.01
    finetune_batch_size: int = 64  # pruning fine-tuning and transfer
    wiseft_alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)

    def __post_init__(self):
        checks = [
            ("mc_steps", self.mc_steps is None or self.mc_steps >= 0, "None or at least 0"),
            ("average_window", self.average_window is None or self.average_window >= 1,
             "None or at least 1 epoch"),
            ("barrier_points", self.barrier_points >= 2, "at least 2 (both ends)"),
            ("prune_sparsities", all(0 <= s <= 1 for s in self.prune_sparsities),
             "fractions in [0, 1]"),
            ("prune_finetune_epochs", self.prune_finetune_epochs >= 0, "at least 0"),
            ("transfer_epochs", self.transfer_epochs >= 0, "at least 0"),
            ("finetune_batch_size", self.finetune_batch_size >= 1, "at least 1"),
            ("prune_finetune_lr", self.prune_finetune_lr > 0, "positive"),
            ("transfer_lr", self.transfer_lr > 0, "positive"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"annotation setting {name} must be {expected}; "
                                 f"got {getattr(self, name)!r}")


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


def annotate_zoo(root: str | Path, groups: Sequence[str] = LANDSCAPE_GROUPS,
                 epochs: Sequence[int] | None = None, force: bool = False, workers: int = 1,
                 device: str = "cpu", settings: AnnotationSettings = AnnotationSettings(),
                 dataset: str | None = None, data_root: str | None = None,
                 progress: bool = True) -> Zoo:
    """Annotate every model of the zoo at ``root``; return the zoo read back.

    ``groups`` are names of :data:`METRIC_GROUPS` or of :data:`GROUP_SETS` (``downstream``:
    every downstream method). ``dataset`` names the training data where params.json does not
    (published zoos record only the path of a data dump); ``data_root`` is where the data
    sets lie."""
    from zoo_builder.building.build import zoo_lock

    groups = expand_groups(groups)
    zoo = Zoo.open(root)
    zoo.check_integrity(results=False)  # result.json may differ: an annotation to resume
    check_downstream_zoo(zoo, groups)
    settings = settings_for(zoo, settings)
    jobs = [
        GridPointJob(name=f"grid point {index}", trial_dirs=tuple(m.path for m in models),
                     epochs=tuple(epochs) if epochs is not None else None,
                     groups=tuple(g for g in groups if g != "phase"), force=force,
                     settings=settings, device=device, dataset=dataset, data_root=data_root)
        for index, models in enumerate(zoo.grid_points().values())
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


def settings_for(zoo: Zoo, settings: AnnotationSettings) -> AnnotationSettings:
    """``settings`` with what they leave open (None) taken from the zoo's spec and preset (as
    its manifest names them): the curve budget ``curve_steps`` (else the reference's step
    count) and the averaging window ``average_window`` (else DEFAULT_AVERAGE_WINDOW)."""
    from zoo_builder.annotating.landscape.mode_connectivity import REFERENCE_CURVE_STEPS
    from zoo_builder.building.catalog import SPECS

    spec = None
    if zoo.manifest is not None and zoo.manifest.spec in SPECS:
        spec = SPECS.get(zoo.manifest.spec)
        preset = zoo.manifest.preset or "default"
        spec = spec.with_preset(preset) if preset in ("default", *spec.presets) else spec
    if settings.mc_steps is None:
        steps = spec.curve_steps if spec is not None else None
        settings = dataclasses.replace(settings, mc_steps=steps or REFERENCE_CURVE_STEPS)
    if settings.average_window is None:
        window = spec.average_window if spec is not None else None
        settings = dataclasses.replace(settings, average_window=window or DEFAULT_AVERAGE_WINDOW)
    return settings


def expand_groups(groups: Sequence[str]) -> list[str]:
    """Group names with ``landscape``, ``downstream`` and ``all`` expanded, in the order of
    :data:`METRIC_GROUPS`."""
    unknown = sorted(set(groups) - set(METRIC_GROUPS) - set(GROUP_SETS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRIC_GROUPS)} or "
                         f"{list(GROUP_SETS)}")
    wanted = {g for name in groups for g in GROUP_SETS.get(name, (name,))}
    return [g for g in METRIC_GROUPS if g in wanted]


#: Downstream methods that apply to every workload (judged by its test metrics, see
#: :mod:`zoo_builder.annotating.landscape.problems`); the others need image classifiers:
#: git re-basin's weight matching knows the permutation symmetries of ResNets and ViTs only,
#: and transfer needs a second data set of the same input kind (none exists for the
#: language and PINN zoos).
ANY_WORKLOAD_DOWNSTREAM = ("epoch_average", "pruning", "ensemble")


def check_downstream_zoo(zoo: Zoo, groups: Sequence[str]) -> None:
    """Refuse, up front, downstream methods the zoo's workload has none of."""
    asked = [g for g in groups if g in DOWNSTREAM_GROUPS and g not in ANY_WORKLOAD_DOWNSTREAM]
    if not asked:
        return
    for model in zoo.models:
        workload = model.params.get("training::workload", "image_classification")
        if workload != "image_classification":
            raise AnnotationError(
                f"downstream metrics {asked} need an image-classification zoo; model "
                f"'{model.name}' of '{zoo.root}' is trained for '{workload}'. Annotate this zoo "
                f"with the landscape groups and {list(ANY_WORKLOAD_DOWNSTREAM)} only")


def done_keys(group: str, settings: AnnotationSettings,
              params: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The keys that must all be stored for ``group`` to count as done at an epoch (mode
    connectivity: the workload's, e.g. ``curve_mc_train_loss`` where there is no error)."""
    if params is not None and group in ("mode_connectivity", *ANY_WORKLOAD_DOWNSTREAM):
        from zoo_builder.annotating.landscape.problems import LANDSCAPE_PROBLEMS, workload_of

        workload = workload_of(params)
        cls = LANDSCAPE_PROBLEMS.get(workload)
        if group == "mode_connectivity":
            return (f"curve_mc_{cls.done_quantity}",)
        if workload != "image_classification":
            metric = cls.test_metrics[0]
            if group == "epoch_average":
                return (f"wiseft_{metric}_delta",)
            if group == "ensemble":
                return (f"ensemble_{metric}",)
            return tuple(prune_key(s, metric) for s in settings.prune_sparsities)
    if group == "pruning":
        return tuple(prune_key(s) for s in settings.prune_sparsities)
    if group == "transfer":
        return ("transfer_acc", *(key for a in settings.wiseft_alphas
                                  for key in wiseft_alpha_keys(a)))
    return (DONE_KEYS[group],)


def percent_label(fraction: float) -> str:
    """A fraction as a key part in percent: 0.9 -> "90", 0.125 -> "12_5"."""
    value = round(float(fraction) * 100, 6)
    return str(int(value)) if value == int(value) else f"{value:g}".replace(".", "_")


def prune_key(sparsity: float, metric: str = "acc_test") -> str:
    return f"prune_{metric}_{percent_label(sparsity)}"


def wiseft_alpha_keys(alpha: float) -> tuple[str, str]:
    label = percent_label(alpha)
    return f"wiseft_alpha_{label}_transfer_acc", f"wiseft_alpha_{label}_source_acc"


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
                data_root: str | None = None) -> Any:
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
    """Compute the missing metrics of one grid point; an error message instead of raising.

    On CPU, oneDNN is off: in torch 2.13's CPU build its convolution backward corrupts memory
    ("double free or corruption") on one thread when the weights are computed (Bezier curve
    points, ``functional_call``) or differentiated twice (Hessian-vector products); torch's
    native kernels compute the same values.
    """
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled and torch.device(job.device).type != "cpu"
    try:
        return _annotate_grid_point(job)
    finally:
        torch.backends.mkldnn.enabled = enabled


def _annotate_grid_point(job: GridPointJob) -> str | None:
    from zoo_builder.annotating.landscape.problems import workload_of

    try:
        models = [ModelRecord.read(path) for path in job.trial_dirs]
        data = dataset_for(models[0], job.dataset, job.data_root).to(job.device)
        target = None
        if "transfer" in job.groups:
            from zoo_builder.annotating.downstream.transfer import transfer_data

            source = job.dataset or models[0].params.get("dataset::name")
            target = transfer_data(source, job.settings.transfer_dataset,
                                   job.data_root).to(job.device)
        epochs = sorted({e for m in models for e in annotation_epochs(m, job.epochs)})
        images = all(workload_of(m.params) == "image_classification" for m in models)
        per_model = {"epoch_average": (epoch_average_annotation if images
                                       else workload_epoch_average_annotation),
                     "pruning": pruning_annotation if images else workload_pruning_annotation,
                     "transfer": lambda m, e, d, j: transfer_annotation(m, e, d, target, j)}
        for epoch in epochs:
            if "hessian" in job.groups:
                todo = [m for m in models
                        if job.force or not _done(m, epoch, "hessian", job.settings)]
                for model, values in zip(todo, hessian_annotations(todo, epoch, data, job)):
                    _store(model, epoch, values)
            for group, annotation in per_model.items():
                if group not in job.groups:
                    continue
                for model in models:
                    if job.force or not _done(model, epoch, group, job.settings):
                        values = annotation(model, epoch, data, job)
                        if values:
                            _store(model, epoch, values)
            seed_groups = [g for g in SEED_GROUPS if g in job.groups
                           and (job.force or not all(_done(m, epoch, g, job.settings)
                                                     for m in models))]
            if seed_groups and len(models) < 2:
                log.warning("%s has one seed: no %s", models[0].name, ", ".join(seed_groups))
                continue
            if not seed_groups:
                continue
            networks = [load_model(m, epoch, job.device) for m in models]
            values: dict[str, Any] = {}
            if "cka" in seed_groups:
                values.update(cka_annotation(networks, models[0], data, job))
            if "mode_connectivity" in seed_groups:
                values.update(mode_connectivity_annotation(networks, models[0], data, job))
            if "rebasin" in seed_groups:
                order = sorted(range(len(models)), key=lambda i: _seed_order(models[i]))
                values.update(rebasin_annotation(models[0].model_args,
                                                 [networks[i] for i in order], data, job))
            if "ensemble" in seed_groups:
                values.update(ensemble_annotation(networks, data) if images
                              else workload_ensemble_annotation(networks, models[0], data, job))
            for model in models:
                _store(model, epoch, values)
        return None
    except Exception as err:  # reported per grid point; the others go on
        log.exception("annotating %s failed", job.name)
        return f"{type(err).__name__}: {err}"


def _seed_order(model: ModelRecord) -> tuple:
    """Seeds in increasing order (the first is re-basin's reference), then by name."""
    seed = model.seed
    return (seed is None, seed if isinstance(seed, (int, float)) else str(seed), model.name)


def _done(model: ModelRecord, epoch: int, group: str, settings: AnnotationSettings) -> bool:
    rows = fmt.read_results(model.path)
    return epoch < len(rows) and all(rows[epoch].get(key) is not None
                                     for key in done_keys(group, settings, model.params))


def _store(model: ModelRecord, epoch: int, values: dict[str, Any]) -> None:
    """Merge ``values`` into result.json at ``epoch`` (atomic rewrite of the file)."""
    rows = fmt.read_results(model.path)
    if epoch >= len(rows):
        raise AnnotationError(f"'{model.path / fmt.RESULT_FILE}' has no line for epoch {epoch}")
    rows[epoch].update(values)
    fmt.write_results(model.path, rows)


def _log(value: float) -> float:
    return math.log(value) if value > 0 else float("nan")


def landscape_problem(model: ModelRecord, data: Any, job: GridPointJob):
    """The landscape problem of the model's workload on ``data``, with the job's budgets."""
    from zoo_builder.annotating.landscape.problems import make_problem

    settings = job.settings
    return make_problem(model.params, data, samples=settings.hessian_samples,
                        cka_samples=settings.cka_samples, seed=settings.seed, device=job.device,
                        augment=settings.mc_augment)


def hessian_annotation(model: ModelRecord, epoch: int, data: Any,
                       job: GridPointJob) -> dict[str, Any]:
    """Top eigenvalue and trace of the training loss's Hessian on fixed training data, and the
    top eigenvalue on fixed held-out data (the published zoos keep the trace on training data
    only); what "the loss" and "the data" are is the workload's (:mod:`problems
    <zoo_builder.annotating.landscape.problems>`)."""
    from zoo_builder.annotating.landscape.hessian import (lanczos_top_eigenvalue,
                                                          operator_hessian_metrics)

    network = load_model(model, epoch, job.device)
    problem = landscape_problem(model, data, job)
    settings = job.settings
    metrics = operator_hessian_metrics(problem.hessian_operator(network, "train"),
                                       seed=settings.seed,
                                       eig_max_iter=settings.hessian_eig_max_iter,
                                       trace_hvps=settings.hessian_trace_hvps)
    top_ev_val = lanczos_top_eigenvalue(problem.hessian_operator(network, "val"),
                                        max_iter=settings.hessian_eig_max_iter, seed=settings.seed)
    return _hessian_values(metrics, top_ev_val)


def hessian_annotations(models: list[ModelRecord], epoch: int, data: Any,
                        job: GridPointJob) -> list[dict[str, Any]]:
    """:func:`hessian_annotation` of each of ``models`` (the seeds of one grid point), in order.

    With ``hessian_seed_batch`` (default) the models' Hessian products are computed together,
    one vmapped pass for all of them (:class:`~zoo_builder.annotating.landscape.hessian.
    StackedHessianOperator`), each model running its own estimators on the probe vectors it
    would draw alone; the values equal the one-at-a-time ones up to float rounding. Models
    whose operators do not stack (a PINN's loss takes input derivatives, which do not run under
    vmap; different shapes or data) are measured one at a time, and the log says why.
    """
    from zoo_builder.annotating.landscape.hessian import (NotStackableError,
                                                          StackedHessianOperator,
                                                          stacked_hessian_metrics,
                                                          stacked_lanczos_top_eigenvalue)

    settings = job.settings
    if len(models) < 2 or not settings.hessian_seed_batch:
        return [hessian_annotation(model, epoch, data, job) for model in models]
    networks = [load_model(model, epoch, job.device) for model in models]
    problems = [landscape_problem(model, data, job) for model in models]

    def stacked(part: str) -> StackedHessianOperator:
        return StackedHessianOperator.from_operators(
            [problem.hessian_operator(network, part)
             for problem, network in zip(problems, networks)])

    try:
        train, val = stacked("train"), stacked("val")
    except NotStackableError as err:
        log.info("%s: Hessians of %d models one at a time, not seed-batched: %s", job.name,
                 len(models), err)
        return [hessian_annotation(model, epoch, data, job) for model in models]
    networks.clear()  # the stacked operators hold copies of the weights
    metrics = stacked_hessian_metrics(train, seed=settings.seed,
                                      eig_max_iter=settings.hessian_eig_max_iter,
                                      trace_hvps=settings.hessian_trace_hvps)
    del train
    top_ev_val = stacked_lanczos_top_eigenvalue(val, max_iter=settings.hessian_eig_max_iter,
                                                seed=settings.seed)
    return [_hessian_values(m, e) for m, e in zip(metrics, top_ev_val)]


def _hessian_values(metrics: dict[str, float], top_ev_val: Any) -> dict[str, Any]:
    """The stored keys from the train metrics and the val top eigenvalue."""
    metrics = dict(metrics)
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


def cka_annotation(networks: list[torch.nn.Module], model: ModelRecord, data: Any,
                   job: GridPointJob) -> dict[str, Any]:
    """Mean linear CKA over all seed pairs of the workload's representation (classifiers:
    logits on a fixed held-out subset)."""
    from zoo_builder.annotating.landscape.cka import linear_cka

    problem = landscape_problem(model, data, job)
    outputs = [problem.representation(network) for network in networks]
    values = [linear_cka(a, b) for a, b in itertools.combinations(outputs, 2)]
    return {"representation_similarity": float(sum(values) / len(values)),
            "cka_pairs": len(values)}


def mode_connectivity_annotation(networks: list[torch.nn.Module], model: ModelRecord,
                                 data: Any, job: GridPointJob) -> dict[str, Any]:
    """Bezier mode connectivity, averaged over all seed pairs of the grid point."""
    from zoo_builder.annotating.landscape.mode_connectivity import (EndValues,
                                                                    bezier_mode_connectivity)

    settings = job.settings
    problem = landscape_problem(model, data, job)
    pair_metrics = []
    ends = EndValues()  # each seed is the end of several curves: measured once
    for index, (a, b) in enumerate(itertools.combinations(networks, 2)):
        result = bezier_mode_connectivity(
            a, b, problem, steps=settings.mc_steps, lr=settings.mc_lr,
            momentum=0.9, weight_decay=5e-4, batch_size=settings.mc_batch_size,
            n_eval_points=settings.mc_eval_points, seed=settings.seed + index,
            device=job.device, end_values=ends)
        pair_metrics.append(result.to_metrics())
    values: dict[str, Any] = {key: sum(p[key] for p in pair_metrics) / len(pair_metrics)
                              for key in pair_metrics[0]}
    values["mc_pairs"] = len(pair_metrics)
    return values


# --------------------------------------------------------------------------- downstream


def _with_batchnorm_from(network: torch.nn.Module, state: dict[str, torch.Tensor],
                         data: ImageData) -> torch.nn.Module:
    """A copy of ``network`` holding ``state`` (made weights), its BatchNorm statistics
    re-estimated on the training images."""
    from zoo_builder.annotating.landscape.batchnorm import recompute_batchnorm_statistics

    made = copy.deepcopy(network)
    made.load_state_dict(state)
    recompute_batchnorm_statistics(made, data.train_x, data.normalize)
    return made.eval()


def _test_acc(network: torch.nn.Module, data: ImageData) -> float:
    from zoo_builder.building.workloads import evaluate_classifier

    return evaluate_classifier(network, data, data.test_x, data.test_y)[1]


def epoch_average_annotation(model: ModelRecord, epoch: int, data: ImageData,
                             job: GridPointJob) -> dict[str, Any]:
    """The uniform average of the model's checkpoints in the window ending at ``epoch``,
    BatchNorm re-estimated, against the checkpoint at ``epoch``; {} if fewer than 2."""
    from zoo_builder.annotating.downstream.averaging import average_checkpoints

    chosen = _averaging_window(model, epoch, job.settings.average_window)
    if not chosen:
        return {}
    network = load_model(model, epoch, job.device)
    states = [load_model(model, e, job.device).state_dict() for e in chosen]
    averaged = _with_batchnorm_from(network, average_checkpoints(states), data)
    single, average = _test_acc(network, data), _test_acc(averaged, data)
    return {"wiseft_acc_test": average, "wiseft_acc_test_delta": average - single,
            "wiseft_n_checkpoints": len(chosen)}


def _averaging_window(model: ModelRecord, epoch: int, window: int) -> list[int]:
    """The checkpointed epochs in (epoch - window, epoch]; [] (with a warning) if fewer than 2."""
    chosen = [e for e in model.checkpoint_epochs if epoch - window < e <= epoch]
    if len(chosen) < 2:
        log.warning("%s: %d checkpoint(s) in the epoch-averaging window (%d, %d] (checkpoints at "
                    "%s), so no epoch average; widen the window (--average-window) to take in "
                    "at least two", model.name, len(chosen), epoch - window, epoch,
                    list(model.checkpoint_epochs))
        return []
    return chosen


def workload_epoch_average_annotation(model: ModelRecord, epoch: int, data: Any,
                                      job: GridPointJob) -> dict[str, Any]:
    """Epoch averaging for workloads other than image classification, judged by their test
    metrics (language: next-token accuracy and loss; PINN: relative L2 error): for each
    metric m, ``wiseft_<m>`` and ``wiseft_<m>_delta`` (average minus the model). No
    normalization statistics to re-estimate: LayerNorm keeps none, the PINN has no norm."""
    from zoo_builder.annotating.downstream.averaging import average_checkpoints

    chosen = _averaging_window(model, epoch, job.settings.average_window)
    if not chosen:
        return {}
    problem = landscape_problem(model, data, job)
    network = load_model(model, epoch, job.device)
    averaged = copy.deepcopy(network)
    averaged.load_state_dict(average_checkpoints(
        [load_model(model, e, job.device).state_dict() for e in chosen]))
    single, average = problem.test_performance(network), problem.test_performance(averaged)
    values: dict[str, Any] = {"wiseft_n_checkpoints": len(chosen)}
    for metric in problem.test_metrics:
        values[f"wiseft_{metric}"] = average[metric]
        values[f"wiseft_{metric}_delta"] = average[metric] - single[metric]
    return values


def workload_pruning_annotation(model: ModelRecord, epoch: int, data: Any,
                                job: GridPointJob) -> dict[str, Any]:
    """Global magnitude pruning of the linear weights (GPT: attention and MLP; the tied token
    embedding is the LM head and stays) at each sparsity, judged by the workload's test
    metrics: ``prune_<m>_<pct>``. Fine-tuning the pruned model is for classifiers only."""
    from zoo_builder.annotating.downstream.pruning import global_magnitude_prune, prunable_weights

    settings = job.settings
    if settings.prune_finetune_epochs > 0:
        raise AnnotationError(f"pruning with fine-tuning (--prune-finetune-epochs "
                              f"{settings.prune_finetune_epochs}) is implemented for image "
                              f"classifiers only; model '{model.name}' is not one: use 0")
    problem = landscape_problem(model, data, job)
    network = load_model(model, epoch, job.device)
    state, prunable = network.state_dict(), prunable_weights(network)
    values: dict[str, Any] = {"prune_finetune_epochs": 0}
    for sparsity in settings.prune_sparsities:
        pruned = copy.deepcopy(network)
        pruned.load_state_dict(global_magnitude_prune(state, sparsity, prunable)[0])
        for metric, value in problem.test_performance(pruned).items():
            values[prune_key(sparsity, metric)] = value
    return values


def workload_ensemble_annotation(networks: list[torch.nn.Module], model: ModelRecord, data: Any,
                                 job: GridPointJob) -> dict[str, Any]:
    """The seeds' output-averaging ensemble for workloads other than image classification:
    language models average next-token probabilities, PINNs their solutions."""
    problem = landscape_problem(model, data, job)
    return {**problem.ensemble_performance(networks), "ensemble_size": len(networks)}


def rebasin_annotation(model_args: dict[str, Any], networks: list[torch.nn.Module],
                       data: ImageData, job: GridPointJob) -> dict[str, Any]:
    """Git re-basin of the seeds (``networks`` in seed order, the first is the reference):
    the aligned average against the reference, and the linear-path barriers of the first
    pair before and after alignment."""
    from zoo_builder.annotating.downstream.averaging import average_checkpoints
    from zoo_builder.annotating.downstream.rebasin import (align, image_classification_evaluator,
                                                linear_path_barrier, rebasin_average)

    states = [network.state_dict() for network in networks]
    reference, others = states[0], states[1:]
    seed = job.settings.seed
    averaged = _with_batchnorm_from(networks[0],
                                    rebasin_average(model_args, reference, others, seed=seed), data)
    naive = _with_batchnorm_from(networks[0], average_checkpoints(states), data)
    reference_acc = _test_acc(networks[0], data)
    rebasin_acc = _test_acc(averaged, data)
    evaluate = image_classification_evaluator(model_args, data, data.train_x, data.train_y,
                                              batchnorm_inputs=data.train_x, device=job.device)
    points = job.settings.barrier_points
    before = linear_path_barrier(evaluate, reference, others[0], n_points=points)
    after = linear_path_barrier(evaluate, reference,
                                align(model_args, reference, others[0], seed=seed),
                                n_points=points)
    return {"gitrebasin_acc_test": rebasin_acc,
            "gitrebasin_acc_test_delta": rebasin_acc - reference_acc,
            "gitrebasin_naive_acc_test_delta": _test_acc(naive, data) - reference_acc,
            "gitrebasin_barrier_before": before["loss_barrier"],
            "gitrebasin_barrier_after": after["loss_barrier"],
            "gitrebasin_acc_barrier_before": before["acc_barrier"],
            "gitrebasin_acc_barrier_after": after["acc_barrier"],
            "gitrebasin_n_models": len(networks)}


def pruning_annotation(model: ModelRecord, epoch: int, data: ImageData,
                       job: GridPointJob) -> dict[str, Any]:
    """Test accuracy after global magnitude pruning of the convolution and linear weights at
    each sparsity (fine-tuned with the mask fixed if ``prune_finetune_epochs`` > 0)."""
    from zoo_builder.annotating.downstream.pruning import (finetune_pruned, global_magnitude_prune,
                                                prunable_weights)

    settings = job.settings
    network = load_model(model, epoch, job.device)
    state, prunable = network.state_dict(), prunable_weights(network)
    values: dict[str, Any] = {"prune_finetune_epochs": settings.prune_finetune_epochs}
    for sparsity in settings.prune_sparsities:
        pruned_state, masks = global_magnitude_prune(state, sparsity, prunable)
        pruned = copy.deepcopy(network)
        pruned.load_state_dict(pruned_state)
        if settings.prune_finetune_epochs > 0:
            finetune_pruned(pruned, masks, data, epochs=settings.prune_finetune_epochs,
                            lr=settings.prune_finetune_lr, batch_size=settings.finetune_batch_size,
                            seed=settings.seed)
        values[prune_key(sparsity)] = _test_acc(pruned, data)
    return values


def ensemble_annotation(networks: list[torch.nn.Module], data: ImageData) -> dict[str, Any]:
    """The seeds' output-averaging ensemble on the test set."""
    from zoo_builder.annotating.downstream.ensembling import ensemble_accuracy

    result = ensemble_accuracy(networks, data)
    return {"ensemble_acc_test": result.accuracy,
            "ensemble_member_acc_test": result.mean_member_accuracy,
            "ensemble_gain": result.gain, "ensemble_loss_test": result.loss,
            "ensemble_size": len(networks)}


def transfer_annotation(model: ModelRecord, epoch: int, data: ImageData, target: ImageData,
                        job: GridPointJob) -> dict[str, Any]:
    """Fine-tune the model on ``target``; its accuracy there and the Wise-FT curve."""
    from zoo_builder.annotating.downstream.transfer import check_compatible, transfer

    settings = job.settings
    network = load_model(model, epoch, job.device)
    args = model.model_args
    check_compatible(int(args.get("o_dim", args.get("num_classes", data.num_classes))),
                     int(args.get("channels_in", args.get("in_channels", data.in_channels))),
                     target)
    result = transfer(network, data, target, epochs=settings.transfer_epochs,
                      lr=settings.transfer_lr, batch_size=settings.finetune_batch_size,
                      alphas=settings.wiseft_alphas, seed=settings.seed)
    values: dict[str, Any] = {"transfer_acc_before": result.acc_before,
                              "transfer_acc": result.acc_after,
                              "transfer_acc_gain": result.acc_after - result.acc_before,
                              "transfer_dataset": target.name,
                              "transfer_epochs": settings.transfer_epochs}
    for alpha, target_acc, source_acc in zip(result.alphas, result.target_acc,
                                             result.source_acc):
        target_key, source_key = wiseft_alpha_keys(alpha)
        values[target_key], values[source_key] = target_acc, source_acc
    return values


# --------------------------------------------------------------------------- whole zoo


def label_zoo_phases(zoo: Zoo, epochs: Sequence[int] | None = None) -> None:
    """Label every model at its annotated epochs from the metrics stored there."""
    import pandas as pd

    from zoo_builder.annotating.phases import (DOMAIN_LABEL_KEY, RULES_V1, label_phases,
                                               zoo_label_rules)
    from zoo_builder.annotating.landscape.problems import workload_of
    from zoo_builder.reporting.summaries import classes_of

    rows, where = [], []
    for model in zoo.models:
        for epoch in annotation_epochs(model, epochs):
            if epoch < len(model.results):
                row = fmt.summary_rows(model.name, model.params, model.results)[epoch]
                row["num_classes"] = classes_of(model.params)
                row["workload"] = workload_of(model.params)
                rows.append(row)
                where.append((model, epoch))
    # Every released version under its own key (``phase``: v1, ``phase_v2``: v2, ...), so a
    # released task keeps reading the labels it was released with, and the domain's current
    # rules under ``phase_v3``. The zoo is labelled as a whole (per domain): v2 and the domain
    # rules measure the train loss from the sub-zoo's lowest.
    frame = pd.DataFrame(rows)
    for workload, part in frame.groupby("workload"):
        plan = zoo_label_rules(workload)
        labels = {key: label_phases(part, rules) for key, rules in plan.items()
                  if rules is not None}
        for position, index in enumerate(part.index):
            model, epoch = where[index]
            values = {key: None if key not in labels or labels[key].iloc[position] is None
                      else str(labels[key].iloc[position]) for key in plan}
            values["phase_rules_version"] = RULES_V1.version  # the rules of the ``phase`` key
            values[f"{DOMAIN_LABEL_KEY}_rules_version"] = plan[DOMAIN_LABEL_KEY].version
            _store(model, epoch, values)


def refresh_zoo_tables(zoo: Zoo) -> None:
    """Rewrite the summary table, and for our zoos the result hashes and the manifest with
    the new content revision."""
    fmt.write_summary(zoo.root, zoo.summary())
    if zoo.manifest is None:
        return
    trials = {}
    for model in zoo.models:  # each read back (Zoo.open): an empty result.json has failed
        completion = fmt.read_trial_completion(model.path)
        fmt.mark_trial_complete(model.path, completion["checkpoint_sha256"])
        trials[model.name] = fmt.trial_record(model.path)
    zoo.manifest.set_trials(trials)  # and the content revision: the targets changed
    fmt.write_manifest(zoo.root, zoo.manifest)
