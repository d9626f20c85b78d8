"""``probegen``: learned probes (ProbeGen, Kahana et al. 2024, "Deep Linear Probe Generators for
Weight Space Learning").

Instead of reading the weights, the predictor *runs* every model: each model is rebuilt from its
``model_args`` and weights (:func:`zoo_builder.models.build_model`), a set of ``probes`` learned
inputs goes through it, and the outputs of all probes, concatenated, are read by a small MLP
head. Probes and head are trained together by backpropagating through the frozen zoo models.
The models' outputs do not depend on the order of hidden units, so neither does the
prediction; the width does not matter either, as long as the models share their input and
output spaces. Following the paper, the probes are not free inputs but come out of a *deep
linear generator*: a learned code per probe goes through linear layers without
nonlinearities (for images, transposed convolutions that upsample), a structured
parameterization that the paper found to regularize the probes better than free inputs.

Probes per architecture (``model_args["type"]``):

* ResNets and ViTs: images of ``in_channels`` (``channels_in``) channels, ``image_size`` square
  (from ``model_args``, else the predictor's ``image_size``, 8 by default, the digits zoos'
  size; ResNets end in an adaptive pool, so any size runs); outputs: the logits.
* PINNs (``pinn_mlp``): coordinate points of ``in_features`` dims; outputs: the field values.
* GPT-2: ``probe_tokens`` positions of *soft* tokens, a softmax over the vocabulary (the
  generator's output) times the model's own token embedding, so that one probe fits models
  of every width; outputs: the log-probabilities of the next token at each position.

Every probe's output vector is mapped by ``asinh`` (logits of diverged models reach 1e20)
and, if longer than ``max_output_dim``, projected to that many dims by a fixed random matrix
(GPT-2's vocabulary). Models whose weights are not finite are run without gradient, and their
non-finite outputs become 0. Regression targets are standardized (MSE), labels use
cross-entropy; Adam, early stopping on the validation loss, best state kept. Seeded: a seed
gives the same predictions on the CPU.

Cost: one forward and backward pass of every training model on ``probes`` inputs per epoch.
torch's oneDNN is switched off while fitting and predicting on the CPU: torch 2.13's oneDNN
convolution backward corrupts memory on one thread (see tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from baselines.targets import is_classification
from wslbench.predictor import ModelSample, NotApplicableError, Predictor

log = logging.getLogger(__name__)

IMAGE_TYPES = ("resnet18", "resnet50", "vit", "Resnet18_width", "Resnet50_width")


class ProbeSpace(NamedTuple):
    """What the probes of a zoo are: ``kind`` (image, points, tokens) and their shape."""

    kind: str
    shape: tuple[int, ...]


def probe_space(model_args: Mapping[str, Any] | None, image_size: int,
                probe_tokens: int) -> ProbeSpace:
    """The probe space of a model from its architecture arguments."""
    if model_args is None:
        raise NotApplicableError(
            "probegen runs the models, which needs their architecture arguments; this task "
            "withholds them from predictors; use a predictor on the weights alone (stat-mlp)")
    kind = model_args.get("type")
    if kind in IMAGE_TYPES:
        channels = model_args.get("in_channels", model_args.get("channels_in", 3))
        size = model_args.get("image_size", image_size)
        return ProbeSpace("image", (int(channels), int(size), int(size)))
    if kind == "pinn_mlp":
        return ProbeSpace("points", (int(model_args.get("in_features", 2)),))
    if kind == "gpt2":
        tokens = min(probe_tokens, int(model_args.get("block_size", 1024)))
        return ProbeSpace("tokens", (tokens, int(model_args.get("vocab_size", 50304))))
    raise NotApplicableError(f"probegen does not know how to probe model type {kind!r}; it "
                             f"knows {', '.join(IMAGE_TYPES)}, pinn_mlp and gpt2")


class LinearGenerator(nn.Module):
    """The deep linear probe generator: a learned code per probe through linear layers with no
    nonlinearity between them; images are upsampled by transposed convolutions (x4 in total,
    where the size allows it)."""

    def __init__(self, space: ProbeSpace, probes: int, latent: int = 32, hidden: int = 64):
        super().__init__()
        self.space = space
        self.codes = nn.Parameter(torch.randn(probes, latent))
        size = space.shape[-1]
        if space.kind == "image" and size % 4 == 0:
            base = size // 4
            self.stem = nn.Linear(latent, 16 * base * base)
            self.body = nn.Sequential(nn.Unflatten(1, (16, base, base)),
                                      nn.ConvTranspose2d(16, 16, 4, stride=2, padding=1),
                                      nn.ConvTranspose2d(16, space.shape[0], 4, stride=2,
                                                         padding=1))
        else:
            self.stem = nn.Linear(latent, hidden)
            self.body = nn.Sequential(nn.Linear(hidden, math.prod(space.shape)),
                                      nn.Unflatten(1, space.shape))

    def forward(self) -> torch.Tensor:
        probes = self.body(self.stem(self.codes))
        if self.space.kind == "tokens":
            probes = probes.softmax(dim=-1)  # a distribution over the vocabulary per position
        return probes


def _gpt_on_soft_tokens(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """GPT's forward (zoo_builder.models.gpt.GPT) on soft tokens ``(P, T, vocab)``: the token
    embedding becomes a mixture of the model's embedding rows; returns next-token log-probs."""
    positions = torch.arange(tokens.shape[1])
    x = tokens @ model.token_embedding.weight + model.position_embedding(positions)
    for block in model.blocks:
        x = block(x)
    return F.linear(model.norm(x), model.token_embedding.weight).log_softmax(dim=-1)


