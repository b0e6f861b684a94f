"""ArrayDataset, dispatch from DataConfig to the readers, and where the errors point."""

import dataclasses

import numpy as np
import pytest

from generalist_trainer.trainer.config import DataConfig
from generalist_trainer.trainer.data import ArrayDataset, dataset_spec, first_n, load_dataset
from generalist_trainer.trainer.errors import ConfigError, DatasetError
from generalist_trainer.trainer.registry import DATASETS
from tests.data.file_formats import cifar_rows, write_idx_dataset, write_python3_batch, write_svhn


def _dataset(count=6, side=4, channels=1):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, side, side, channels), dtype=np.uint8)
    return ArrayDataset(images, np.arange(count) % 3, 3, "toy", (0.5,) * channels, (0.25,) * channels)


def test_array_dataset_properties_and_subset():
    ds = _dataset()
    assert len(ds) == 6 and ds.channels == 1 and ds.image_size == 4 and ds.labels.dtype == np.int64
    sub = ds.subset(np.array([4, 1]))
    np.testing.assert_array_equal(sub.images, ds.images[[4, 1]])
    np.testing.assert_array_equal(sub.labels, [1, 1])
    assert (sub.num_classes, sub.name, sub.mean, sub.std) == (3, "toy", (0.5,), (0.25,))
    head = first_n(ds, 4)
    np.testing.assert_array_equal(head.images, ds.images[:4])
    assert len(first_n(ds, 100)) == 6 and len(first_n(ds, 0)) == 0


def test_array_dataset_validates():
    images = np.zeros((2, 4, 5, 1), np.uint8)
    with pytest.raises(DatasetError, match="4x5; expected square"):
        _ = ArrayDataset(images, np.zeros(2, int), 2, "wide", (0.5,), (0.5,)).image_size
    with pytest.raises(DatasetError, match="expected uint8"):
        ArrayDataset(images.astype(np.float32), np.zeros(2, int), 2, "x", (0.5,), (0.5,))
    with pytest.raises(DatasetError, match="labels"):
        ArrayDataset(images, np.zeros(3, int), 2, "x", (0.5,), (0.5,))
    with pytest.raises(DatasetError, match="expected 0..1"):
        ArrayDataset(images, np.array([0, 2]), 2, "x", (0.5,), (0.5,))
    with pytest.raises(DatasetError, match="one per channel"):
        ArrayDataset(images, np.zeros(2, int), 2, "x", (0.5, 0.5), (0.5, 0.5))


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_datasets_from_data_dir(tmp_path, name):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), rng.integers(0, 10, 5, dtype=np.uint8)
    test = rng.integers(0, 256, (2, 28, 28), dtype=np.uint8), rng.integers(0, 10, 2, dtype=np.uint8)
    write_idx_dataset(tmp_path, train, test, gz=name == "mnist")
    ds = load_dataset(DataConfig(dataset=name, data_dir=str(tmp_path)), "test")
    assert ds.images.shape == (2, 28, 28, 1) and ds.num_classes == 10 and ds.name == name
    assert len(ds.mean) == 1 and len(ds.std) == 1
    np.testing.assert_array_equal(ds.labels, test[1])


def test_cifar_and_svhn_from_data_dir(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_python3_batch(folder / "test", {"data": cifar_rows(images), "fine_labels": [42, 7]})
    ds = load_dataset(DataConfig(dataset="cifar100", data_dir=str(tmp_path)), "test")
    assert ds.num_classes == 100 and ds.mean == (0.5071, 0.4865, 0.4409)
    np.testing.assert_array_equal(ds.labels, [42, 7])
    write_svhn(tmp_path / "test_32x32.mat", images, np.array([0, 9]))
    ds = load_dataset(DataConfig(dataset="svhn", data_dir=str(tmp_path)), "test")
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, [0, 9])


def test_bad_split_name():
    with pytest.raises(ConfigError, match="'val': expected 'train' or 'test'"):
        load_dataset(DataConfig(dataset="synthetic"), "val")


@pytest.mark.parametrize("name, expected", [("mnist", "train-images-idx3-ubyte"),
                                            ("cifar10", "cifar-10-batches-py"), ("svhn", "train_32x32.mat")])
def test_no_default_folder_says_to_pass_data_dir(name, expected):
    with pytest.raises(DatasetError, match=f"{name} has no default folder: pass --data-dir.*{expected}"):
        load_dataset(DataConfig(dataset=name), "train")


def test_missing_default_fashion_mnist_says_how_to_install(tmp_path):
    # Fashion-MNIST's registry entry with its default folder moved somewhere absent.
    absent = dataclasses.replace(dataset_spec("fashion-mnist"), default_dir=tmp_path / "absent")
    DATASETS.register("test-fashion-mnist-absent")(absent)
    expected = "train-images-idx3-ubyte.*apt-get install dataset-fashion-mnist.*--data-dir"
    try:
        with pytest.raises(DatasetError, match=expected):
            load_dataset(DataConfig(dataset="test-fashion-mnist-absent"), "train")
    finally:
        DATASETS.unregister("test-fashion-mnist-absent")


def test_data_dir_that_does_not_exist(tmp_path):
    with pytest.raises(DatasetError, match="nowhere: no such folder"):
        load_dataset(DataConfig(dataset="cifar10", data_dir=str(tmp_path / "nowhere")), "train")
