"""Model factories by name; a checkpoint's ``model_args`` rebuild its model with :func:`build_model`."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import torch
from torch import nn

from zoo_builder.models.gpt import gpt2
from zoo_builder.models.pinn import pinn_mlp
from zoo_builder.models.resnet import resnet18, resnet50
from zoo_builder.models.vit import vit

#: model::type -> factory taking the remaining model arguments.
MODEL_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vit": vit,
    "gpt2": gpt2,
    "pinn_mlp": pinn_mlp,
}

#: Names the published params.json uses (``model::o_dim``) -> the factories' argument names.
PUBLISHED_ARG_NAMES = {"o_dim": "num_classes", "channels_in": "in_channels"}

#: model::type of the published zoos (the reference code's class names) -> ours.
PUBLISHED_MODEL_TYPES = {"Resnet18_width": "resnet18", "Resnet50_width": "resnet50"}

#: Further arguments of the published ResNets -> the one value our ResNets implement.
PUBLISHED_FIXED_ARGS = {"nlin": "relu", "dropout": 0.0, "use_bias": False}

#: Published state_dict key parts -> ours (the reference ResNets are torchvision's, whose
#: projection shortcut is called ``downsample``).
PUBLISHED_KEY_RENAMES = {".downsample.": ".shortcut."}

#: The init a factory without an ``init_type`` argument always uses.
DEFAULT_INIT_TYPE = "kaiming_uniform"


def require_module(module: nn.Module, expected: type | tuple[type, ...], name: str, *,
                   reader: str) -> None:
    """Raise unless submodule ``name`` is an ``expected`` one: code that walks a model's
    structure (``reader``, a file to extend for new modules) must not silently misread it."""
    if not isinstance(module, expected):
        kinds = expected if isinstance(expected, tuple) else (expected,)
        raise TypeError(f"{reader} does not know module {name!r} of type "
                        f"{type(module).__name__} (expected "
                        f"{' or '.join(k.__name__ for k in kinds)}); extend {reader} for it")


def reader_for(readers: Mapping[type, Callable], model: nn.Module,
               model_args: Mapping[str, Any], what: str) -> Callable:
    """The entry of ``readers`` (model class -> function) for ``model``'s class; a class
    without one raises, naming the classes there are ``what``s for."""
    if type(model) not in readers:
        raise TypeError(f"no {what} for model class {type(model).__name__} (model_args "
                        f"{dict(model_args)}); known: {sorted(c.__name__ for c in readers)}")
    return readers[type(model)]


def build_model(model_args: dict[str, Any]) -> nn.Module:
    """Build a model from its arguments, e.g. ``{"type": "resnet18", "width": 8, ...}``.

    ``init_type`` goes to factories that take it (``gpt2``); the others only have the zoos'
    Kaiming-uniform init, so for them it must be absent or ``"kaiming_uniform"``.
    """
    args = dict(model_args)
    kind = args.pop("type", None)
    if kind in PUBLISHED_MODEL_TYPES:
        kind = PUBLISHED_MODEL_TYPES[kind]
        for name, supported in PUBLISHED_FIXED_ARGS.items():
            value = args.pop(name, supported)
            if value not in (supported, None) and str(value).lower() != str(supported).lower():
                raise ValueError(f"published model argument {name}={value!r} is not supported "
                                 f"(only {supported!r}) in {model_args}")
    if kind not in MODEL_FACTORIES:
        raise ValueError(
            f"unknown model type {kind!r} in model arguments {model_args}; known types: "
            f"{sorted(MODEL_FACTORIES)}"
        )
    factory = MODEL_FACTORIES[kind]
    if "init_type" not in inspect.signature(factory).parameters:
        init_type = args.pop("init_type", None)
        if init_type not in (None, DEFAULT_INIT_TYPE):
            raise ValueError(
                f"model type {kind!r} only has the {DEFAULT_INIT_TYPE!r} init, but its model "
                f"arguments ask for init_type={init_type!r}; use {DEFAULT_INIT_TYPE!r} or drop it"
            )
    for published, ours in PUBLISHED_ARG_NAMES.items():
        if published in args:
            args[ours] = args.pop(published)
    return factory(**args)


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a checkpoint's state_dict into ``model`` (strictly), renaming published keys."""
    renamed = {}
    for key, value in state_dict.items():
        for published, ours in PUBLISHED_KEY_RENAMES.items():
            key = key.replace(published, ours)
        renamed[key] = value
    model.load_state_dict(renamed)
    return model


__all__ = ["MODEL_FACTORIES", "build_model", "load_weights", "gpt2", "pinn_mlp", "resnet18", "resnet50", "vit"]
