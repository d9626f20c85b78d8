"""Git re-basin (Ainsworth et al. 2023) by weight matching, and averaging seeds in one basin.

Weight matching permutes the hidden units of model B to bring its weights as close as
possible to model A's: it maximizes ``sum_l <W_a^l, P_l W_b^l P_{l-1}^T>`` over the
permutations of :func:`~zoo_builder.annotating.downstream.permutation.permutation_spec` by coordinate
descent. Each step fixes every group but one and solves for that one exactly as a linear
assignment (``scipy.optimize.linear_sum_assignment`` on ``sum W_a W_b^T`` over the tensors the
group acts on, with their other axes already permuted); groups are visited in a random order
each sweep, and the search stops after a sweep in which no group improved. An attention
layer's query/key and value groups are solved together: for each pair of heads the best
within-head assignments, then the best assignment of heads on their summed scores.

The reference protocol (REFERENCE §5, published key ``gitrebasin_acc_test_delta``): align
seeds 1 and 2 to seed 0, average the three (:func:`rebasin_average`), re-estimate BatchNorm
statistics on training data (``zoo_builder.annotating.landscape.batchnorm``), evaluate, and report the
test-accuracy change from seed 0::

    averaged = rebasin_average(model_args, seed0, [seed1, seed2])
    evaluate = image_classification_evaluator(model_args, data, data.test_x, data.test_y,
                                              batchnorm_inputs=data.train_x)
    delta = evaluate(averaged)["acc"] - test_acc_of_seed0

:func:`linear_path_barrier` measures the loss barrier along ``(1 - t) A + t B``, before
alignment (B as trained) and after (B aligned to A).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from zoo_builder.annotating.downstream.permutation import (PermutationGroup, PermutationSpec, Permutations,
                                                StateDict, apply_permutation,
                                                identity_permutation, permutation_spec)

log = logging.getLogger(__name__)

#: A step must raise the matching objective by more than this fraction of it to count.
RELATIVE_TOLERANCE = 1e-12

Evaluate = Callable[[StateDict], Mapping[str, float]]


# --------------------------------------------------------------------------- weight matching


def _flat_along(tensor: torch.Tensor, axis: int) -> torch.Tensor:
    """``tensor`` as a matrix with one row per index of ``axis``."""
    return tensor.movedim(axis, 0).reshape(tensor.shape[axis], -1)


def _similarity(spec: PermutationSpec, name: str, reference: StateDict, other: StateDict,
                perms: Permutations) -> torch.Tensor:
    """``S[i, j]``: inner product of reference unit i and other unit j over every tensor of
    group ``name``, with the other tensors' remaining axes permuted by ``perms``."""
    group = spec.groups[name]
    similarity = torch.zeros(group.size, group.size, dtype=torch.float64,
                             device=perms[name].device)
    for key, axis in group.axes:
        if key in spec.buffers:
            continue
        b = other[key]
        for other_axis, other_group in spec.key_axes[key].items():
            if other_axis != axis:
                b = b.index_select(other_axis, perms[other_group])
        similarity += _flat_along(reference[key], axis) @ _flat_along(b, axis).T
    return similarity


def _assign(similarity: np.ndarray) -> tuple[np.ndarray, float]:
    """The permutation maximizing ``sum_i S[i, perm[i]]``, and that sum."""
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    return cols, float(similarity[rows, cols].sum())


def _solve_heads(groups: Sequence[PermutationGroup], similarities: Sequence[np.ndarray]
                 ) -> tuple[list[np.ndarray], float]:
    """Block-structured permutations for groups sharing one head permutation.

    For each (new head, old head) pair the best within-head assignment of every group is
    solved; the head permutation then maximizes the summed scores, which makes the joint
    solution exact.
    """
    heads, head_dim = groups[0].heads, groups[0].head_dim
    scores = np.zeros((heads, heads))
    within = [[[None] * heads for _ in range(heads)] for _ in groups]
    for g, similarity in enumerate(similarities):
        blocks = similarity.reshape(heads, head_dim, heads, head_dim)
        for new in range(heads):
            for old in range(heads):
                within[g][new][old], score = _assign(blocks[new, :, old, :])
                scores[new, old] += score
    head_perm, total = _assign(scores)
    perms = [np.concatenate([old * head_dim + within[g][new][old]
                             for new, old in enumerate(head_perm)])
             for g in range(len(groups))]
    return perms, total


