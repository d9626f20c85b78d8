"""Strong augmentation (random erasing, colour jitter, RandAugment) against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zoo_builder.data.images import (
    ERASING_AREA, RANDAUGMENT_OPS, Augmentation, adjust_brightness, adjust_contrast,
    adjust_saturation, adjust_sharpness, autocontrast, posterize, solarize)


def _positive_images(n, channels=3, height=8, width=8, seed=0):
    """Floats in [0.1, 1]: no pixel is zero before erasing."""
    generator = torch.Generator().manual_seed(seed)
    return 0.1 + 0.9 * torch.rand(n, channels, height, width, generator=generator)


def _warp_reference(image: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """Bilinear warp with zero fill written from first principles: output pixel (r, c) reads the
    input at matrix @ (c - (W-1)/2, r - (H-1)/2, 1), in pixels about the image centre."""
    channels, height, width = image.shape
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    u, v = cols - centre_x, rows - centre_y
    x = matrix[0, 0] * u + matrix[0, 1] * v + matrix[0, 2] + centre_x
    y = matrix[1, 0] * u + matrix[1, 1] * v + matrix[1, 2] + centre_y
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    pixels = image.double().numpy()
    out = np.zeros_like(pixels)
    for dy in (0, 1):
        for dx in (0, 1):
            xx, yy = x0 + dx, y0 + dy
            weight = (1 - np.abs(x - xx)) * (1 - np.abs(y - yy))
            inside = (xx >= 0) & (xx < width) & (yy >= 0) & (yy < height)
            sample = pixels[:, np.clip(yy, 0, height - 1), np.clip(xx, 0, width - 1)]
            out += np.where(inside, weight, 0.0) * sample
    return torch.from_numpy(out).float()


def _op_matrix(name: str, sign: float, magnitude: int, height: int, width: int) -> np.ndarray:
    """RandAugment's geometric ops by hand, as output -> input maps in pixel units."""
    m = magnitude / 30
    matrix = np.eye(3)
    if name == "rotate":
        angle = sign * math.radians(30 * m)
        matrix[:2, :2] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    elif name == "shear_x":
        matrix[0, 1] = sign * 0.3 * m
    elif name == "shear_y":
        matrix[1, 0] = sign * 0.3 * m
    elif name == "translate_x":
        matrix[0, 2] = sign * 0.45 * m * width
    elif name == "translate_y":
        matrix[1, 2] = sign * 0.45 * m * height
    return matrix


def _colour_op(name: str, image: torch.Tensor, sign: float, magnitude: int) -> torch.Tensor:
    m = magnitude / 30
    factor = 1 + 0.9 * m * sign
    batch = image[None]
    out = {"brightness": lambda: adjust_brightness(batch, factor),
           "contrast": lambda: adjust_contrast(batch, factor),
           "color": lambda: adjust_saturation(batch, factor),
           "sharpness": lambda: adjust_sharpness(batch, factor),
           "posterize": lambda: posterize(batch, 8 - round(4 * m)),
           "solarize": lambda: solarize(batch, 1 - m),
           "autocontrast": lambda: autocontrast(batch)}.get(name, lambda: batch)()
    return out[0]


# --- The photometric ops, by hand ---------------------------------------------------------------

def test_brightness_multiplies_exactly_and_clamps():
    images = torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1).repeat(2, 1, 2, 2)
    out = adjust_brightness(images, torch.tensor([0.5, 1.5]))
    assert torch.equal(out[0], images[0] * 0.5)
    assert torch.equal(out[1, :, 0, 0], torch.tensor([0.2 * 1.5, 0.5 * 1.5, 1.0]))


