"""Global unstructured magnitude pruning, and fine-tuning that keeps the pruned weights at zero.

What is pruned: by default every tensor of two or more dimensions whose name ends in
``weight``, i.e. the kernels of convolutional and linear layers (the ResNets' convolutions
and classifier, the ViTs' patch embedding, attention and MLP projections and head). Never
biases, normalization scales and shifts (1-D), BatchNorm buffers, or parameters not named
``weight`` (a ViT's class token and position embedding). An ``nn.Embedding`` table is also
a 2-D ``weight``; pass ``prunable=prunable_weights(network)`` to leave embeddings out (only
convolution and linear modules).

How: one threshold over all prunable weights together (global, not per layer). Exactly
``k = round(sparsity * n)`` weights are zeroed (Python's round, half to even), where ``n``
counts the prunable weights: the ``k`` smallest in absolute value. Ties are broken by
position, so the result is deterministic: the prunable tensors are laid end to end in
state-dict order, each flattened in row-major order, and among equal magnitudes the earlier
position is pruned first (a stable sort).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Callable

import torch
from torch import nn

from zoo_builder.data.images import ImageData

StateDict = Mapping[str, torch.Tensor]


def default_prunable(name: str, tensor: torch.Tensor) -> bool:
    """The default rule: floating-point tensors of >= 2 dimensions named ``...weight``."""
    return name.endswith("weight") and tensor.dim() >= 2 and tensor.is_floating_point()


def prunable_weights(network: nn.Module) -> list[str]:
    """State-dict names of the weights of the convolution and linear modules of ``network``."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [f"{name}.weight" if name else "weight" for name, module in network.named_modules()
            if isinstance(module, kinds)]


def global_magnitude_prune(
    state_dict: StateDict, sparsity: float,
    prunable: Collection[str] | Callable[[str, torch.Tensor], bool] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Zero the ``round(sparsity * n)`` smallest-magnitude prunable weights of ``state_dict``.

    ``prunable`` is a collection of names, a predicate ``(name, tensor) -> bool``, or None for
    :func:`default_prunable`. Returns the pruned state dict (copies; the input is not changed)
    and the masks: one bool tensor per prunable name, True where the weight is kept.
    """
    if not 0.0 <= float(sparsity) <= 1.0 or math.isnan(float(sparsity)):
        raise ValueError(f"sparsity must lie in [0, 1] (the fraction of prunable weights to "
                         f"zero); got {sparsity}")
    if prunable is None:
        names = [k for k, v in state_dict.items() if default_prunable(k, v)]
    elif callable(prunable):
        names = [k for k, v in state_dict.items() if prunable(k, v)]
    else:
        wanted = set(prunable)
        unknown = sorted(wanted - set(state_dict))
        if unknown:
            raise KeyError(f"prunable names not in the state dict: {unknown[:5]}; "
                           f"the state dict has e.g. {list(state_dict)[:5]}")
        names = [k for k in state_dict if k in wanted]
    if not names:
        raise ValueError("no prunable tensor in the state dict (none matched the prunable rule); "
                         f"its keys are e.g. {list(state_dict)[:5]}")
    magnitudes = torch.cat([state_dict[k].detach().abs().flatten().float().cpu() for k in names])
    k = round(float(sparsity) * magnitudes.numel())
    keep = torch.ones(magnitudes.numel(), dtype=torch.bool)
    if k > 0:
        order = torch.sort(magnitudes, stable=True).indices
        keep[order[:k]] = False
    pruned = {key: value.detach().clone() for key, value in state_dict.items()}
    masks: dict[str, torch.Tensor] = {}
    offset = 0
    for key in names:
        tensor = pruned[key]
        mask = keep[offset:offset + tensor.numel()].view(tensor.shape).to(tensor.device)
        offset += tensor.numel()
        tensor.masked_fill_(~mask, 0.0)
        masks[key] = mask
    return pruned, masks


@torch.no_grad()
def apply_masks(network: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights of ``network`` in place (masks of :func:`global_magnitude_prune`)."""
    state = network.state_dict(keep_vars=True)
    for name, mask in masks.items():
        state[name].masked_fill_(~mask.to(state[name].device), 0.0)


def sparsity_of(state_dict: StateDict, masks: Mapping[str, torch.Tensor]) -> float:
    """The fraction of the masked weights of ``state_dict`` that are exactly zero."""
    zeros = sum(int((state_dict[name] == 0).sum()) for name in masks)
    total = sum(mask.numel() for mask in masks.values())
    return zeros / total


def finetune_pruned(network: nn.Module, masks: Mapping[str, torch.Tensor], data: ImageData, *,
                    epochs: int, lr: float, batch_size: int = 64, seed: int = 0) -> nn.Module:
    """Fine-tune a pruned ``network`` in place with the mask fixed: the pruned weights are set
    back to zero after every optimizer step (momentum and weight decay would move them)."""
    from zoo_builder.annotating.downstream.transfer import finetune_classifier

    apply_masks(network, masks)
    return finetune_classifier(network, data, epochs=epochs, lr=lr, batch_size=batch_size,
                               seed=seed, after_step=lambda net: apply_masks(net, masks))