def weight_matching(spec: PermutationSpec, reference: Mapping[str, torch.Tensor],
                    other: Mapping[str, torch.Tensor], max_iter: int = 100,
                    seed: int = 0) -> Permutations:
    """Permutations that bring ``other`` closest to ``reference`` (see the module docstring).

    ``apply_permutation(spec, other, perms)`` is ``other`` in ``reference``'s basin. Only
    parameters enter the objective: buffers (``spec.buffers``, BatchNorm running statistics)
    are re-estimated after averaging anyway, and running variances in the hundreds would
    outweigh the weights. Starts from the identity; ``max_iter`` bounds the sweeps and
    ``seed`` fixes the order of groups. Similarities are summed in float64 on
    ``reference``'s device.
    """
    keys = [key for key in spec.key_axes if key not in spec.buffers]
    missing = sorted(k for k in keys if k not in reference or k not in other)
    if missing:
        raise KeyError(f"weight matching needs {missing[:5]} in both state_dicts; are they the "
                       "model's own state_dicts (published keys renamed by "
                       "zoo_builder.models.load_weights)?")
    device = next(iter(reference.values())).device
    ref = {k: reference[k].detach().to(device, torch.float64) for k in keys}
    oth = {k: other[k].detach().to(device, torch.float64) for k in keys}
    perms = {name: p.to(device) for name, p in identity_permutation(spec).items()}
    head_sets = spec.head_sets
    # A coordinate is a group, or all groups of a head set (solved together).
    coordinates = [[name] for name, g in spec.groups.items() if g.head_set is None]
    coordinates += list(head_sets.values())
    rng = np.random.default_rng(seed)
    for sweep in range(1, max_iter + 1):
        improved = False
        for index in rng.permutation(len(coordinates)):
            names = coordinates[index]
            similarities = [_similarity(spec, name, ref, oth, perms).cpu().numpy()
                            for name in names]
            old = sum(float(s[np.arange(len(s)), perms[n].cpu().numpy()].sum())
                      for n, s in zip(names, similarities))
            groups = [spec.groups[name] for name in names]
            if len(groups) > 1 or groups[0].heads > 1:
                new_perms, new = _solve_heads(groups, similarities)
            else:
                new_perm, new = _assign(similarities[0])
                new_perms = [new_perm]
            if new - old > RELATIVE_TOLERANCE * max(abs(old), abs(new), 1e-30):
                improved = True
                for name, perm in zip(names, new_perms):
                    perms[name] = torch.as_tensor(perm, dtype=torch.long, device=device)
        if not improved:
            log.debug("weight matching converged after %d sweeps", sweep)
            break
    else:
        log.warning("weight matching still improved after max_iter=%d sweeps; the permutations "
                    "may not be a local optimum (raise max_iter)", max_iter)
    return {name: perm.cpu() for name, perm in perms.items()}


def align(model_args: Mapping[str, Any], reference: Mapping[str, torch.Tensor],
          other: Mapping[str, torch.Tensor], max_iter: int = 100, seed: int = 0) -> StateDict:
    """``other`` with its hidden units permuted into ``reference``'s basin (same function)."""
    spec = permutation_spec(model_args)
    return apply_permutation(spec, other, weight_matching(spec, reference, other, max_iter, seed))


# --------------------------------------------------------------------------- averaging


def average_states(states: Sequence[Mapping[str, torch.Tensor]],
                   weights: Sequence[float] | None = None) -> StateDict:
    """The (uniform, or ``weights``-weighted) mean of every float parameter and buffer.

    Sums run in float64 and are cast back to each entry's dtype, so a mean of identical
    states gives them back exactly (and weights 1, 0 the first state). Integer entries
    (BatchNorm's ``num_batches_tracked``) come from the first state. Averaged
    BatchNorm running statistics are not the statistics of the averaged weights: re-estimate
    them (``recompute_batchnorm_statistics``) before evaluating.
    """
    if not states:
        raise ValueError("average_states needs at least one state_dict")
    weights = [1.0 / len(states)] * len(states) if weights is None else [float(w) for w in weights]
    if len(weights) != len(states):
        raise ValueError(f"got {len(weights)} weights for {len(states)} state_dicts")
    first = states[0]
    for index, state in enumerate(states[1:], start=1):
        if set(state) != set(first):
            raise ValueError(f"state_dict {index} has other entries than state_dict 0: "
                             f"{sorted(set(state) ^ set(first))[:5]}; average models of one "
                             "architecture")
    averaged = {}
    for key, value in first.items():
        if not value.is_floating_point():
            averaged[key] = value.clone()
            continue
        shapes = {tuple(state[key].shape) for state in states}
        if len(shapes) > 1:
            raise ValueError(f"entry {key!r} has shapes {sorted(shapes)} in the state_dicts; "
                             "average models of one width")
        total = sum(w * state[key].to(value.device, torch.float64)
                    for w, state in zip(weights, states))
        averaged[key] = total.to(value.dtype)
    return averaged


