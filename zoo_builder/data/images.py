"""Image data held as tensors, and batched augmentation with plain torch ops (no torchvision)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass
class ImageData:
    """Train and test images in [0, 1], shape (N, C, H, W), with int64 labels.

    Images stay unnormalized so augmentation pads and rotates with black (0), as torchvision
    does on PIL images; :meth:`normalize` applies the per-channel train mean and std.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    name: str

    def __post_init__(self):
        self.mean = self.train_x.mean(dim=(0, 2, 3), keepdim=True)
        self.std = self.train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def to(self, device: torch.device | str) -> "ImageData":
        moved = ImageData(self.train_x.to(device), self.train_y.to(device), self.test_x.to(device),
                          self.test_y.to(device), self.num_classes, self.name)
        moved.mean, moved.std = self.mean.to(device), self.std.to(device)
        return moved


@dataclass(frozen=True)
class Augmentation:
    """Random crop with zero padding, horizontal flip and rotation, applied to a whole batch.

    The three are composed into one affine map per image and applied with a single
    ``grid_sample`` call: crop = an integer shift in [-padding, padding] pixels with zero
    fill, flip with probability 1/2, rotation by an angle drawn uniformly in
    [-rotation_degrees, rotation_degrees].
    """

    crop_padding: int = 0
    horizontal_flip: bool = False
    rotation_degrees: float = 0.0

    @property
    def is_identity(self) -> bool:
        return self.crop_padding == 0 and not self.horizontal_flip and self.rotation_degrees == 0

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.is_identity:
            return images
        n, _, height, width = images.shape
        options = {"generator": generator, "device": generator.device if generator else "cpu"}
        angle = (torch.rand(n, **options) * 2 - 1) * math.radians(self.rotation_degrees)
        shift = torch.randint(-self.crop_padding, self.crop_padding + 1, (n, 2), **options)
        flip = torch.ones(n, device=options["device"])
        if self.horizontal_flip:
            flip = torch.where(torch.rand(n, **options) < 0.5, -1.0, 1.0)
        angle, shift, flip = (t.to(images.device, torch.float32) for t in (angle, shift, flip))
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Output pixel -> input pixel, in grid_sample's [-1, 1] coordinates: un-rotate (in pixel
        # units, hence the aspect terms), un-flip, then shift by the crop offset.
        aspect = width / height
        theta = torch.stack([
            torch.stack([flip * cos, -flip * sin / aspect, 2 * shift[:, 0] / width], dim=1),
            torch.stack([sin * aspect, cos, 2 * shift[:, 1] / height], dim=1),
        ], dim=1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False)
