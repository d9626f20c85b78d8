"""What the loss-landscape metrics need of each kind of learning problem, in one place.

The Hessian, CKA and mode connectivity are one protocol for every zoo (REFERENCE §3); what
differs between image classification, language modelling and physics-informed regression is
the loss they are measured on, the inputs they are measured over, and what a point on a
connecting curve is judged by. A :class:`LandscapeProblem` supplies exactly those parts for
one workload (``training::workload`` in params.json, as :mod:`zoo_builder.building.workloads`),
and :data:`LANDSCAPE_PROBLEMS` registers one per workload; a new domain registers its own next
to its training workload (docs/new_domain.md). The parts, for image classification; language
modelling; PINNs:

* the Hessian's loss and data: cross-entropy on a seeded image subset; next-token
  cross-entropy on seeded token windows; the PINN's whole training loss (residual + initial +
  boundary) on its training points, "val" on held-out points;
* CKA's representation: logits on held-out images; logits at the last position of seeded val
  windows; the solution u(x, t) at the collocation points;
* curve training: SGD on cross-entropy; SGD on the next-token loss; Adam on the PINN loss;
* a curve point is judged by: train/test error (%) and loss; train/test loss (nats) and
  next-token error (%); the PINN loss, the test MSE and the test relative L2 error;
* normalization at a curve point: BatchNorm statistics recomputed; nothing for GPT (LayerNorm
  keeps no running statistics); nothing for the PINN (no normalization layers).

docs/phases.md section 7 has the same as a table, with the reasons.

Mode connectivity keys are ``curve_mc_<quantity>`` for each quantity a problem measures along
the curve (:attr:`LandscapeProblem.curve_quantities`), with the sign convention of
:func:`~zoo_builder.annotating.landscape.mode_connectivity.curve_connectivity` for all of
them: mc = (v(0) + v(1)) / 2 - v(t*), negative for a barrier. ``curve_mc_*_error`` always
means a prediction error in percent (1 - accuracy for classifiers and next-token prediction);
a PINN has no error of that kind and writes none, its mode connectivity is on its loss
(``curve_mc_train_loss``) and on the relative L2 error of its solution
(``curve_mc_test_rel_l2_error``, a fraction like ``test_rel_l2_error``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from wslbench import zoo_format as fmt
from wslbench.registry import Registry
from zoo_builder.annotating.landscape.hessian import (ClosureHessianOperator, HessianOperator,
                                                      SymmetricOperator, fixed_subset)

#: The Hessian operators take the parts "train" and "val".
PARTS = ("train", "val")


class LandscapeProblem(ABC):
    """The loss, the data and the measurements of the landscape metrics for one workload.

    ``params`` are the model's params.json (for the workload's settings), ``data`` what its
    workload trains on (:func:`zoo_builder.data.load_dataset`), moved to ``device``.
    ``samples`` bounds the Hessian's data (images, token windows; PINNs use all their points)
    and ``cka_samples`` the inputs CKA compares the seeds on; ``seed`` fixes every draw, so
    every model of a zoo is measured on the same inputs.
    """

    #: Quantities measured at every point of a connecting curve, in this order; mode
    #: connectivity of each is stored as ``curve_mc_<quantity>``.
    curve_quantities: tuple[str, ...] = ()
    #: The quantity whose ``curve_mc_`` key marks mode connectivity as done.
    done_quantity: str = "train_error"
    #: Default optimizer ("sgd": momentum 0.9 and the L2 on the curve point, as the reference;
    #: "adam") and learning rate of curve training.
    curve_optimizer: str = "sgd"
    curve_lr: float = 0.1

    def __init__(self, params: dict[str, Any], data: Any, *, samples: int = 200,
                 cka_samples: int = 512, seed: int = 0, device: torch.device | str = "cpu"):
        self.params = params
        self.data = data
        self.samples = int(samples)
        self.cka_samples = int(cka_samples)
        self.seed = int(seed)
        self.device = torch.device(device)

    @abstractmethod
    def hessian_operator(self, model: nn.Module, part: str) -> SymmetricOperator:
        """The Hessian of the loss of ``model`` on the fixed data of ``part`` ("train"/"val")."""

    @abstractmethod
    def representation(self, model: nn.Module) -> Tensor:
        """What CKA compares between seeds: (n, features) outputs on fixed inputs."""

    @abstractmethod
    def curve_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        """Endless training batches for curve training, drawn from ``generator``."""

    @abstractmethod
    def curve_loss(self, model: nn.Module, batch: Any) -> Tensor:
        """The training loss of ``model`` on a curve-training batch."""

    @abstractmethod
    def point_metrics(self, model: nn.Module) -> dict[str, float]:
        """The :attr:`curve_quantities` of a point on the curve (``model`` holds its weights)."""

    def prepare_point(self, model: nn.Module, batch_size: int) -> None:
        """Make a point's weights evaluable (BatchNorm statistics); nothing by default."""

    # Downstream methods (epoch averaging, pruning, ensembling) judge the models they make by
    # the workload's test metrics; the first of :attr:`test_metrics` decides "done" and the
    # ensemble's gain, and :attr:`higher_is_better` says which way it counts.
    test_metrics: tuple[str, ...] = ("acc_test",)
    higher_is_better: bool = True

    def test_performance(self, model: nn.Module) -> dict[str, float]:
        """The :attr:`test_metrics` of ``model`` (weights made, not trained: averaged or
        pruned; evaluated as they are)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no downstream evaluation: implement its "
            "test_performance() to run epoch_average and pruning on this workload, or leave "
            "them out of --metrics")

    def ensemble_performance(self, models: list[nn.Module]) -> dict[str, float]:
        """The :attr:`test_metrics` of the members' averaged outputs (``ensemble_<m>``), the
        members' mean (``ensemble_member_<m>``) and ``ensemble_gain`` on the first metric
        (positive: the ensemble is better)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no ensemble evaluation: implement its "
            "ensemble_performance() to run ensemble on this workload, or leave it out of "
            "--metrics")

    def _ensemble_values(self, ensemble: dict[str, float], members: list[dict[str, float]]
                         ) -> dict[str, float]:
        values: dict[str, float] = {}
        for metric in self.test_metrics:
            values[f"ensemble_{metric}"] = ensemble[metric]
            values[f"ensemble_member_{metric}"] = sum(m[metric] for m in members) / len(members)
        first = self.test_metrics[0]
        gain = values[f"ensemble_{first}"] - values[f"ensemble_member_{first}"]
        values["ensemble_gain"] = gain if self.higher_is_better else -gain
        return values

    @property
    @abstractmethod
    def loss_scale(self) -> float:
        """The loss of a trivial prediction, the unit of curve convergence
        (:class:`~zoo_builder.annotating.landscape.mode_connectivity.CurveTraining`)."""

    @property
    def done_key(self) -> str:
        return f"curve_mc_{self.done_quantity}"

    def _check_part(self, part: str) -> None:
        if part not in PARTS:
            raise ValueError(f"unknown Hessian part {part!r}; expected one of {PARTS}")


