"""Per-channel input normalisation as the model's first layer (RobustBench convention).

Models take pixels in [0,1] so that eps is always in pixel space; the dataset's mean and std live
here as buffers, so they travel with the state_dict and with every deep copy of the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std per channel; x is (N, C, H, W) in [0,1], mean and std are (1, C, 1, 1) buffers."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std) or len(mean) == 0:
            raise ValueError(f"Normalize: mean {tuple(mean)} and std {tuple(std)} need one value per channel")
        if any(s <= 0 for s in std):
            raise ValueError(f"Normalize: std {tuple(std)} must be positive")
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