def rebasin_average(model_args: Mapping[str, Any], reference: Mapping[str, torch.Tensor],
                    others: Sequence[Mapping[str, torch.Tensor]], max_iter: int = 100,
                    seed: int = 0) -> StateDict:
    """Align each of ``others`` to ``reference`` and average all of them uniformly.

    Re-estimate BatchNorm statistics of the result before evaluating it.
    """
    spec = permutation_spec(model_args)
    aligned = [apply_permutation(spec, o, weight_matching(spec, reference, o, max_iter, seed))
               for o in others]
    return average_states([reference, *aligned])


# --------------------------------------------------------------------------- barriers


def linear_path_barrier(evaluate: Evaluate, state_a: Mapping[str, torch.Tensor],
                        state_b: Mapping[str, torch.Tensor], n_points: int = 5,
                        higher_is_better: Collection[str] = ("acc",)) -> dict[str, Any]:
    """Metrics along ``(1 - t) a + t b`` at ``n_points`` values of t in [0, 1], and barriers.

    ``evaluate`` maps a state_dict to metrics, e.g. ``{"loss": ..., "acc": ...}`` (see
    :func:`image_classification_evaluator`, which re-estimates BatchNorm at every point).
    Returns ``t``, each metric's curve under its name and ``{metric}_barrier``: the largest
    excess over the straight line between the ends, ``max_t [v(t) - ((1 - t) v(0) + t v(1))]``
    (for metrics in ``higher_is_better`` the largest shortfall), 0 when the path is no worse.
    """
    if n_points < 2:
        raise ValueError(f"n_points must be at least 2 (both ends), got {n_points}")
    ts = np.linspace(0.0, 1.0, n_points)
    curves: dict[str, list[float]] = {}
    for t in ts:
        metrics = evaluate(average_states([state_a, state_b], [1.0 - t, t]))
        for name, value in metrics.items():
            curves.setdefault(name, []).append(float(value))
    result: dict[str, Any] = {"t": ts.tolist(), **curves}
    for name, values in curves.items():
        v = np.asarray(values)
        excess = v - ((1 - ts) * v[0] + ts * v[-1])
        result[f"{name}_barrier"] = float(np.max(-excess if name in higher_is_better else excess))
    return result


def image_classification_evaluator(model_args: Mapping[str, Any], data: Any,
                                   inputs: torch.Tensor, labels: torch.Tensor,
                                   batchnorm_inputs: torch.Tensor | None = None,
                                   device: torch.device | str = "cpu") -> Evaluate:
    """A callback for :func:`linear_path_barrier`: loss and accuracy on ``inputs``/``labels``.

    ``data`` is the zoo's ``ImageData`` (for ``normalize``). With ``batchnorm_inputs`` (e.g.
    the training images, or a subset) BatchNorm statistics are re-estimated on them for every
    state before evaluating, as made weights need. One network is built and reused.
    """
    from zoo_builder.annotating.landscape.batchnorm import recompute_batchnorm_statistics
    from zoo_builder.models import build_model, load_weights
    from zoo_builder.building.workloads import evaluate_classifier

    net = build_model(dict(model_args)).to(device)
    inputs, labels = inputs.to(device), labels.to(device)

    def evaluate(state: StateDict) -> dict[str, float]:
        load_weights(net, state)
        if batchnorm_inputs is not None:
            recompute_batchnorm_statistics(net, batchnorm_inputs, data.normalize)
        loss, acc = evaluate_classifier(net, data, inputs, labels)
        return {"loss": loss, "acc": acc}

    return evaluate


__all__ = ["align", "average_states", "image_classification_evaluator", "linear_path_barrier",
           "rebasin_average", "weight_matching"]