def _cpu_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


class ImageClassificationLandscape(LandscapeProblem):
    """Classifiers on images (:class:`~zoo_builder.data.ImageData`): the reference protocol."""

    curve_quantities = ("train_error", "test_error", "train_loss", "test_loss")
    done_quantity = "train_error"

    def __init__(self, params: dict[str, Any], data: Any, *, augment: Any = None, **kwargs):
        """``augment``: an ``Augmentation`` for curve training, True for the zoo's own
        (``augment::`` params), None or False for none."""
        super().__init__(params, data, **kwargs)
        if augment is True:
            from zoo_builder.data.images import Augmentation

            augment = Augmentation(**fmt.params_section(params, "augment"))
        self.augment = augment or None

    @property
    def loss_scale(self) -> float:
        return math.log(self.data.num_classes)  # a uniform guess over the classes

    def hessian_operator(self, model: nn.Module, part: str) -> SymmetricOperator:
        self._check_part(part)
        images, labels = ((self.data.train_x, self.data.train_y) if part == "train"
                          else (self.data.test_x, self.data.test_y))
        x, y = fixed_subset(images, labels, self.samples, self.seed)
        # MathAttention: a ViT's fused attention kernel has no double backward (a no-op for
        # ResNets, which have no attention).
        return HessianOperator(MathAttention(model), self.data.normalize(x), y)

    def representation(self, model: nn.Module) -> Tensor:
        from zoo_builder.annotating.landscape.cka import model_logits

        images, _ = fixed_subset(self.data.test_x, self.data.test_y, self.cka_samples, self.seed)
        return model_logits(model, images, self.data.normalize)

    def curve_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        # Full batches only, as in training: a last batch of a few samples gives BatchNorm
        # wild statistics.
        n = len(self.data.train_x)
        batch_size = min(batch_size, n)
        device = self.data.train_x.device
        while True:
            order = torch.randperm(n, generator=generator, device=device)
            for position in range(n // batch_size):
                index = order[position * batch_size:(position + 1) * batch_size]
                images = self.data.train_x[index]
                if self.augment is not None:
                    images = self.augment(images, generator)
                yield self.data.normalize(images), self.data.train_y[index]

    def curve_loss(self, model: nn.Module, batch: Any) -> Tensor:
        images, labels = batch
        return F.cross_entropy(model(images).float(), labels)

    def prepare_point(self, model: nn.Module, batch_size: int) -> None:
        from zoo_builder.annotating.landscape.batchnorm import recompute_batchnorm_statistics

        recompute_batchnorm_statistics(model, self.data.train_x, self.data.normalize,
                                       batch_size=batch_size)

    def point_metrics(self, model: nn.Module) -> dict[str, float]:
        from zoo_builder.building.workloads import evaluate_classifier

        train_loss, train_acc = evaluate_classifier(model, self.data, self.data.train_x,
                                                    self.data.train_y)
        test_loss, test_acc = evaluate_classifier(model, self.data, self.data.test_x,
                                                  self.data.test_y)
        return {"train_error": 100.0 * (1.0 - train_acc), "test_error": 100.0 * (1.0 - test_acc),
                "train_loss": train_loss, "test_loss": test_loss}


def next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over every position of (B, T, vocab) logits and (B, T) targets."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


class MathAttention(nn.Module):
    """``model`` with scaled-dot-product attention on PyTorch's math kernel: the fused
    (flash, memory-efficient) kernels have no double backward, which Hessian-vector products
    need. The wrapper holds ``model``'s own parameters, in the same order."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> Tensor:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            return self.model(*args)


class LanguageModelingLandscape(LandscapeProblem):
    """Next-token prediction (:class:`~zoo_builder.data.text.TokenData`, nanoGPT-style GPTs).

    * Hessian: of the mean next-token cross-entropy over ``samples`` windows of
      ``model::block_size`` tokens (every position of a window is a prediction), drawn once
      from ``seed`` from the train split ("train") or the val split ("val"). Windows are the
      chunks of the Hessian-vector products; all have the same length, so chunk weights by
      window count are weights by token count.
    * CKA: the logits at the **last position** of ``cka_samples`` seeded val windows (one
      sample per window, each predicted from a full block of context). Logits rather than the
      last hidden states: they are the model's prediction, as the vision protocol's logits
      are; with the tied LM head they are a fixed linear map (the shared token embedding) of
      the normalized last hidden state, which CKA of the hidden states would ignore although
      it is part of what the seeds learned. One position per window keeps the samples nearly
      independent (positions of one window share their context).
    * Curve training: SGD (lr 0.1, momentum 0.9, L2 on the point, the reference's) on the
      next-token loss of random train windows.
    * A curve point is judged on the workload's fixed evaluation windows
      (``training::eval_batches``, as result.json's ``train_loss``/``test_loss``): loss in
      nats (``train_loss``, ``test_loss``: the paper's GPT-2 mode connectivity) and next-token
      error in percent (``train_error``, ``test_error``).
    * Nothing is recomputed at a curve point: GPT's LayerNorm normalizes every token by its
      own statistics and keeps no running statistics, so the BatchNorm step of the vision
      protocol does not apply.
    """

    curve_quantities = ("train_loss", "test_loss", "train_error", "test_error")
    done_quantity = "train_loss"

    def __init__(self, params: dict[str, Any], data: Any, **kwargs):
        super().__init__(params, data, **kwargs)
        from zoo_builder.building.workloads import LanguageModeling

        self.block_size = int(params["model::block_size"])
        self.workload = LanguageModeling(params, data, self.device)
        self.chunk = max(1, 8192 // self.block_size)  # windows per Hessian-vector chunk

    @property
    def loss_scale(self) -> float:
        return math.log(self.data.vocab_size)  # a uniform guess over the vocabulary

    def windows(self, split: str, n: int, seed: int) -> tuple[Tensor, Tensor]:
        """``n`` windows of ``split`` (inputs, targets), the same for the same seed."""
        return self.data.batch(split, n, self.block_size, _cpu_generator(seed))

    def hessian_operator(self, model: nn.Module, part: str) -> SymmetricOperator:
        self._check_part(part)
        tokens, targets = self.windows(part, self.samples, self.seed)
        return HessianOperator(MathAttention(model), tokens, targets, chunk_size=self.chunk,
                               loss_fn=next_token_loss)

    @torch.no_grad()
    def representation(self, model: nn.Module) -> Tensor:
        tokens, _ = self.windows("val", self.cka_samples, self.seed)
        was_training = model.training
        model.eval()
        try:
            return torch.cat([model(batch)[:, -1, :].float()
                              for batch in tokens.split(self.chunk)])
        finally:
            model.train(was_training)

    def curve_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        while True:
            yield self.data.batch("train", batch_size, self.block_size, generator)

    def curve_loss(self, model: nn.Module, batch: Any) -> Tensor:
        tokens, targets = batch
        return next_token_loss(model(tokens), targets)

    test_metrics = ("acc_test", "loss_test")

    def test_performance(self, model: nn.Module) -> dict[str, float]:
        loss, acc = self.workload.evaluate(model, "val")
        return {"acc_test": acc, "loss_test": loss}

    @torch.no_grad()
    def ensemble_performance(self, models: list[nn.Module]) -> dict[str, float]:
        """Next-token probabilities averaged over the members (float64), on the workload's
        fixed val windows: accuracy of their argmax and cross-entropy of the average."""
        generator = torch.Generator(device=self.device).manual_seed(self.workload.eval_seed)
        eval_batch = max(1, min(self.workload.batch_size, 16384 // self.block_size))
        for model in models:
            model.eval()
        loss_sum, correct, count = 0.0, 0, 0
        member_loss, member_correct = [0.0] * len(models), [0] * len(models)
        for _ in range(self.workload.eval_batches):
            tokens, targets = self.data.batch("val", eval_batch, self.block_size, generator)
            probabilities = []
            for index, model in enumerate(models):
                logits = model(tokens).double()
                member_loss[index] += F.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                                      reduction="sum").item()
                member_correct[index] += (logits.argmax(-1) == targets).sum().item()
                probabilities.append(logits.softmax(-1))
            mean = torch.stack(probabilities).mean(0)
            picked = mean.gather(-1, targets[..., None]).clamp_min(1e-300)
            loss_sum += -picked.log().sum().item()
            correct += (mean.argmax(-1) == targets).sum().item()
            count += targets.numel()
        members = [{"acc_test": c / count, "loss_test": loss / count}
                   for c, loss in zip(member_correct, member_loss)]
        return self._ensemble_values({"acc_test": correct / count, "loss_test": loss_sum / count},
                                     members)

    def point_metrics(self, model: nn.Module) -> dict[str, float]:
        train_loss, train_acc = self.workload.evaluate(model, "train")
        test_loss, test_acc = self.workload.evaluate(model, "val")
        return {"train_loss": train_loss, "test_loss": test_loss,
                "train_error": 100.0 * (1.0 - train_acc), "test_error": 100.0 * (1.0 - test_acc)}


class PhysicsInformedLandscape(LandscapeProblem):
    """A PINN on its PDE problem (:class:`~zoo_builder.data.convection.ConvectionProblem`).

    * Hessian: of exactly the training loss, residual + initial + boundary MSE on the
      training points ("train"); "val" is the same loss on held-out points, drawn as the
      training points are but from ``data_seed + 1``. The full loss is one graph
      (:class:`~zoo_builder.annotating.landscape.hessian.ClosureHessianOperator`): its residual
      differentiates the network with respect to its inputs.
    * CKA: the solutions u(x, t) of the seeds at the training collocation points (all of
      them). With one output, linear CKA is the squared correlation of the two solutions over
      the points.
    * Curve training: full-batch Adam (lr 1e-3) on the training loss. The zoo trains with
      L-BFGS, whose line search has no stochastic counterpart along a curve, and SGD at the
      reference's lr 0.1 diverges on the stiff residual of large beta (its curvature grows
      like beta^2); Adam at 1e-3 is the usual first-order PINN optimizer.
    * A curve point is judged by ``train_loss`` (the PINN loss), ``test_loss`` (MSE to the
      exact solution on the test grid) and ``test_rel_l2_error`` (relative L2 error of the
      solution, the zoo's performance metric, a fraction).
    * No normalization layers, nothing to recompute.
    """

    curve_quantities = ("train_loss", "test_loss", "test_rel_l2_error")
    done_quantity = "train_loss"
    curve_optimizer = "adam"
    curve_lr = 1e-3

    def __init__(self, params: dict[str, Any], data: Any, **kwargs):
        super().__init__(params, data, **kwargs)
        self._held_out = None

    @property
    def loss_scale(self) -> float:
        """0.5: the loss of u = 0 (the initial condition's mean sin^2 x), the trivial solution
        hard convection problems fall into."""
        return 0.5

    @property
    def held_out(self) -> Any:
        """The same problem on points drawn from ``data_seed + 1``."""
        if self._held_out is None:
            from zoo_builder.data import dataset_options, load_dataset

            options = dataset_options(self.params)
            options["data_seed"] = int(options.get("data_seed", 0)) + 1
            held_out = load_dataset(self.params.get("dataset::name", "convection"), **options)
            self._held_out = held_out.to(self.device)
        return self._held_out

    def hessian_operator(self, model: nn.Module, part: str) -> SymmetricOperator:
        self._check_part(part)
        problem = self.data if part == "train" else self.held_out
        return ClosureHessianOperator(model, problem.loss)

    @torch.no_grad()
    def representation(self, model: nn.Module) -> Tensor:
        was_training = model.training
        model.eval()
        try:
            return model(self.data.collocation).float()
        finally:
            model.train(was_training)

    def curve_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        while True:
            yield None  # full batch: the loss holds every training point

    def curve_loss(self, model: nn.Module, batch: Any) -> Tensor:
        return self.data.loss(model)

    test_metrics = ("rel_l2_test",)
    higher_is_better = False

    def test_performance(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        return {"rel_l2_test": float(self.data.test_error(model)["relative_l2"])}

    @torch.no_grad()
    def ensemble_performance(self, models: list[nn.Module]) -> dict[str, float]:
        """The members' solutions averaged on the test grid: its relative L2 error."""
        target = self.data.test_target
        solutions = [model.eval()(self.data.test_inputs).reshape(-1) for model in models]
        members = [{"rel_l2_test": float((u - target).norm() / target.norm())}
                   for u in solutions]
        mean = torch.stack(solutions).mean(0)
        ensemble = {"rel_l2_test": float((mean - target).norm() / target.norm())}
        return self._ensemble_values(ensemble, members)

    def point_metrics(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        with torch.enable_grad():  # the residual needs input derivatives
            train_loss = float(self.data.loss(model).item())
        test = self.data.test_error(model)
        return {"train_loss": train_loss, "test_loss": float(test["mse"]),
                "test_rel_l2_error": float(test["relative_l2"])}


#: workload name (``training::workload``) -> its landscape problem.
LANDSCAPE_PROBLEMS: Registry[type[LandscapeProblem]] = Registry("landscape problem")
LANDSCAPE_PROBLEMS.register("image_classification", ImageClassificationLandscape)
LANDSCAPE_PROBLEMS.register("language_modeling", LanguageModelingLandscape)
LANDSCAPE_PROBLEMS.register("physics_informed", PhysicsInformedLandscape)


def workload_of(params: dict[str, Any]) -> str:
    """The workload a model names (published zoos name none: image classification)."""
    return params.get("training::workload", "image_classification")


def make_problem(params: dict[str, Any], data: Any, **kwargs) -> LandscapeProblem:
    """The landscape problem of the workload ``params`` name, on ``data``."""
    cls = LANDSCAPE_PROBLEMS.get(workload_of(params))
    if cls is not ImageClassificationLandscape:
        kwargs.pop("augment", None)
    return cls(params, data, **kwargs)
