"""Data layer: validated dataset readers (each registers its datasets), the train / validation / test splits, and
batch loaders."""

import importlib

from .augment import augmentation_defaults
from .cpu_loader import CpuLoader
from .dali_loader import DaliFolderLoader, DaliLoader, dali_available
from .dataset import (
    ArrayDataset,
    DatasetFacts,
    DatasetSpec,
    DataSplits,
    dataset_spec,
    first_n,
    load_dataset,
    load_splits,
)
from .gpu_loader import GpuLoader
from .loaders import build_train_loader, choose_loader
from .torch_loader import TorchLoader

# Each reader module registers its datasets (trainer/registry.py DATASETS) when imported; this order is the order
# of the names data.dataset accepts.
for _module in ("idx_reader", "cifar_reader", "svhn_reader", "synthetic"):
    importlib.import_module(f"generalist_trainer.trainer.data.{_module}")

__all__ = ["ArrayDataset", "CpuLoader", "DaliFolderLoader", "DaliLoader", "DataSplits", "DatasetFacts", "DatasetSpec",
           "GpuLoader", "TorchLoader", "augmentation_defaults", "build_train_loader", "choose_loader", "dali_available",
           "dataset_spec", "first_n",
           "load_dataset", "load_splits"]
