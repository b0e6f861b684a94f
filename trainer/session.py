"""What `train`, `eval` and `export` all need: the data splits, a model factory and a built method."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainer.checkpoint import load_checkpoint
from trainer.config import RunConfig, config_from_dict
from trainer.data import ArrayDataset, DataSplits, load_splits
from trainer.errors import CheckpointError
from trainer.methods import Method, build_method
from trainer.models import build_model
from trainer.runtime import resolve_device


@dataclass
class Session:
    cfg: RunConfig
    device: torch.device
    splits: DataSplits
    method: Method


def model_metadata(cfg: RunConfig, dataset: ArrayDataset) -> dict:
    """Everything needed to rebuild the model without the dataset (kept in exports)."""
    return {
        "model": {"arch": cfg.model.arch, "dropout": cfg.model.dropout, "depth": cfg.model.depth,
                  "widen": cfg.model.widen},
        "num_classes": dataset.num_classes,
        "in_channels": dataset.channels,
        "image_size": dataset.image_size,
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "dataset": cfg.data.dataset,
        "input_range": [0.0, 1.0],
        "threat_model": {"norm": cfg.attack.norm, "eps": cfg.attack.eps},
    }


def open_session(cfg: RunConfig) -> Session:
    device = resolve_device(cfg.train.device)
    splits = load_splits(cfg.data, cfg.train.seed)
    ref = splits.train

    def model_factory() -> torch.nn.Module:
        return build_model(cfg.model, num_classes=ref.num_classes, in_channels=ref.channels,
                           image_size=ref.image_size, mean=ref.mean, std=ref.std)

    # All networks of a method come from one initialisation drawn right after seeding.
    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg, model_factory, device)
    return Session(cfg, device, splits, method)


def load_networks(method: Method, state: dict, source: str) -> None:
    nets = method.networks()
    saved = state["networks"]
    if set(saved) != set(nets):
        raise CheckpointError(f"checkpoint {source}: holds networks {sorted(saved)} but method "
                              f"'{method.name}' has {sorted(nets)}")
    for name, net in nets.items():
        try:
            net.load_state_dict(saved[name])
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {source}: network '{name}' does not fit the configured "
                                  f"model ({str(exc).splitlines()[0]})") from None


def session_from_checkpoint(path: str, device: str | None = None) -> tuple[Session, dict]:
    """Rebuild the run a checkpoint came from and load its networks (for eval and export)."""
    state = load_checkpoint(path)
    cfg_dict = state["config"]
    if device is not None:
        cfg_dict = {**cfg_dict, "train": {**cfg_dict["train"], "device": device}}
    session = open_session(config_from_dict(cfg_dict))
    load_networks(session.method, state, str(path))
    return session, state


def dataset_tensors(ds: ArrayDataset, n: int | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n points of a dataset as a float [0,1] NCHW batch and int64 labels on the device."""
    count = len(ds) if n is None else min(n, len(ds))
    images = np.ascontiguousarray(ds.images[:count].transpose(0, 3, 1, 2))
    x = torch.from_numpy(images).to(device=device, dtype=torch.float32).div_(255.0)
    y = torch.from_numpy(ds.labels[:count].astype(np.int64)).to(device)
    return x, y
