"""Re-estimate BatchNorm running statistics for weights that were never trained as they are.

Weights made rather than trained (a point on a connecting curve, an average of checkpoints or
of aligned seeds) carry running statistics that do not match their activations: the mean and
variance of one end model, or an average of statistics, which is not the statistics of the
average. Every such model is evaluated only after its BatchNorm statistics are recomputed on
training data, as the reference protocols do (REFERENCE §3 and §5).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

Normalize = Callable[[torch.Tensor], torch.Tensor]


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers (any dimension, SyncBatchNorm too) that keep running statistics."""
    return [module for module in model.modules()
            if isinstance(module, _BatchNorm) and module.track_running_stats
            and module.running_mean is not None]


@torch.no_grad()
def recompute_batchnorm_statistics(
    model: nn.Module,
    images: torch.Tensor,
    normalize: Normalize | None = None,
    batch_size: int = 256,
) -> None:
    """Replace every BatchNorm's running mean and variance by their average over ``images``.

    The running statistics are reset and the images are forwarded once in train mode (so each
    layer sees the activations that the train-mode network above it produces), in batches of
    about ``batch_size``. Each batch's statistics enter a cumulative average weighted by the
    batch's size: momentum=None in PyTorch weights batches equally, so an uneven last batch
    would count too much; here the running mean is exactly the mean over all images, and the
    running variance is the size-weighted mean of the (unbiased) per-batch variances, which
    is what momentum=None gives for equal batches. The images are split into near-equal
    batches, so no batch holds a single sample (which train-mode BatchNorm refuses at 1x1
    spatial size). Every layer's momentum and every module's train/eval mode are restored.
    ``images`` are raw model inputs passed through ``normalize`` (e.g. ``ImageData.normalize``)
    and moved to the model's device batch by batch. A model without BatchNorm is left as it is.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return
    if len(images) == 0:
        raise ValueError("recompute_batchnorm_statistics got no images; pass the training "
                         "images whose statistics the BatchNorm layers should hold")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = next(model.parameters(), layers[0].running_mean).device
    modes = {module: module.training for module in model.modules()}
    momenta = {layer: layer.momentum for layer in layers}
    try:
        for layer in layers:
            layer.reset_running_stats()
        model.train()
        seen = 0
        n_batches = -(-len(images) // batch_size)
        for batch in torch.tensor_split(images, n_batches):
            for layer in layers:
                # running = (1 - m) running + m batch_stat with m = b / (seen + b) is the
                # cumulative average over samples.
                layer.momentum = len(batch) / (seen + len(batch))
            batch = batch.to(device)
            model(normalize(batch) if normalize is not None else batch)
            seen += len(batch)
    finally:
        for layer, momentum in momenta.items():
            layer.momentum = momentum
        for module, training in modes.items():
            module.training = training