def test_contrast_and_saturation_blend_with_grey():
    image = torch.tensor([[[0.0, 1.0]], [[0.5, 0.5]], [[1.0, 0.0]]])[None]  # (1, 3, 1, 2)
    grey = 0.299 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2]  # (1, 1, 2)
    mean = grey.mean()
    assert torch.allclose(adjust_contrast(image, 0.5), mean + 0.5 * (image - mean))
    assert torch.allclose(adjust_contrast(image, 0.0), mean.expand_as(image))
    assert torch.allclose(adjust_saturation(image, 0.0), grey[:, None].expand_as(image))
    assert torch.allclose(adjust_saturation(image, 1.5),
                          (grey[:, None] + 1.5 * (image - grey[:, None])).clamp(0, 1))
    single = torch.rand(2, 1, 4, 4)
    assert torch.equal(adjust_saturation(single, torch.tensor([0.0, 2.0])), single)


def test_sharpness_blends_the_centre_with_a_smoothed_image_and_keeps_the_border():
    image = torch.arange(9.0).view(1, 1, 3, 3) / 10
    smooth_centre = (image.sum() - image[0, 0, 1, 1] + 5 * image[0, 0, 1, 1]) / 13
    for factor in (0.0, 0.5, 1.7):
        out = adjust_sharpness(image, factor)
        expected = (smooth_centre + factor * (image[0, 0, 1, 1] - smooth_centre)).clamp(0, 1)
        assert torch.isclose(out[0, 0, 1, 1], expected)
        border = torch.ones(3, 3, dtype=torch.bool)
        border[1, 1] = False
        assert torch.equal(out[0, 0][border], image[0, 0][border])


def test_posterize_solarize_and_autocontrast_by_hand():
    values = torch.tensor([0, 37, 128, 200, 255], dtype=torch.float32).view(1, 1, 1, 5) / 255
    four_bits, one_bit = (torch.tensor(v).view(1, 1, 1, 5) for v in
                          ([0.0, 32, 128, 192, 240], [0.0, 0, 128, 128, 128]))
    assert torch.allclose(posterize(values, 4) * 255, four_bits)
    assert torch.allclose(posterize(values, 1) * 255, one_bit)
    assert torch.equal(posterize(values, 8), values)
    halves = torch.tensor([0.2, 0.5, 0.7]).view(1, 1, 1, 3)
    assert torch.allclose(solarize(halves, 0.5), torch.tensor([0.2, 0.5, 0.3]).view(1, 1, 1, 3))
    assert torch.equal(solarize(values, 1.0), values)
    image = torch.tensor([[[0.2, 0.6]], [[0.3, 0.3]]])[None]  # channel 1 is constant
    out = autocontrast(image)
    assert torch.allclose(out[0, 0], torch.tensor([[0.0, 1.0]]))
    assert torch.equal(out[0, 1], image[0, 1])


# --- Colour jitter --------------------------------------------------------------------------------

def test_color_jitter_draws_one_factor_per_image_and_op():
    images = _positive_images(5)
    strength = 0.4
    out = Augmentation(color_jitter=strength)(images, torch.Generator().manual_seed(4))
    replay = torch.Generator().manual_seed(4)
    brightness, contrast, saturation = 1 + strength * (torch.rand(3, 5, generator=replay) * 2 - 1)
    for i in range(5):
        image = images[i:i + 1]
        expected = (image * brightness[i]).clamp(0, 1)
        red, green, blue = expected[:, 0], expected[:, 1], expected[:, 2]
        grey_mean = (0.299 * red + 0.587 * green + 0.114 * blue).mean()
        expected = (grey_mean + contrast[i] * (expected - grey_mean)).clamp(0, 1)
        grey = 0.299 * expected[:, 0:1] + 0.587 * expected[:, 1:2] + 0.114 * expected[:, 2:3]
        expected = (grey + saturation[i] * (expected - grey)).clamp(0, 1)
        assert torch.allclose(out[i:i + 1], expected, atol=1e-6)
    factors = torch.stack([brightness, contrast, saturation])
    assert factors.min() >= 1 - strength and factors.max() <= 1 + strength


