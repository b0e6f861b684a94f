"""epochs.csv keeps every metric, including ones that first appear mid-run, and survives resume trimming."""

import csv

from generalist_trainer.trainer.metrics import MetricsLogger


def read(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_header_widens_when_a_metric_starts_later(tmp_path):
    log = MetricsLogger(tmp_path)
    log.log_epoch({"epoch": 1, "loss": 0.5})
    log.log_epoch({"epoch": 2, "loss": 0.4, "adv_dummy": 0.1})
    log.log_epoch({"epoch": 3, "loss": 0.3})
    rows = read(tmp_path / "epochs.csv")
    assert list(rows[0]) == ["epoch", "loss", "adv_dummy"]
    assert [r["adv_dummy"] for r in rows] == ["", "0.1", ""]
    assert [r["loss"] for r in rows] == ["0.5", "0.4", "0.3"]


def test_truncate_keeps_rows_up_to_the_checkpoint(tmp_path):
    log = MetricsLogger(tmp_path)
    for epoch in (1, 2, 3):
        log.log_epoch({"epoch": epoch, "loss": 1.0 / epoch})
        log.log_step({"step": epoch * 10, "loss": 1.0})
    log.truncate_after(2, 20)
    assert [r["epoch"] for r in read(tmp_path / "epochs.csv")] == ["1", "2"]
    assert len((tmp_path / "steps.jsonl").read_text().splitlines()) == 2
