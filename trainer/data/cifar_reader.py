"""Reader of the CIFAR-10 and CIFAR-100 "python version" batches, through a restricted unpickler; both datasets'
registry entries (at the end).

Each batch is a pickled dict: 'data' is a uint8 array (N, 3072) whose rows hold the R, G and B
planes of a 32x32 image one after the other; the labels are a list of N ints ('labels' for
CIFAR-10, 'fine_labels' for CIFAR-100). The official files are Python 2 pickles, so keys may come
back as bytes or str. Unpickling can run arbitrary code, so only the few globals that rebuild numpy
arrays are resolved; anything else is refused before it is called.
"""

from __future__ import annotations

import codecs
import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig
from ..errors import DatasetError
from ..registry import DATASETS
from .dataset import DatasetFacts, DatasetSpec

_SIDE = 32
_ROW_LENGTH = 3 * _SIDE * _SIDE


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its batches and labels."""

    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int

    def files(self, split: str) -> tuple[str, ...]:
        return self.train_files if split == "train" else self.test_files

    def describe(self) -> str:
        return f"{self.folder}/ ({', '.join(self.train_files + self.test_files)})"


CIFAR10 = CifarLayout("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                      ("test_batch",), "labels", 10)
CIFAR100 = CifarLayout("CIFAR-100", "cifar-100-python", ("train",), ("test",), "fine_labels", 100)


def _numpy_module(name: str) -> Any:
    # numpy 2 renamed numpy.core to numpy._core; importing the old name there only warns.
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{name}")


_multiarray = _numpy_module("multiarray")
_numeric = _numpy_module("numeric")

# Everything a pickled numpy array may reference, under the module names old and new numpy write.
# _codecs.encode is how Python 3 writes bytes into protocol-2 pickles.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED_GLOBALS[(f"{_core}.multiarray", "scalar")] = _multiarray.scalar
    _ALLOWED_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _numeric._frombuffer


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the numpy-array allow-list."""


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed to rebuild numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise RefusedGlobal(f"{module}.{name}")
        return target


def resolve_cifar_folder(data_dir: Path, layout: CifarLayout) -> Path:
    """`data_dir/<layout.folder>` when present, else `data_dir` itself when it holds the batches."""
    nested = data_dir / layout.folder
    if nested.is_dir():
        return nested
    holds_batches = any((data_dir / f).exists() for f in layout.train_files + layout.test_files)
    if data_dir.name == layout.folder or holds_batches:
        return data_dir
    raise DatasetError(f"{nested}: not found; expected data.data_dir to be the {layout.title} folder "
                       f"{layout.describe()} or its parent")


def load_cifar_split(data_dir: Path, layout: CifarLayout, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 of one split, all batches concatenated."""
    folder = resolve_cifar_folder(data_dir, layout)
    parts = [read_cifar_batch(folder / name, layout) for name in layout.files(split)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read_cifar_batch(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """One validated batch file as images (N, 32, 32, 3) uint8 and labels (N,) int64."""
    if not path.is_file():
        raise DatasetError(f"{path}: not found; expected the {layout.title} python batch {path.name} "
                           f"(the folder should hold {layout.describe()})")
    entries = _unpickle_dict(path)
    data = entries.get("data")
    if data is None:
        raise DatasetError(f"{path}: no 'data' entry (keys: {sorted(entries)}); "
                           f"expected a {layout.title} batch")
    is_rows = isinstance(data, np.ndarray) and data.ndim == 2 and data.shape[1] == _ROW_LENGTH
    if not (is_rows and data.dtype == np.uint8):
        found = f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}".strip()
        raise DatasetError(f"{path}: 'data' is {found}; expected a uint8 array of shape (N, {_ROW_LENGTH})")
    labels = _labels_array(path, entries, layout)
    if len(labels) != len(data):
        raise DatasetError(f"{path}: {len(data)} images but {len(labels)} '{layout.label_key}'; "
                           "expected one label per image")
    bad = np.flatnonzero((labels < 0) | (labels >= layout.num_classes))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(f"{path}: label {int(labels[i])} at index {i}; "
                           f"expected labels in 0..{layout.num_classes - 1}")
    # (N, 3072) rows are three 32x32 planes -> (N, 3, 32, 32) -> channels last (N, 32, 32, 3).
    images = np.ascontiguousarray(data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1))
    return images, labels


def _unpickle_dict(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            # latin1 lets numpy rebuild arrays whose raw bytes Python 2 wrote as str.
            obj = NumpyOnlyUnpickler(f, encoding="latin1").load()
    except RefusedGlobal as exc:
        raise DatasetError(f"{path}: refused to unpickle the global {exc}; expected a CIFAR batch, which "
                           "holds only numpy arrays, lists and strings (pickled code is never run)") from None
    except Exception as exc:  # a corrupt pickle can fail in many ways; all mean the same to the user
        raise DatasetError(f"{path}: truncated or not a pickle ({type(exc).__name__}: {exc}); "
                           "expected a CIFAR python batch") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: holds a pickled {type(obj).__name__}; "
                           "expected a dict (a CIFAR python batch)")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _labels_array(path: Path, entries: dict[str, Any], layout: CifarLayout) -> np.ndarray:
    raw = entries.get(layout.label_key)
    if raw is None:
        raise DatasetError(f"{path}: no '{layout.label_key}' entry (keys: {sorted(entries)}); "
                           f"expected {layout.title} labels")
    try:
        labels = np.asarray(raw)
    except ValueError:
        labels = np.asarray(raw, dtype=object)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path}: '{layout.label_key}' is {labels.dtype} of shape {labels.shape}; "
                           "expected a list of N integers")
    return labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Registry entries (statistics of the training sets in [0, 1] pixel units)

def _reader(layout: CifarLayout):
    def read(cfg: DataConfig, split: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
        return load_cifar_split(folder, layout, split)

    return read


DATASETS.register("cifar10")(DatasetSpec(
    read=_reader(CIFAR10), facts=DatasetFacts(10, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)), flip=True,
    expected_files=CIFAR10.describe() + " or its parent folder", lipschitz_eps=0.031))
DATASETS.register("cifar100")(DatasetSpec(
    read=_reader(CIFAR100), facts=DatasetFacts(100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)), flip=True,
    expected_files=CIFAR100.describe() + " or its parent folder", lipschitz_eps=0.031))
