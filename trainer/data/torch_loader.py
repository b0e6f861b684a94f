"""The classic input pipeline: a torch `DataLoader` whose worker processes crop and flip each image on the CPU.

This is the reference-style data path (per-sample transforms in workers, pinned host batches copied
to the device), kept so that benchmarks compare against it and so that datasets too large for the
device still stream. Workers draw nothing at random: every sample's crop corner and flip come from
`CpuLoader`'s epoch plan (see `batch_layout`), looked up by (epoch, position). The loader therefore
yields exactly `CpuLoader`'s batches, whatever the number of workers, and any mid-epoch batch can
be produced without the ones before it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import ConfigError
from .augment import crop_and_flip
from .batch_layout import BatchLayout, EpochPlanner, planned_batch_indices
from .cpu_loader import EpochPlan
from .dataset import ArrayDataset
from .gpu_loader import bytes_to_unit

# A sample is addressed by (epoch, position in that epoch's order).
SampleKey = tuple[int, int]


class PlannedImages(Dataset):
    """Image at (epoch, position), cropped and flipped as that epoch's plan says: (C, H, W) float32, label."""

    def __init__(self, dataset: ArrayDataset, planner: EpochPlanner, padding: int, augment: bool) -> None:
        self.dataset = dataset
        self.planner = planner
        self.padding = padding
        self.augment = augment
        # Each worker process draws the plan of an epoch once; only the latest epoch is kept.
        self._plan_epoch: int | None = None
        self._plan: EpochPlan | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def _epoch_plan(self, epoch: int) -> EpochPlan:
        if self._plan is None or self._plan_epoch != epoch:
            self._plan, self._plan_epoch = self.planner.plan(epoch), epoch
        return self._plan

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, position = key
        plan = self._epoch_plan(epoch)
        index = int(plan.order[position])
        image = torch.from_numpy(self.dataset.images[index]).permute(2, 0, 1)  # (C, H, W) uint8 view
        if self.augment:
            # crop_and_flip is batch-wise; a batch of one keeps this bit-identical to the other loaders.
            offset = torch.from_numpy(plan.offsets[position:position + 1])
            flip = torch.from_numpy(plan.flips[position:position + 1])
            image = crop_and_flip(image[None], offset, flip, self.padding)[0]
        return bytes_to_unit(image), torch.tensor(int(self.dataset.labels[index]), dtype=torch.int64)


class StackSamples:
    """Collate [(x, y), ...] into (x (B, C, H, W), y (B,)); an empty shard gives (0, C, H, W) and (0,)."""

    def __init__(self, image_shape: tuple[int, int, int]) -> None:
        self.image_shape = image_shape  # (C, H, W)

    def __call__(self, samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        # A rank's share of a partial last global batch can be empty (see `batch_layout`).
        if not samples:
            return torch.empty((0, *self.image_shape), dtype=torch.float32), torch.empty(0, dtype=torch.int64)
        return torch.stack([x for x, _ in samples]), torch.stack([y for _, y in samples])


class EpochBatchSampler(Sampler[list[SampleKey]]):
    """This rank's keys of batches start, start + 1, ... of one epoch; `set_position` before each pass.

    The DataLoader iterates its batch sampler in the main process at each `iter()`, so setting the
    position here reaches persistent workers too (like `DistributedSampler.set_epoch`).
    """

    def __init__(self, layout: BatchLayout) -> None:
        self.layout = layout
        self.epoch = 0
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for k in range(self.start, len(self.layout)):
            span = self.layout.span(k)
            yield [(self.epoch, position) for position in range(span.start, span.stop)]

    def __len__(self) -> int:
        return len(self.layout) - self.start


class TorchLoader:
    """Batches (x, y) on `device`: x float32 (B, C, H, W) in [0, 1], y int64 (B,); see `trainer.data.loaders`."""

    name = "torch"

    def __init__(self, dataset: ArrayDataset, batch_size: int, *, device: torch.device | str, shuffle: bool = False,
                 padding: int = 0, flip: bool = False, seed: int = 0, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0) -> None:
        if num_workers < 0:
            raise ConfigError(f"config field 'data.num_workers' = {num_workers!r}: expected an integer >= 0")
        self.layout = BatchLayout(len(dataset), batch_size, drop_last, rank, world_size)
        planner = self._planner = EpochPlanner(dataset, shuffle=shuffle, padding=padding, flip=flip, seed=seed)
        self.device = torch.device(device)
        _, height, width, channels = dataset.images.shape
        image_shape = (channels, height, width)
        self.sampler = EpochBatchSampler(self.layout)
        # Pinned host batches let the copy to the GPU run asynchronously (non_blocking below).
        self.pin_memory = self.device.type == "cuda"
        self.loader = DataLoader(PlannedImages(dataset, planner, padding, padding > 0 or flip),
                                 batch_sampler=self.sampler, collate_fn=StackSamples(image_shape),
                                 num_workers=num_workers, pin_memory=self.pin_memory,
                                 persistent_workers=num_workers > 0,
                                 # Each pass draws its workers' base seed; from the global generator, that
                                 # draw would shift the training's own random stream (PGD starts, dropout).
                                 generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.layout)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches start, start + 1, ... of `epoch`, exactly as a full pass would yield them."""
        self.layout.check_start(start)
        if epoch < 0:
            raise ConfigError(f"epoch {epoch!r}: expected an integer >= 0")
        return self._iterate(epoch, start)

    def batch_indices(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """(b,) int64 on the device: the dataset indices of the rows of batches start, start + 1, ... of `epoch`."""
        return planned_batch_indices(self._planner, self.layout, epoch, start, self.device)

    def _iterate(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Set inside the generator, at the first batch: two generators alive at once must not
        # overwrite each other's position before they start.
        self.sampler.set_position(epoch, start)
        for x, y in self.loader:
            yield (x.to(self.device, non_blocking=self.pin_memory),
                   y.to(self.device, non_blocking=self.pin_memory))
