"""Datasets as validated uint8 arrays, the seeded train / validation / test splits, and the dispatch
from a `DataConfig` to the file readers.

Images stay uint8 (N, H, W, C) in memory; loaders turn batches into float [0, 1] NCHW and models
normalise with the per-channel `mean` / `std` carried here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import ConfigError, DatasetError
from .cifar_reader import CIFAR10, CIFAR100, load_cifar_split
from .idx_reader import EXPECTED_IDX_FILES, load_idx_split
from .svhn_reader import EXPECTED_SVHN_FILES, load_svhn_split
from .synthetic import check_synthetic_config, make_synthetic, synthetic_stats

SPLITS = ("train", "test")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL_HINT = ("install it with `apt-get install dataset-fashion-mnist`, or pass --data-dir "
                              "(data.data_dir=PATH) pointing at a folder holding the idx files")

# Standard per-channel statistics of the training sets, in [0, 1] pixel units.
STANDARD_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}
NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100, "svhn": 10}
_EXPECTED_FILES = {
    "mnist": EXPECTED_IDX_FILES,
    "fashion-mnist": EXPECTED_IDX_FILES,
    "cifar10": CIFAR10.describe() + " or its parent folder",
    "cifar100": CIFAR100.describe() + " or its parent folder",
    "svhn": EXPECTED_SVHN_FILES,
}
# Entropy word that keeps the split's random stream apart from the loader's for the same seed.
_SPLIT_STREAM = 0x5B117


@dataclass
class ArrayDataset:
    """Images (N, H, W, C) uint8 and labels (N,) int64, with the per-channel statistics of the dataset."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        images, labels = self.images, np.asarray(self.labels)
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4):
            found = getattr(images, "dtype", type(images).__name__)
            raise DatasetError(f"dataset {self.name}: images are {found} of shape "
                               f"{getattr(images, 'shape', '?')}; expected uint8 (N, H, W, C)")
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError(f"dataset {self.name}: labels are {labels.dtype} of shape {labels.shape}; "
                               f"expected integers of shape ({len(images)},)")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DatasetError(f"dataset {self.name}: labels span {labels.min()}..{labels.max()}; "
                               f"expected 0..{self.num_classes - 1}")
        channels = images.shape[3]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DatasetError(f"dataset {self.name}: {len(self.mean)} means and {len(self.std)} stds; "
                               f"expected one per channel ({channels})")
        self.images = np.ascontiguousarray(images)
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return self.images.shape[3]

    @property
    def image_size(self) -> int:
        """Side H of the square images."""
        height, width = self.images.shape[1:3]
        if height != width:
            raise DatasetError(f"dataset {self.name}: images are {height}x{width}; "
                               "expected square images (H == W)")
        return height

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """The points at `indices`, in that order (a copy)."""
        indices = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(self.images[indices], self.labels[indices], self.num_classes, self.name,
                            self.mean, self.std)


@dataclass
class DataSplits:
    """Training images, the validation images held out of them (checkpoint selection), and the test set."""

    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset


def first_n(dataset: ArrayDataset, n: int) -> ArrayDataset:
    """The first min(n, len) points, for evaluation on a fixed number of points."""
    if n < 0:
        raise ConfigError(f"number of points {n}: expected an integer >= 0")
    return dataset.subset(np.arange(min(n, len(dataset))))


def load_dataset(cfg: DataConfig, split: str) -> ArrayDataset:
    """The "train" or "test" split of `cfg.dataset`, read from `cfg.data_dir` (or its default place)."""
    if split not in SPLITS:
        raise ConfigError(f"dataset split {split!r}: expected 'train' or 'test'")
    name = cfg.dataset
    if name == "synthetic":
        size, size_field = ((cfg.synthetic_train_size, "data.synthetic_train_size") if split == "train"
                            else (cfg.synthetic_test_size, "data.synthetic_test_size"))
        shape = tuple(int(s) for s in cfg.synthetic_shape)
        check_synthetic_config(shape, cfg.synthetic_classes, size, size_field)
        images, labels = make_synthetic(shape, cfg.synthetic_classes, size, split)
        mean, std = synthetic_stats(shape, cfg.synthetic_classes)
        return ArrayDataset(images, labels, cfg.synthetic_classes, name, mean, std)
    if name not in NUM_CLASSES:
        raise ConfigError(f"config field 'data.dataset' = {name!r}: "
                          f"expected one of {(*NUM_CLASSES, 'synthetic')}")
    folder = _data_folder(cfg)
    if name in ("mnist", "fashion-mnist"):
        hint = FASHION_MNIST_INSTALL_HINT if cfg.data_dir is None else ""
        images, labels = load_idx_split(folder, split, NUM_CLASSES[name], hint)
    elif name == "cifar10":
        images, labels = load_cifar_split(folder, CIFAR10, split)
    elif name == "cifar100":
        images, labels = load_cifar_split(folder, CIFAR100, split)
    else:
        images, labels = load_svhn_split(folder, split)
    mean, std = STANDARD_STATS[name]
    return ArrayDataset(images, labels, NUM_CLASSES[name], name, mean, std)


def load_splits(cfg: DataConfig, seed: int) -> DataSplits:
    """Train / validation / test; validation is `cfg.val_size` training points drawn with `seed`.

    `cfg.train_subset` then keeps that many of the remaining training points. Both subsets are in
    random order, so any prefix of them is itself a random sample.
    """
    if seed < 0:
        raise ConfigError(f"config field 'train.seed' = {seed!r}: expected an integer >= 0")
    full_train = load_dataset(cfg, "train")
    test = load_dataset(cfg, "test")
    if full_train.images.shape[1:] != test.images.shape[1:]:
        raise DatasetError(f"dataset {cfg.dataset}: training images are {full_train.images.shape[1:]} (H, W, C), "
                           f"test images {test.images.shape[1:]}; expected the same shape")
    if not 0 <= cfg.val_size < len(full_train):
        raise ConfigError(f"config field 'data.val_size' = {cfg.val_size!r}: expected 0 <= val_size < "
                          f"{len(full_train)} (the number of training images of {cfg.dataset})")
    order = np.random.default_rng(np.random.SeedSequence([_SPLIT_STREAM, seed])).permutation(len(full_train))
    val_indices, train_indices = order[:cfg.val_size], order[cfg.val_size:]
    if cfg.train_subset is not None:
        if not 0 < cfg.train_subset <= len(train_indices):
            raise ConfigError(f"config field 'data.train_subset' = {cfg.train_subset!r}: expected null or 1.."
                              f"{len(train_indices)} (the training images left after the validation split)")
        train_indices = train_indices[:cfg.train_subset]
    return DataSplits(full_train.subset(train_indices), full_train.subset(val_indices), test)


def _data_folder(cfg: DataConfig) -> Path:
    if cfg.data_dir is None:
        if cfg.dataset == "fashion-mnist":
            return FASHION_MNIST_DIR
        raise DatasetError(f"{cfg.dataset} has no default folder: pass --data-dir (data.data_dir=PATH) "
                           f"pointing at a folder holding {_EXPECTED_FILES[cfg.dataset]}")
    folder = Path(cfg.data_dir).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder (data.data_dir); expected a folder holding "
                           f"{_EXPECTED_FILES[cfg.dataset]}")
    return folder
