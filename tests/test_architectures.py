"""The zoos' architectures: parameter counts, shapes, gradients, rebuilding from ``model_args``,
causal masking, bf16 autocast and channels-last inputs. Tiny widths; the full-size networks are
only built on the meta device."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn
from torch.nn import functional as F

from zoo_builder.models import MODEL_FACTORIES, build_model, gpt2, pinn_mlp, resnet18, resnet50, vit

TINY_GPT = {"vocab_size": 37, "block_size": 16, "n_layer": 2}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _example_input(model_args: dict, batch: int = 4) -> torch.Tensor:
    """A random input that fits the model the arguments describe."""
    kind = model_args["type"]
    if kind == "gpt2":
        return torch.randint(0, model_args["vocab_size"], (batch, model_args["block_size"]))
    if kind == "pinn_mlp":
        return torch.rand(batch, 2)
    size = model_args.get("image_size", 32 if kind == "vit" else 16)
    return torch.randn(batch, model_args.get("channels_in", 3), size, size)


# One entry per factory, each at two widths, with the published argument names where they exist.
ROUND_TRIP_ARGS = [
    {"type": "resnet18", "width": 2, "o_dim": 5, "channels_in": 1, "init_type": "kaiming_uniform"},
    {"type": "resnet50", "width": 2, "o_dim": 5, "channels_in": 3, "init_type": "kaiming_uniform"},
    {"type": "resnet50", "width": 4, "o_dim": 10, "channels_in": 1},
    {"type": "vit", "embedding_dim": 6, "o_dim": 10, "channels_in": 3, "depth": 2},
    {"type": "vit", "embedding_dim": 12, "o_dim": 7, "channels_in": 1, "image_size": 8, "depth": 1},
    {"type": "gpt2", "model_dim": 12, **TINY_GPT, "init_type": "kaiming_uniform"},
    {"type": "gpt2", "model_dim": 24, **TINY_GPT, "init_type": "normal", "bias": False},
    {"type": "pinn_mlp", "hidden": [8, 8]},
    {"type": "pinn_mlp", "hidden": [16, 16, 16], "init_type": "kaiming_uniform"},
]


def _args_id(model_args: dict) -> str:
    width = [model_args.get(key) for key in ("width", "embedding_dim", "model_dim", "hidden")]
    return f"{model_args['type']}-{next(w for w in width if w is not None)}"


# --------------------------------------------------------------------------- parameter counts


def test_every_factory_is_registered():
    assert set(MODEL_FACTORIES) == {"resnet18", "resnet50", "vit", "gpt2", "pinn_mlp"}


def test_resnet50_has_the_standard_cifar_count():
    with torch.device("meta"):
        model = resnet50(width=64, num_classes=10, in_channels=3)
    assert _count(model) == 23_520_842


def test_resnet50_structure():
    model = resnet50(width=4, num_classes=10, in_channels=3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 16 * 3 + 4  # stem, 16 bottlenecks x 3, one projection per stage
    assert all(c.bias is None for c in convs)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    assert [len(stage) for stage in stages] == [3, 4, 6, 3]
    first_blocks = [stage[0] for stage in stages]
    assert [b.conv2.out_channels for b in first_blocks] == [4, 8, 16, 32]
    assert [b.conv3.out_channels for b in first_blocks] == [16, 32, 64, 128]
    assert [b.conv2.stride for b in first_blocks] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert model.fc.in_features == 128
    weight = model.layer3[1].conv2.weight
    bound = (6 / weight[0].numel()) ** 0.5
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    assert torch.all(model.fc.bias == 0)


def _gpt_count(dim: int, vocab: int, block: int, layers: int) -> int:
    norms, attention = 2 * 2 * dim, 4 * (dim * dim + dim)
    mlp = (dim * 4 * dim + 4 * dim) + (4 * dim * dim + dim)
    per_block = norms + attention + mlp
    return vocab * dim + block * dim + layers * per_block + 2 * dim  # head tied to the embedding


def test_gpt2_small_count_on_the_meta_device():
    assert _gpt_count(768, 50257, 1024, 12) == 124_439_808  # GPT-2 small with the tied head
    with torch.device("meta"):
        model = gpt2(768, vocab_size=50257, block_size=1024)
    assert _count(model) == 124_439_808
    assert not any("head" in name for name in model.state_dict())  # the tied weight is stored once


@pytest.mark.parametrize("dim", [12, 24])
def test_tiny_gpt_count_matches_the_formula(dim):
    assert _count(gpt2(dim, **TINY_GPT)) == _gpt_count(dim, 37, 16, 2)


@pytest.mark.parametrize("dim,channels,size,patch,depth,classes",
                         [(6, 3, 32, 4, 6, 10), (12, 3, 64, 8, 2, 100), (24, 1, 8, 1, 1, 10)])
def test_vit_count_matches_the_formula(dim, channels, size, patch, depth, classes):
    model = vit(dim, num_classes=classes, in_channels=channels, image_size=size, depth=depth)
    hidden = 2 * dim
    patches = (size // patch) ** 2
    embedding = channels * patch * patch * dim + dim + dim + (1 + patches) * dim
    block = 2 * 2 * dim + 4 * (dim * dim + dim) + (dim * hidden + hidden) + (hidden * dim + dim)
    assert _count(model) == embedding + depth * block + 2 * dim + dim * classes + classes
    assert model.patch_embedding.kernel_size == (patch, patch)
    assert model.position_embedding.shape == (1, 65, dim)  # 64 patches + the class token


def test_pinn_count_and_names():
    model = pinn_mlp()
    assert _count(model) == (2 * 50 + 50) + 3 * (50 * 50 + 50) + (50 * 1 + 1)
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert names == ["layers.hidden1", "layers.hidden2", "layers.hidden3", "layers.hidden4",
                     "layers.output"]
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 4
    weight = model.layers.hidden2.weight
    assert weight.abs().max() <= (6 / 50) ** 0.5 and weight.abs().max() > 0.9 * (6 / 50) ** 0.5
    assert all(torch.all(m.bias == 0) for m in model.modules() if isinstance(m, nn.Linear))


# --------------------------------------------------------------------------- forward shapes


@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("channels,size", [(3, 32), (3, 64), (1, 8)])
def test_resnet50_output_shape(width, channels, size):
    model = resnet50(width=width, num_classes=7, in_channels=channels)
    assert model(torch.randn(2, channels, size, size)).shape == (2, 7)


@pytest.mark.parametrize("dim", [6, 12])
@pytest.mark.parametrize("channels,size,patch", [(3, 32, 4), (3, 64, 8), (1, 8, 1)])
def test_vit_output_shape(dim, channels, size, patch):
    model = vit(dim, num_classes=7, in_channels=channels, image_size=size, depth=2)
    assert model.patch_embedding.stride == (patch, patch)
    assert model(torch.randn(2, channels, size, size)).shape == (2, 7)


@pytest.mark.parametrize("dim", [12, 24])
def test_gpt_output_shape(dim):
    model = gpt2(dim, **TINY_GPT)
    assert model(torch.randint(0, 37, (3, 16))).shape == (3, 16, 37)
    assert model(torch.randint(0, 37, (3, 5))).shape == (3, 5, 37)
    assert model.blocks[0].attention.query.out_features == dim


@pytest.mark.parametrize("hidden", [(8, 8), [16, 16, 16]])
def test_pinn_output_shape(hidden):
    assert pinn_mlp(hidden=hidden)(torch.rand(11, 2)).shape == (11, 1)


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="block_size 16"):
        gpt2(12, **TINY_GPT)(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="built for 32x32"):
        vit(6, depth=1)(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="not divisible by heads=4"):
        vit(6, heads=4)
    with pytest.raises(ValueError, match="patch_size=3"):
        vit(6, image_size=32, patch_size=3)
    with pytest.raises(ValueError, match="hidden"):
        pinn_mlp(hidden=[])


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("model_args", ROUND_TRIP_ARGS, ids=_args_id)
def test_gradients_reach_every_parameter(model_args):
    torch.manual_seed(0)
    model = build_model(model_args).train()
    x = _example_input(model_args)
    out = model(x)
    if model_args["type"] == "gpt2":
        targets = torch.randint(0, out.shape[-1], out.shape[:2])
        loss = F.cross_entropy(out.flatten(0, 1), targets.flatten())
    elif model_args["type"] == "pinn_mlp":
        loss = out.square().mean()
    else:
        loss = F.cross_entropy(out, torch.randint(0, out.shape[1], (len(out),)))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert parameter.grad.abs().sum() > 0, f"{name} got a zero gradient"


# --------------------------------------------------------------------------- rebuilding


@pytest.mark.parametrize("model_args", ROUND_TRIP_ARGS, ids=_args_id)
def test_build_model_round_trip_through_json_and_safetensors(model_args):
    stored_args = json.loads(json.dumps(model_args))  # as a checkpoint stores them
    torch.manual_seed(1)
    original = build_model(stored_args).eval()
    weights = load_safetensors(save_safetensors(original.state_dict()))
    torch.manual_seed(2)
    rebuilt = build_model(stored_args).eval()
    x = _example_input(model_args)
    with torch.no_grad():
        assert not torch.equal(original(x), rebuilt(x))  # different seeds, different weights
        rebuilt.load_state_dict(weights)
        assert torch.equal(original(x), rebuilt(x))


def test_build_model_routes_init_type():
    normal = build_model({"type": "gpt2", "model_dim": 48, **TINY_GPT, "init_type": "normal"})
    fc1 = normal.blocks[0].mlp.fc1.weight
    assert abs(fc1.std().item() - 0.02) < 0.002
    residual = normal.blocks[1].attention.output.weight
    assert abs(residual.std().item() - 0.02 / 2) < 0.002  # 0.02 / sqrt(2 * n_layer)
    kaiming = build_model({"type": "gpt2", "model_dim": 48, **TINY_GPT})
    bound = (6 / 48) ** 0.5
    for weight in (kaiming.blocks[0].mlp.fc1.weight, kaiming.token_embedding.weight):
        assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    assert torch.all(kaiming.blocks[0].attention.query.bias == 0)
    with pytest.raises(ValueError, match="unknown init_type 'xavier'"):
        build_model({"type": "gpt2", "model_dim": 12, **TINY_GPT, "init_type": "xavier"})
    with pytest.raises(ValueError, match="only has the 'kaiming_uniform' init"):
        build_model({"type": "resnet50", "width": 2, "init_type": "normal"})


def test_vit_init_follows_the_paper():
    model = vit(48, depth=1)
    weight = model.blocks[0].mlp.fc1.weight
    bound = (6 / 48) ** 0.5
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    assert torch.all(model.blocks[0].attention.value.bias == 0) and torch.all(model.head.bias == 0)
    assert model.position_embedding.abs().max() <= 0.04  # N(0, 0.02) truncated at 2 std
    assert abs(model.position_embedding.std().item() - 0.0176) < 0.002  # std of that truncation
    x = torch.randn(1, 8, 48)
    block = model.blocks[0]
    assert isinstance(block.mlp.activation, nn.ReLU)  # the paper's Table 2, not GeLU
    assert torch.equal(block.mlp(x), block.mlp.fc2(F.relu(block.mlp.fc1(x))))
    assert isinstance(gpt2(12, **TINY_GPT).blocks[0].mlp.activation, nn.GELU)


# --------------------------------------------------------------------------- behaviour


def test_gpt_is_causal():
    torch.manual_seed(0)
    model = gpt2(24, **TINY_GPT).eval()
    idx = torch.randint(0, 37, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 37
    with torch.no_grad():
        before, after = model(idx), model(changed)
    assert torch.allclose(before[:, :7], after[:, :7], atol=1e-6)
    assert not torch.allclose(before[:, 7:], after[:, 7:], atol=1e-3)


@pytest.mark.parametrize("model_args", [ROUND_TRIP_ARGS[3], ROUND_TRIP_ARGS[5]],
                         ids=["vit", "gpt2"])
def test_transformers_run_under_bf16_autocast(model_args):
    torch.manual_seed(0)
    model = build_model(model_args)
    x = _example_input(model_args)
    reference = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and out.shape == reference.shape
    assert (out.float() - reference).abs().max() <= 0.1 * reference.abs().max()
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("factory", [resnet18, resnet50])
def test_resnets_accept_channels_last(factory):
    torch.manual_seed(0)
    model = factory(width=4, num_classes=10, in_channels=3).eval()
    x = torch.randn(2, 3, 16, 16)
    x_last = x.contiguous(memory_format=torch.channels_last)
    assert x_last.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        reference = model(x)
        assert torch.allclose(model(x_last), reference, atol=1e-5)
        model.to(memory_format=torch.channels_last)
        assert torch.allclose(model(x_last), reference, atol=1e-5)
