"""Reader of the SVHN cropped-digits .mat files (train_32x32.mat, test_32x32.mat).

Each file holds X, a uint8 array (32, 32, 3, N) with the sample index last (MATLAB's layout), and
y, (N, 1) labels 1..10 where 10 stands for the digit 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from trainer.errors import DatasetError

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
EXPECTED_SVHN_FILES = ", ".join(SVHN_FILES.values())

_IMAGE_SHAPE = (32, 32, 3)
_ZERO_DIGIT_LABEL = 10


def load_svhn_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 in 0..9 of one split."""
    path = folder / SVHN_FILES[split]
    if not path.is_file():
        raise DatasetError(f"{path}: not found; expected the SVHN file {path.name} in {folder} "
                           f"(the folder should hold {EXPECTED_SVHN_FILES})")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy reports truncation and corruption with many exception types
        raise DatasetError(f"{path}: truncated or not a MATLAB .mat file ({type(exc).__name__}: {exc}); "
                           "expected SVHN's X and y arrays") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{path}: variables {found}; expected X (32, 32, 3, N) and y (N, 1)")
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
