"""Checkpoint checksums, the kept previous version, and resuming from it when the newest is damaged."""

import dataclasses
import logging
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from generalist_trainer.trainer.checkpoint import (
    LAST,
    load_checkpoint,
    load_newest_valid,
    previous_version,
    resolve_checkpoint,
    save_checkpoint,
    verify_checkpoint_file,
)
from generalist_trainer.trainer.errors import CheckpointError
from generalist_trainer.trainer.training import train
from tests.reliability.runs import assert_same_state, tiny_config


def _state(value):
    return {"config": {"name": "t"}, "networks": {"model": {"w": torch.full((3, 4), float(value))}},
            "optimizers": {}, "position": {"epoch": 1, "batch": value, "global_step": value},
            "method_state": {"global_step": value}, "rng": {"torch": torch.get_rng_state()}}


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("bytes") / LAST
    save_checkpoint(path, _state(7))
    return path.read_bytes()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("scratch") / "damaged.pt"


def test_round_trip_verified_and_still_plain_torch_loadable(tmp_path):
    path = tmp_path / LAST
    save_checkpoint(path, _state(3))
    verify_checkpoint_file(path)
    state = load_checkpoint(path)
    assert state["format_version"] == 2 and state["position"]["global_step"] == 3
    # The footer sits after the zip archive, where torch's reader does not look.
    direct = torch.load(path, weights_only=True)
    assert torch.equal(direct["networks"]["model"]["w"], state["networks"]["model"]["w"])


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_cut_is_rejected_with_the_file_named(checkpoint_bytes, scratch, data):
    keep = data.draw(st.integers(0, len(checkpoint_bytes) - 1), label="bytes kept")
    scratch.write_bytes(checkpoint_bytes[:keep])
    with pytest.raises(CheckpointError, match="damaged.pt"):
        load_checkpoint(scratch)


@pytest.mark.parametrize("keep_from_end", [1, 47, 48, 49, 200])
def test_cuts_at_the_footer_boundaries(checkpoint_bytes, scratch, keep_from_end):
    # 48 is exactly the footer: what remains is a complete zip archive of format 2 without its checksum.
    scratch.write_bytes(checkpoint_bytes[:-keep_from_end])
    expected = "without its checksum footer" if keep_from_end == 48 else "damaged.pt"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(scratch)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_changed_byte_is_detected(checkpoint_bytes, scratch, data):
    position = data.draw(st.integers(0, len(checkpoint_bytes) - 1), label="position")
    flip = data.draw(st.integers(1, 255), label="xor")
    damaged = bytearray(checkpoint_bytes)
    damaged[position] ^= flip
    scratch.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="damaged.pt"):
        load_checkpoint(scratch)


def test_digest_mismatch_and_appended_bytes_are_named(checkpoint_bytes, scratch):
    damaged = bytearray(checkpoint_bytes)
    damaged[100] ^= 0xFF
    scratch.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="damaged.pt: SHA-256 mismatch"):
        verify_checkpoint_file(scratch)
    scratch.write_bytes(checkpoint_bytes + b"\x00")
    with pytest.raises(CheckpointError, match="damaged.pt"):
        load_checkpoint(scratch)


def test_format_1_checkpoints_without_checksum_still_load(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format_version": 1, **_state(2)}, path)
    assert load_checkpoint(path)["position"]["global_step"] == 2
    # The first save over a format-1 file keeps it as the previous version.
    save_checkpoint(path, _state(3))
    assert load_checkpoint(previous_version(path))["format_version"] == 1
    torch.save({"format_version": 1, **_state(2)}, path)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(CheckpointError, match="old.pt: cannot be read"):
        load_checkpoint(path)


def test_unknown_format_and_missing_entries(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"format_version": 9}, path)
    with pytest.raises(CheckpointError, match="x.pt: format_version 9"):
        load_checkpoint(path)
    state = _state(1)
    del state["rng"]
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match="x.pt: missing the 'rng' entry"):
        load_checkpoint(path)


