"""Data layer: validated dataset readers, the train / validation / test splits, and batch loaders."""

from trainer.data.augment import augmentation_defaults
from trainer.data.cpu_loader import CpuLoader
from trainer.data.dataset import ArrayDataset, DataSplits, first_n, load_dataset, load_splits

__all__ = ["ArrayDataset", "CpuLoader", "DataSplits", "augmentation_defaults", "first_n", "load_dataset",
           "load_splits"]
