"""Data layer: validated dataset readers, the train / validation / test splits, and batch loaders."""

from ..registry import DATASETS
from .augment import augmentation_defaults
from .backends import build_train_loader, choose_backend
from .cpu_loader import CpuLoader
from .dali_loader import DaliFolderLoader, DaliLoader, dali_available
from .dataset import ArrayDataset, DataSplits, first_n, load_dataset, load_splits
from .gpu_loader import GpuLoader
from .torch_loader import TorchLoader

# The dataset names data.dataset accepts; trainer/data/dataset.py's load_dataset reads each of them.
for _name in ("fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "synthetic"):
    DATASETS.register(_name)(load_dataset)

__all__ = ["ArrayDataset", "CpuLoader", "DaliFolderLoader", "DaliLoader", "DataSplits", "GpuLoader", "TorchLoader",
           "augmentation_defaults", "build_train_loader", "choose_backend", "dali_available", "first_n",
           "load_dataset", "load_splits"]
