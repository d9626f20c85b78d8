from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from zoo_builder.data import load_dataset
from zoo_builder.data.convection import ConvectionProblem, load_convection


class Exact(nn.Module):
    """u = sin(x - beta t), the exact solution, as a model."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.sin(inputs[:, :1] - self.beta * inputs[:, 1:])


class Constant(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(value))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.value.expand(len(inputs), 1)


class LinearInX(nn.Module):
    """u = x: u_x = 1, u_t = 0."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs[:, :1].clone()


def tanh_mlp(width: int = 20, depth: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(2, width), nn.Tanh()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


@pytest.mark.parametrize("beta", [1.0, 30.0])
def test_exact_solution_has_zero_loss(beta):
    problem = load_convection(beta=beta)
    terms = problem.loss_terms(Exact(beta))
    assert set(terms) == {"residual", "initial", "boundary"}
    for name, value in terms.items():
        assert value.item() < 1e-9 * max(1.0, beta ** 2), name
    assert problem.loss(Exact(beta)).item() < 1e-9 * max(1.0, beta ** 2)
    errors = problem.test_error(Exact(beta))
    assert errors["mse"] < 1e-10 and errors["relative_l2"] < 1e-5
    assert torch.allclose(problem.exact(problem.test_inputs[:, 0], problem.test_inputs[:, 1]),
                          problem.test_target, atol=1e-6 * beta)


def test_constant_model_terms():
    problem = load_convection(beta=2.0)
    terms = problem.loss_terms(Constant(0.0))
    expected = torch.sin(problem.initial[:, 0]).square().mean()
    assert terms["initial"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert 0.3 < expected.item() < 0.7  # sin^2 averages 1/2 over uniform points
    assert terms["residual"].item() == 0.0 and terms["boundary"].item() == 0.0
    shifted = problem.loss_terms(Constant(0.5))["initial"]
    assert shifted.item() == pytest.approx((0.5 - problem.initial_target).square().mean().item(),
                                           rel=1e-6)
    # The relative L2 error of u = 0 is exactly 1.
    assert problem.test_error(Constant(0.0))["relative_l2"] == pytest.approx(1.0)


@pytest.mark.parametrize("beta", [1.0, 5.0])
def test_residual_of_u_equals_x_is_beta_squared(beta):
    problem = load_convection(beta=beta)
    terms = problem.loss_terms(LinearInX())
    assert terms["residual"].item() == pytest.approx(beta ** 2, rel=1e-6)
    # u(0, t) - u(2 pi, t) = -2 pi at every boundary pair.
    assert terms["boundary"].item() == pytest.approx((2 * math.pi) ** 2, rel=1e-6)


def test_points_reproducible_and_in_domain():
    a = load_convection(data_seed=3, collocation_points=500, initial_points=64,
                        boundary_points=32)
    b = load_convection(data_seed=3, collocation_points=500, initial_points=64,
                        boundary_points=32)
    c = load_convection(data_seed=4, collocation_points=500, initial_points=64,
                        boundary_points=32)
    assert torch.equal(a.collocation, b.collocation) and torch.equal(a.initial, b.initial)
    assert torch.equal(a.boundary_low, b.boundary_low)
    assert not torch.equal(a.collocation, c.collocation)
    assert a.collocation.shape == (500, 2) and a.initial.shape == (64, 2)
    assert a.boundary_low.shape == a.boundary_high.shape == (32, 2)
    x, t = a.collocation[:, 0], a.collocation[:, 1]
    assert x.min() >= 0 and x.max() <= 2 * math.pi and t.min() >= 0 and t.max() <= 1
    assert x.max() > 5.5 and t.max() > 0.9  # spread over the domain, not a corner
    assert torch.all(a.initial[:, 1] == 0)
    assert torch.all(a.boundary_low[:, 0] == 0)
    assert torch.allclose(a.boundary_high[:, 0], torch.tensor(2 * math.pi))
    assert torch.equal(a.boundary_low[:, 1], a.boundary_high[:, 1])
    assert a.test_inputs.shape == (256 * 100, 2) and a.test_shape == (100, 256)
    grid = a.test_inputs.reshape(100, 256, 2)
    assert torch.all(grid[:, :, 1] == grid[:, :1, 1])  # t is constant along a row
    # Only beta changes the targets, not the points.
    d = load_convection(beta=7.0, data_seed=3, collocation_points=500, initial_points=64,
                        boundary_points=32)
    assert torch.equal(a.collocation, d.collocation) and d.beta == 7.0


def test_registered_loader_takes_params_options(tmp_path):
    problem = load_dataset("convection", tmp_path, beta=3, collocation_points=10)
    assert isinstance(problem, ConvectionProblem) and problem.beta == 3.0
    assert problem.collocation.shape == (10, 2) and problem.collocation.dtype == torch.float32
    with pytest.raises(ValueError, match="collocation_points"):
        load_convection(collocation_points=0)


def test_float64_and_second_derivatives():
    problem = load_convection(beta=1.0, collocation_points=50, initial_points=20,
                              boundary_points=10).to(dtype=torch.float64)
    assert problem.collocation.dtype == problem.test_target.dtype == torch.float64
    assert problem.loss(Exact(1.0)).item() < 1e-20
    torch.manual_seed(0)
    model = tanh_mlp(width=8).double()
    loss = problem.loss(model)
    assert loss.dtype == torch.float64
    # The residual term can be differentiated twice (Hessian-vector products).
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, create_graph=True)
    vector = [torch.randn_like(p) for p in params]
    hvp = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vector)), params)
    assert all(torch.isfinite(h).all() for h in hvp)
    assert sum(h.abs().sum() for h in hvp) > 0
    # Without gradients the loss still evaluates (u_x, u_t under enable_grad) and is detached.
    with torch.no_grad():
        detached = problem.loss(model)
    assert not detached.requires_grad and detached.item() == pytest.approx(loss.item())


def test_lbfgs_learns_beta_one():
    start = time.perf_counter()
    torch.manual_seed(0)
    problem = load_convection(beta=1.0, collocation_points=200, initial_points=64,
                              boundary_points=32)
    model = tanh_mlp(width=20, depth=2)
    before = problem.test_error(model)["relative_l2"]
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=300, history_size=50,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-9,
                                  tolerance_change=1e-12)

    def closure():
        optimizer.zero_grad()
        loss = problem.loss(model)
        loss.backward()
        return loss

    optimizer.step(closure)
    after = problem.test_error(model)
    assert before > 0.5
    assert after["relative_l2"] < 0.1, after
    assert problem.loss(model).item() < 1e-2
    assert time.perf_counter() - start < 20
