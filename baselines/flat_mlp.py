"""``flat-mlp``: an MLP on the flattened weights, the plain weight-space baseline.

Every weight and bias tensor (buffers such as BatchNorm running statistics excluded) is
flattened and concatenated in state_dict order, as the MLP baselines on raw weights of
Unterthiner et al. 2020 and of the Model Zoos line of work (Schürholt et al. 2021/2022) do.
All models must therefore share tensor names and shapes; zoos of mixed widths need a
predictor that is indifferent to width (``stat-mlp``, ``gmn``).

Inputs are standardized per coordinate on the training models (with a floor on the std).
A flat vector longer than ``max_input_dim`` is first reduced by a fixed random projection
(a count sketch: each coordinate is added, with a random sign, to one of ``max_input_dim``
buckets, drawn from ``seed``), so the first linear layer stays affordable for models of any
size; the sketch preserves inner products in expectation and costs one pass over the
weights. The standardization then needs its statistics first, so the training models are
read twice, one at a time. The MLP and its training are :mod:`baselines.mlp`'s.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from baselines.mlp import MLPConfig, DEFAULT_GRID, MLPPredictor, scale_floor
from wslbench.zoo_format import is_weight
from wslbench.predictor import ModelSample, NotApplicableError

Layout = list[tuple[str, tuple[int, ...]]]


def weight_layout(state_dict: dict[str, torch.Tensor]) -> Layout:
    """Names and shapes of the weight and bias tensors, in state_dict order."""
    return [(key, tuple(t.shape)) for key, t in state_dict.items() if is_weight(key, t)]


def check_same_layout(reference: str, reference_layout: Layout, name: str, layout: Layout,
                      predictor: str = "flat-mlp", instead: str = "stat-mlp or gmn") -> None:
    """Raise a NotApplicableError naming both models and the first tensor where they differ
    (and ``predictor``, which needs one shape, and what to use ``instead``)."""
    if layout == reference_layout:
        return
    for (key_a, shape_a), (key_b, shape_b) in zip(reference_layout, layout):
        if key_a != key_b:
            difference = f"has tensor '{key_b}' where model '{reference}' has '{key_a}'"
            break
        if shape_a != shape_b:
            difference = (f"has tensor '{key_b}' of shape {list(shape_b)} where model "
                          f"'{reference}' has {list(shape_a)}")
            break
    else:
        difference = (f"has {len(layout)} weight tensors where model '{reference}' has "
                      f"{len(reference_layout)}")
    raise NotApplicableError(f"{predictor} needs models of one shape, but model '{name}' "
                             f"{difference}; use {instead} for zoos of mixed widths")


class CountSketch:
    """A fixed random projection from ``n_in`` to ``n_out`` dims: coordinate i is added with
    sign s(i) to bucket h(i), scaled so a vector of unit-variance entries keeps them."""

    def __init__(self, n_in: int, n_out: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.n_out = n_out
        self.bucket = torch.randint(n_out, (n_in,), generator=generator)
        self.sign = torch.randint(2, (n_in,), generator=generator).double() * 2 - 1
        self.scale = math.sqrt(n_out / n_in)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.n_out, dtype=torch.float64)
        return out.index_add_(0, self.bucket, x * self.sign) * self.scale


class FlatMLP(MLPPredictor):
    """An MLP on the concatenated, standardized weights of fixed-shape models (Unterthiner
    et al. 2020; Schürholt et al. 2021), count-sketched above ``max_input_dim`` dims."""

    name = "flat-mlp"

    def __init__(self, seed: int = 0, grid: Sequence[MLPConfig] = DEFAULT_GRID,
                 max_input_dim: int = 4096):
        super().__init__(seed, grid)
        if max_input_dim < 1:
            raise ValueError(f"max_input_dim must be positive, got {max_input_dim}")
        self.max_input_dim = max_input_dim
        self.sketch: CountSketch | None = None

    def _flat(self, model: ModelSample) -> torch.Tensor:
        state = model.state_dict()
        check_same_layout(self.reference, self.layout, model.name, weight_layout(state))
        return torch.cat([t.detach().reshape(-1).double() for key, t in state.items()
                          if is_weight(key, t)])

    def _rows(self, models: Sequence[ModelSample]):
        return tqdm(models, desc=f"{self.name}: flattening", leave=False, disable=None)

    def fit_features(self, train: Sequence[ModelSample]) -> np.ndarray:
        self.reference, self.layout = train[0].name, weight_layout(train[0].state_dict())
        n_weights = sum(math.prod(shape) for _, shape in self.layout)
        if n_weights <= self.max_input_dim:  # small: MLPPredictor standardizes the rows
            self.sketch = None
            return self.features(train)
        total = torch.zeros(n_weights, dtype=torch.float64)
        squares = torch.zeros(n_weights, dtype=torch.float64)
        for model in self._rows(train):
            flat = self._flat(model)
            total += flat
            squares += flat * flat
        self.mean = total / len(train)
        variance = (squares / len(train) - self.mean ** 2).clamp_(min=0)
        self.std = torch.from_numpy(scale_floor(variance.sqrt().numpy()))
        self.sketch = CountSketch(n_weights, self.max_input_dim, self.seed)
        return self.features(train)

    def features(self, models: Sequence[ModelSample]) -> np.ndarray:
        if self.sketch is None:
            return np.stack([self._flat(m).numpy() for m in models])
        return np.stack([self.sketch((self._flat(m) - self.mean) / self.std).numpy()
                         for m in self._rows(models)])
