"""Fine-tuning a trained model on a second data set (transfer), and the Wise-FT curve.

Transfer as in the paper (CIFAR-10 -> STL-10): the whole network, head included, is
fine-tuned on the target's training set with SGD (momentum 0.9, weight decay 5e-4, a cosine
learning-rate decay over the steps, no augmentation, full shuffled batches as in training),
then evaluated on the target's test set. Targets with the same classes keep the head as it
is: STL-10 is relabelled into CIFAR-10's label space (its monkeys dropped, CIFAR-10's frogs
absent), and the digits zoos transfer to ``digits-rotated`` (the same digits under a fixed
rotation and shift; :mod:`zoo_builder.data.digits`).

Wise-FT in its original form (REFERENCE §5): ``theta = (1 - alpha) theta_0 + alpha theta_1``
with theta_0 the model before fine-tuning and theta_1 after, every parameter and buffer
interpolated (:func:`zoo_builder.annotating.downstream.averaging.interpolate`). Each interpolated model
is evaluated as it is on the target (transfer accuracy) and on the source (what it keeps of
its own task). BatchNorm statistics are interpolated with the weights rather than
re-estimated: re-estimating would need one data set's images, and the source and target
numbers would then come from two different models; as it is, alpha 0 and 1 are exactly the
model before and after fine-tuning.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from zoo_builder.data import ImageData, cached_dataset
from zoo_builder.annotating.downstream.averaging import interpolate
from zoo_builder.building.workloads import ImageClassification, evaluate_classifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransferTarget:
    """A target data set (a :data:`zoo_builder.data.DATASETS` name and its loader options),
    and whether its labels are mapped into the source's label space."""

    dataset: str
    options: tuple[tuple[str, Any], ...] = ()
    as_cifar10: bool = False  # STL-10 relabelled as CIFAR-10, monkeys dropped


#: The default target of a zoo trained on each data set (``dataset::name``).
TRANSFER_TARGETS = {
    "digits": TransferTarget("digits-rotated"),
    "cifar10": TransferTarget("stl10", (("image_size", 32),), as_cifar10=True),
}


def stl10_as_cifar10(data: ImageData) -> ImageData:
    """STL-10 with CIFAR-10 labels (car -> automobile, ...); monkey images dropped."""
    from zoo_builder.data.stl10 import stl10_to_cifar10_labels

    parts = []
    for images, labels in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        mapped = stl10_to_cifar10_labels(labels)
        keep = mapped >= 0
        parts += [images[keep], mapped[keep]]
    return ImageData(*parts, num_classes=10, name=f"{data.name}-as-cifar10")


def transfer_data(source: str, target: str | None = None,
                  data_root: str | None = None) -> ImageData:
    """The target data set for a zoo trained on ``source``: ``target`` if given (with the
    default's options and relabelling where it is the default's data set), else the default
    of :data:`TRANSFER_TARGETS`."""
    default = TRANSFER_TARGETS.get(source)
    if target is None:
        if default is None:
            raise ValueError(
                f"no default transfer target for a zoo trained on '{source}' (defaults exist for "
                f"{sorted(TRANSFER_TARGETS)}); name one with --transfer-dataset, e.g. a data set "
                "of zoo_builder.data.DATASETS with the same classes and image shape")
        spec = default
    elif default is not None and target == default.dataset:
        spec = default
    else:
        spec = TransferTarget(target)
    data = cached_dataset(spec.dataset, data_root, **dict(spec.options))
    return stl10_as_cifar10(data) if spec.as_cifar10 else data


def check_compatible(num_outputs: int, in_channels: int, target: ImageData) -> None:
    """Raise if ``target`` does not fit a model with ``num_outputs`` classes and
    ``in_channels`` input channels (the head is kept, so its labels must index it)."""
    if target.in_channels != in_channels:
        raise ValueError(f"transfer target '{target.name}' has {target.in_channels} input "
                         f"channels, the model takes {in_channels}; choose a target of the same "
                         "image format")
    top = int(max(target.train_y.max(), target.test_y.max()))
    if top >= num_outputs:
        raise ValueError(f"transfer target '{target.name}' has label {top}, the model has "
                         f"{num_outputs} outputs; choose a target within the source's classes")


def finetune_classifier(network: nn.Module, data: ImageData, *, epochs: int, lr: float,
                        batch_size: int = 64, momentum: float = 0.9, weight_decay: float = 5e-4,
                        seed: int = 0,
                        after_step: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """Train ``network`` in place on ``data``'s training set with SGD and a cosine decay of
    ``lr`` to 0 over all steps; ``after_step`` runs after every optimizer step (e.g. to keep
    pruned weights at zero). Returns the network in eval mode."""
    if epochs < 0 or lr <= 0 or batch_size < 1:
        raise ValueError(f"fine-tuning needs epochs >= 0, lr > 0 and batch_size >= 1; got "
                         f"epochs={epochs}, lr={lr}, batch_size={batch_size}")
    device = data.train_x.device
    network.to(device)
    workload = ImageClassification({"training::batchsize": batch_size}, data, device)
    total_steps = epochs * workload.steps_per_epoch
    if total_steps == 0:
        return network.eval()
    optimizer = torch.optim.SGD(network.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    generator = torch.Generator(device=device).manual_seed(seed)
    network.train()
    for _ in range(epochs):
        for batch in workload.epoch_batches(generator):
            optimizer.zero_grad(set_to_none=True)
            workload.loss(network, batch).backward()
            optimizer.step()
            schedule.step()
            if after_step is not None:
                after_step(network)
    return network.eval()


@dataclass(frozen=True)
class TransferResult:
    """Target test accuracy before and after fine-tuning, and the Wise-FT curve."""

    acc_before: float
    acc_after: float
    alphas: tuple[float, ...]
    target_acc: tuple[float, ...]  # per alpha, on the target's test set
    source_acc: tuple[float, ...]  # per alpha, on the source's test set


def transfer(network: nn.Module, source: ImageData, target: ImageData, *, epochs: int,
             lr: float, batch_size: int = 64, alphas: Sequence[float] = (0.0, 0.5, 1.0),
             seed: int = 0) -> TransferResult:
    """Fine-tune a copy of ``network`` on ``target`` and evaluate the Wise-FT curve between
    the two (``network`` itself is not changed)."""
    source = source.to(target.train_x.device)
    before_net = copy.deepcopy(network).to(target.train_x.device).eval()
    theta0 = {k: v.detach().clone() for k, v in before_net.state_dict().items()}
    _, acc_before = evaluate_classifier(before_net, target, target.test_x, target.test_y)
    tuned = finetune_classifier(copy.deepcopy(before_net), target, epochs=epochs, lr=lr,
                                batch_size=batch_size, seed=seed)
    _, acc_after = evaluate_classifier(tuned, target, target.test_x, target.test_y)
    theta1 = tuned.state_dict()
    target_acc, source_acc = [], []
    for alpha in alphas:
        before_net.load_state_dict(interpolate(theta0, theta1, alpha))
        target_acc.append(evaluate_classifier(before_net, target, target.test_x,
                                              target.test_y)[1])
        source_acc.append(evaluate_classifier(before_net, source, source.test_x,
                                              source.test_y)[1])
    log.info("transfer to %s: test acc %.3f -> %.3f", target.name, acc_before, acc_after)
    return TransferResult(acc_before, acc_after, tuple(float(a) for a in alphas),
                          tuple(target_acc), tuple(source_acc))
