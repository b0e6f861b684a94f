"""Data layer: validated dataset readers, the train / validation / test splits, and batch loaders."""

from trainer.data.augment import augmentation_defaults
from trainer.data.cpu_loader import CpuLoader
from trainer.data.dali_loader import DaliFolderLoader, DaliLoader, dali_available
from trainer.data.dataset import ArrayDataset, DataSplits, first_n, load_dataset, load_splits
from trainer.data.gpu_loader import GpuLoader
from trainer.data.loaders import build_train_loader, choose_loader
from trainer.data.torch_loader import TorchLoader
from trainer.registry import DATASETS

# The dataset names data.dataset accepts; trainer/data/dataset.py's load_dataset reads each of them.
for _name in ("fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "synthetic"):
    DATASETS.register(_name)(load_dataset)

__all__ = ["ArrayDataset", "CpuLoader", "DaliFolderLoader", "DaliLoader", "DataSplits", "GpuLoader", "TorchLoader",
           "augmentation_defaults", "build_train_loader", "choose_loader", "dali_available", "first_n",
           "load_dataset", "load_splits"]
