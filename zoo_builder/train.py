"""Train one model of a zoo, top to bottom, writing its trial folder as it goes.

The paper's recipe: SGD (lr 0.1, momentum 0.9, weight decay 5e-4), OneCycleLR with cosine
annealing (max_lr = lr), cross-entropy, augmentation by random crop, flip and rotation. The
data stay on the device as tensors; each batch is augmented in one batched call (no
DataLoader, no per-sample Python). Train and test loss/accuracy are measured in eval mode on
the clean train and test sets before training (epoch 0) and after every epoch; line n of
result.json is epoch n; each line also records ``time_this_iter_s`` (the epoch's training
steps) and ``time_eval_s`` (measuring the four metrics). Checkpoints are saved at the spec's
epochs (always the first and last).

:func:`train_trial` is what every executor runs for one model (see zoo_builder.build).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from wslbench import zoo_format as fmt
from zoo_builder.data import ImageData, load_dataset
from zoo_builder.data.images import Augmentation
from zoo_builder.models import build_model

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 1024


class TrialAborted(RuntimeError):
    """Training stopped before the end (the build that started it is gone)."""


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, images: torch.Tensor, labels: torch.Tensor
             ) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on a labelled set."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(images), EVAL_BATCH_SIZE):
        logits = model(data.normalize(images[start:start + EVAL_BATCH_SIZE]))
        target = labels[start:start + EVAL_BATCH_SIZE]
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum").item()
        correct += (logits.argmax(dim=1) == target).sum().item()
    return loss_sum / len(images), correct / len(images)


def epoch_metrics(model: nn.Module, data: ImageData, epoch: int) -> dict[str, Any]:
    train_loss, train_acc = evaluate(model, data, data.train_x, data.train_y)
    test_loss, test_acc = evaluate(model, data, data.test_x, data.test_y)
    return {"epoch": epoch, "training_iteration": epoch, "train_loss": train_loss,
            "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}


def train_trial(
    params: dict[str, Any],
    trial_dir: os.PathLike,
    data: ImageData | None = None,
    device: str = "cpu",
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Train the model that ``params`` (a flat params.json) describes into ``trial_dir``.

    ``should_stop`` is asked after every epoch; when it says yes the trial stops unfinished
    (its folder has no completion marker, so a resumed build redoes it).
    """
    fmt.write_params(trial_dir, params)
    seed = int(params["seed"])
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    if data is None:
        data = load_dataset(params["dataset::name"])
    data = data.to(device)

    model_args = fmt.params_section(params, "model")
    model = build_model(model_args).to(device)
    augment = Augmentation(**fmt.params_section(params, "augment"))
    epochs, batch_size = int(params["training::epochs_train"]), int(params["training::batchsize"])
    saved_epochs = set(params["training::checkpoint_epochs"]) | {0, epochs}
    # Every step sees a full batch; the remainder of the shuffled epoch is dropped (a last
    # batch of a few samples gives BatchNorm wild statistics and derails training). A batch
    # size above the training set size means full-batch steps.
    batch_size = min(batch_size, len(data.train_x))
    steps_per_epoch = len(data.train_x) // batch_size
    optimizer = torch.optim.SGD(model.parameters(), lr=params["optim::lr"],
                                momentum=params["optim::momentum"], weight_decay=params["optim::wd"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=params["optim::lr"], total_steps=epochs * steps_per_epoch,
        anneal_strategy="cos")

    rows: list[dict[str, Any]] = []
    hashes: dict[str, str] = {}

    def finish_epoch(epoch: int, seconds: float) -> None:
        started = time.perf_counter()
        metrics = epoch_metrics(model, data, epoch)
        rows.append({**metrics, "time_this_iter_s": seconds,
                     "time_eval_s": time.perf_counter() - started,
                     "lr_last_step": scheduler.get_last_lr()[0]})
        fmt.write_results(trial_dir, rows)
        if epoch in saved_epochs:
            hashes.update(fmt.save_checkpoint(trial_dir, epoch, model.state_dict(), model_args))
        log.info("epoch %d: train loss %.4f acc %.4f | test loss %.4f acc %.4f (%.1fs)", epoch,
                 rows[-1]["train_loss"], rows[-1]["train_acc"], rows[-1]["test_loss"],
                 rows[-1]["test_acc"], seconds)

    finish_epoch(0, 0.0)
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(data.train_x), generator=generator, device=device)
        for step in range(steps_per_epoch):
            index = order[step * batch_size:(step + 1) * batch_size]
            images = data.normalize(augment(data.train_x[index], generator))
            loss = F.cross_entropy(model(images), data.train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        finish_epoch(epoch, time.perf_counter() - started)
        if should_stop():
            raise TrialAborted(f"stopped after epoch {epoch} of {epochs}")
    fmt.mark_trial_complete(trial_dir, hashes)
