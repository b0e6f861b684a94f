"""The run logs across a kill and resume: every row once, under one CSV header, whatever the kill tore."""

import csv
import json
import os
import signal

import pytest

from generalist_trainer.trainer.metrics import MetricsLogger


def test_a_resume_that_drops_every_epoch_row_logs_under_a_single_header(tmp_path):
    # Killed after logging epoch 1 but before checkpointing its end: the resume truncates epochs.csv to
    # its header alone, then logs epoch 1 again.
    log = MetricsLogger(tmp_path)
    log.log_epoch({"epoch": 1, "step": 4, "val_clean": 0.5})
    log.truncate_after(0, 4)
    log.log_epoch({"epoch": 1, "step": 4, "val_clean": 0.5})
    log.log_epoch({"epoch": 2, "step": 8, "val_clean": 0.75})
    with (tmp_path / "epochs.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["epoch", "step", "val_clean"], ["1", "4", "0.5"], ["2", "8", "0.75"]]


def _logged(tmp_path):
    log = MetricsLogger(tmp_path)
    for epoch in (1, 2):
        for step in range(4 * epoch - 3, 4 * epoch + 1):
            log.log_step({"step": step, "epoch": epoch, "loss": 0.5})
        log.log_epoch({"epoch": epoch, "step": 4 * epoch, "val_clean": 0.5})
    return log


def _steps(tmp_path):
    return [json.loads(line)["step"] for line in (tmp_path / "steps.jsonl").read_text().splitlines()]


def test_lines_torn_by_a_kill_are_dropped_on_resume(tmp_path):
    # Killed while writing epoch 3's row and step 13's line (after checkpointing step 12, epoch 2 done, but
    # the row's epoch field cut from "13" to "1", which alone would look like a row to keep).
    log = _logged(tmp_path)
    with (tmp_path / "steps.jsonl").open("a") as f:
        f.write('{"step": 9, "epoch": 3}\n\x00\x00\x00\n{"step": 10, "ep')  # complete, zeros, torn
    with (tmp_path / "epochs.csv").open("a") as f:
        f.write("1")
    log.truncate_after(2, 9)
    assert _steps(tmp_path) == list(range(1, 10))
    with (tmp_path / "epochs.csv").open(newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    log.log_epoch({"epoch": 3, "step": 12, "val_clean": 0.5})
    with (tmp_path / "epochs.csv").open(newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]


def test_a_header_torn_by_a_kill_leaves_no_epochs_file(tmp_path):
    (tmp_path / "epochs.csv").write_text("epoch,st")
    MetricsLogger(tmp_path).truncate_after(0, 0)
    assert not (tmp_path / "epochs.csv").exists()


@pytest.mark.parametrize("name", ["epochs.csv", "steps.jsonl"])
def test_a_kill_while_the_resume_trims_the_logs_loses_no_kept_row(tmp_path, monkeypatch, name):
    """Trimming rewrites each file into a temporary one and renames it: killed before the rename (in a forked
    child), the file is exactly as before; a truncate-then-write in place would have emptied it."""
    _logged(tmp_path)
    before = (tmp_path / name).read_bytes()
    pid = os.fork()
    if pid == 0:
        try:
            real_replace = os.replace

            def killed_before_renaming(src, dst):
                if os.path.basename(dst) == name:
                    os.kill(os.getpid(), signal.SIGKILL)
                real_replace(src, dst)

            monkeypatch.setattr(os, "replace", killed_before_renaming)
            MetricsLogger(tmp_path).truncate_after(1, 4)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert (tmp_path / name).read_bytes() == before


def test_a_fresh_run_starts_its_logs_afresh(tmp_path):
    """A run killed before its first checkpoint is started again from scratch: its logs must not be continued."""
    import generalist_trainer.trainer.training as training
    from tests.reliability.runs import tiny_config

    _logged(tmp_path)
    training.train(tiny_config(tmp_path, "train.deterministic=false", "train.threads=0", "train.max_steps=2"))
    assert _steps(tmp_path) == [1, 2]
    assert not (tmp_path / "epochs.csv").exists()  # stopped inside epoch 1: no row yet
