"""Synthetic source: seeded, shaped as configured, balanced, and learnable."""

import numpy as np
import pytest

from generalist_trainer.trainer.config import DataConfig
from generalist_trainer.trainer.data import load_dataset
from generalist_trainer.trainer.data.synthetic import make_synthetic
from generalist_trainer.trainer.errors import ConfigError


def test_shape_dtype_and_balance():
    cfg = DataConfig(dataset="synthetic", synthetic_shape=(3, 16, 16), synthetic_classes=4,
                     synthetic_train_size=202, synthetic_test_size=40)
    train, test = load_dataset(cfg, "train"), load_dataset(cfg, "test")
    assert train.images.shape == (202, 16, 16, 3) and train.images.dtype == np.uint8
    assert len(test) == 40 and train.num_classes == 4 and train.name == "synthetic"
    assert train.channels == 3 and train.image_size == 16
    assert np.bincount(train.labels).min() == 50  # 202 = 4 * 50 + 2
    assert train.mean == test.mean and len(train.std) == 3
    np.testing.assert_allclose(train.mean, train.images.mean(axis=(0, 1, 2)) / 255, atol=0.02)
    np.testing.assert_allclose(train.std, train.images.std(axis=(0, 1, 2)) / 255, atol=0.02)


def test_seeded_and_splits_differ():
    a = make_synthetic((1, 12, 12), 3, 30, "train")
    b = make_synthetic((1, 12, 12), 3, 30, "train")
    c = make_synthetic((1, 12, 12), 3, 30, "test")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_learnable_by_nearest_class_mean():
    cfg = DataConfig(dataset="synthetic", synthetic_shape=(1, 12, 12), synthetic_classes=5,
                     synthetic_train_size=500, synthetic_test_size=200)
    train, test = load_dataset(cfg, "train"), load_dataset(cfg, "test")
    x_train = train.images.reshape(len(train), -1).astype(np.float64)
    x_test = test.images.reshape(len(test), -1).astype(np.float64)
    means = np.stack([x_train[train.labels == k].mean(0) for k in range(5)])
    predicted = ((x_test[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == test.labels).mean() > 0.9


@pytest.mark.parametrize("field, override", [
    ("data.synthetic_classes", {"synthetic_classes": 1}),
    ("data.synthetic_train_size", {"synthetic_train_size": 0}),
    ("data.synthetic_shape", {"synthetic_shape": (1, 0, 4)}),
])
def test_bad_config_names_the_field(field, override):
    with pytest.raises(ConfigError, match=field):
        load_dataset(DataConfig(dataset="synthetic", **override), "train")
