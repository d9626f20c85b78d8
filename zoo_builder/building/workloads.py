"""Workloads: what the trainer needs to know about one kind of learning problem.

:func:`zoo_builder.building.train.train_trial` is one loop for every zoo; a workload supplies the
parts that differ between image classification, language modelling and physics-informed
regression: the optimizer steps of an epoch, the loss of a batch, how to split a batch for
gradient accumulation, and the metrics written to result.json after every epoch (always
``train_loss``, ``test_loss`` and, where accuracy means something, ``train_acc`` and
``test_acc``). A zoo names its workload in params.json (``training::workload``); published
zoos, which do not, are image classification.

A new domain registers its own workload in :data:`WORKLOADS` (see docs/new_domain.md).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from wslbench import zoo_format as fmt
from wslbench.registry import Registry

#: Batch size of evaluation passes (no gradients, so larger than most training batches).
EVAL_BATCH_SIZE = 1024


class Workload(ABC):
    """One kind of learning problem, bound to a model's params and its (device-resident) data."""

    #: Whether bf16 autocast may run this workload's forward passes (PINN derivatives need fp32).
    supports_autocast: bool = True

    def __init__(self, params: dict[str, Any], data: Any, device: torch.device):
        self.params = params
        self.data = data
        self.device = device
        self.batch_size = int(params.get("training::batchsize", 1))
        self.autocast: contextlib.AbstractContextManager = contextlib.nullcontext()

    def use_autocast(self, dtype: torch.dtype | None) -> None:
        """Run forward passes under autocast to ``dtype`` (None: full precision)."""
        if dtype is not None and self.supports_autocast:
            self.autocast = torch.autocast(self.device.type, dtype=dtype)

    def prepare_model(self, model: nn.Module, channels_last: bool) -> nn.Module:
        """Move the model to the device (and memory layout) this workload trains it in."""
        return model.to(self.device)

    @property
    @abstractmethod
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch (the unit of result.json lines and checkpoints)."""

    @abstractmethod
    def epoch_batches(self, generator: torch.Generator) -> Iterator[Any]:
        """The batches of one epoch, one per optimizer step."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Mean training loss of ``model`` on ``batch`` (augmented where the workload augments)."""

    def split(self, batch: Any, size: int) -> list[Any]:
        """``batch`` cut into micro-batches of at most ``size`` examples (gradient accumulation)."""
        return [batch]

    @staticmethod
    def batch_length(batch: Any) -> int:
        return 1

    @abstractmethod
    def metrics(self, model: nn.Module) -> dict[str, float]:
        """The metrics of one result.json line, measured with ``model`` in eval mode."""


class ImageClassification(Workload):
    """Classification of images (or any tensors) with cross-entropy and batched augmentation.

    Every step sees a full, shuffled batch; the remainder of an epoch is dropped (a last batch
    of a few samples gives BatchNorm wild statistics and derails training), and a batch size
    above the training set size means full-batch steps. Metrics are measured in eval mode on
    the clean train and test sets.
    """

    def __init__(self, params: dict[str, Any], data: Any, device: torch.device):
        super().__init__(params, data, device)
        from zoo_builder.data.images import Augmentation

        self.augment = Augmentation(**fmt.params_section(params, "augment"))
        self.batch_size = min(self.batch_size, len(data.train_x))
        self.memory_format = torch.contiguous_format

    def prepare_model(self, model: nn.Module, channels_last: bool) -> nn.Module:
        if channels_last and self.data.train_x.dim() == 4:
            self.memory_format = torch.channels_last
        return model.to(self.device, memory_format=self.memory_format)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data.train_x) // self.batch_size

    def epoch_batches(self, generator: torch.Generator) -> Iterator[Any]:
        order = torch.randperm(len(self.data.train_x), generator=generator, device=self.device)
        for step in range(self.steps_per_epoch):
            index = order[step * self.batch_size:(step + 1) * self.batch_size]
            images = self.data.normalize(self.augment(self.data.train_x[index], generator))
            yield images.contiguous(memory_format=self.memory_format), self.data.train_y[index]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        images, labels = batch
        with self.autocast:
            logits = model(images)
        return F.cross_entropy(logits.float(), labels)

    def split(self, batch: Any, size: int) -> list[Any]:
        images, labels = batch
        return list(zip(images.split(size), labels.split(size)))

    @staticmethod
    def batch_length(batch: Any) -> int:
        return len(batch[1])

    def metrics(self, model: nn.Module) -> dict[str, float]:
        train_loss, train_acc = self.evaluate(model, self.data.train_x, self.data.train_y)
        test_loss, test_acc = self.evaluate(model, self.data.test_x, self.data.test_y)
        return {"train_loss": train_loss, "train_acc": train_acc,
                "test_loss": test_loss, "test_acc": test_acc}

    def evaluate(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[float, float]:
        return evaluate_classifier(model, self.data, inputs, labels, self.autocast,
                                   self.memory_format)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, data: Any, inputs: torch.Tensor, labels: torch.Tensor,
                        autocast: contextlib.AbstractContextManager = contextlib.nullcontext(),
                        memory_format: torch.memory_format = torch.contiguous_format,
                        ) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (put in eval mode) on a labelled set of
    stored inputs, normalized by ``data.normalize``."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(inputs), EVAL_BATCH_SIZE):
        batch = data.normalize(inputs[start:start + EVAL_BATCH_SIZE])
        with autocast:
            logits = model(batch.contiguous(memory_format=memory_format)).float()
        target = labels[start:start + EVAL_BATCH_SIZE]
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(dim=1) == target).sum().item()
    return loss_sum / len(inputs), correct / len(inputs)


