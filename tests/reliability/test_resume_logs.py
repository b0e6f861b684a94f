"""The run logs across a kill and resume: every epoch row once, under one CSV header."""

import csv

from trainer.metrics import MetricsLogger


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
