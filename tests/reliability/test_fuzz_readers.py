"""Property-based fuzzing of every dataset reader: whatever the bytes or values, a reader either returns
well-formed arrays or raises the project's own error (DatasetError / ConfigError), nothing else.

Each reader gets raw random bytes, and structured inputs close to its real format (valid headers with
random sizes, pickled dicts of random entries, .mat files of random variables) that reach its deeper
checks, and cuts of valid files. `load_dataset` itself is then fuzzed for every format (MNIST and
Fashion-MNIST idx plain or .gz, CIFAR-10, CIFAR-100, SVHN) on folders of such files, intact, cut short or
with a changed byte.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct

import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from generalist_trainer.trainer.config import DataConfig, load_config
from generalist_trainer.trainer.data import synthetic
from generalist_trainer.trainer.data.cifar_reader import CIFAR10, CIFAR100, read_cifar_batch
from generalist_trainer.trainer.data.dataset import load_dataset
from generalist_trainer.trainer.data.idx_reader import load_idx_split, read_idx
from generalist_trainer.trainer.data.svhn_reader import load_svhn_split
from generalist_trainer.trainer.data.synthetic import check_synthetic_config, make_synthetic
from generalist_trainer.trainer.errors import ConfigError, TrainerError
from tests.data.file_formats import idx_bytes, python2_batch_bytes

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _only_project_errors(read):
    """Run `read()`; a project error is an acceptable answer to a bad file, anything else fails the test."""
    try:
        return read()
    except TrainerError:
        return None


# ---------------------------------------------------------------------------------------------
# idx / idx.gz


def _idx_header(draw_magic, dims):
    return struct.pack(">I", draw_magic) + struct.pack(f">{len(dims)}I", *dims)


idx_files = st.one_of(
    st.binary(max_size=300),
    # A plausible header (any type byte, any dimension count) with random sizes, then a body of any length.
    st.builds(lambda ndim, type_byte, dims, body: _idx_header((type_byte << 8) | ndim, dims[:ndim]) + body,
              st.integers(0, 4), st.sampled_from([0x08, 0x09, 0x0D, 0x00]),
              st.lists(st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1)), min_size=4, max_size=4),
              st.binary(max_size=200)),
)


@FUZZ
@given(raw=idx_files, ndim=st.integers(1, 3), compress=st.sampled_from(["plain", "gzip", "cut_gzip"]))
def test_read_idx_returns_the_announced_array_or_a_dataset_error(folder, raw, ndim, compress):
    if compress != "plain":
        raw = gzip.compress(raw)
        if compress == "cut_gzip":
            raw = raw[: len(raw) // 2]
    path = folder / "fuzz-idx"
    path.write_bytes(raw)
    array = _only_project_errors(lambda: read_idx(path, ndim))
    if array is not None:
        assert array.dtype == np.uint8 and array.ndim == ndim
        assert idx_bytes(array) == gzip.decompress(raw) if compress == "gzip" else idx_bytes(array) == raw


@FUZZ
@given(images=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=4, max_side=5)),
       labels=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=2, max_side=6)),
       num_classes=st.integers(1, 12), cut=st.integers(0, 30))
def test_load_idx_split_consistent_or_dataset_error(folder, images, labels, num_classes, cut):
    split = folder / "idx-split"
    split.mkdir(exist_ok=True)
    label_bytes = idx_bytes(labels)
    (split / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (split / "t10k-labels-idx1-ubyte").write_bytes(label_bytes[: len(label_bytes) - cut])
    result = _only_project_errors(lambda: load_idx_split(split, "test", num_classes))
    if result is not None:
        got_images, got_labels = result
        assert got_images.shape == (*images.shape, 1) and got_labels.shape == (len(got_images),)
        assert got_labels.dtype == np.int64 and (got_labels < num_classes).all()


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 python batches

_keys = st.sampled_from(["data", "labels", "fine_labels", "coarse_labels", "batch_label", "filenames"])
_small_arrays = hnp.arrays(st.sampled_from([np.uint8, np.int64, np.float32, np.bool_, np.int8, np.uint64]),
                           hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5), st.binary(max_size=5),
              _small_arrays),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=3), inner, max_size=3),
                            st.tuples(inner, inner)),
    max_leaves=8,
)


@st.composite
def cifar_like_entries(draw):
    """A dict close to a real batch: usually a valid 'data' array, labels of random content, extras."""
    count = draw(st.integers(0, 4))
    entries = {}
    if draw(st.booleans()):
        entries["data"] = draw(hnp.arrays(np.uint8, (count, 3072), elements=st.integers(0, 255)))
    label_values = st.one_of(st.integers(-3, 105), st.integers(), st.floats(), st.text(max_size=2), st.none())
    for key in draw(st.lists(st.sampled_from(["labels", "fine_labels"]), max_size=2, unique=True)):
        entries[key] = draw(st.one_of(st.lists(label_values, min_size=count, max_size=count),
                                      st.lists(st.integers(0, 9), max_size=6), _values))
    entries.update(draw(st.dictionaries(_keys, _values, max_size=2)))
    if draw(st.booleans()):
        entries = {k.encode(): v for k, v in entries.items()}
    return entries


@FUZZ
@given(entries=cifar_like_entries(), protocol=st.integers(0, pickle.HIGHEST_PROTOCOL),
       cut=st.one_of(st.none(), st.integers(0, 2000)), layout=st.sampled_from([CIFAR10, CIFAR100]))
def test_read_cifar_batch_valid_or_dataset_error(folder, entries, protocol, cut, layout):
    raw = pickle.dumps(entries, protocol=protocol)
    path = folder / "data_batch_1"
    path.write_bytes(raw if cut is None else raw[:cut])
    result = _only_project_errors(lambda: read_cifar_batch(path, layout))
    if result is not None:
        images, labels = result
        assert images.shape == (len(labels), 32, 32, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int64 and ((labels >= 0) & (labels < layout.num_classes)).all()


@FUZZ
@given(raw=st.one_of(st.binary(max_size=400),
                     st.binary(max_size=400).map(lambda b: b"\x80\x02" + b),
                     st.binary(max_size=400).map(lambda b: b"\x80\x05\x95" + b)))
def test_read_cifar_batch_on_random_bytes(folder, raw):
    path = folder / "test_batch"
    path.write_bytes(raw)
    _only_project_errors(lambda: read_cifar_batch(path, CIFAR10))


@FUZZ
@given(count=st.integers(0, 3), cut=st.integers(0, 20000), labels=st.lists(st.integers(0, 2**31 - 1), max_size=3))
def test_python2_batches_cut_anywhere(folder, count, cut, labels):
    rows = np.arange(count * 3072, dtype=np.int64).astype(np.uint8).reshape(count, 3072)
    raw = python2_batch_bytes({"data": rows, "labels": labels})
    path = folder / "data_batch_2"
    path.write_bytes(raw[:cut])
    _only_project_errors(lambda: read_cifar_batch(path, CIFAR10))


# ---------------------------------------------------------------------------------------------
# SVHN .mat

_mat_arrays = hnp.arrays(st.sampled_from([np.uint8, np.float64, np.int16, np.float32, np.uint16, np.bool_]),
                         hnp.array_shapes(min_dims=1, max_dims=4, max_side=4))


@st.composite
def svhn_like_variables(draw):
    count = draw(st.integers(0, 3))
    variables = {}
    if draw(st.booleans()):
        variables["X"] = draw(st.one_of(
            hnp.arrays(np.uint8, (32, 32, 3, count), elements=st.integers(0, 255)), _mat_arrays))
    if draw(st.booleans()):
        label_elements = st.one_of(st.integers(-2, 12), st.floats(allow_nan=True, allow_infinity=True))
        variables["y"] = draw(st.one_of(
            hnp.arrays(np.float64, (count, 1), elements=label_elements),
            hnp.arrays(np.uint8, (count,), elements=st.integers(0, 12)),
            st.lists(st.text(min_size=1, max_size=2), min_size=1, max_size=3).map(np.array),
            st.text(max_size=3), _mat_arrays,
            hnp.arrays(np.complex128, (count, 1), elements=st.complex_numbers(max_magnitude=20))))
    variables.update(draw(st.dictionaries(st.sampled_from(["a", "Z", "labels"]), _mat_arrays, max_size=2)))
    return variables


@FUZZ
@given(variables=svhn_like_variables(), cut=st.one_of(st.none(), st.integers(0, 5000)))
def test_load_svhn_split_valid_or_dataset_error(folder, variables, cut):
    path = folder / "test_32x32.mat"
    scipy.io.savemat(str(path), variables)
    if cut is not None:
        path.write_bytes(path.read_bytes()[:cut])
    result = _only_project_errors(lambda: load_svhn_split(folder, "test"))
    if result is not None:
        images, labels = result
        assert images.shape == (len(labels), 32, 32, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int64 and ((labels >= 0) & (labels <= 9)).all()


@FUZZ
@given(raw=st.one_of(st.binary(max_size=600), st.binary(max_size=600).map(lambda b: b"MATLAB 5.0 MAT-file" + b)))
def test_load_svhn_split_on_random_bytes(folder, raw):
    (folder / "train_32x32.mat").write_bytes(raw)
    _only_project_errors(lambda: load_svhn_split(folder, "train"))


# ---------------------------------------------------------------------------------------------
# Every format end to end: `load_dataset` on a folder of fuzzed files (what `train` and `evaluate` call)

_NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100, "svhn": 10}


def _maybe_damaged(draw, raw):
    """`raw`, or cut short, or with one byte changed: what a broken download or disk leaves."""
    how = draw(st.sampled_from(["intact", "cut", "flip"]))
    if how == "cut" or (how == "flip" and not raw):
        return raw[: draw(st.integers(0, len(raw)))]
    if how == "flip":
        position = draw(st.integers(0, len(raw) - 1))
        return raw[:position] + bytes([raw[position] ^ draw(st.integers(1, 255))]) + raw[position + 1:]
    return raw


@st.composite
def _valid_cifar_entries(draw, layout):
    count = draw(st.integers(0, 3))
    return {"data": draw(hnp.arrays(np.uint8, (count, 3072))),
            layout.label_key: draw(st.lists(st.integers(0, layout.num_classes - 1), min_size=count, max_size=count))}


@st.composite
def _valid_svhn_variables(draw):
    count = draw(st.integers(0, 3))
    return {"X": draw(hnp.arrays(np.uint8, (32, 32, 3, count))),
            "y": draw(hnp.arrays(np.float64, (count, 1), elements=st.integers(1, 10).map(float)))}


@st.composite
def dataset_folders(draw):
    """(dataset name, split, {relative path: bytes}) for one split of one format, close to the real files."""
    name = draw(st.sampled_from(sorted(_NUM_CLASSES)))
    split = draw(st.sampled_from(["train", "test"]))
    files = {}
    if name in ("mnist", "fashion-mnist"):
        count = draw(st.integers(0, 3))
        side = draw(st.integers(1, 5))
        images = draw(hnp.arrays(np.uint8, st.sampled_from([(count, side, side), (count, side, side + 1),
                                                            (count + 1, side, side), (count, side)])))
        labels = draw(hnp.arrays(np.uint8, st.sampled_from([(count,), (count + 1,), (count, 1)]),
                                 elements=st.integers(0, 12)))
        prefix = "train" if split == "train" else "t10k"
        for stem, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            raw = idx_bytes(array)
            gz = draw(st.booleans())
            files[stem + (".gz" if gz else "")] = _maybe_damaged(draw, gzip.compress(raw) if gz else raw)
    elif name in ("cifar10", "cifar100"):
        layout = CIFAR10 if name == "cifar10" else CIFAR100
        nested = draw(st.booleans())
        for batch in layout.files(split):
            entries = draw(st.one_of(cifar_like_entries(), _valid_cifar_entries(layout)))
            raw = pickle.dumps(entries, protocol=draw(st.integers(0, pickle.HIGHEST_PROTOCOL)))
            files[(f"{layout.folder}/" if nested else "") + batch] = _maybe_damaged(draw, raw)
    else:
        buffer = io.BytesIO()
        scipy.io.savemat(buffer, draw(st.one_of(svhn_like_variables(), _valid_svhn_variables())))
        files[f"{split}_32x32.mat"] = _maybe_damaged(draw, buffer.getvalue())
    return name, split, files


@FUZZ
@given(case=dataset_folders())
def test_load_dataset_of_every_format_valid_or_a_project_error(tmp_path_factory, case):
    name, split, files = case
    folder = tmp_path_factory.mktemp("dataset")
    for relative, raw in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(raw)
    dataset = _only_project_errors(lambda: load_dataset(DataConfig(dataset=name, data_dir=str(folder)), split))
    event(f"{name}: {'read' if dataset is not None else 'refused'}")
    if dataset is not None:
        assert dataset.images.dtype == np.uint8 and dataset.images.ndim == 4
        assert dataset.labels.dtype == np.int64 and dataset.labels.shape == (len(dataset.images),)
        assert ((dataset.labels >= 0) & (dataset.labels < _NUM_CLASSES[name])).all()
        assert dataset.num_classes == _NUM_CLASSES[name]


# ---------------------------------------------------------------------------------------------
# The synthetic source's parameters

_sizes = st.integers(-3, 40)


@FUZZ
@given(shape=st.tuples(st.integers(-1, 3), st.integers(-1, 20), st.integers(-1, 20)), classes=st.integers(-2, 30),
       size=_sizes, split=st.sampled_from(["train", "test"]))
def test_synthetic_parameters_give_a_valid_dataset_or_a_config_error(shape, classes, size, split):
    def build():
        check_synthetic_config(shape, classes, size, "data.synthetic_train_size")
        return make_synthetic(shape, classes, size, split)

    result = _only_project_errors(build)
    if result is not None:
        images, labels = result
        channels, height, width = shape
        assert images.shape == (size, height, width, channels) and images.dtype == np.uint8
        counts = np.bincount(labels, minlength=classes)
        assert len(counts) == classes and counts.max() - counts.min() <= 1


# Sizes a test may really allocate stay small; the huge ones must be refused before any allocation.
_HUGE = st.sampled_from([10**7, 2**40, 2**63, 10**30, -(2**63)])
_yaml_values = st.one_of(st.integers(-5, 40), _HUGE, st.floats(), st.text(max_size=4), st.booleans(), st.none(),
                         st.lists(st.one_of(st.integers(-2, 20), _HUGE), max_size=4))


@FUZZ
@given(field=st.sampled_from(["synthetic_shape", "synthetic_classes", "synthetic_train_size", "synthetic_test_size"]),
       value=_yaml_values)
def test_synthetic_fields_through_the_config_layer(field, value):
    # JSON is YAML: the override carries exactly `value`, whatever its type.
    overrides = ["data.dataset=synthetic", "data.synthetic_test_size=16", f"data.{field}={json.dumps(value)}"]

    def build():
        return load_dataset(load_config(None, overrides).data, "test")

    dataset = _only_project_errors(build)
    if dataset is not None:
        assert len(dataset) == (value if field == "synthetic_test_size" else 16)


def test_huge_synthetic_sizes_are_refused_naming_the_field():
    for field, value in (("synthetic_test_size", 10**7), ("synthetic_classes", 10**6),
                         ("synthetic_shape", [3, 10**5, 10**5])):
        with pytest.raises(ConfigError, match=f"data.{field}" if field != "synthetic_shape" else "data.synthetic_"):
            load_dataset(load_config(None, ["data.dataset=synthetic", f"data.{field}={json.dumps(value)}"]).data,
                         "test")


def test_chunked_generation_gives_the_images_of_one_shot_generation(monkeypatch):
    """make_synthetic draws its noise in chunks to bound memory; the images must not change."""
    shape, classes, size = (2, 5, 7), 3, 11
    templates = synthetic.class_templates(shape, classes)
    rng = np.random.default_rng(np.random.SeedSequence([synthetic.SYNTHETIC_SEED, 1]))
    labels = rng.permutation(np.arange(size) % classes).astype(np.int64)
    noisy = templates[labels] + 0.2 * rng.standard_normal((size, *shape), dtype=np.float32)
    one_shot = np.rint(np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)
    for chunk in (1, 4, 11, 4096):
        monkeypatch.setattr(synthetic, "_CHUNK_IMAGES", chunk)
        images, got_labels = make_synthetic(shape, classes, size, "train")
        np.testing.assert_array_equal(images, one_shot)
        np.testing.assert_array_equal(got_labels, labels)


def test_the_fuzzed_synthetic_path_also_accepts_the_defaults():
    ds = load_dataset(DataConfig(dataset="synthetic", synthetic_test_size=20, synthetic_shape=(1, 8, 8)), "test")
    assert ds.images.shape == (20, 8, 8, 1)