class LanguageModeling(Workload):
    """Next-token prediction on a token stream (nanoGPT style).

    An epoch is ``training::steps_per_epoch`` optimizer steps on random windows of
    ``model::block_size`` tokens; ``training::batchsize`` counts sequences. Metrics are the
    mean cross-entropy and next-token accuracy on ``training::eval_batches`` fixed batches of
    the train and validation splits (the same windows after every epoch, so the curves are
    comparable); the validation split is the ``test`` of result.json.
    """

    def __init__(self, params: dict[str, Any], data: Any, device: torch.device):
        super().__init__(params, data, device)
        self.block_size = int(params["model::block_size"])
        self.eval_batches = int(params.get("training::eval_batches", 10))
        self.eval_seed = int(params.get("training::eval_seed", 1234))

    @property
    def steps_per_epoch(self) -> int:
        return int(self.params["training::steps_per_epoch"])

    def epoch_batches(self, generator: torch.Generator) -> Iterator[Any]:
        for _ in range(self.steps_per_epoch):
            yield self.data.batch("train", self.batch_size, self.block_size, generator)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        tokens, targets = batch
        with self.autocast:
            logits = model(tokens)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    def split(self, batch: Any, size: int) -> list[Any]:
        tokens, targets = batch
        return list(zip(tokens.split(size), targets.split(size)))

    @staticmethod
    def batch_length(batch: Any) -> int:
        return len(batch[0])

    def metrics(self, model: nn.Module) -> dict[str, float]:
        train_loss, train_acc = self.evaluate(model, "train")
        test_loss, test_acc = self.evaluate(model, "val")
        return {"train_loss": train_loss, "train_acc": train_acc,
                "test_loss": test_loss, "test_acc": test_acc}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> tuple[float, float]:
        model.eval()
        generator = torch.Generator(device=self.device).manual_seed(self.eval_seed)
        eval_batch = max(1, min(self.batch_size, EVAL_BATCH_SIZE * 16 // self.block_size))
        loss_sum, correct, count = 0.0, 0, 0
        for _ in range(self.eval_batches):
            tokens, targets = self.data.batch(split, eval_batch, self.block_size, generator)
            with self.autocast:
                logits = model(tokens).float()
            loss_sum += F.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                        reduction="sum").item()
            correct += (logits.argmax(dim=-1) == targets).sum().item()
            count += targets.numel()
        return loss_sum / count, correct / count


class PhysicsInformed(Workload):
    """A PINN fitted to a PDE problem with full-batch steps (L-BFGS in the convection zoo).

    An epoch is one optimizer step; for L-BFGS that step runs ``optim::max_iter`` inner
    iterations with a strong-Wolfe line search. ``train_loss`` is the physics loss (residual +
    initial + boundary MSE) on the training points; ``test_loss`` the MSE to the exact solution
    on a dense grid, beside its relative L2 error. Accuracy has no meaning here and is not
    written.
    """

    supports_autocast = False

    @property
    def steps_per_epoch(self) -> int:
        return 1

    def epoch_batches(self, generator: torch.Generator) -> Iterator[Any]:
        yield None

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.data.loss(model)

    def metrics(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        with torch.enable_grad():  # the residual needs input derivatives
            terms = {name: value.item() for name, value in self.data.loss_terms(model).items()}
        test = self.data.test_error(model)
        return {"train_loss": sum(terms.values()),
                **{f"train_loss_{name}": value for name, value in terms.items()},
                "test_loss": float(test["mse"]), "test_rel_l2_error": float(test["relative_l2"])}


WORKLOADS: Registry[type[Workload]] = Registry("workload")
WORKLOADS.register("image_classification", ImageClassification)
WORKLOADS.register("language_modeling", LanguageModeling)
WORKLOADS.register("physics_informed", PhysicsInformed)


def make_workload(params: dict[str, Any], data: Any, device: torch.device) -> Workload:
    """The workload that ``params`` names (``training::workload``; images by default)."""
    name = params.get("training::workload", "image_classification")
    return WORKLOADS.get(name)(params, data, device)
