"""Datasets are registry entries (trainer/registry.py DATASETS, `DatasetSpec`): a dataset registered in this file,
with its reader and facts, is accepted by the config, read by load_splits, augmented by its own defaults, trained
through the public API and loaded back without its data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import generalist_trainer as gt
from generalist_trainer.trainer.checkpoint import load_checkpoint
from generalist_trainer.trainer.config import DataConfig
from generalist_trainer.trainer.data import (
    DatasetFacts,
    DatasetSpec,
    augmentation_defaults,
    dataset_spec,
    load_dataset,
    load_splits,
)
from generalist_trainer.trainer.errors import ConfigError
from generalist_trainer.trainer.registry import DATASETS
from generalist_trainer.trainer.session import METADATA_KEY

NAME = "test_bars"
FACTS = DatasetFacts(num_classes=3, mean=(0.3, 0.6), std=(0.2, 0.25))
SIDE = 8


def read_bars(cfg: DataConfig, split: str, folder: None) -> tuple[np.ndarray, np.ndarray]:
    """Class k: a bright row band k (of three) on noise; 2 channels, 8x8, 96 training and 32 test images."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    count = 96 if split == "train" else 32
    labels = rng.integers(0, 3, count)
    images = rng.integers(0, 60, (count, SIDE, SIDE, 2))
    for k in range(3):
        images[labels == k, 3 * k:3 * k + 2] += 190
    return images.astype(np.uint8), labels


@pytest.fixture
def bars():
    DATASETS.register(NAME)(DatasetSpec(read=read_bars, facts=FACTS, flip=False, crop_padding=1))
    yield NAME
    DATASETS.unregister(NAME)


def _config(run_dir, *extra):
    return gt.load_config({"data": {"dataset": NAME, "val_size": 32, "batch_size": 32, "eval_batch_size": 32},
                                "method": {"name": "pgd_at"},
                                "attack": {"eps": 0.1, "step": 0.05, "steps": 1},
                                "train": {"epochs": 1, "val_points": 16, "val_pgd_steps": 1, "progress": False,
                                          "device": "cpu", "threads": 1, "out_dir": str(run_dir)},
                                "engine": {"channels_last": False}}, list(extra))


def test_an_unregistered_name_is_refused_with_the_registered_ones():
    with pytest.raises(ConfigError, match=rf"data.dataset' = '{NAME}'.*'fashion-mnist'"):
        gt.load_config(None, [f"data.dataset={NAME}"])
    with pytest.raises(ConfigError, match="data.dataset"):
        load_dataset(DataConfig(dataset=NAME), "train")
    with pytest.raises(ConfigError, match="data.dataset"):
        augmentation_defaults(NAME, SIDE)


def test_the_builtin_datasets_are_registry_entries():
    assert DATASETS.names() == ("fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "synthetic")
    assert dataset_spec("cifar100").facts_for(DataConfig()).num_classes == 100
    assert dataset_spec("svhn").facts_for(DataConfig()).channels == 3 and not dataset_spec("svhn").flip
    from generalist_trainer.trainer.analysis.lipschitz import default_eps

    assert [default_eps(n) for n in DATASETS.names()] == [0.1, 0.1, 0.031, 0.031, 0.031, None]
    synthetic = dataset_spec("synthetic").facts_for(DataConfig(synthetic_shape=(2, 8, 8), synthetic_classes=5))
    assert synthetic.num_classes == 5 and synthetic.channels == 2


def test_a_dataset_registered_here_is_read_with_its_facts(bars):
    splits = load_splits(_config("unused").data, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (64, 32, 32)
    for ds in (splits.train, splits.val, splits.test):
        assert ds.name == NAME and ds.num_classes == 3 and ds.channels == 2 and ds.image_size == SIDE
        assert ds.mean == FACTS.mean and ds.std == FACTS.std
    assert augmentation_defaults(NAME, SIDE) == (1, False)


def test_a_dataset_registered_here_trains_and_loads_without_its_reader(bars, tmp_path):
    run = tmp_path / "run"
    result = gt.train(_config(run))
    assert result.finished
    meta = load_checkpoint(run / "last.pt")[METADATA_KEY]
    assert (meta["dataset"], meta["num_classes"], meta["in_channels"], meta["image_size"]) == (NAME, 3, 2, SIDE)
    assert tuple(meta["mean"]) == FACTS.mean and tuple(meta["std"]) == FACTS.std
    DATASETS.unregister(NAME)  # the model comes back from the checkpoint alone
    model = gt.load_model(run, which="last")
    x = torch.from_numpy(read_bars(DataConfig(), "test", None)[0][:4]).permute(0, 3, 1, 2).float() / 255
    assert model(x).shape == (4, 3)
