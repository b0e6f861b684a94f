"""The training loader behind `data.loader` (auto | cpu | gpu | dali | torch), and the contract all of them keep.

Loader contract (CpuLoader, GpuLoader, DaliLoader, TorchLoader):
- `len(loader)`: batches per epoch, the same on every rank.
- `loader.batches(epoch, start=0)`: yields (x, y) for batches start, start + 1, ... of `epoch`, equal to
  the tail of a full pass from batch 0 (exact mid-epoch resume); x float32 (B, C, H, W) in [0, 1]
  (never normalised: models normalise), y int64 (B,). The gpu, dali and torch loaders put both on
  the target `device`; the cpu loader yields host tensors for the training loop to move.
- `loader.batch_indices(epoch, start=0)`: yields the (B,) int64 dataset indices of the same batches' rows, on the
  device where y is (objectives with per-sample state key it by them: IAT).
- Everything random (order, crop corners, flips) is a function of (seed, epoch) only, and for the
  same seed the cpu, gpu, torch and (on the CPU) dali loaders yield the same batches bit for bit.
- Constructor keywords shared by all: shuffle, padding, flip, seed, drop_last, rank, world_size.
  `batch_size` is the GLOBAL batch B; rank r receives the contiguous slice [r * B / W, (r + 1) * B / W)
  of every global batch (W = world_size, which must divide B).
- drop_last=True drops the partial last global batch (training does; DALI's LastBatchPolicy.DROP).

Auto: the gpu loader when the device is CUDA and the uint8 dataset fits in GPU_RESIDENT_FRACTION of
the device's memory, else the cpu loader. Auto never picks dali or torch: those are explicit choices.
"""

from __future__ import annotations

import logging

import torch

from ..config import LOADERS, DataConfig
from ..errors import ConfigError
from .cpu_loader import CpuLoader
from .dali_loader import DaliLoader
from .dataset import ArrayDataset
from .gpu_loader import GpuLoader
from .torch_loader import TorchLoader

# Share of the device's total memory the resident dataset may take under `auto`; the rest is left
# to the networks, activations and attack buffers (CIFAR-10's 50k training images are 150 MB).
GPU_RESIDENT_FRACTION = 0.25

log = logging.getLogger(__name__)

TrainLoader = CpuLoader | GpuLoader | DaliLoader | TorchLoader


def dataset_bytes(dataset: ArrayDataset) -> int:
    """Bytes of the uint8 images and int64 labels, what the gpu loader keeps on the device."""
    return dataset.images.nbytes + dataset.labels.nbytes


def choose_loader(loader: str, dataset: ArrayDataset, device: torch.device) -> tuple[str, str]:
    """(loader to use, why) for the configured `data.loader`; `auto` resolves to gpu or cpu."""
    if loader not in LOADERS:
        raise ConfigError(f"config field 'data.loader' = {loader!r}: expected one of {LOADERS}")
    if loader != "auto":
        return loader, "data.loader"
    if device.type != "cuda":
        return "cpu", f"auto: the device is {device}, not CUDA"
    needed = dataset_bytes(dataset)
    budget = int(GPU_RESIDENT_FRACTION * torch.cuda.get_device_properties(device).total_memory)
    if needed > budget:
        return "cpu", (f"auto: the dataset's {needed / 2**20:.0f} MiB exceed {GPU_RESIDENT_FRACTION:.0%} of "
                       f"{device}'s memory ({budget / 2**20:.0f} MiB)")
    return "gpu", f"auto: the dataset's {needed / 2**20:.0f} MiB fit on {device}"


def build_train_loader(data_cfg: DataConfig, dataset: ArrayDataset, *, device: torch.device | str, seed: int,
                       padding: int, flip: bool, rank: int = 0, world_size: int = 1) -> TrainLoader:
    """The shuffled, augmented, drop_last training loader of `data_cfg.loader`; logs the choice once."""
    device = torch.device(device)
    loader, reason = choose_loader(data_cfg.loader, dataset, device)
    log.info("data loader: %s (%s)", loader, reason)
    common = dict(shuffle=True, padding=padding, flip=flip, seed=seed, drop_last=True)
    sharding = dict(rank=rank, world_size=world_size)
    if loader == "cpu":
        return CpuLoader(dataset, data_cfg.batch_size, **common, **sharding)
    if loader == "gpu":
        return GpuLoader(dataset, data_cfg.batch_size, device=device, **common, **sharding)
    if loader == "dali":
        return DaliLoader(dataset, data_cfg.batch_size, device=device, num_threads=max(1, data_cfg.num_workers),
                          **common, **sharding)
    return TorchLoader(dataset, data_cfg.batch_size, device=device, num_workers=data_cfg.num_workers,
                       **common, **sharding)
