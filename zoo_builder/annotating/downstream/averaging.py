"""Weight averaging: a uniform average of checkpoints, and Wise-FT interpolation of two models.

Both act on whole state dicts: every floating-point parameter **and buffer** (BatchNorm
running statistics included; the reference averages only some parameters, which REFERENCE §5
calls a bug). Integer buffers (BatchNorm's ``num_batches_tracked``) are counters, not weights:
they are copied from one end, never averaged. The statistics of an average are not the
average of the statistics, so a model built from these weights is evaluated after
:func:`zoo_builder.annotating.landscape.batchnorm.recompute_batchnorm_statistics` where the protocol says
so (epoch averaging does; the Wise-FT curve of :mod:`zoo_builder.annotating.downstream.transfer` does
not, see there).

The weighted sum itself is :func:`zoo_builder.annotating.downstream.rebasin.average_states` (one
implementation for re-basin, epoch averaging and Wise-FT); it sums in float64 and casts back
to each tensor's dtype, so averaging identical checkpoints gives them back bit for bit and
``interpolate`` at alpha 0 and 1 gives its ends exactly.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from zoo_builder.annotating.downstream.rebasin import average_states

StateDict = Mapping[str, torch.Tensor]


def average_checkpoints(states: Sequence[StateDict]) -> dict[str, torch.Tensor]:
    """The uniform average of ``states`` (one model's checkpoints, oldest first), key by key.

    Floating-point tensors (parameters and buffers) are averaged; integer tensors come from
    the last state (the latest checkpoint).
    """
    if not states:
        raise ValueError("average_checkpoints needs at least one state dict; got none")
    latest_first = list(reversed(states))
    return average_states(latest_first)


def interpolate(theta0: StateDict, theta1: StateDict, alpha: float) -> dict[str, torch.Tensor]:
    """Wise-FT's ``(1 - alpha) * theta0 + alpha * theta1`` for every floating-point tensor.

    Integer buffers come from the nearer end (``theta1`` from alpha 0.5 on), so alpha 0 and 1
    return ``theta0`` and ``theta1`` exactly. ``alpha`` outside [0, 1] extrapolates.
    """
    alpha = float(alpha)
    if alpha >= 0.5:
        return average_states([theta1, theta0], [alpha, 1.0 - alpha])
    return average_states([theta0, theta1], [1.0 - alpha, alpha])
