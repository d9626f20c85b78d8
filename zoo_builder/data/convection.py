"""The 1D convection problem of the SciML (PINN) zoo (Krishnapriyan et al. 2021).

    u_t + beta u_x = 0,   x in [0, 2 pi], t in [0, 1],
    u(x, 0) = sin x,      u(0, t) = u(2 pi, t)   (periodic),

with the exact solution u = sin(x - beta t). A physics-informed network u(x, t) is trained on
the sum of three mean squared errors: the PDE residual at interior collocation points, the
initial condition, and the periodic boundary condition. Larger beta makes the residual term
stiffer and the problem harder (the zoo's "load"). All points are drawn once from
``data_seed``, so every model of a zoo sees the same problem; models take (N, 2) inputs [x, t].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn

X_MAX = 2 * math.pi
T_MAX = 1.0
#: The evaluation grid: this many x values (0 to 2 pi) by this many t values (0 to 1).
TEST_GRID_X = 256
TEST_GRID_T = 100


@dataclass
class ConvectionProblem:
    """Training points, their targets and a test grid with the exact solution.

    Every point tensor is (N, 2) with columns [x, t]; targets are (N,).
    """

    beta: float
    #: Interior points where the PDE residual is penalized.
    collocation: torch.Tensor
    #: Points (x, 0) and the initial condition sin x there.
    initial: torch.Tensor
    initial_target: torch.Tensor
    #: Boundary points (0, t) and (2 pi, t), pairwise at the same t.
    boundary_low: torch.Tensor
    boundary_high: torch.Tensor
    #: The test grid, flattened t-major (reshape to ``test_shape`` = (t, x) to plot it).
    test_inputs: torch.Tensor
    test_target: torch.Tensor
    test_shape: tuple[int, int] = (TEST_GRID_T, TEST_GRID_X)
    name: str = "convection"

    def exact(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The exact solution sin(x - beta t)."""
        return torch.sin(x - self.beta * t)

    def loss_terms(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The three MSE terms: "residual" (u_t + beta u_x at the collocation points),
        "initial" (u(x, 0) - sin x) and "boundary" (u(0, t) - u(2 pi, t)).

        Derivatives come from autograd with ``create_graph`` while gradients are enabled, so
        the loss can be differentiated again (L-BFGS, Hessians). The model must treat the
        points of a batch independently (no batch norm): u_x and u_t are read off the gradient
        of sum(u).
        """
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            points = self.collocation.detach().requires_grad_(True)
            u = model(points).reshape(-1)
            # materialize_grads: a model that ignores its input (a constant) has u_x = u_t = 0.
            (grad,) = torch.autograd.grad(u.sum(), points, create_graph=create_graph,
                                          materialize_grads=True)
        u_x, u_t = grad[:, 0], grad[:, 1]
        residual = (u_t + self.beta * u_x).square().mean()
        initial = (model(self.initial).reshape(-1) - self.initial_target).square().mean()
        boundary = (model(self.boundary_low).reshape(-1)
                    - model(self.boundary_high).reshape(-1)).square().mean()
        return {"residual": residual, "initial": initial, "boundary": boundary}

    def loss(self, model: nn.Module) -> torch.Tensor:
        """The training loss: residual + initial + boundary MSE."""
        return sum(self.loss_terms(model).values())

    @torch.no_grad()
    def test_error(self, model: nn.Module) -> dict[str, float]:
        """Error to the exact solution on the test grid: "mse" and "relative_l2"
        (||u - u*|| / ||u*||, the metric Krishnapriyan et al. report)."""
        error = model(self.test_inputs).reshape(-1) - self.test_target
        return {"mse": error.square().mean().item(),
                "relative_l2": (error.norm() / self.test_target.norm()).item()}

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> "ConvectionProblem":
        """The problem with every tensor on ``device`` and/or in floating ``dtype``."""
        moved = {f.name: getattr(self, f.name).to(device=device, dtype=dtype)
                 for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        problem = replace(self, **moved)
        if dtype is not None:
            # The boundary x and the targets are analytic: recompute them (in float64) for the
            # points as they are stored now, so that the exact solution has zero loss at every
            # precision (float32 rounds 2 pi, and float64 cannot undo that).
            problem.boundary_high = problem.boundary_high.clone()
            problem.boundary_high[:, 0] = X_MAX
            points = problem.initial.double()
            problem.initial_target = torch.sin(points[:, 0]).to(dtype)
            points = problem.test_inputs.double()
            problem.test_target = problem.exact(points[:, 0], points[:, 1]).to(dtype)
        return problem


def load_convection(data_root: Path | None = None, beta: float = 1.0,
                    collocation_points: int = 1000, initial_points: int = 256,
                    boundary_points: int = 100, data_seed: int = 0) -> ConvectionProblem:
    """The convection problem for ``beta``, its points drawn uniformly from ``data_seed``
    (float32; ``.to(dtype=torch.float64)`` for double precision). ``data_root`` is unused:
    the data are analytic."""
    for name, count in (("collocation_points", collocation_points),
                        ("initial_points", initial_points), ("boundary_points", boundary_points)):
        if count < 1:
            raise ValueError(f"convection: {name} must be at least 1, got {count}")
    generator = torch.Generator().manual_seed(data_seed)

    def uniform(count: int, high: float) -> torch.Tensor:
        return torch.rand(count, generator=generator, dtype=torch.float64) * high

    collocation = torch.stack([uniform(collocation_points, X_MAX),
                               uniform(collocation_points, T_MAX)], dim=1)
    initial_x = uniform(initial_points, X_MAX)
    initial = torch.stack([initial_x, torch.zeros_like(initial_x)], dim=1)
    boundary_t = uniform(boundary_points, T_MAX)
    boundary_low = torch.stack([torch.zeros_like(boundary_t), boundary_t], dim=1)
    boundary_high = torch.stack([torch.full_like(boundary_t, X_MAX), boundary_t], dim=1)
    grid_t, grid_x = torch.meshgrid(torch.linspace(0, T_MAX, TEST_GRID_T, dtype=torch.float64),
                                    torch.linspace(0, X_MAX, TEST_GRID_X, dtype=torch.float64),
                                    indexing="ij")
    test_inputs = torch.stack([grid_x.reshape(-1), grid_t.reshape(-1)], dim=1)

    problem = ConvectionProblem(
        beta=float(beta), collocation=collocation, initial=initial,
        initial_target=torch.sin(initial_x), boundary_low=boundary_low,
        boundary_high=boundary_high, test_inputs=test_inputs,
        test_target=torch.sin(test_inputs[:, 0] - beta * test_inputs[:, 1]))
    return problem.to(dtype=torch.float32)
