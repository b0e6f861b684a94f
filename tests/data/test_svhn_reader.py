"""SVHN .mat reader: round trip with the real layout (digit 0 stored as 10) and bad inputs."""

import numpy as np
import pytest
import scipy.io

from generalist_trainer.trainer.data.svhn_reader import load_svhn_split
from generalist_trainer.trainer.errors import DatasetError
from tests.data.file_formats import write_svhn


def _digits(count, seed):
    rng = np.random.default_rng(seed)
    digits = rng.integers(0, 10, count)
    digits[0] = 0  # always exercise the 10 -> 0 mapping
    return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), digits


def test_round_trip_maps_label_10_to_digit_0(tmp_path):
    for seed, split in enumerate(("train", "test")):
        images, digits = _digits(5, seed)
        write_svhn(tmp_path / f"{split}_32x32.mat", images, digits)
        got_images, got_labels = load_svhn_split(tmp_path, split)
        assert got_images.shape == (5, 32, 32, 3) and got_images.flags.c_contiguous
        assert got_labels.dtype == np.int64 and got_labels[0] == 0
        np.testing.assert_array_equal(got_images, images)
        np.testing.assert_array_equal(got_labels, digits)


def test_float_labels_as_matlab_doubles(tmp_path):
    images, digits = _digits(3, 0)
    y = np.where(digits == 0, 10, digits).astype(np.float64).reshape(-1, 1)
    scipy.io.savemat(str(tmp_path / "test_32x32.mat"), {"X": images.transpose(1, 2, 3, 0), "y": y})
    np.testing.assert_array_equal(load_svhn_split(tmp_path, "test")[1], digits)


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="train_32x32.mat: not found"):
        load_svhn_split(tmp_path, "train")


def test_truncated_file(tmp_path):
    path = write_svhn(tmp_path / "train_32x32.mat", *_digits(5, 0))
    path.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(DatasetError, match="train_32x32.mat: truncated or not a MATLAB .mat file"):
        load_svhn_split(tmp_path, "train")


def test_not_a_mat_file(tmp_path):
    (tmp_path / "train_32x32.mat").write_bytes(b"\x00" * 300)
    with pytest.raises(DatasetError, match="train_32x32.mat: truncated or not a MATLAB .mat file"):
        load_svhn_split(tmp_path, "train")


@pytest.mark.parametrize("label", [0, 11])
def test_label_out_of_range(tmp_path, label):
    images, _ = _digits(3, 0)
    scipy.io.savemat(str(tmp_path / "test_32x32.mat"),
                     {"X": images.transpose(1, 2, 3, 0), "y": np.array([[1], [label], [10]], np.uint8)})
    expected = f"test_32x32.mat: label {label} at index 1; expected labels 1..10"
    with pytest.raises(DatasetError, match=expected):
        load_svhn_split(tmp_path, "test")


def test_mismatched_counts(tmp_path):
    images, _ = _digits(3, 0)
    scipy.io.savemat(str(tmp_path / "test_32x32.mat"),
                     {"X": images.transpose(1, 2, 3, 0), "y": np.array([[1], [2]], np.uint8)})
    with pytest.raises(DatasetError, match=r"test_32x32.mat: y has shape \(2, 1\) for 3 images"):
        load_svhn_split(tmp_path, "test")


@pytest.mark.parametrize("x", [np.zeros((3, 32, 32, 3), np.uint8), np.zeros((32, 32, 3, 3), np.float32),
                               np.zeros((28, 28, 3, 3), np.uint8)])
def test_wrong_array_shape(tmp_path, x):
    scipy.io.savemat(str(tmp_path / "test_32x32.mat"), {"X": x, "y": np.ones((3, 1), np.uint8)})
    expected = r"test_32x32.mat: X is .*expected uint8 of shape \(32, 32, 3, N\)"
    with pytest.raises(DatasetError, match=expected):
        load_svhn_split(tmp_path, "test")


def test_missing_variable(tmp_path):
    scipy.io.savemat(str(tmp_path / "test_32x32.mat"), {"images": np.zeros((2, 2), np.uint8)})
    with pytest.raises(DatasetError, match=r"test_32x32.mat: variables \['images'\]; expected X"):
        load_svhn_split(tmp_path, "test")
