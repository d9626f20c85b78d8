"""Weight-statistics features (Unterthiner et al. 2020), shared by the statistics baselines.

For every weight and bias tensor of a model: mean, variance and the 0/25/50/75/100 %
quantiles. BatchNorm running statistics are buffers, not weights, and are left out.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from wslbench.predictor import ModelSample

STATISTICS = ("mean", "var", "q0", "q25", "q50", "q75", "q100")
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
_QUANTILES = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)


def is_weight(key: str, tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and not key.endswith(BUFFER_SUFFIXES)


def tensor_statistics(tensor: torch.Tensor) -> list[float]:
    values = tensor.detach().reshape(-1).to(torch.float64)
    variance = values.var(unbiased=False) if values.numel() > 1 else values.new_zeros(())
    return [values.mean().item(), variance.item(), *torch.quantile(values, _QUANTILES).tolist()]


def weight_statistics(state_dict: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, list[str]]:
    """The feature vector of one model and the name of each feature."""
    features, names = [], []
    for key, tensor in state_dict.items():
        if is_weight(key, tensor):
            features.extend(tensor_statistics(tensor))
            names.extend(f"{key}:{stat}" for stat in STATISTICS)
    return np.asarray(features, dtype=np.float64), names


def featurize(models: Sequence[ModelSample]) -> tuple[np.ndarray, list[str]]:
    """Stack the statistics of many models; they must share tensor names (one architecture)."""
    rows, reference = [], None
    for model in models:
        features, names = weight_statistics(model.state_dict())
        if reference is None:
            reference = names
        elif names != reference:
            missing = sorted(set(reference) ^ set(names))[:3]
            raise ValueError(f"model '{model.name}' has other tensors than the first model "
                             f"(differences: {missing}); weight statistics need one architecture")
        rows.append(features)
    return np.stack(rows), reference or []
