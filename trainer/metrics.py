"""Run logging: one CSV row per epoch (prefixed keys), JSONL per logged step, a console table."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write


@contextmanager
def _appending(path: Path, mode: str, **kwargs: Any) -> Iterator[Any]:
    """path.open(mode): an OSError from a write or the close names the file. A full disk fails the write(2) of an
    open file, and that error carries no file name, so the CLI's one-line message could not say which one."""
    try:
        with path.open(mode, **kwargs) as f:
            yield f
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


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
        with _appending(self.steps_path, "a") as f:
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
        with _appending(self.epochs_path, "a" if rows else "w", newline="") as f:
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

    def reset(self) -> None:
        """A fresh run: remove logs left by a run that was killed before its first checkpoint."""
        self.epochs_path.unlink(missing_ok=True)
        self.steps_path.unlink(missing_ok=True)

    def truncate_after(self, epoch: int, step: int) -> None:
        """On resume, drop rows logged after the checkpoint (they will be logged again).

        Both files are rewritten atomically: a kill during the resume itself must not lose the kept rows.
        A last line without its newline was being written when the run was killed, after the checkpoint
        being resumed (rows are logged before the checkpoint of their epoch or step), so it is dropped too.
        """
        if self.epochs_path.exists():
            text = _complete_lines(self.epochs_path.read_text())
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
            kept = [r for r in rows if _int_or_none(r.get("epoch")) is not None and int(r["epoch"]) <= epoch]
            if rows:
                header = list(rows[0])
                self._rewrite_epochs(kept, header)
            elif not text:
                self.epochs_path.unlink()  # nothing complete in it, not even a header
        if self.steps_path.exists():
            kept_lines = []
            for line in _complete_lines(self.steps_path.read_text()).splitlines():
                try:
                    row = json.loads(line)
                except ValueError:  # e.g. zeros left by a crash of the machine: not a logged step
                    continue
                if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                    kept_lines.append(line)
            atomic_write(self.steps_path, lambda f: f.write("".join(ln + "\n" for ln in kept_lines).encode()))


def _complete_lines(text: str) -> str:
    """`text` without a last line that lacks its newline (torn by a kill in the middle of a write)."""
    return text[: text.rfind("\n") + 1]


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def format_value(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def format_percent(fraction: float) -> str:
    """An accuracy in [0, 1] as a percentage with one decimal ("68.0"); "-" for NaN. Further decimals lie far
    below the standard error of an accuracy on 10,000 points (0.4-0.5%); the JSON files keep full precision."""
    return "-" if math.isnan(fraction) else f"{100.0 * fraction:.1f}"


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
