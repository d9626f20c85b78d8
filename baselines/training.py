"""The training loop of the neural baselines (``gmn``, ``nfn``, ``probegen`` and the MLPs of
:mod:`baselines.mlp`): minibatch steps, early stopping on a monitored loss, best state kept.

Each predictor says how an epoch is cut into batches and what a batch's loss is; this module
runs the epochs. Every random draw (the batch order, an augmentation) is the caller's, made
when the loop asks for the epoch's batches or a batch's loss, so that a seed gives the same
model as a loop written in place.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Callable, Iterable, NamedTuple, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run torch on ``threads`` intra-op CPU threads (None: leave torch's setting), restored
    afterwards. Small networks gain nothing from more threads (they lose much on a busy
    machine), and with a fixed count results do not depend on the machine's."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Stopped(NamedTuple):
    """Where early stopping ended: the kept state's epoch (from 0) and monitored loss, and
    how many epochs ran."""

    loss: float
    epoch: int
    epochs: int


def train_early_stopping(network: nn.Module, optimizer: torch.optim.Optimizer,
                         epoch_batches: Callable[[], Iterable[Sequence[int]]],
                         batch_loss: Callable[[Sequence[int]], torch.Tensor],
                         validation_loss: Callable[[], torch.Tensor | float] | None,
                         max_epochs: int, patience: int, name: str | None = None) -> Stopped:
    """Train ``network`` until the monitored loss has not improved for ``patience`` epochs
    (or for ``max_epochs``); leave it in eval mode with the state of the lowest loss.

    Each epoch takes the batches (lists of training indices) that ``epoch_batches()`` gives,
    one optimizer step on ``batch_loss(batch)`` each. The monitored loss is
    ``validation_loss()``, computed in eval mode without gradients, or, where it is None (no
    usable validation models), the mean training loss of the epoch. ``name``: the predictor's,
    for a progress bar over the epochs and a log line at the end (None: neither, a debug line).
    """
    best_loss, best_state, best_epoch = float("inf"), copy.deepcopy(network.state_dict()), 0
    stale = 0
    epochs = tqdm(range(max_epochs), desc=f"{name}: epochs", leave=False,
                  disable=None if name else True)
    epoch = -1
    for epoch in epochs:
        network.train()
        train_loss, count = 0.0, 0
        for batch in epoch_batches():
            loss = batch_loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            train_loss += loss.item() * len(batch)
            count += len(batch)
        train_loss /= count
        if validation_loss is None:
            monitored = train_loss
        else:
            network.eval()
            with torch.no_grad():
                monitored = float(validation_loss())
        log.debug("epoch %d: train loss %.4f, monitored loss %.4f", epoch, train_loss, monitored)
        epochs.set_postfix(train=f"{train_loss:.3f}", val=f"{monitored:.3f}")
        if monitored < best_loss:
            best_loss, best_epoch = monitored, epoch
            best_state, stale = copy.deepcopy(network.state_dict()), 0
        else:
            stale += 1
            if stale >= patience:
                break
    network.load_state_dict(best_state)
    network.eval()
    log.log(logging.INFO if name else logging.DEBUG, "%s: best epoch %d of %d, monitored loss "
            "%.4f", name or "training", best_epoch, epoch + 1, best_loss)
    return Stopped(best_loss, best_epoch, epoch + 1)