class ZooModel(NamedTuple):
    module: nn.Module
    finite: bool  # all weights finite: gradients through it are safe


def rebuild(sample: ModelSample) -> ZooModel:
    """The model of ``sample``, in eval mode, its weights frozen."""
    from zoo_builder.models import build_model, load_weights

    module = load_weights(build_model(dict(sample.model_args)), sample.state_dict())
    module.eval().requires_grad_(False)
    finite = all(bool(torch.isfinite(t).all()) for t in module.state_dict().values()
                 if t.is_floating_point())
    return ZooModel(module, finite)


@dataclass(frozen=True)
class ProbeGenConfig:
    """Probes, generator, head and training; the defaults fit a 75-model zoo in minutes."""

    probes: int = 32
    latent: int = 32
    head_hidden: int = 64
    #: per-probe outputs longer than this are projected by a fixed random matrix
    max_output_dim: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 8
    max_epochs: int = 60
    patience: int = 15
    #: torch's intra-op threads while fitting and predicting (None: torch's setting)
    num_threads: int | None = 1


@contextlib.contextmanager
def _cpu_settings(threads: int | None):
    """``threads`` torch threads and no oneDNN (its conv backward is broken on one thread)."""
    previous_threads, previous_mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    if threads is not None:
        torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.backends.mkldnn.enabled = previous_mkldnn


