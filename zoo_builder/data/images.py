"""Image data held as tensors, and batched augmentation with plain torch ops (no torchvision)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass
class ImageData:
    """Train and test images, shape (N, C, H, W), with int64 labels (or any (N, C, ...)
    tensors: a table is (N, features), normalized per feature).

    Images are stored as uint8 (0-255, as the data sets ship them: CIFAR-10 is 150 MB this way,
    four times less than as floats, so it stays on the GPU) or as floats in [0, 1]. They stay
    unnormalized so augmentation pads and rotates with black (0), as torchvision does on PIL
    images; :meth:`normalize` turns a batch into floats with the per-channel train mean and std.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    name: str

    def __post_init__(self):
        # Moments per channel (dimension 1: image channels, or the features of a table), in
        # float64 and a chunk at a time (uint8 sets can be large).
        reduce = [0, *range(2, self.train_x.dim())]
        total = torch.zeros(self.train_x.shape[1], dtype=torch.float64)
        squares = torch.zeros_like(total)
        for start in range(0, len(self.train_x), 4096):
            chunk = as_float_images(self.train_x[start:start + 4096]).double()
            total += chunk.sum(dim=reduce).cpu()
            squares += chunk.square().sum(dim=reduce).cpu()
        count = self.train_x[:, :1].numel()
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(0).sqrt() * (count / max(count - 1, 1)) ** 0.5
        shape = (1, -1, *[1] * (self.train_x.dim() - 2))
        self.mean = mean.float().view(shape).to(self.train_x.device)
        self.std = std.float().clamp_min(1e-6).view(shape).to(self.train_x.device)

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Float model inputs from a batch of stored (uint8 or float) images."""
        return (as_float_images(images) - self.mean) / self.std

    def to(self, device: torch.device | str) -> "ImageData":
        moved = ImageData(self.train_x.to(device), self.train_y.to(device), self.test_x.to(device),
                          self.test_y.to(device), self.num_classes, self.name)
        moved.mean, moved.std = self.mean.to(device), self.std.to(device)
        return moved


def as_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (0-255) as floats in [0, 1]; float images unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images


#: RandAugment's operations, drawn uniformly. Equalize is left out: a per-image histogram
#: equalization does not batch into plain tensor ops.
RANDAUGMENT_OPS = ("identity", "brightness", "contrast", "color", "sharpness", "posterize",
                   "solarize", "autocontrast", "rotate", "shear_x", "shear_y", "translate_x",
                   "translate_y")
_OP = {name: index for index, name in enumerate(RANDAUGMENT_OPS)}

#: Random erasing: the rectangle's share of the image area, and its height / width ratio.
ERASING_AREA = (0.02, 0.33)
ERASING_ASPECT = (0.3, 3.3)
_ERASING_TRIES = 10


@dataclass(frozen=True)
class Augmentation:
    """Batched data augmentation with plain torch ops: one call per batch, no loop over images.

    Images are uint8 (0-255) or floats in [0, 1]; the output is floats in [0, 1]. Every field
    is off by default, and each becomes an ``augment::<field>`` key in params.json.

    1. Geometry, as one affine map per image applied by a single bilinear ``grid_sample`` with
       zero (black) fill: crop = an integer shift in [-crop_padding, crop_padding] pixels;
       horizontal flip with probability 1/2; rotation by an angle drawn uniformly in
       [-rotation_degrees, rotation_degrees]; then RandAugment's geometric ops.
    2. Colours: RandAugment's photometric ops (in the order drawn), then colour jitter with
       strength s = ``color_jitter``: brightness, contrast and saturation, in this order, each
       with a factor drawn uniformly in [1 - s, 1 + s] per image (see :func:`adjust_brightness`
       and its neighbours; saturation leaves 1-channel images unchanged).
    3. Random erasing: with probability ``random_erasing`` per image, one rectangle covering
       2-33 % of the image (exactly, in whole pixels), of height / width ratio drawn
       log-uniformly in [0.3, 3.3] (approximately, after rounding), is set to zero (black).
       The fill is zero in [0, 1] pixel space, before normalization (torchvision erases after
       ``Normalize``, where zero means the mean colour). As in torchvision, a rectangle is
       drawn up to 10 times until it fits inside the image; an image where none fits is
       left unerased.

    RandAugment (Cubuk et al. 2020): ``randaugment_ops`` = N operations per image drawn
    uniformly (with replacement) from :data:`RANDAUGMENT_OPS`, each at magnitude
    M = ``randaugment_magnitude`` out of 30 (m = M / 30), with a random sign where it has one:
    brightness, contrast, color (saturation) and sharpness factors 1 +- 0.9 m; posterize to
    8 - round(4 m) bits; solarize above 1 - m; autocontrast (no magnitude); rotate +- 30 m
    degrees; shear x / y by +- 0.3 m; translate x / y by +- 0.45 m of the width / height.
    Geometric ops use bilinear rather than nearest interpolation, composed with the crop.

    Random numbers are drawn from ``generator`` in this order, each block only when its
    augmentation is on: angle (n), crop shift (n, 2), flip (n); RandAugment op indices
    (n, N) and signs (n, N); colour jitter factors (3, n); erasing decision (n), areas
    (n, 10), log aspect ratios (n, 10), top (n), left (n).
    """

    crop_padding: int = 0
    horizontal_flip: bool = False
    rotation_degrees: float = 0.0
    random_erasing: float = 0.0
    color_jitter: float = 0.0
    randaugment_ops: int = 0
    randaugment_magnitude: int = 9

    def __post_init__(self):
        checks = [("crop_padding", self.crop_padding >= 0, "a whole number >= 0"),
                  ("random_erasing", 0 <= self.random_erasing <= 1, "a probability in [0, 1]"),
                  ("color_jitter", 0 <= self.color_jitter <= 1, "a strength in [0, 1]"),
                  ("randaugment_ops", self.randaugment_ops >= 0
                   and int(self.randaugment_ops) == self.randaugment_ops, "a whole number >= 0"),
                  ("randaugment_magnitude", 0 <= self.randaugment_magnitude <= 30,
                   "a magnitude in [0, 30]")]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"augment::{name} must be {expected}; got {getattr(self, name)!r}")

    @property
    def _crop_flip_rotate(self) -> bool:
        return self.crop_padding != 0 or bool(self.horizontal_flip) or self.rotation_degrees != 0

    @property
    def is_identity(self) -> bool:
        return (not self._crop_flip_rotate and self.randaugment_ops == 0
                and self.color_jitter == 0 and self.random_erasing == 0)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        images = as_float_images(images)
        if self.is_identity:
            return images
        n, _, height, width = images.shape
        options = {"generator": generator, "device": generator.device if generator else "cpu"}
        # Output pixel -> input pixel maps, (n, 3, 3) in pixel units about the image centre.
        geometry = None
        if self._crop_flip_rotate:
            geometry = self._crop_flip_rotate_matrix(n, options, images.device)
        ops = signs = None
        if self.randaugment_ops > 0:
            ops = torch.randint(len(RANDAUGMENT_OPS), (n, int(self.randaugment_ops)), **options)
            signs = torch.where(torch.rand(ops.shape, **options) < 0.5, -1.0, 1.0)
            ops, signs = ops.to(images.device), signs.to(images.device, torch.float32)
            for slot in range(ops.shape[1]):  # later ops act on the output of earlier ones
                step = self._randaugment_matrix(ops[:, slot], signs[:, slot], height, width)
                geometry = step if geometry is None else geometry @ step
        if geometry is not None:
            theta = _grid_theta(geometry, height, width)
            grid = F.affine_grid(theta, list(images.shape), align_corners=False)
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                                   align_corners=False)
        if ops is not None:
            for slot in range(ops.shape[1]):
                images = self._randaugment_colours(images, ops[:, slot], signs[:, slot])
        if self.color_jitter > 0:
            factors = 1 + self.color_jitter * (torch.rand(3, n, **options) * 2 - 1)
            brightness, contrast, saturation = factors.to(images.device, torch.float32)
            images = adjust_brightness(images, brightness)
            images = adjust_contrast(images, contrast)
            images = adjust_saturation(images, saturation)
        if self.random_erasing > 0:
            erased = self._erasing_mask(images.shape, options, images.device)
            images = images.masked_fill(erased, 0.0)
        return images

    def _crop_flip_rotate_matrix(self, n: int, options: dict, device: torch.device) -> torch.Tensor:
        angle = (torch.rand(n, **options) * 2 - 1) * math.radians(self.rotation_degrees)
        shift = torch.randint(-self.crop_padding, self.crop_padding + 1, (n, 2), **options)
        flip = torch.ones(n, device=options["device"])
        if self.horizontal_flip:
            flip = torch.where(torch.rand(n, **options) < 0.5, -1.0, 1.0)
        angle, shift, flip = (t.to(device, torch.float32) for t in (angle, shift, flip))
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Un-rotate, un-flip, then shift by the crop offset.
        zero, one = torch.zeros_like(cos), torch.ones_like(cos)
        return torch.stack([torch.stack([flip * cos, -flip * sin, shift[:, 0]], dim=1),
                            torch.stack([sin, cos, shift[:, 1]], dim=1),
                            torch.stack([zero, zero, one], dim=1)], dim=1)

    def _randaugment_matrix(self, ops: torch.Tensor, signs: torch.Tensor, height: int,
                            width: int) -> torch.Tensor:
        m = self.randaugment_magnitude / 30

        def amount(name: str, scale: float) -> torch.Tensor:
            return torch.where(ops == _OP[name], signs * scale, torch.zeros_like(signs))

        # At most one of these is nonzero per image, so one matrix form covers all five ops.
        angle = amount("rotate", math.radians(30 * m))
        shear_x, shear_y = amount("shear_x", 0.3 * m), amount("shear_y", 0.3 * m)
        shift_x = amount("translate_x", 0.45 * m * width)
        shift_y = amount("translate_y", 0.45 * m * height)
        cos, sin = torch.cos(angle), torch.sin(angle)
        zero, one = torch.zeros_like(cos), torch.ones_like(cos)
        return torch.stack([torch.stack([cos, shear_x - sin, shift_x], dim=1),
                            torch.stack([sin + shear_y, cos, shift_y], dim=1),
                            torch.stack([zero, zero, one], dim=1)], dim=1)

    def _randaugment_colours(self, images: torch.Tensor, ops: torch.Tensor,
                             signs: torch.Tensor) -> torch.Tensor:
        m = self.randaugment_magnitude / 30
        factor = 1 + 0.9 * m * signs
        candidates = {
            "brightness": lambda: adjust_brightness(images, factor),
            "contrast": lambda: adjust_contrast(images, factor),
            "color": lambda: adjust_saturation(images, factor),
            "sharpness": lambda: adjust_sharpness(images, factor),
            "posterize": lambda: posterize(images, 8 - round(4 * m)),
            "solarize": lambda: solarize(images, 1 - m),
            "autocontrast": lambda: autocontrast(images),
        }
        out = images
        for name, op in candidates.items():
            out = torch.where((ops == _OP[name]).view(-1, 1, 1, 1), op(), out)
        return out

    def _erasing_mask(self, shape: torch.Size, options: dict, device: torch.device) -> torch.Tensor:
        """(n, 1, H, W) boolean mask of the erased rectangles."""
        n, _, height, width = shape
        erase = torch.rand(n, **options) < self.random_erasing
        pixels = height * width
        low, high = ERASING_AREA[0] * pixels, ERASING_AREA[1] * pixels
        area = low + (high - low) * torch.rand(n, _ERASING_TRIES, **options)
        log_low, log_high = math.log(ERASING_ASPECT[0]), math.log(ERASING_ASPECT[1])
        log_aspect = log_low + (log_high - log_low) * torch.rand(n, _ERASING_TRIES, **options)
        aspect = torch.exp(log_aspect)
        h = torch.sqrt(area * aspect).round().clamp_min(1)
        # The width that keeps the area nearest the drawn one and inside [low, high] pixels.
        w_min, w_max = torch.ceil(low / h), torch.floor(high / h)
        w = torch.round(area / h).clamp(w_min, w_max)
        fits = (h < height) & (w < width) & (w >= 1) & (w_min <= w_max)
        first = fits.float().argmax(dim=1, keepdim=True)  # the first try that fits
        erase &= fits.any(dim=1)
        h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
        top = torch.floor(torch.rand(n, **options) * (height - h + 1))
        left = torch.floor(torch.rand(n, **options) * (width - w + 1))
        erase, h, w, top, left = (t.to(device) for t in (erase, h, w, top, left))
        rows = torch.arange(height, device=device).view(1, -1)
        cols = torch.arange(width, device=device).view(1, -1)
        in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
        in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
        return (in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None])[:, None]


def _grid_theta(matrix: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(n, 2, 3) ``affine_grid`` matrices in [-1, 1] coordinates from (n, 3, 3) pixel-unit maps
    about the image centre (hence the aspect terms)."""
    aspect = width / height
    rows = [[matrix[:, 0, 0], matrix[:, 0, 1] / aspect, 2 * matrix[:, 0, 2] / width],
            [matrix[:, 1, 0] * aspect, matrix[:, 1, 1], 2 * matrix[:, 1, 2] / height]]
    return torch.stack([torch.stack(row, dim=1) for row in rows], dim=1)


