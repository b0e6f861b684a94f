"""Reader of the idx files of MNIST and Fashion-MNIST, plain or gzip-compressed, validating each file; both
datasets' registry entries (at the end).

An idx file is a big-endian header, magic 0x0000TTNN (TT: element type, 0x08 for uint8; NN: number
of dimensions), then NN uint32 sizes, then the elements in C order. Compression is recognised by the
gzip signature rather than the file name, since a plain idx file always starts with two zero bytes.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DatasetError
from ..registry import DATASETS
from .dataset import DatasetFacts, DatasetSpec

# (images, labels) file names of each split, without the optional .gz suffix.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
EXPECTED_IDX_FILES = ", ".join(name for pair in IDX_FILES.values() for name in pair) + " (each plain or .gz)"

_UBYTE_TYPE = 0x08
_GZIP_SIGNATURE = b"\x1f\x8b"


def load_idx_split(folder: Path, split: str, num_classes: int,
                   missing_hint: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, 1) uint8 and labels (N,) int64 of one split; `missing_hint` ends a not-found error."""
    image_name, label_name = IDX_FILES[split]
    image_path = find_idx_file(folder, image_name, missing_hint)
    label_path = find_idx_file(folder, label_name, missing_hint)
    images = read_idx(image_path, ndim=3)
    labels = read_idx(label_path, ndim=1)
    if len(images) != len(labels):
        raise DatasetError(f"{image_path} holds {len(images)} images but {label_path} holds "
                           f"{len(labels)} labels; expected one label per image")
    out_of_range = np.flatnonzero(labels >= num_classes)
    if out_of_range.size:
        i = int(out_of_range[0])
        raise DatasetError(f"{label_path}: label {int(labels[i])} at index {i}; "
                           f"expected labels in 0..{num_classes - 1}")
    return images[..., None], labels.astype(np.int64)


def find_idx_file(folder: Path, name: str, missing_hint: str = "") -> Path:
    """`folder/name`, or `folder/name.gz` when only the compressed file is there."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    hint = f"; {missing_hint}" if missing_hint else ""
    raise DatasetError(f"{folder / name}.gz: not found (nor the uncompressed {name}); expected the idx file "
                       f"{name} or {name}.gz in {folder}{hint}")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array of an idx file whose header must announce `ndim` dimensions."""
    raw = _read_maybe_gzipped(path)
    expected_magic = (_UBYTE_TYPE << 8) | ndim
    if len(raw) < 4:
        raise DatasetError(f"{path}: truncated: {len(raw)} bytes, expected at least a 4-byte magic number")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expected_magic:
        raise DatasetError(f"{path}: magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
                           f"(idx{ndim}, unsigned bytes)")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DatasetError(f"{path}: truncated: {len(raw)} bytes, expected a {header_size}-byte header "
                           f"with {ndim} dimension sizes")
    dims = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected_size = math.prod(dims)
    body_size = len(raw) - header_size
    if body_size < expected_size:
        raise DatasetError(f"{path}: truncated: the header announces shape {dims} "
                           f"({expected_size} bytes of data) but only {body_size} bytes follow it")
    if body_size > expected_size:
        raise DatasetError(f"{path}: {body_size - expected_size} unexpected bytes after the {expected_size} "
                           f"bytes of data that the header's shape {dims} announces")
    # copy: np.frombuffer over bytes is read-only, and the dataset owns its arrays.
    return np.frombuffer(raw, dtype=np.uint8, count=expected_size, offset=header_size).reshape(dims).copy()


def _read_maybe_gzipped(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if raw[:2] != _GZIP_SIGNATURE:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: truncated or corrupt gzip data ({exc}); "
                           "expected a complete gzip-compressed idx file") from None


# ---------------------------------------------------------------------------------------------
# Registry entries

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL_HINT = ("install it with `apt-get install dataset-fashion-mnist`, or pass --data-dir "
                              "(data.data_dir=PATH) pointing at a folder holding the idx files")


# Both entries name expected_files, so load_dataset always passes them a folder.
def _read_fashion_mnist(cfg: DataConfig, split: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    # The install hint only where the files were looked for in the default folder.
    return load_idx_split(folder, split, 10, FASHION_MNIST_INSTALL_HINT if cfg.data_dir is None else "")


def _read_mnist(cfg: DataConfig, split: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return load_idx_split(folder, split, 10)


# Standard per-channel statistics of the training sets, in [0, 1] pixel units.
DATASETS.register("fashion-mnist")(DatasetSpec(
    read=_read_fashion_mnist, facts=DatasetFacts(10, (0.2860,), (0.3530,)), flip=True,
    expected_files=EXPECTED_IDX_FILES, default_dir=FASHION_MNIST_DIR, lipschitz_eps=0.1))
# Digits: a mirrored digit is another glyph, so no flip.
DATASETS.register("mnist")(DatasetSpec(
    read=_read_mnist, facts=DatasetFacts(10, (0.1307,), (0.3081,)), flip=False, expected_files=EXPECTED_IDX_FILES,
    lipschitz_eps=0.1))
