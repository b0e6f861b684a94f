"""Datasets as validated uint8 arrays, the seeded train / validation / test splits, and the registry entry
(`DatasetSpec`) through which `load_dataset` reads any registered dataset.

Images stay uint8 (N, H, W, C) in memory; loaders turn batches into float [0, 1] NCHW and models
normalise with the per-channel `mean` / `std` carried here.

A dataset is one `DATASETS` entry (trainer/registry.py) registered beside its reader: idx_reader.py (MNIST,
Fashion-MNIST), cifar_reader.py (CIFAR-10/100), svhn_reader.py, synthetic.py. Adding one is one file:

    DATASETS.register("my-data")(DatasetSpec(read=my_reader, facts=DatasetFacts(10, (0.5,), (0.25,)), flip=True,
                                             expected_files="train.npz, test.npz"))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import ConfigError, DatasetError
from ..registry import DATASETS

SPLITS = ("train", "test")
# Entropy word that keeps the split's random stream apart from the loader's for the same seed.
_SPLIT_STREAM = 0x5B117


@dataclass(frozen=True)
class DatasetFacts:
    """What is known of a dataset before its files are read: classes, and the per-channel mean and std of its
    training set in [0, 1] pixel units (one value per channel). The image side is read from the files."""

    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return len(self.mean)


# (cfg, split, folder) -> images (N, H, W, C) uint8 and labels (N,) integers of one split; folder: the resolved
# data folder (data.data_dir or the default one), None for a dataset that reads no files.
Reader = Callable[[DataConfig, str, Path | None], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset: its reader, its facts and its augmentation defaults."""

    read: Reader
    # The facts, or a function of the config for a dataset whose facts the config sets (synthetic).
    facts: DatasetFacts | Callable[[DataConfig], DatasetFacts]
    # Whether a horizontal flip keeps a label's meaning (not for digits): data.flip's default.
    flip: bool
    # data.crop_padding's default; None: by image side (4 for 32x32, 2 for 28x28, about an eighth of others).
    crop_padding: int | None = None
    # What data.data_dir must hold, for errors; None: the dataset reads no files (no folder is resolved).
    expected_files: str | None = None
    # Where the files are when data.data_dir is unset (None: data.data_dir is required).
    default_dir: Path | None = None
    # The Linf radius of spec/lipschitz.md for this dataset (local Lipschitz, separation); None: it names none.
    lipschitz_eps: float | None = None
    # A dataset whose images are a function of their shape (synthetic): the data config that rebuilds it from a
    # model's input shape and class count, for an export evaluated without its training config. None: data_dir.
    config_for_model: Callable[[int, int, int], DataConfig] | None = None

    def facts_for(self, cfg: DataConfig) -> DatasetFacts:
        return self.facts(cfg) if callable(self.facts) else self.facts


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry of `name`, or a ConfigError naming data.dataset and the registered names."""
    if name not in DATASETS:
        raise ConfigError(f"config field 'data.dataset' = {name!r}: expected one of {DATASETS.names()}")
    return DATASETS.get(name)


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
    """The "train" or "test" split of `cfg.dataset`, read by its registered reader from `cfg.data_dir` (or the
    dataset's default place)."""
    if split not in SPLITS:
        raise ConfigError(f"dataset split {split!r}: expected 'train' or 'test'")
    spec = dataset_spec(cfg.dataset)
    folder = None if spec.expected_files is None else _data_folder(cfg, spec)
    images, labels = spec.read(cfg, split, folder)
    facts = spec.facts_for(cfg)
    return ArrayDataset(images, labels, facts.num_classes, cfg.dataset, facts.mean, facts.std)


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


def _data_folder(cfg: DataConfig, spec: DatasetSpec) -> Path:
    if cfg.data_dir is None:
        if spec.default_dir is not None:
            return spec.default_dir
        raise DatasetError(f"{cfg.dataset} has no default folder: pass --data-dir (data.data_dir=PATH) "
                           f"pointing at a folder holding {spec.expected_files}")
    folder = Path(cfg.data_dir).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder (data.data_dir); expected a folder holding "
                           f"{spec.expected_files}")
    return folder
