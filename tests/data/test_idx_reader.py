"""idx / idx.gz reader (MNIST, Fashion-MNIST): round trip and every malformed-file case."""

import gzip

import numpy as np
import pytest

from generalist_trainer.trainer.data.idx_reader import load_idx_split, read_idx
from generalist_trainer.trainer.errors import DatasetError
from tests.data.file_formats import idx_bytes, write_idx, write_idx_dataset


def _images_and_labels(count, side=6, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, side, side), dtype=np.uint8)
    return images, rng.integers(0, 10, count, dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_round_trip_plain_and_gz(tmp_path, gz):
    train, test = _images_and_labels(7, seed=1), _images_and_labels(3, seed=2)
    write_idx_dataset(tmp_path, train, test, gz=gz)
    for split, (images, labels) in (("train", train), ("test", test)):
        got_images, got_labels = load_idx_split(tmp_path, split, num_classes=10)
        assert got_images.shape == (len(images), 6, 6, 1) and got_images.dtype == np.uint8
        assert got_labels.dtype == np.int64
        np.testing.assert_array_equal(got_images[..., 0], images)
        np.testing.assert_array_equal(got_labels, labels)


def test_missing_file_names_it_and_the_hint(tmp_path):
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte") as info:
        load_idx_split(tmp_path, "train", 10, missing_hint="apt-get install something")
    assert str(tmp_path) in str(info.value) and "apt-get install something" in str(info.value)


def test_wrong_magic_number(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 4, 4)), magic=0x0000_0801)
    expected = r"train-images-idx3-ubyte: magic number 0x00000801, expected 0x00000803"
    with pytest.raises(DatasetError, match=expected):
        read_idx(path, ndim=3)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_file(tmp_path, gz):
    raw = idx_bytes(np.zeros((4, 5, 5)))
    path = tmp_path / "t10k-images-idx3-ubyte"
    if gz:
        path = tmp_path / "t10k-images-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(raw)[:-12])
    else:
        path.write_bytes(raw[:-3])
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.*truncated"):
        read_idx(path, ndim=3)


def test_truncated_header_and_trailing_bytes(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.zeros(3))[:6])
    with pytest.raises(DatasetError, match="labels: truncated"):
        read_idx(path, ndim=1)
    path.write_bytes(idx_bytes(np.zeros(3)) + b"\x00")
    with pytest.raises(DatasetError, match="labels: 1 unexpected bytes"):
        read_idx(path, ndim=1)


def test_label_out_of_range(tmp_path):
    images, labels = _images_and_labels(4)
    labels[2] = 10
    write_idx_dataset(tmp_path, (images, labels), (images, labels))
    expected = r"train-labels-idx1-ubyte: label 10 at index 2; expected labels in 0..9"
    with pytest.raises(DatasetError, match=expected):
        load_idx_split(tmp_path, "train", 10)


def test_mismatched_counts(tmp_path):
    images, labels = _images_and_labels(4)
    write_idx_dataset(tmp_path, (images, labels[:3]), (images, labels))
    expected = "train-images-idx3-ubyte holds 4 images but .*train-labels-idx1-ubyte holds 3"
    with pytest.raises(DatasetError, match=expected):
        load_idx_split(tmp_path, "train", 10)


def test_wrong_array_shape(tmp_path):
    # A 2-D array stored where 3-D images are expected carries the idx2 magic number.
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 36)))
    expected = "train-images-idx3-ubyte: magic number 0x00000802, expected 0x00000803"
    with pytest.raises(DatasetError, match=expected):
        read_idx(path, ndim=3)
