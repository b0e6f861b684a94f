"""The installed Fashion-MNIST (the default dataset) loads with its known sizes and statistics."""

import numpy as np
import pytest

from generalist_trainer.trainer.config import DataConfig
from generalist_trainer.trainer.data import load_dataset
from generalist_trainer.trainer.data.idx_reader import FASHION_MNIST_DIR

pytestmark = pytest.mark.skipif(not FASHION_MNIST_DIR.exists(),
                                reason=f"{FASHION_MNIST_DIR} absent: apt-get install dataset-fashion-mnist")


def test_installed_fashion_mnist():
    train, test = load_dataset(DataConfig(), "train"), load_dataset(DataConfig(), "test")
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.num_classes == 10 and train.channels == 1 and train.image_size == 28
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    # The standard constants the models normalise with match the data.
    assert abs(train.images.mean() / 255 - train.mean[0]) < 1e-3
    assert abs(train.images.std() / 255 - train.std[0]) < 1e-3