def test_save_keeps_the_previous_version_and_removes_stale_temporaries(tmp_path):
    path = tmp_path / LAST
    stale = tmp_path / f".{LAST}.killed.tmp"
    stale.write_bytes(b"half a checkpoint")
    save_checkpoint(path, _state(1))
    assert not stale.exists()
    save_checkpoint(path, _state(2))
    save_checkpoint(path, _state(3))
    assert load_checkpoint(path)["position"]["global_step"] == 3
    assert load_checkpoint(previous_version(path))["position"]["global_step"] == 2
    assert {p.name for p in tmp_path.iterdir()} == {LAST, "last.prev.pt"}


def test_a_file_cut_short_is_not_kept_over_a_good_previous_version(tmp_path):
    path = tmp_path / LAST
    save_checkpoint(path, _state(1))
    save_checkpoint(path, _state(2))
    path.write_bytes(path.read_bytes()[:500])  # last.pt damaged on disk
    save_checkpoint(path, _state(3))
    assert load_checkpoint(previous_version(path))["position"]["global_step"] == 1


def test_load_newest_valid_falls_back_and_says_why(tmp_path, caplog):
    path = tmp_path / LAST
    save_checkpoint(path, _state(1))
    save_checkpoint(path, _state(2))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="the previous version .*last.prev.pt is still there"):
        load_checkpoint(path)
    state, used = load_newest_valid(path)
    assert used == previous_version(path) and state["position"]["global_step"] == 1
    out = caplog.text  # a warning through logging (the CLI shows it on the console)
    assert f"checkpoint {path} rejected, using the previous version {used}" in out and "footer" in out
    assert path.exists()  # read-only use leaves the files alone
    load_newest_valid(path, set_aside_rejected=True)
    assert not path.exists() and (tmp_path / "last.pt.rejected").exists()


def test_no_valid_version_names_every_candidate_and_moves_nothing(tmp_path):
    path = tmp_path / LAST
    path.write_bytes(b"garbage")
    previous_version(path).write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no usable checkpoint.*last.pt: truncated.*last.prev.pt: truncated"):
        load_newest_valid(path, set_aside_rejected=True)
    assert path.exists() and previous_version(path).exists()


def test_resolve_checkpoint_prefers_current_then_previous_then_last(tmp_path):
    with pytest.raises(CheckpointError, match="no best.pt"):
        resolve_checkpoint(tmp_path, "best")
    save_checkpoint(tmp_path / LAST, _state(1))
    assert resolve_checkpoint(tmp_path, "best") == tmp_path / LAST
    save_checkpoint(tmp_path / "best.pt", _state(1))
    os.replace(tmp_path / "best.pt", tmp_path / "best.prev.pt")  # a save that fell back to renaming, killed
    assert resolve_checkpoint(tmp_path, "best") == tmp_path / "best.prev.pt"


@pytest.fixture
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_checkpoint_cut_short_on_disk_resumes_from_the_previous_one_bit_exact(tmp_path, caplog,
                                                                              restore_torch_threads):
    straight = tiny_config(tmp_path / "a", "train.deterministic=false")
    assert train(straight).finished
    split = tiny_config(tmp_path / "b", "train.deterministic=false", "train.checkpoint_every_steps=1",
                        "train.max_steps=5")
    train(split)
    last = tmp_path / "b" / LAST
    assert load_checkpoint(last)["position"]["global_step"] == 5
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # e.g. a copy interrupted half-way
    caplog.set_level(logging.INFO, logger="generalist_trainer")  # the loop logs "resumed ..."; the CLI shows it
    result = train(dataclasses.replace(split, train=dataclasses.replace(split.train, max_steps=None)), resume=True)
    assert f"checkpoint {last} rejected, using the previous version {previous_version(last)}" in caplog.text
    assert f"resumed {previous_version(last)}: epoch 2, batch 0, step 4" in caplog.text
    assert result.finished and (tmp_path / "b" / "last.pt.rejected").exists()
    assert_same_state(last, tmp_path / "a" / LAST)
    assert_same_state(tmp_path / "b" / "best.pt", tmp_path / "a" / "best.pt")
