"""Representation similarity of seeds: linear CKA between their logits (REFERENCE §3).

A grid point's ``representation_similarity`` is the mean linear CKA (Kornblith et al. 2019)
between the logits of every pair of its models (the seeds), on one fixed batch of held-out
inputs. Linear CKA is 1 for identical representations and invariant to orthogonal
transforms and isotropic scaling of either one, so it compares what two networks compute
rather than how their output units happen to be arranged.
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import torch
from torch import nn

Normalize = Callable[[torch.Tensor], torch.Tensor]


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two representations of the same samples, (n, features) each.

    Columns are centred and the feature-space form ||Yᵀ X||_F² / (||Xᵀ X||_F ||Yᵀ Y||_F) is
    computed in float64 (the sums of squares of logits lose digits in float32). When a
    representation has more features than samples the equal sample-space (Gram matrix) form
    is used instead, which is cheaper there. Trailing dimensions are flattened into features.
    A representation that is constant over the samples has no CKA: the result is NaN.
    """
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"linear_cka needs the same samples in both representations (n on dim 0); got "
            f"shapes {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] < 2:
        raise ValueError(f"linear_cka needs at least 2 samples, got {x.shape[0]}")
    x = x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64)
    y = y.detach().reshape(y.shape[0], -1).to("cpu", torch.float64)
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    if max(x.shape[1], y.shape[1]) <= x.shape[0]:
        cross = torch.linalg.matrix_norm(y.T @ x) ** 2
        norm_x = torch.linalg.matrix_norm(x.T @ x)
        norm_y = torch.linalg.matrix_norm(y.T @ y)
    else:
        gram_x, gram_y = x @ x.T, y @ y.T
        cross = (gram_x * gram_y).sum()
        norm_x, norm_y = torch.linalg.matrix_norm(gram_x), torch.linalg.matrix_norm(gram_y)
    denominator = norm_x * norm_y
    if denominator == 0:
        return float("nan")
    return float(cross / denominator)


@torch.no_grad()
def model_logits(model: nn.Module, images: torch.Tensor, normalize: Normalize | None = None,
                 batch_size: int = 1024) -> torch.Tensor:
    """The model's logits on ``images`` in eval mode (its previous mode is restored after).

    ``images`` are raw inputs passed through ``normalize`` (e.g. ``ImageData.normalize``) and
    moved to the model's device batch by batch; the logits come back on that device.
    """
    device = next(model.parameters()).device
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        outputs = []
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(device)
            outputs.append(model(normalize(batch) if normalize is not None else batch).float())
    finally:
        for module, training in modes.items():
            module.training = training
    return torch.cat(outputs)


def seed_pair_cka(models: Sequence[nn.Module], images: torch.Tensor,
                  normalize: Normalize | None = None) -> float:
    """Mean linear CKA between the logits of every pair of ``models`` on the same images.

    This is ``representation_similarity`` of one grid point: pass its seeds and one fixed
    batch of held-out inputs (the reference uses about 10 batches x 128).
    """
    if len(models) < 2:
        raise ValueError(
            f"seed_pair_cka needs at least 2 models (the seeds of one grid point), got "
            f"{len(models)}"
        )
    logits = [model_logits(model, images, normalize) for model in models]
    values = [linear_cka(a, b) for a, b in itertools.combinations(logits, 2)]
    return float(sum(values) / len(values))