class ProbeGen(Predictor):
    """Learned probes through every model, read by an MLP; see the module docstring."""

    name = "probegen"

    def __init__(self, seed: int = 0, config: ProbeGenConfig = ProbeGenConfig(),
                 image_size: int = 8, probe_tokens: int = 8):
        super().__init__(seed)
        self.config = config
        self.image_size = image_size
        self.probe_tokens = probe_tokens
        self.generator: LinearGenerator | None = None
        self.head: nn.Sequential | None = None
        self.classes: np.ndarray | None = None
        self.constant: str | None = None
        self.target_mean, self.target_std = 0.0, 1.0

    # ------------------------------------------------------------------ running the models

    def _space(self, models: Sequence[ModelSample]) -> ProbeSpace:
        spaces = {probe_space(m.model_args, self.image_size, self.probe_tokens) for m in models}
        if len(spaces) != 1:
            raise NotApplicableError(f"probegen needs one input space for all models, but the "
                                     f"models take {sorted(spaces)}")
        return spaces.pop()

    def _rebuild(self, models: Sequence[ModelSample], what: str) -> list[ZooModel]:
        space = self._space(models)
        if self.generator is not None and space != self.generator.space:
            raise NotApplicableError(f"probegen was fit on models that take {self.generator.space}"
                                     f", but these take {space}")
        return [rebuild(m) for m in tqdm(models, desc=f"{self.name}: {what}", leave=False,
                                         disable=None)]

    def _run(self, model: ZooModel, probes: torch.Tensor) -> torch.Tensor:
        """One model's outputs on the probes, one flat row: ``probes * output dims``."""
        space = self.generator.space
        with torch.set_grad_enabled(torch.is_grad_enabled() and model.finite):
            if space.kind == "tokens":
                out = _gpt_on_soft_tokens(model.module, probes)
            else:
                out = model.module(probes)
        out = torch.asinh(torch.nan_to_num(out.reshape(len(probes), -1), nan=0.0, posinf=1e30,
                                           neginf=-1e30))
        if self.projection is not None:
            out = out @ self.projection
        return out.reshape(-1)

    def _outputs(self, models: Sequence[ZooModel], probes: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._run(m, probes) for m in models])

    def _init_networks(self, space: ProbeSpace, sample: ZooModel, out_dim: int) -> None:
        config = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.generator = LinearGenerator(space, config.probes, config.latent)
            self.projection = None
            with torch.no_grad():
                width = self._run(sample, self.generator()).numel() // config.probes
            if width > config.max_output_dim:
                self.projection = (torch.randn(width, config.max_output_dim)
                                   / math.sqrt(config.max_output_dim))
                width = config.max_output_dim
            self.head = nn.Sequential(nn.Linear(config.probes * width, config.head_hidden),
                                      nn.ReLU(), nn.Linear(config.head_hidden, out_dim))

    # ------------------------------------------------------------------ targets and loss

    def _encode(self, targets: np.ndarray) -> torch.Tensor:
        if self.classes is not None:
            lookup = {label: i for i, label in enumerate(self.classes)}
            return torch.tensor([lookup.get(str(t), -1) for t in targets], dtype=torch.long)
        values = np.asarray(targets, dtype=np.float64)
        return torch.tensor((values - self.target_mean) / self.target_std, dtype=torch.float32)

    def _loss(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.classes is not None:
            keep = targets >= 0  # validation labels never seen in training
            return F.cross_entropy(output[keep], targets[keep])
        return F.mse_loss(output[:, 0], targets)

    # ------------------------------------------------------------------ fit and predict

    def fit(self, train: Sequence[ModelSample], train_targets: np.ndarray,
            val: Sequence[ModelSample], val_targets: np.ndarray) -> None:
        if len(train) == 0:
            raise ValueError("ProbeGen.fit() got no training models")
        with _cpu_settings(self.config.num_threads):
            self._fit(train, train_targets, val, val_targets)

    def _fit(self, train, train_targets, val, val_targets) -> None:
        config = self.config
        self.generator = None
        if is_classification(train_targets):
            self.classes = np.unique(np.asarray(train_targets, dtype=str))
            if len(self.classes) < 2:  # one class seen: nothing to separate
                self.constant = str(self.classes[0])
                return
        else:
            self.classes = None
            values = np.asarray(train_targets, dtype=np.float64)
            self.target_mean = float(values.mean())
            self.target_std = float(values.std()) if values.std() > 0 else 1.0
        self.constant = None
        space = self._space(train)
        train_models = self._rebuild(train, "train models")
        val_models = self._rebuild(val, "val models") if len(val) else []
        y_train, y_val = self._encode(train_targets), self._encode(val_targets)
        usable_val = len(val_models) > 0 and bool((y_val >= 0).any()
                                                  if self.classes is not None else True)
        out_dim = 1 if self.classes is None else len(self.classes)
        self._init_networks(space, train_models[0], out_dim)
        parameters = [*self.generator.parameters(), *self.head.parameters()]
        optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate,
                                      weight_decay=config.weight_decay)
        order_generator = torch.Generator().manual_seed(self.seed)
        best = (float("inf"), None, 0)
        stale = 0
        epochs = tqdm(range(config.max_epochs), desc=f"{self.name}: epochs", leave=False,
                      disable=None)
        for epoch in epochs:
            self.generator.train(), self.head.train()
            order = torch.randperm(len(train_models), generator=order_generator).tolist()
            train_loss = 0.0
            for start in range(0, len(order), config.batch_size):
                group = order[start:start + config.batch_size]
                probes = self.generator()
                output = self.head(self._outputs([train_models[i] for i in group], probes))
                loss = self._loss(output, y_train[group])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                train_loss += loss.item() * len(group)
            train_loss /= len(train_models)
            if usable_val:
                with torch.no_grad():
                    val_loss = float(self._loss(self._forward(val_models), y_val))
            else:
                val_loss = train_loss
            epochs.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
            if val_loss < best[0]:
                best = (val_loss, copy.deepcopy((self.generator.state_dict(),
                                                 self.head.state_dict())), epoch)
                stale = 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
        self.generator.load_state_dict(best[1][0])
        self.head.load_state_dict(best[1][1])
        self.generator.eval(), self.head.eval()
        log.info("probegen: best epoch %d of %d, monitored loss %.4f", best[2], epoch + 1,
                 best[0])

    def _forward(self, models: Sequence[ZooModel]) -> torch.Tensor:
        self.generator.eval(), self.head.eval()
        probes = self.generator()
        return self.head(self._outputs(models, probes))

    def predict(self, models: Sequence[ModelSample]) -> np.ndarray:
        if self.constant is not None:
            return np.full(len(models), self.constant, dtype=object)
        if self.generator is None:
            raise RuntimeError("ProbeGen.predict() called before fit()")
        if len(models) == 0:
            return np.empty(0, dtype=object if self.classes is not None else np.float64)
        with _cpu_settings(self.config.num_threads), torch.no_grad():
            output = self._forward(self._rebuild(models, "models"))
        if self.classes is not None:
            return self.classes[output.argmax(1).numpy()].astype(object)
        return output[:, 0].double().numpy() * self.target_std + self.target_mean
