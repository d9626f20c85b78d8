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

Every probe's output vector (for GPT-2 the log-probabilities centred over the vocabulary) is
mapped by ``asinh`` (logits of diverged models reach 1e20) and, if longer than
``max_output_dim``, projected to that many dims by a fixed random matrix (GPT-2's
vocabulary). The head first standardizes each feature by its mean and spread over the
training models at the initial probes (:class:`Standardize`): GPT-2's log-probs share a large
negative offset, and on them the head's ReLUs died and it predicted a constant for every
shakespeare model. Models whose weights are not finite are run without gradient, and their
non-finite outputs become 0. Regression targets are standardized (MSE), labels use
cross-entropy; Adam, early stopping on the validation loss, best state kept. Seeded: a seed
gives the same predictions on the CPU.

Cost: one forward and backward pass of every training model on ``probes`` inputs per epoch.
torch's oneDNN is switched off while fitting and predicting on the CPU: torch 2.13's oneDNN
convolution backward corrupts memory on one thread (see tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from baselines.targets import StandardizedTargets
from baselines.training import torch_threads, train_early_stopping
from wslbench.predictor import ModelSample, NotApplicableError, Predictor

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


class Standardize(nn.Module):
    """A fixed per-feature standardization (buffers, not trained): the probe outputs' mean and
    spread over the training models, with the initial probes (see the module docstring)."""

    def __init__(self, features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))

    def set(self, outputs: torch.Tensor) -> None:
        spread = outputs.std(0)
        # a feature (nearly) constant on the training models is centred, not blown up
        floor = max(float(spread.mean()) * 1e-2, 1e-8)
        self.mean.copy_(outputs.mean(0))
        self.scale.copy_(spread.clamp(min=floor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


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
    previous_mkldnn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        with torch_threads(threads):
            yield
    finally:
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
        self.targets: StandardizedTargets | None = None

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
                # centred over the vocabulary: the logits, without log-probs' common offset
                out = _gpt_on_soft_tokens(model.module, probes)
                out = out - out.mean(dim=-1, keepdim=True)
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
            self.head = nn.Sequential(Standardize(config.probes * width),
                                      nn.Linear(config.probes * width, config.head_hidden),
                                      nn.ReLU(), nn.Linear(config.head_hidden, out_dim))

    # ------------------------------------------------------------------ fit and predict

    def fit(self, train: Sequence[ModelSample], train_targets: np.ndarray,
            val: Sequence[ModelSample], val_targets: np.ndarray) -> None:
        if len(train) < 2:
            raise ValueError(f"ProbeGen.fit() needs at least 2 training models (it standardizes "
                             f"their outputs), got {len(train)}")
        with _cpu_settings(self.config.num_threads):
            self._fit(train, train_targets, val, val_targets)

    def _fit(self, train, train_targets, val, val_targets) -> None:
        config = self.config
        self.generator = None
        self.targets = targets = StandardizedTargets(train_targets)
        if targets.constant is not None:
            return
        space = self._space(train)
        train_models = self._rebuild(train, "train models")
        val_models = self._rebuild(val, "val models") if len(val) else []
        y_train, y_val = targets.encode(train_targets), targets.encode(val_targets)
        usable_val = len(val_models) > 0 and targets.any_known(y_val)
        self._init_networks(space, train_models[0], targets.out_dim)
        with torch.no_grad():
            self.head[0].set(self._outputs(train_models, self.generator()))
        trained = nn.ModuleList([self.generator, self.head])
        optimizer = torch.optim.AdamW(trained.parameters(), lr=config.learning_rate,
                                      weight_decay=config.weight_decay)
        order_generator = torch.Generator().manual_seed(self.seed)

        def epoch_batches() -> list[list[int]]:
            order = torch.randperm(len(train_models), generator=order_generator).tolist()
            return [order[start:start + config.batch_size]
                    for start in range(0, len(order), config.batch_size)]

        def batch_loss(group: list[int]) -> torch.Tensor:
            probes = self.generator()
            output = self.head(self._outputs([train_models[i] for i in group], probes))
            return targets.loss(output, y_train[group])

        def validation_loss() -> torch.Tensor:
            return targets.loss(self._forward(val_models), y_val)

        train_early_stopping(trained, optimizer, epoch_batches, batch_loss,
                             validation_loss if usable_val else None, config.max_epochs,
                             config.patience, name=self.name)

    def _forward(self, models: Sequence[ZooModel]) -> torch.Tensor:
        self.generator.eval(), self.head.eval()
        probes = self.generator()
        return self.head(self._outputs(models, probes))

    def predict(self, models: Sequence[ModelSample]) -> np.ndarray:
        if self.targets is not None and self.targets.constant is not None:
            return np.full(len(models), self.targets.constant, dtype=object)
        if self.generator is None:
            raise RuntimeError("ProbeGen.predict() called before fit()")
        if len(models) == 0:
            return self.targets.decode(torch.empty(0, self.targets.out_dim))
        with _cpu_settings(self.config.num_threads), torch.no_grad():
            output = self._forward(self._rebuild(models, "models"))
        return self.targets.decode(output)
