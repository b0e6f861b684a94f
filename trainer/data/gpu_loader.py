"""Device-resident batches: the whole uint8 dataset lives on the device, augmentation is batch-wise there.

The dataset crosses the bus once; every step is then a gather of B rows plus the crop / flip gather
of `augment.crop_and_flip`, with no host work but slicing the epoch plan. The plan is
`CpuLoader`'s (see `batch_layout`), so for the same seed this loader yields exactly the batches of
`CpuLoader`, and any mid-epoch batch can be produced without the ones before it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .augment import crop_and_flip
from .batch_layout import BatchLayout, EpochPlanner, planned_batch_indices
from .dataset import ArrayDataset

# Per device: pixel byte b -> b / 255 in fp32 (256 values), computed once on the CPU.
_UNIT_TABLES: dict[torch.device, torch.Tensor] = {}


def unit_table(device: torch.device | str) -> torch.Tensor:
    """(256,) fp32 on `device`: entry b is the correctly rounded b / 255.

    Divided on the CPU, which divides exactly; CUDA's division by a Python scalar multiplies by the
    reciprocal instead, which rounds 126 of the 256 byte values differently. A lookup is exact on both.
    """
    device = torch.device(device)
    table = _UNIT_TABLES.get(device)
    if table is None:
        table = _UNIT_TABLES[device] = (torch.arange(256, dtype=torch.float32) / 255.0).to(device)
    return table


def bytes_to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any shape, any strides) -> contiguous fp32 in [0, 1], bit for bit the CPU's images / 255."""
    return unit_table(images.device)[images.to(torch.int32, memory_format=torch.contiguous_format)]


class GpuLoader:
    """Batches (x, y) on `device`: x float32 (B, C, H, W) in [0, 1], y int64 (B,); see `trainer.data.loaders`."""

    name = "gpu"

    def __init__(self, dataset: ArrayDataset, batch_size: int, *, device: torch.device | str, shuffle: bool = False,
                 padding: int = 0, flip: bool = False, seed: int = 0, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1) -> None:
        self.layout = BatchLayout(len(dataset), batch_size, drop_last, rank, world_size)
        self._planner = EpochPlanner(dataset, shuffle=shuffle, padding=padding, flip=flip, seed=seed)
        self.device = torch.device(device)
        self.padding = padding
        self.augment = padding > 0 or flip
        # Kept (N, H, W, C) as read: a row gather then copies H * W * C contiguous bytes per image.
        self.images = torch.from_numpy(dataset.images).to(self.device)
        self.labels = torch.from_numpy(dataset.labels).to(self.device)

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.layout)

    @property
    def resident_bytes(self) -> int:
        """Device memory held by the dataset."""
        return self.images.numel() * self.images.element_size() + self.labels.numel() * self.labels.element_size()

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches start, start + 1, ... of `epoch`, exactly as a full pass would yield them."""
        self.layout.check_start(start)
        plan = self._planner.plan(epoch)
        # The epoch's draws go to the device once (25 bytes per image), not per batch.
        order = torch.from_numpy(plan.order).to(self.device)
        offsets = torch.from_numpy(plan.offsets).to(self.device)
        flips = torch.from_numpy(plan.flips).to(self.device)
        return self._iterate(order, offsets, flips, start)

    def batch_indices(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """(b,) int64 on the device: the dataset indices of the rows of batches start, start + 1, ... of `epoch`."""
        return planned_batch_indices(self._planner, self.layout, epoch, start, self.device)

    def _iterate(self, order: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor,
                 start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for k in range(start, len(self.layout)):
            span = self.layout.span(k)
            indices = order[span]
            # (B, H, W, C) uint8 -> (B, C, H, W) view; cropping uint8 moves a quarter of the bytes of float.
            images = self.images[indices].permute(0, 3, 1, 2)
            if self.augment:
                images = crop_and_flip(images, offsets[span], flips[span], self.padding)
            yield bytes_to_unit(images), self.labels[indices]