def test_zero_strength_jitter_and_zero_randaugment_ops_are_identity():
    images = torch.randint(0, 256, (3, 3, 6, 6), dtype=torch.uint8)
    for augment in (Augmentation(color_jitter=0.0), Augmentation(random_erasing=0.0),
                    Augmentation(randaugment_ops=0, randaugment_magnitude=30)):
        assert augment.is_identity
        assert torch.equal(augment(images, torch.Generator().manual_seed(0)), images.float() / 255)
    floats = torch.rand(2, 1, 8, 8)
    assert Augmentation(color_jitter=0.0, randaugment_ops=0)(floats) is floats


# --- RandAugment --------------------------------------------------------------------------------

def test_randaugment_applies_each_drawn_op_to_its_image():
    n, height, width, magnitude = 160, 12, 10, 10  # non-square, to check the aspect terms
    images = torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(1))
    out = Augmentation(randaugment_ops=1, randaugment_magnitude=magnitude)(
        images, torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)
    ops = torch.randint(len(RANDAUGMENT_OPS), (n, 1), generator=replay)[:, 0]
    signs = torch.where(torch.rand(n, 1, generator=replay) < 0.5, -1.0, 1.0)[:, 0]
    assert set(ops.tolist()) == set(range(len(RANDAUGMENT_OPS)))  # every op is exercised
    for i in range(n):
        name, sign = RANDAUGMENT_OPS[ops[i]], signs[i].item()
        if name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
            expected = _warp_reference(images[i], _op_matrix(name, sign, magnitude, height, width))
        else:
            expected = _colour_op(name, images[i], sign, magnitude)
        assert torch.allclose(out[i], expected, atol=1e-5), (i, name, sign)


def test_randaugment_translation_moves_by_whole_pixels_with_zero_fill():
    # Magnitude 10 of 30 on a 20 pixel wide image: 0.45 * 1/3 * 20 = 3 pixels.
    images = torch.rand(200, 1, 4, 20, generator=torch.Generator().manual_seed(0))
    augment = Augmentation(randaugment_ops=1, randaugment_magnitude=10)
    out = augment(images, torch.Generator().manual_seed(2))
    replay = torch.Generator().manual_seed(2)
    ops = torch.randint(len(RANDAUGMENT_OPS), (200, 1), generator=replay)[:, 0]
    signs = torch.where(torch.rand(200, 1, generator=replay) < 0.5, -1, 1)[:, 0]
    moved = (ops == RANDAUGMENT_OPS.index("translate_x")).nonzero()[:, 0]
    assert len(moved) > 3
    for i in moved.tolist():
        if signs[i] > 0:  # output column c reads input column c + 3
            expected = torch.cat([images[i, ..., 3:], torch.zeros(1, 4, 3)], dim=-1)
        else:
            expected = torch.cat([torch.zeros(1, 4, 3), images[i, ..., :-3]], dim=-1)
        assert torch.allclose(out[i], expected, atol=1e-5)


def test_randaugment_composes_after_crop_flip_and_rotation_in_one_sample():
    n, height, width, magnitude = 40, 9, 11, 12
    images = torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(3))
    augment = Augmentation(crop_padding=2, horizontal_flip=True, rotation_degrees=15,
                           randaugment_ops=2, randaugment_magnitude=magnitude)
    out = augment(images, torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)
    angle = (torch.rand(n, generator=replay) * 2 - 1) * math.radians(15)
    shift = torch.randint(-2, 3, (n, 2), generator=replay)
    flip = torch.where(torch.rand(n, generator=replay) < 0.5, -1.0, 1.0)
    ops = torch.randint(len(RANDAUGMENT_OPS), (n, 2), generator=replay)
    signs = torch.where(torch.rand(n, 2, generator=replay) < 0.5, -1.0, 1.0)
    for i in range(n):
        cos, sin = math.cos(angle[i]), math.sin(angle[i])
        matrix = np.array([[flip[i].item() * cos, -flip[i].item() * sin, shift[i, 0].item()],
                           [sin, cos, shift[i, 1].item()], [0, 0, 1]])
        for slot in range(2):
            matrix = matrix @ _op_matrix(RANDAUGMENT_OPS[ops[i, slot]], signs[i, slot].item(),
                                         magnitude, height, width)
        expected = _warp_reference(images[i], matrix)
        for slot in range(2):  # then the colour ops, in the order drawn
            expected = _colour_op(RANDAUGMENT_OPS[ops[i, slot]], expected,
                                  signs[i, slot].item(), magnitude)
        assert torch.allclose(out[i], expected, atol=1e-5), i


