"""Reader of the SVHN cropped-digits .mat files (train_32x32.mat, test_32x32.mat), and the dataset's registry entry.

Each file holds X, a uint8 array (32, 32, 3, N) with the sample index last (MATLAB's layout), and
y, (N, 1) labels 1..10 where 10 stands for the digit 0.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DatasetError
from ..registry import DATASETS
from .dataset import DatasetFacts, DatasetSpec

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
EXPECTED_SVHN_FILES = ", ".join(SVHN_FILES.values())

_IMAGE_SHAPE = (32, 32, 3)
_ZERO_DIGIT_LABEL = 10


# scipy.io.loadmat's compiled reader can crash the whole process (a segmentation fault, found by the fuzz
# tests) on a corrupt file, so it runs in a child process. The child hands back only numeric X and y (and
# the variable names) through an .npz read without pickle; anything else is described in a string.
_READ_MAT_IN_CHILD = r"""
import sys
import numpy as np
import scipy.io
src, dst = sys.argv[1], sys.argv[2]
try:
    mat = scipy.io.loadmat(src)
except Exception as exc:  # scipy reports truncation and corruption with many exception types
    sys.stderr.write(f"{type(exc).__name__}: {exc}")
    sys.exit(3)
out = {"names": np.array(sorted(k for k in mat if not k.startswith("__")), dtype=str)}
for key in ("X", "y"):
    value = mat.get(key)
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        out[key] = value
    elif value is not None:
        out[key + "_described"] = np.array(f"{getattr(value, 'dtype', type(value).__name__)} "
                                           f"of shape {getattr(value, 'shape', '?')}")
np.savez(dst, **out)
"""
_READ_FAILED = 3


def read_mat_variables(path: Path) -> dict[str, np.ndarray]:
    """The variable names ("names"), numeric X and y, or "X_described" / "y_described" for other contents."""
    with tempfile.TemporaryDirectory(prefix="svhn-mat-") as tmp:
        out = Path(tmp) / "variables.npz"
        done = subprocess.run([sys.executable, "-c", _READ_MAT_IN_CHILD, str(path), str(out)],
                              capture_output=True, text=True)
        if done.returncode == _READ_FAILED:
            raise DatasetError(f"{path}: truncated or not a MATLAB .mat file ({done.stderr.strip()[-400:]}); "
                               "expected SVHN's X and y arrays")
        if done.returncode != 0:
            raise DatasetError(f"{path}: the MATLAB reader (scipy.io.loadmat) crashed on it (exit status "
                               f"{done.returncode}), so the file is corrupt; expected SVHN's X and y arrays")
        with np.load(out, allow_pickle=False) as variables:
            return {name: variables[name] for name in variables.files}


def load_svhn_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 in 0..9 of one split."""
    path = folder / SVHN_FILES[split]
    if not path.is_file():
        raise DatasetError(f"{path}: not found; expected the SVHN file {path.name} in {folder} "
                           f"(the folder should hold {EXPECTED_SVHN_FILES})")
    mat = read_mat_variables(path)
    found = [str(name) for name in mat["names"]]
    if "X" not in found or "y" not in found:
        raise DatasetError(f"{path}: variables {found}; expected X (32, 32, 3, N) and y (N, 1)")
    if "X_described" in mat:
        raise DatasetError(f"{path}: X is {mat['X_described']}; expected uint8 of shape (32, 32, 3, N)")
    if "y_described" in mat:
        raise DatasetError(f"{path}: y holds {mat['y_described']} values; expected numeric labels 1..10")
    x, y = mat["X"], mat["y"]
    is_image_stack = isinstance(x, np.ndarray) and x.ndim == 4 and x.shape[:3] == _IMAGE_SHAPE
    if not (is_image_stack and x.dtype == np.uint8):
        raise DatasetError(f"{path}: X is {getattr(x, 'dtype', type(x).__name__)} of shape "
                           f"{getattr(x, 'shape', '?')}; expected uint8 of shape (32, 32, 3, N)")
    count = x.shape[3]
    if not (isinstance(y, np.ndarray) and y.shape in ((count, 1), (count,))):
        raise DatasetError(f"{path}: y has shape {getattr(y, 'shape', '?')} for {count} images in X; "
                           f"expected ({count}, 1), one label per image")
    labels = y.reshape(-1)
    # Strings, cells, structs and complex numbers can all sit in a .mat variable: only real numbers are labels.
    if labels.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: y holds {labels.dtype} values; expected numeric labels 1..10")
    # loadmat returns MATLAB doubles as float64; labels must still be whole, finite numbers.
    if labels.dtype.kind == "f" and not (np.isfinite(labels).all() and np.array_equal(labels, np.round(labels))):
        raise DatasetError(f"{path}: y holds non-integer or non-finite values; expected labels 1..10")
    # Range first, cast after: a huge double would wrap around in the cast to int64.
    bad = np.flatnonzero((labels < 1) | (labels > _ZERO_DIGIT_LABEL))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(f"{path}: label {labels[i]:g} at index {i}; expected labels 1..10 "
                           "(10 meaning the digit 0)")
    labels = labels.astype(np.int64)
    labels[labels == _ZERO_DIGIT_LABEL] = 0
    # (H, W, C, N) -> (N, H, W, C)
    images = np.ascontiguousarray(x.transpose(3, 0, 1, 2))
    return images, labels


def _read_svhn(cfg: DataConfig, split: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return load_svhn_split(folder, split)


# Digits: no flip. Statistics of the training set in [0, 1] pixel units.
DATASETS.register("svhn")(DatasetSpec(
    read=_read_svhn, facts=DatasetFacts(10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)), flip=False,
    expected_files=EXPECTED_SVHN_FILES, lipschitz_eps=0.031))
