"""Which positions of an epoch each rank's batch k covers, and the epoch's random draws at those positions.

Shared by the gpu, dali and torch loaders so that they yield exactly what `CpuLoader` yields. An
epoch's order, crop corners and flips are `CpuLoader.epoch_plan`'s, a function of (seed, epoch)
alone, so batch k never depends on batches 0..k-1 having been produced (exact mid-epoch resume).

Sharding: `batch_size` is the GLOBAL batch B; with `world_size` W, rank r receives the contiguous
slice [r * B / W, (r + 1) * B / W) of every global batch, so the ranks' batches concatenated in
rank order are the global batch, and every rank sees the same number of batches per epoch. A
partial last global batch (drop_last=False) is cut the same way, so its later ranks may receive
fewer rows, or none.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .cpu_loader import CpuLoader, EpochPlan


class EpochPlanner:
    """`CpuLoader.epoch_plan` for a source of len(source) points (an ArrayDataset or a list of files).

    The draws are delegated to `CpuLoader` itself rather than re-implemented, so the loaders can
    never drift from it; `epoch_plan` reads nothing of the source but its length. Building the
    planner checks padding and seed at once, not at the first epoch.
    """

    def __init__(self, source: Sized, *, shuffle: bool, padding: int, flip: bool, seed: int) -> None:
        self._cpu = CpuLoader(source, 1, shuffle=shuffle, padding=padding, flip=flip,  # type: ignore[arg-type]
                              seed=seed)

    def plan(self, epoch: int) -> EpochPlan:
        """Order (N,), crop corners (N, 2) and flips (N,) of `epoch`, indexed by position in the epoch."""
        return self._cpu.epoch_plan(epoch)


@dataclass(frozen=True)
class BatchLayout:
    """Epoch positions of this rank's share of each global batch."""

    count: int  # points per epoch
    batch_size: int  # global batch B
    drop_last: bool
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"config field 'data.batch_size' = {self.batch_size!r}: expected an integer >= 1")
        if self.world_size < 1:
            raise ConfigError(f"world size {self.world_size!r}: expected an integer >= 1")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank!r}: expected 0..{self.world_size - 1} (world size {self.world_size})")
        if self.batch_size % self.world_size:
            raise ConfigError(f"config field 'data.batch_size' = {self.batch_size!r}: expected a multiple of the "
                              f"world size {self.world_size} (it is the global batch, split evenly over the ranks)")

    @property
    def local_batch_size(self) -> int:
        """Rows of a full batch on one rank, B / W."""
        return self.batch_size // self.world_size

    def __len__(self) -> int:
        """Batches per epoch, the same on every rank."""
        full, rest = divmod(self.count, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def span(self, k: int) -> slice:
        """Epoch positions of this rank's rows of global batch k (clipped to the epoch's end)."""
        first = k * self.batch_size + self.rank * self.local_batch_size
        return slice(min(first, self.count), min(first + self.local_batch_size, self.count))

    def check_start(self, start: int) -> None:
        """A resume position must be a batch of this epoch (or its end, which yields nothing)."""
        total = len(self)
        if not 0 <= start <= total:
            raise ConfigError(f"start batch {start!r}: expected 0..{total} (batches per epoch)")


def planned_batch_indices(planner: EpochPlanner, layout: BatchLayout, epoch: int, start: int,
                          device: torch.device) -> Iterator[torch.Tensor]:
    """(b,) int64 tensors on `device`: the dataset indices of this rank's rows of batches start, start + 1, ... of
    `epoch`, row for row as the loader yields them; the epoch's order crosses to the device once."""
    layout.check_start(start)
    order = torch.from_numpy(planner.plan(epoch).order).to(device)  # (N,)
    return (order[layout.span(k)] for k in range(start, len(layout)))
