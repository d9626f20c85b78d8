"""Model factories by name; a checkpoint's ``model_args`` rebuild its model with :func:`build_model`."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from zoo_builder.models.resnet import resnet18

#: model::type -> factory taking the remaining model arguments.
MODEL_FACTORIES: dict[str, Callable[..., nn.Module]] = {"resnet18": resnet18}

#: Names the published params.json uses (``model::o_dim``) -> the factories' argument names.
PUBLISHED_ARG_NAMES = {"o_dim": "num_classes", "channels_in": "in_channels"}


def build_model(model_args: dict[str, Any]) -> nn.Module:
    """Build a model from its arguments, e.g. ``{"type": "resnet18", "width": 8, ...}``."""
    args = dict(model_args)
    kind = args.pop("type", None)
    if kind not in MODEL_FACTORIES:
        raise ValueError(
            f"unknown model type {kind!r} in model arguments {model_args}; known types: "
            f"{sorted(MODEL_FACTORIES)}"
        )
    args.pop("init_type", None)  # only one init exists so far; recorded for the summary table
    for published, ours in PUBLISHED_ARG_NAMES.items():
        if published in args:
            args[ours] = args.pop(published)
    return MODEL_FACTORIES[kind](**args)


__all__ = ["MODEL_FACTORIES", "build_model", "resnet18"]
