"""Linear CKA between representations and between the logits of seeds (REFERENCE §3)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from zoo_builder.annotating.landscape.cka import linear_cka, model_logits, seed_pair_cka
from zoo_builder.models import resnet18


def _hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """The sample-space (HSIC) form with the centering matrix H, straight from the paper."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    return np.trace(k @ h @ l @ h) / np.sqrt(np.trace(k @ h @ k @ h) * np.trace(l @ h @ l @ h))


def _representations(n=64, dx=10, dy=7, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=generator)
    y = x @ torch.randn(dx, dy, generator=generator) + torch.randn(n, dy, generator=generator)
    return (x + 3.0).double(), y.double()  # an offset that centring must remove


def test_cka_of_a_representation_with_itself_is_one():
    x, _ = _representations()
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x.float(), x.float().clone()) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    x, y = _representations()
    generator = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(x.shape[1], x.shape[1], generator=generator).double())
    reference = linear_cka(x, y)
    assert 0 < reference < 1
    assert linear_cka(x @ q, y) == pytest.approx(reference, abs=1e-10)
    assert linear_cka(x, 7.5 * y) == pytest.approx(reference, abs=1e-10)
    assert linear_cka(0.01 * (x @ q), y) == pytest.approx(reference, abs=1e-10)
    assert linear_cka(y, x) == pytest.approx(reference, abs=1e-12)


@pytest.mark.parametrize("n,dx,dy", [(64, 10, 7), (12, 30, 20)])  # feature form, Gram form
def test_cka_agrees_with_the_hsic_formula(n, dx, dy):
    x, y = _representations(n, dx, dy)
    expected = _hsic_cka(x.numpy(), y.numpy())
    assert linear_cka(x, y) == pytest.approx(expected, rel=1e-9)


def test_cka_errors_and_degenerate_input():
    with pytest.raises(ValueError, match=r"same samples.*\(10, 3\) and \(9, 3\)"):
        linear_cka(torch.randn(10, 3), torch.randn(9, 3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        linear_cka(torch.randn(1, 3), torch.randn(1, 3))
    assert math.isnan(linear_cka(torch.ones(5, 3), torch.randn(5, 3)))


def test_model_logits_are_eval_mode_and_restore_the_mode():
    torch.manual_seed(0)
    model = resnet18(width=2, num_classes=10, in_channels=1).train()
    model.layer1.eval()  # a mixed mode must come back as it was
    images = torch.rand(20, 1, 8, 8)
    logits = model_logits(model, images, lambda x: 2 * x - 1, batch_size=7)
    assert model.training and not model.layer1.training and model.layer2.training
    with torch.no_grad():
        expected = copy.deepcopy(model).eval()(2 * images - 1)
    assert logits.shape == (20, 10)
    # batches of 7 against one of 20: float32 sums in another order (1e-4 with native kernels)
    assert torch.allclose(logits, expected, atol=1e-4, rtol=1e-4)


def test_seed_pair_cka():
    torch.manual_seed(0)
    first = resnet18(width=2, num_classes=10, in_channels=1)
    second = resnet18(width=2, num_classes=10, in_channels=1)
    images = torch.rand(64, 1, 8, 8)
    assert seed_pair_cka([first, copy.deepcopy(first)], images) == pytest.approx(1.0, abs=1e-9)
    different = seed_pair_cka([first, second], images)
    assert 0.0 <= different < 1.0
    three = seed_pair_cka([first, copy.deepcopy(first), second], images)
    assert three == pytest.approx((1.0 + 2 * different) / 3, abs=1e-9)  # mean over 3 pairs
    with pytest.raises(ValueError, match="at least 2 models"):
        seed_pair_cka([first], images)
