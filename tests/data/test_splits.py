"""Train / validation / test splits: disjoint, sized as configured, seeded, test set untouched."""

from dataclasses import replace

import numpy as np
import pytest

from generalist_trainer.trainer.config import DataConfig
from generalist_trainer.trainer.data import load_dataset, load_splits
from generalist_trainer.trainer.errors import ConfigError

# Every synthetic training image is distinct, so rows identify points.
CFG = DataConfig(dataset="synthetic", synthetic_shape=(1, 8, 8), synthetic_classes=3,
                 synthetic_train_size=300, synthetic_test_size=50, val_size=60)


def _rows(ds):
    return {row.tobytes() for row in ds.images.reshape(len(ds), -1)}


def test_disjoint_sizes_and_test_untouched():
    splits = load_splits(CFG, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (240, 60, 50)
    train_rows, val_rows = _rows(splits.train), _rows(splits.val)
    assert len(train_rows) == 240 and len(val_rows) == 60 and not train_rows & val_rows
    assert train_rows | val_rows == _rows(load_dataset(CFG, "train"))
    test = load_dataset(CFG, "test")
    np.testing.assert_array_equal(splits.test.images, test.images)
    np.testing.assert_array_equal(splits.test.labels, test.labels)


def test_seeded():
    a, b, c = load_splits(CFG, 0), load_splits(CFG, 0), load_splits(CFG, 1)
    np.testing.assert_array_equal(a.val.images, b.val.images)
    np.testing.assert_array_equal(a.train.labels, b.train.labels)
    assert _rows(a.val) != _rows(c.val)


def test_train_subset_after_split_and_empty_val():
    cfg = replace(CFG, train_subset=100)
    splits, full = load_splits(cfg, 3), load_splits(CFG, 3)
    assert len(splits.train) == 100 and _rows(splits.train) <= _rows(full.train)
    np.testing.assert_array_equal(splits.val.images, full.val.images)
    no_val = load_splits(replace(CFG, val_size=0), 0)
    assert len(no_val.val) == 0 and no_val.val.images.shape == (0, 8, 8, 1) and len(no_val.train) == 300


@pytest.mark.parametrize("field, value", [("val_size", 300), ("val_size", 1000), ("train_subset", 241)])
def test_too_large_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"data.{field}"):
        load_splits(replace(CFG, **{field: value}), 0)
