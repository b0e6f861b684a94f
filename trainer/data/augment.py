"""The standard augmentation: random crop from a zero-padded image, and horizontal flip.

Random draws and their application are separate so that a loader can draw a whole epoch's
parameters from its own generator up front, and so that the same draws apply on any device.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import dataset_spec

# Crop padding by image side when the dataset's registry entry leaves it unset.
_PADDING_BY_SIZE = {32: 4, 28: 2}


def augmentation_defaults(dataset_name: str, image_size: int) -> tuple[int, bool]:
    """(crop padding, flip) used when the config leaves them unset: the dataset's registry entry (`DatasetSpec`
    flip and crop_padding). Padding unset there is 4 for 32x32 and 2 for 28x28 images, and about an eighth of the
    side for other sizes.
    """
    spec = dataset_spec(dataset_name)
    padding = spec.crop_padding if spec.crop_padding is not None else _PADDING_BY_SIZE.get(image_size, image_size // 8)
    return padding, spec.flip


def draw_crop_offsets(rng: np.random.Generator, count: int, padding: int) -> np.ndarray:
    """Crop corners (count, 2) int64 as (row, col) in [0, 2 * padding] of the padded image."""
    if padding == 0:
        return np.zeros((count, 2), dtype=np.int64)
    return rng.integers(0, 2 * padding + 1, size=(count, 2), dtype=np.int64)


def draw_flips(rng: np.random.Generator, count: int, flip: bool) -> np.ndarray:
    """Flip flags (count,) bool, each set with probability 1/2 when `flip` is on."""
    if not flip:
        return np.zeros(count, dtype=bool)
    return rng.random(count) < 0.5


def crop_and_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor,
                  padding: int) -> torch.Tensor:
    """Crop each image at its own corner of the zero-padded batch, then mirror the flagged ones.

    images (B, C, H, W) of any dtype and device; offsets (B, 2) int64 crop corners (row, col) in the
    padded (H + 2p, W + 2p) image; flips (B,) bool. Returns a new (B, C, H, W) tensor.
    """
    batch, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding)) if padding > 0 else images
    offsets, flips = offsets.to(device), flips.to(device)
    rows = offsets[:, :1] + torch.arange(height, device=device)  # (B, H)
    cols = offsets[:, 1:] + torch.arange(width, device=device)  # (B, W)
    # Reading the columns right to left is the flip.
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    sample = torch.arange(batch, device=device)[:, None, None, None]
    channel = torch.arange(channels, device=device)[None, :, None, None]
    return padded[sample, channel, rows[:, None, :, None], cols[:, None, None, :]]
