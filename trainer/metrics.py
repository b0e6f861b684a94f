"""Run logging: one CSV row per epoch (prefixed keys), JSONL per logged step, a console table."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from trainer.checkpoint import atomic_write


class MetricsLogger:
    """Appends to `epochs.csv` and `steps.jsonl` in the run folder; resuming keeps earlier rows.

    The CSV header is the union of the keys seen so far, in first-seen order; rows without a key leave
    its cell empty.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.epochs_path = run_dir / "epochs.csv"
        self.steps_path = run_dir / "steps.jsonl"

    def log_step(self, row: dict[str, Any]) -> None:
        with self.steps_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def log_epoch(self, row: dict[str, Any]) -> None:
        rows = self._epoch_rows()
        header = list(dict.fromkeys([*(rows[0] if rows else {}), *row]))
        if rows and len(header) > len(rows[0]):
            # A metric that starts later in the run (e.g. DUCAT's after its activation epoch) widens the
            # header: rewrite the file atomically with empty cells in the earlier rows.
            self._rewrite_epochs([*rows, row], header)
            return
        # No rows yet (possibly a header left by a resumed run trimmed to nothing): start the file afresh.
        with self.epochs_path.open("a" if rows else "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            if not rows:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in header})

    def _epoch_rows(self) -> list[dict[str, Any]]:
        if not self.epochs_path.exists() or self.epochs_path.stat().st_size == 0:
            return []
        with self.epochs_path.open(newline="") as f:
            return list(csv.DictReader(f))

    def _rewrite_epochs(self, rows: list[dict[str, Any]], header: list[str]) -> None:
        def write(f) -> None:
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, fieldnames=header)
            writer.writeheader()
            writer.writerows({k: r.get(k, "") for k in header} for r in rows)
            f.write(text.getvalue().encode())

        atomic_write(self.epochs_path, write)

    def truncate_after(self, epoch: int, step: int) -> None:
        """On resume, drop rows logged after the checkpoint (they will be logged again)."""
        if self.epochs_path.exists():
            with self.epochs_path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            kept = [r for r in rows if int(r["epoch"]) <= epoch]
            if rows:
                with self.epochs_path.open("w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(kept)
        if self.steps_path.exists():
            lines = self.steps_path.read_text().splitlines()
            kept_lines = [ln for ln in lines if ln and json.loads(ln).get("step", 0) <= step]
            self.steps_path.write_text("".join(ln + "\n" for ln in kept_lines))


def format_value(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A compact fixed-width text table (the console summary)."""
    if not rows:
        return ""
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    cells = [[format_value(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join([line, sep, *body])
