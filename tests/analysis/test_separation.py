"""The blocked Linf nearest-other-label search against brute force, with planted duplicates."""

import math

import numpy as np
import pytest
import torch

from generalist_trainer.trainer.analysis.separation import block_sizes, nearest_other_label, separation, summarize
from generalist_trainer.trainer.errors import DatasetError

SHAPE = (4, 4, 3)  # (H, W, C) like the dataset arrays: 48 pixels


def brute_force(queries: np.ndarray, query_labels: np.ndarray, refs: np.ndarray, ref_labels: np.ndarray) -> np.ndarray:
    """min over references of another label of max |q - r|, in float64 (uint8: in levels / 255)."""
    q = queries.reshape(len(queries), -1).astype(np.float64)
    r = refs.reshape(len(refs), -1).astype(np.float64)
    dist = np.abs(q[:, None, :] - r[None, :, :]).max(-1)  # (Q, R)
    dist[query_labels[:, None] == ref_labels[None, :]] = np.inf
    out = dist.min(1)
    return out / 255.0 if queries.dtype == np.uint8 else out


def planted_data():
    """uint8 train (37) / test (23) with labels 0..2 and duplicates, conflicting and not."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (37, *SHAPE), dtype=np.uint8)
    train_y = rng.integers(0, 3, 37)
    test = rng.integers(0, 256, (23, *SHAPE), dtype=np.uint8)
    test_y = rng.integers(0, 3, 23)
    train[9], train_y[5], train_y[9] = train[5], 0, 1  # conflicting duplicate inside train
    train[12], train_y[11], train_y[12] = train[11], 2, 2  # same-label duplicate: no conflict
    test[3], test_y[3], train_y[7] = train[7], 1, 2  # test point equal to a train point, other label
    test[4], test_y[4] = train[8], train_y[8]  # test point equal to a train point, same label
    return train, train_y, test, test_y


@pytest.mark.parametrize("budget", [None, 2000, 700], ids=["one_block", "blocks_4x5", "blocks_2x1"])
def test_uint8_distances_match_brute_force_exactly(budget):
    train, train_y, test, test_y = planted_data()
    for queries, qy in ((train, train_y), (test, test_y)):
        found = nearest_other_label(queries, qy, train, train_y, budget_bytes=budget)
        expected = brute_force(queries, qy, train, train_y)
        np.testing.assert_array_equal(found.distance, expected)
        # The reported neighbour is at that distance and carries another label.
        flat_q, flat_r = queries.reshape(len(queries), -1).astype(int), train.reshape(len(train), -1).astype(int)
        for i, j in enumerate(found.index):
            assert train_y[j] != qy[i]
            assert np.abs(flat_q[i] - flat_r[j]).max() / 255.0 == found.distance[i]


def test_float_distances_are_the_true_distance_rounded_once():
    rng = np.random.default_rng(1)
    train = rng.random((29, *SHAPE), dtype=np.float32)
    train_y = rng.integers(0, 4, 29)
    test = rng.random((11, *SHAPE), dtype=np.float32)
    test_y = rng.integers(0, 4, 11)
    found = nearest_other_label(test, test_y, train, train_y, budget_bytes=1500)
    # Subtraction and max are correctly rounded and monotone: float64 brute force rounded to float32.
    expected = brute_force(test, test_y, train, train_y).astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(found.distance, expected)
    # uint8 levels and their float32 / 255 images give the same distances (to float32 rounding).
    levels, _, _, _ = planted_data()
    labels = np.arange(37) % 3
    as_levels = nearest_other_label(levels, labels, levels, labels).distance
    as_floats = nearest_other_label(levels.astype(np.float32) / 255, labels, levels.astype(np.float32) / 255,
                                    labels).distance
    np.testing.assert_allclose(as_floats, as_levels, rtol=0, atol=1e-7)


def test_summary_drops_and_reports_conflicting_duplicates():
    train, train_y, test, test_y = planted_data()
    stats = separation(train, train_y, test, test_y, budget_bytes=2000)
    tt, te = stats["train_train"], stats["test_train"]

    expected_tt = brute_force(train, train_y, train, train_y)
    assert tt.conflicting_duplicates == 2  # points 5 and 9, each the other's duplicate
    assert sorted((e["index"], e["duplicate_of"]) for e in tt.duplicate_examples) == [(5, 9), (9, 5)]
    kept = expected_tt[expected_tt > 0]
    assert tt.min_distance == kept.min() and tt.mean_distance == pytest.approx(kept.mean(), rel=1e-12)
    assert tt.num_points == 37 and tt.without_other_label == 0
    assert expected_tt[tt.closest_pair["index"]] == tt.min_distance

    expected_te = brute_force(test, test_y, train, train_y)
    assert te.conflicting_duplicates == 1
    assert te.duplicate_examples == [{"index": 3, "label": 1, "duplicate_of": 7, "other_label": 2}]
    kept = expected_te[expected_te > 0]
    assert te.min_distance == kept.min() and te.mean_distance == pytest.approx(kept.mean(), rel=1e-12)

    eps_ok, eps_bad = tt.min_distance / 2, tt.min_distance / 2 + 1e-3
    verdicts = tt.to_dict([eps_ok, eps_bad])["two_eps_separated"]
    assert [v["separated"] for v in verdicts] == [True, False]


def test_single_label_points_have_no_neighbour():
    images = np.zeros((3, *SHAPE), dtype=np.uint8)
    images[2] += 10
    labels = np.array([0, 0, 1])
    nearest = nearest_other_label(images, labels, images[:2], labels[:2])
    assert math.isinf(nearest.distance[0]) and nearest.index[0] == -1
    assert nearest.distance[2] == 10 / 255
    stats = summarize("x", nearest, labels, labels[:2])
    assert stats.without_other_label == 2 and stats.min_distance == 10 / 255


@pytest.mark.parametrize("nq, nr, dim, budget", [(60000, 60000, 784, 1 << 30), (37, 37, 48, 2000),
                                                 (10, 100000, 3072, 1 << 20)])
def test_blocks_fit_the_budget(nq, nr, dim, budget):
    q, r = block_sizes(nq, nr, dim, budget)
    assert 1 <= q <= nq and 1 <= r <= nr
    assert 4 * dim * (q + r) + 5 * q * r <= budget or (q == 1 and r == 1)


def test_mixed_dtypes_and_shapes_are_errors():
    train, train_y, _, _ = planted_data()
    with pytest.raises(DatasetError, match="uint8"):
        nearest_other_label(train.astype(np.float32), train_y, train, train_y)
    with pytest.raises(DatasetError, match="pixels per image"):
        nearest_other_label(train[:, :2], train_y, train, train_y)
    with pytest.raises(DatasetError, match="one label per image"):
        nearest_other_label(train, train_y[:5], train, train_y)


def test_torch_inputs_and_explicit_cpu_device_work():
    train, train_y, test, test_y = planted_data()
    found = nearest_other_label(torch.from_numpy(test), torch.from_numpy(test_y), torch.from_numpy(train),
                                torch.from_numpy(train_y), device=torch.device("cpu"), budget_bytes=5000)
    np.testing.assert_array_equal(found.distance, brute_force(test, test_y, train, train_y))
