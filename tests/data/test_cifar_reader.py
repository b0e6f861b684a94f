"""CIFAR-10 / CIFAR-100 python batches: round trip (Python 2 and 3 pickles), layouts, bad inputs, and
the restricted unpickler refusing code."""

import os
import pickle

import numpy as np
import pytest

from generalist_trainer.trainer.data.cifar_reader import CIFAR10, CIFAR100, load_cifar_split, read_cifar_batch
from generalist_trainer.trainer.errors import DatasetError
from tests.data.file_formats import cifar_rows, python2_batch_bytes, write_python3_batch


def _batch(count, num_classes, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), rng.integers(0, num_classes, count)


def _write_cifar10(folder, per_batch=3):
    """Five training batches and a test batch, alternating Python 2 and Python 3 pickles."""
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate(CIFAR10.train_files + CIFAR10.test_files):
        images, labels = _batch(per_batch, 10, seed=i)
        entries = {"batch_label": "batch", "data": cifar_rows(images), "labels": [int(v) for v in labels]}
        if i % 2:
            write_python3_batch(folder / name, {k.encode(): v for k, v in entries.items()}, protocol=2)
        else:
            py2_entries = {"data": entries["data"], "labels": entries["labels"]}
            (folder / name).write_bytes(python2_batch_bytes(py2_entries))
        written[name] = (images, labels)
    return written


def test_cifar10_round_trip_from_parent_or_folder(tmp_path):
    written = _write_cifar10(tmp_path / "cifar-10-batches-py")
    for data_dir in (tmp_path, tmp_path / "cifar-10-batches-py"):
        images, labels = load_cifar_split(data_dir, CIFAR10, "train")
        assert images.shape == (15, 32, 32, 3) and images.dtype == np.uint8 and images.flags.c_contiguous
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(images, np.concatenate([written[f][0] for f in CIFAR10.train_files]))
        np.testing.assert_array_equal(labels, np.concatenate([written[f][1] for f in CIFAR10.train_files]))
        test_images, test_labels = load_cifar_split(data_dir, CIFAR10, "test")
        np.testing.assert_array_equal(test_images, written["test_batch"][0])
        np.testing.assert_array_equal(test_labels, written["test_batch"][1])


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar100_round_trip_with_str_keys_and_fine_labels(tmp_path, protocol):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for seed, name in enumerate(("train", "test")):
        images, labels = _batch(4, 100, seed)
        labels[0] = 99
        write_python3_batch(folder / name, {"data": cifar_rows(images), "fine_labels": labels.tolist(),
                                            "coarse_labels": (labels // 5).tolist()}, protocol=protocol)
        got_images, got_labels = load_cifar_split(tmp_path, CIFAR100, name)
        np.testing.assert_array_equal(got_images, images)
        np.testing.assert_array_equal(got_labels, labels)


def test_missing_folder_and_missing_batch(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-batches-py: not found"):
        load_cifar_split(tmp_path, CIFAR10, "train")
    _write_cifar10(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DatasetError, match="data_batch_4: not found"):
        load_cifar_split(tmp_path, CIFAR10, "train")


def _write_one(tmp_path, data, labels, name="data_batch_1"):
    return write_python3_batch(tmp_path / name, {b"data": data, b"labels": labels})


def test_label_out_of_range(tmp_path):
    images, labels = _batch(3, 10, 0)
    path = _write_one(tmp_path, cifar_rows(images), [1, 10, 2])
    with pytest.raises(DatasetError, match="data_batch_1: label 10 at index 1; expected labels in 0..9"):
        read_cifar_batch(path, CIFAR10)


def test_mismatched_counts(tmp_path):
    images, _ = _batch(3, 10, 0)
    path = _write_one(tmp_path, cifar_rows(images), [1, 2])
    with pytest.raises(DatasetError, match="data_batch_1: 3 images but 2 'labels'"):
        read_cifar_batch(path, CIFAR10)


@pytest.mark.parametrize("data", [np.zeros((3, 3071), np.uint8), np.zeros((3, 3072), np.float32),
                                  np.zeros((3, 32, 32, 3), np.uint8), [[0] * 3072]])
def test_wrong_array_shape_or_type(tmp_path, data):
    path = _write_one(tmp_path, data, [0, 0, 0])
    expected = r"data_batch_1: 'data' is .*expected a uint8 array of shape \(N, 3072\)"
    with pytest.raises(DatasetError, match=expected):
        read_cifar_batch(path, CIFAR10)


def test_truncated_pickle(tmp_path):
    images, labels = _batch(3, 10, 0)
    path = _write_one(tmp_path, cifar_rows(images), labels.tolist())
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="data_batch_1: truncated or not a pickle"):
        read_cifar_batch(path, CIFAR10)


def test_wrong_keys_and_not_a_dict(tmp_path):
    entries = {b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [0]}
    path = write_python3_batch(tmp_path / "test_batch", entries)
    with pytest.raises(DatasetError, match="test_batch: no 'labels' entry"):
        read_cifar_batch(path, CIFAR10)
    path = write_python3_batch(tmp_path / "test", [1, 2, 3])
    with pytest.raises(DatasetError, match="test: holds a pickled list; expected a dict"):
        read_cifar_batch(path, CIFAR100)


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _RunsAShellCommand(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(DatasetError, match=r"data_batch_1: refused to unpickle the global \w+\.system"):
        read_cifar_batch(path, CIFAR10)
    assert not marker.exists()
