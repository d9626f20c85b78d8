"""ResNet-18 as the paper describes it, the digits data, and batched augmentation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from zoo_builder.data import load_dataset
from zoo_builder.data.images import Augmentation
from zoo_builder.models import build_model, resnet18


@pytest.mark.parametrize("width,in_channels,size,classes", [(2, 1, 8, 10), (4, 3, 32, 100)])
def test_resnet18_shape(width, in_channels, size, classes):
    model = resnet18(width=width, num_classes=classes, in_channels=in_channels)
    assert model(torch.randn(2, in_channels, size, size)).shape == (2, classes)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 16 + 3  # stem, 8 blocks x 2, 3 projection shortcuts
    assert all(c.bias is None for c in convs)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    stage_widths = [model.layer1[0].conv1.out_channels, model.layer2[0].conv1.out_channels,
                    model.layer3[0].conv1.out_channels, model.layer4[0].conv1.out_channels]
    assert stage_widths == [width, 2 * width, 4 * width, 8 * width]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 20


def test_standard_width_has_the_standard_parameter_count():
    model = resnet18(width=64, num_classes=10, in_channels=3)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # CIFAR ResNet-18


def test_kaiming_uniform_init_bounds():
    torch.manual_seed(0)
    model = resnet18(width=8, num_classes=10, in_channels=1)
    weight = model.layer2[0].conv1.weight
    bound = (6 / weight[0].numel()) ** 0.5  # gain sqrt(2) * sqrt(3 / fan_in)
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    assert torch.all(model.fc.bias == 0)


def test_build_model_takes_published_argument_names():
    model = build_model({"type": "resnet18", "width": 2, "o_dim": 7, "channels_in": 1,
                         "init_type": "kaiming_uniform"})
    assert model.fc.out_features == 7 and model.conv1.in_channels == 1
    with pytest.raises(ValueError, match="unknown model type 'resnet99'"):
        build_model({"type": "resnet99"})


def test_digits_split_is_fixed_and_stratified():
    first, second = load_dataset("digits"), load_dataset("digits")
    assert torch.equal(first.train_x, second.train_x)
    assert first.train_x.shape[1:] == (1, 8, 8) and first.in_channels == 1
    assert 0 <= first.train_x.min() and first.train_x.max() <= 1
    assert len(first.train_x) + len(first.test_x) == 1797
    train_share = torch.bincount(first.train_y) / len(first.train_y)
    test_share = torch.bincount(first.test_y) / len(first.test_y)
    assert torch.allclose(train_share, test_share, atol=0.01)
    normalized = first.normalize(first.train_x)
    assert abs(normalized.mean().item()) < 1e-4 and abs(normalized.std().item() - 1) < 1e-2
    with pytest.raises(KeyError, match="unknown dataset .cifar."):
        load_dataset("cifar")


def _images(n=6, size=8):
    return torch.rand(n, 2, size, size)


def test_disabled_augmentation_is_identity():
    images = _images()
    assert Augmentation()(images) is images


def test_crop_is_an_integer_shift_with_zero_fill():
    images = _images()
    augment = Augmentation(crop_padding=2)
    generator = torch.Generator().manual_seed(3)
    out = augment(images, generator)
    # Recompute the offsets the same generator drew, and crop the padded images by hand.
    replay = torch.Generator().manual_seed(3)
    torch.rand(len(images), generator=replay)  # the angle draw comes first
    shift = torch.randint(-2, 3, (len(images), 2), generator=replay)
    padded = F.pad(images, (2, 2, 2, 2))
    for i, (dx, dy) in enumerate(shift.tolist()):
        expected = padded[i, :, 2 + dy:2 + dy + 8, 2 + dx:2 + dx + 8]
        assert torch.allclose(out[i], expected, atol=1e-5)


def test_flip_mirrors_some_images_and_keeps_others():
    images = _images(n=64)
    out = Augmentation(horizontal_flip=True)(images, torch.Generator().manual_seed(0))
    flipped = [torch.allclose(o, i.flip(-1), atol=1e-5) for o, i in zip(out, images)]
    kept = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept)) and 10 < sum(flipped) < 54


def test_rotation_keeps_the_centre_and_is_seeded():
    images = torch.zeros(4, 1, 9, 9)
    images[:, :, 4, 4] = 1.0
    augment = Augmentation(rotation_degrees=20)
    out = augment(images, torch.Generator().manual_seed(1))
    assert torch.allclose(out[:, :, 4, 4], torch.ones(4, 1), atol=1e-5)
    assert torch.equal(out, augment(images, torch.Generator().manual_seed(1)))
    wide = torch.rand(3, 1, 8, 8)
    assert not torch.allclose(augment(wide, torch.Generator().manual_seed(2)), wide)
