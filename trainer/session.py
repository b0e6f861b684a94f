"""What `train`, `eval`, `export` and `load_model` need: the data splits, a model factory, a built method, and
the model's metadata, which rebuilds the evaluated models from a checkpoint without the dataset."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .config import RunConfig, config_from_dict
from .data import ArrayDataset, DataSplits, augmentation_defaults, build_train_loader, load_splits
from .errors import CheckpointError, ConfigError, DatasetError
from .eval.class_fold import FoldedLogits
from .methods import Method, build_method
from .models import build_model
from .runtime import resolve_device

log = logging.getLogger(__name__)

# The checkpoint entry holding `model_metadata` (written by trainer/training.py `_state` from Session.metadata).
METADATA_KEY = "model_metadata"


@dataclass
class Session:
    cfg: RunConfig
    device: torch.device
    splits: DataSplits
    method: Method
    # model_metadata(cfg, splits.train, method): saved in every checkpoint.
    metadata: dict

    def augmentation(self) -> tuple[int, bool]:
        """(crop padding, horizontal flip) of the training loader: the config's, else the dataset's defaults."""
        pad_default, flip_default = augmentation_defaults(self.cfg.data.dataset, self.splits.train.image_size)
        data = self.cfg.data
        return (pad_default if data.crop_padding is None else data.crop_padding,
                flip_default if data.flip is None else data.flip)

    def train_loader(self, rank: int = 0, world_size: int = 1):
        """The shuffled, augmented, drop_last training loader of this run (training and `trainer profile` both
        use it). data.batch_size is the global batch: under torchrun each rank loads its slice of it."""
        padding, flip = self.augmentation()
        loader = build_train_loader(self.cfg.data, self.splits.train, device=self.device, seed=self.cfg.train.seed,
                                    padding=padding, flip=flip, rank=rank, world_size=world_size)
        if len(loader) == 0:
            raise ConfigError(f"config field 'data.batch_size' = {self.cfg.data.batch_size}: larger than the "
                              f"{len(self.splits.train)} training images (drop_last leaves no batch)")
        return loader


def model_metadata(cfg: RunConfig, dataset: ArrayDataset, method: Method) -> dict:
    """Everything needed to rebuild the method's evaluated models without the dataset (kept in checkpoints and
    exports): the network's settings and data-dependent sizes, `eval_models` ({name in `method.eval_models()`: the
    key of its network in the checkpoint's networks}, the shipped model first) and, for DUCAT, the class fold.

    Plain Python values only, so that checkpoints still load with weights_only=True.
    """
    meta = {
        "model": {"arch": cfg.model.arch, "dropout": cfg.model.dropout, "depth": cfg.model.depth,
                  "widen": cfg.model.widen},
        "num_classes": int(dataset.num_classes),
        "in_channels": int(dataset.channels),
        "image_size": int(dataset.image_size),
        "mean": [float(m) for m in dataset.mean],
        "std": [float(s) for s in dataset.std],
        "dataset": cfg.data.dataset,
        "input_range": [0.0, 1.0],
        "threat_model": {"norm": cfg.attack.norm, "eps": cfg.attack.eps},
        "eval_models": saved_network_keys(method),
    }
    shipped = next(iter(method.eval_models().values()))
    if isinstance(shipped, FoldedLogits):
        num_classes = meta["num_classes"]
        meta["class_fold"] = {
            "fold": shipped.fold, "head_classes": 2 * num_classes, "output_classes": num_classes,
            "description": (f"DUCAT: the network ('network.*' weights) has {2 * num_classes} logits, class k "
                            f"and its dummy k + {num_classes}; the exported model outputs {num_classes} logits "
                            f"z_k = max(z_k, z_(k+{num_classes})), whose argmax is argmax-then-mod-C"),
        }
    return meta


def saved_network_keys(method: Method) -> dict[str, str | None]:
    """{eval model name: the key in `method.networks()` of the network it is (or, DUCAT, folds)}, in the order of
    `eval_models()`; None for an eval model that is no saved network (it cannot be rebuilt from a checkpoint)."""
    key_of = {id(net): key for key, net in method.networks().items()}
    return {name: key_of.get(id(model.network if isinstance(model, FoldedLogits) else model))
            for name, model in method.eval_models().items()}


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
    method.set_training_size(len(splits.train))  # per-sample state indexed by dataset index (IAT)
    method.set_epoch_length(len(splits.train) // cfg.data.batch_size)  # the loaders drop the last partial batch
    return Session(cfg, device, splits, method, model_metadata(cfg, ref, method))


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
    """Rebuild the run a checkpoint came from, data included, and load its networks (for eval and analysis)."""
    state = load_checkpoint(path)
    cfg_dict = state["config"]
    if device is not None:
        cfg_dict = {**cfg_dict, "train": {**cfg_dict["train"], "device": device}}
    session = open_session(config_from_dict(cfg_dict))
    load_networks(session.method, state, str(path))
    return session, state


def checkpoint_metadata(state: dict, source: str) -> dict:
    """The checkpoint's model metadata; for a checkpoint written before it carried any, rebuilt from the
    dataset it was trained on (on the CPU), with a note in the log, or a CheckpointError naming what is missing."""
    meta = state.get(METADATA_KEY)
    if meta is not None:
        return meta
    cfg_dict = {**state["config"], "train": {**state["config"]["train"], "device": "cpu"}}
    cfg = config_from_dict(cfg_dict)
    try:
        # Seeds the global RNG (open_session): the caller's stream is kept.
        with torch.random.fork_rng(devices=[]):
            session = open_session(cfg)
    except DatasetError as exc:
        raise CheckpointError(f"checkpoint {source}: has no model metadata (written before checkpoints carried "
                              f"it), so the model can only be rebuilt from its dataset, and {cfg.data.dataset} "
                              f"cannot be read: {exc}") from None
    log.warning("checkpoint %s: written before checkpoints carried the model's metadata; rebuilt it from the "
                "%s dataset (a checkpoint saved from now on loads without the data)", source, cfg.data.dataset)
    return session.metadata


def dataset_tensors(ds: ArrayDataset, n: int | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n points of a dataset as a float [0,1] NCHW batch and int64 labels on the device."""
    count = len(ds) if n is None else min(n, len(ds))
    images = np.ascontiguousarray(ds.images[:count].transpose(0, 3, 1, 2))
    x = torch.from_numpy(images).to(device=device, dtype=torch.float32).div_(255.0)
    y = torch.from_numpy(ds.labels[:count].astype(np.int64)).to(device)
    return x, y
