"""Writers of small dataset files in the real on-disk formats, for the reader tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import scipy.io


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An idx file: big-endian magic 0x0000 08 NN, NN uint32 sizes, then the uint8 elements."""
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x08 << 8) | array.ndim if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False, magic: int | None = None) -> Path:
    data = idx_bytes(array, magic)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_idx_dataset(folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                      *, gz: bool = False) -> Path:
    """MNIST-style folder from images (N, H, W) and labels (N,) of both splits."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, (images, labels) in (("train", train), ("t10k", test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
    return folder


def cifar_rows(images_nhwc: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> the CIFAR row layout (N, 3072): R plane, G plane, B plane."""
    return np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2).reshape(len(images_nhwc), -1))


def write_python3_batch(path: Path, entries: dict, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(entries, protocol=protocol))
    return path


def python2_batch_bytes(entries: dict[str, object]) -> bytes:
    """A protocol-2 pickle as Python 2's cPickle wrote the official CIFAR batches: keys and raw array
    bytes as byte strings (BINSTRING), arrays through numpy.core.multiarray._reconstruct."""
    out = bytearray(b"\x80\x02}(")  # PROTO 2, EMPTY_DICT, MARK
    for key, value in entries.items():
        out += _py2_str(key.encode())
        if isinstance(value, np.ndarray):
            out += _py2_array(value)
        else:
            out += b"](" + b"".join(b"J" + struct.pack("<i", int(v)) for v in value) + b"e"  # list of ints
    out += b"u."  # SETITEMS, STOP
    return bytes(out)


def _py2_str(raw: bytes) -> bytes:
    return (b"U" + bytes([len(raw)]) + raw) if len(raw) < 256 else (b"T" + struct.pack("<I", len(raw)) + raw)


def _py2_array(array: np.ndarray) -> bytes:
    assert array.dtype == np.uint8
    shape = b"(" + b"".join(b"J" + struct.pack("<i", s) for s in array.shape) + b"t"
    dtype = (b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R"
             + b"(K\x03" + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + b"K\x00\x85" + _py2_str(b"b")
            + b"\x87R" + b"(K\x01" + shape + dtype + b"\x89" + _py2_str(array.tobytes()) + b"tb")


def write_svhn(path: Path, images_nhwc: np.ndarray, digits: np.ndarray) -> Path:
    """SVHN .mat: X (32, 32, 3, N) uint8, y (N, 1) with the digit 0 stored as 10."""
    stored = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(str(path), {"X": np.ascontiguousarray(images_nhwc.transpose(1, 2, 3, 0)), "y": stored})
    return path
