"""Seeded, resumable mini-batches of an `ArrayDataset`, augmented on the CPU.

Everything random about epoch e (the shuffle order, every crop corner and flip) is drawn up front
from a generator seeded with (seed, e) alone, indexed by position in the epoch. Batch k therefore
does not depend on batches 0..k-1 having been produced, which is what exact resume relies on.

Data-parallel sharding: `batch_size` is the GLOBAL batch B. With `world_size` W, rank r receives the
contiguous slice [r B/W, (r+1) B/W) of every global batch, so every rank follows the same epoch plan,
sees the same number of batches, and the ranks' batches concatenated in rank order are the global
batch (augmentation included). A partial last global batch (drop_last=False) is cut the same way,
so its later ranks may receive fewer rows, or none.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from .augment import crop_and_flip, draw_crop_offsets, draw_flips
from .dataset import ArrayDataset

# Entropy word that keeps the loader's random streams apart from the split's for the same seed.
_LOADER_STREAM = 0x10AD


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's random draws, indexed by position in the epoch."""

    order: np.ndarray  # (N,) int64 dataset indices in visiting order
    offsets: np.ndarray  # (N, 2) int64 crop corners (row, col) in the padded image
    flips: np.ndarray  # (N,) bool


class CpuLoader:
    """Batches (x, y): x float32 (b, C, H, W) in [0, 1], y int64 (b,), b = B / world_size rows of each global
    batch of B (fewer in a partial last batch). Never touches global RNG state."""

    def __init__(self, dataset: ArrayDataset, batch_size: int, *, shuffle: bool = False, padding: int = 0,
                 flip: bool = False, seed: int = 0, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size {batch_size!r}: expected an integer >= 1")
        if world_size < 1:
            raise ConfigError(f"world size {world_size!r}: expected an integer >= 1")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank!r}: expected 0..{world_size - 1} (world size {world_size})")
        if batch_size % world_size:
            raise ConfigError(f"config field 'data.batch_size' = {batch_size!r}: expected a multiple of the "
                              f"world size {world_size} (it is the global batch, split evenly over the ranks)")
        if padding < 0:
            raise ConfigError(f"crop padding {padding!r}: expected an integer >= 0")
        if seed < 0:
            raise ConfigError(f"loader seed {seed!r}: expected an integer >= 0")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.padding = padding
        self.flip = flip
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.local_batch_size = batch_size // world_size

    def __len__(self) -> int:
        """Batches per epoch (global batches: the same on every rank)."""
        full, rest = divmod(len(self.dataset), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def epoch_plan(self, epoch: int) -> EpochPlan:
        """The shuffle order and augmentation draws of `epoch`, a function of (seed, epoch) only."""
        if epoch < 0:
            raise ConfigError(f"epoch {epoch!r}: expected an integer >= 0")
        count = len(self.dataset)
        # Separate child streams: the order does not change when padding or flip are switched.
        order_seq, crop_seq, flip_seq = np.random.SeedSequence([_LOADER_STREAM, self.seed, epoch]).spawn(3)
        order = (np.random.default_rng(order_seq).permutation(count) if self.shuffle
                 else np.arange(count, dtype=np.int64))
        offsets = draw_crop_offsets(np.random.default_rng(crop_seq), count, self.padding)
        flips = draw_flips(np.random.default_rng(flip_seq), count, self.flip)
        return EpochPlan(order.astype(np.int64), offsets, flips)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches start, start + 1, ... of `epoch`, exactly as a full pass would yield them."""
        total = len(self)
        if not 0 <= start <= total:
            raise ConfigError(f"start batch {start!r}: expected 0..{total} (batches per epoch)")
        # Checked here rather than inside the generator, so bad arguments fail at the call.
        return self._iterate(self.epoch_plan(epoch), start, total)

    def batch_indices(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """(b,) int64 host tensors: the dataset indices of the rows of batches start, start + 1, ... of `epoch`,
        row for row as `batches` yields them (for objectives with per-sample state, IAT)."""
        total = len(self)
        if not 0 <= start <= total:
            raise ConfigError(f"start batch {start!r}: expected 0..{total} (batches per epoch)")
        order = self.epoch_plan(epoch).order
        return (torch.from_numpy(order[self._span(k)]) for k in range(start, total))

    def _span(self, k: int) -> slice:
        """Epoch positions of this rank's rows of global batch k, clipped to the epoch's end."""
        count = len(self.dataset)
        first = k * self.batch_size + self.rank * self.local_batch_size
        return slice(min(first, count), min(first + self.local_batch_size, count))

    def _iterate(self, plan: EpochPlan, start: int,
                 total: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        augment = self.padding > 0 or self.flip
        for k in range(start, total):
            span = self._span(k)
            indices = plan.order[span]
            # (B, H, W, C) uint8 -> (B, C, H, W) view; augmenting uint8 moves a quarter of the bytes.
            images = torch.from_numpy(self.dataset.images[indices]).permute(0, 3, 1, 2)
            if augment:
                images = crop_and_flip(images, torch.from_numpy(plan.offsets[span]),
                                       torch.from_numpy(plan.flips[span]), self.padding)
            x = images.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
            y = torch.from_numpy(self.dataset.labels[indices])
            yield x, y
