"""Ensembles of the seeds of a grid point: the accuracy of their averaged softmax outputs.

The ensemble predicts the class of the highest mean probability over its members (output
averaging, as the paper ensembles seeds). Its gain is the ensemble accuracy minus the mean
accuracy of the members on the same inputs, so identical members have a gain of exactly 0
(probabilities are averaged in float64).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from zoo_builder.data.images import ImageData
from zoo_builder.building.workloads import EVAL_BATCH_SIZE


@dataclass(frozen=True)
class EnsembleResult:
    """Accuracy (and mean cross-entropy) of an ensemble and of its members on one set."""

    correct: int
    member_correct: tuple[int, ...]
    n_samples: int
    loss: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.n_samples

    @property
    def member_accuracies(self) -> tuple[float, ...]:
        return tuple(c / self.n_samples for c in self.member_correct)

    @property
    def mean_member_accuracy(self) -> float:
        # from the counts: identical members give exactly the ensemble's accuracy
        return sum(self.member_correct) / (len(self.member_correct) * self.n_samples)

    @property
    def gain(self) -> float:
        """Ensemble accuracy minus the mean member accuracy."""
        return self.accuracy - self.mean_member_accuracy


@torch.no_grad()
def ensemble_accuracy(networks: Sequence[nn.Module], data: ImageData,
                      inputs: torch.Tensor | None = None,
                      labels: torch.Tensor | None = None) -> EnsembleResult:
    """Evaluate the output-averaging ensemble of ``networks`` (put in eval mode) on the test
    set of ``data``, or on stored ``inputs`` and ``labels`` (normalized by ``data.normalize``).

    ``loss`` is the cross-entropy of the averaged probabilities (the ensemble's NLL).
    """
    if not networks:
        raise ValueError("ensemble_accuracy needs at least one network; got none")
    if (inputs is None) != (labels is None):
        raise ValueError("pass both inputs and labels, or neither (for the test set)")
    if inputs is None:
        inputs, labels = data.test_x, data.test_y
    if len(inputs) == 0:
        raise ValueError("ensemble_accuracy got an empty evaluation set")
    for network in networks:
        network.eval()
    correct, member_correct, nll = 0, [0] * len(networks), 0.0
    for start in range(0, len(inputs), EVAL_BATCH_SIZE):
        batch = data.normalize(inputs[start:start + EVAL_BATCH_SIZE])
        target = labels[start:start + EVAL_BATCH_SIZE]
        probabilities = None
        for index, network in enumerate(networks):
            logits = network(batch).float()
            member_correct[index] += int((logits.argmax(dim=1) == target).sum())
            p = F.softmax(logits.double(), dim=1)
            probabilities = p if probabilities is None else probabilities + p
        probabilities = probabilities / len(networks)
        correct += int((probabilities.argmax(dim=1) == target).sum())
        nll += float(F.nll_loss(probabilities.clamp_min(1e-300).log(), target, reduction="sum"))
    return EnsembleResult(correct=correct, member_correct=tuple(member_correct),
                          n_samples=len(inputs), loss=nll / len(inputs))