# Batched photometric ops on float images in [0, 1]. ``factor`` is a number or one value per
# image; results are clamped to [0, 1], as torchvision does for float images.

def _per_image(value: torch.Tensor | float, images: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=images.dtype, device=images.device).reshape(-1, 1, 1, 1)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma: ITU-R 601 weights for RGB, the channel mean for other channel counts."""
    if images.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
        return (images * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    return images.mean(dim=1, keepdim=True)


def blend(images: torch.Tensor, base: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """``base + factor * (images - base)``, clamped: factor 1 keeps the images, 0 gives base."""
    return (base + _per_image(factor, images) * (images - base)).clamp(0, 1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Pixels times ``factor`` (a blend with black)."""
    return (images * _per_image(factor, images)).clamp(0, 1)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """A blend with the image's mean grey level."""
    return blend(images, grayscale(images).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """A blend with the image's grey version; 1-channel images are returned unchanged."""
    if images.shape[1] == 1:
        return images
    return blend(images, grayscale(images), factor)


def adjust_sharpness(images: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """A blend with a smoothed image (3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, border
    pixels kept, as PIL does): factor < 1 blurs, factor > 1 sharpens."""
    n, channels, height, width = images.shape
    smooth = images.clone()
    if height >= 3 and width >= 3:
        kernel = torch.ones(1, 1, 3, 3, dtype=images.dtype, device=images.device)
        kernel[0, 0, 1, 1] = 5
        inner = F.conv2d(images.reshape(n * channels, 1, height, width), kernel / 13)
        smooth[:, :, 1:-1, 1:-1] = inner.reshape(n, channels, height - 2, width - 2)
    return blend(images, smooth, factor)


def posterize(images: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the top ``bits`` (1..8) bits of each 8-bit pixel value."""
    if not 1 <= bits <= 8:
        raise ValueError(f"posterize keeps 1..8 bits; got {bits}")
    step = 2 ** (8 - bits)
    return torch.floor(torch.round(images * 255) / step) * step / 255


def solarize(images: torch.Tensor, threshold: float) -> torch.Tensor:
    """Invert (1 - x) the pixels strictly above ``threshold``: threshold 1 changes nothing."""
    return torch.where(images > threshold, 1 - images, images)


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each image to span [0, 1]; constant channels stay as they are."""
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    spread = high > low
    scale = torch.where(spread, 1 / (high - low).clamp_min(1e-12), torch.ones_like(high))
    low = torch.where(spread, low, torch.zeros_like(low))
    return ((images - low) * scale).clamp(0, 1)