def test_randaugment_at_magnitude_zero_changes_nothing_but_autocontrast():
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    images[:, :, 0, 0], images[:, :, 0, 1] = 0, 255  # every channel already spans [0, 1]
    augment = Augmentation(randaugment_ops=3, randaugment_magnitude=0)
    out = augment(images, torch.Generator().manual_seed(0))
    assert torch.allclose(out, images.float() / 255, atol=1e-5)


# --- Random erasing -----------------------------------------------------------------------------

def _erased_boxes(out: torch.Tensor, images: torch.Tensor) -> list[tuple[int, int] | None]:
    """Per image: (zero pixel count, their bounding box area, its height, its width), or None."""
    boxes = []
    for o, image in zip(out, images):
        zero = o == 0
        assert torch.equal(zero, zero[:1].expand_as(zero))  # erased in every channel alike
        assert torch.equal(o[~zero], image[~zero])  # the rest untouched
        rows, cols = zero[0].nonzero(as_tuple=True)
        if len(rows) == 0:
            boxes.append(None)
            continue
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        boxes.append((len(rows), height * width, height, width))
    return boxes


def test_erasing_zeroes_exactly_one_rectangle_of_the_stated_area():
    images = _positive_images(300, channels=3, height=32, width=32)
    out = Augmentation(random_erasing=1.0)(images, torch.Generator().manual_seed(0))
    boxes = _erased_boxes(out, images)
    assert all(box is not None for box in boxes)
    for count, box, height, width in boxes:
        assert count == box  # the zeros fill their bounding box: one rectangle
        assert ERASING_AREA[0] * 1024 <= count <= ERASING_AREA[1] * 1024
        assert 0.3 / 1.5 <= height / width <= 3.3 * 1.5  # the drawn aspect, up to rounding
    assert len({box for _, box, _, _ in boxes}) > 20  # sizes vary


def test_erasing_hits_images_with_the_stated_probability():
    images = _positive_images(4000, channels=1, height=8, width=8, seed=1)
    out = Augmentation(random_erasing=0.3)(images, torch.Generator().manual_seed(1))
    boxes = _erased_boxes(out, images)
    erased = [box for box in boxes if box is not None]
    assert abs(len(erased) / 4000 - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 4000)
    assert all(count == box and 2 <= count <= 21 for count, box, _, _ in erased)  # 2-33 % of 64


# --- The whole pipeline -------------------------------------------------------------------------

_EVERYTHING = Augmentation(crop_padding=4, horizontal_flip=True, rotation_degrees=20,
                           random_erasing=0.5, color_jitter=0.4, randaugment_ops=2,
                           randaugment_magnitude=14)


@pytest.mark.parametrize("images", [torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8),
                                    torch.rand(16, 1, 8, 8)], ids=["uint8 rgb 32", "float grey 8"])
def test_full_pipeline_is_seeded_and_stays_in_the_unit_range(images):
    out = _EVERYTHING(images, torch.Generator().manual_seed(11))
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, _EVERYTHING(images, torch.Generator().manual_seed(11)))
    assert not torch.equal(out, _EVERYTHING(images, torch.Generator().manual_seed(12)))


@pytest.mark.parametrize("field, value", [("random_erasing", 1.5), ("color_jitter", -0.1),
                                          ("randaugment_ops", -1), ("randaugment_magnitude", 31),
                                          ("crop_padding", -2)])
def test_out_of_range_settings_name_the_params_key(field, value):
    with pytest.raises(ValueError, match=f"augment::{field} must be"):
        Augmentation(**{field: value})
