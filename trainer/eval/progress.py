"""Progress of an evaluation: a bar per attack stage on a terminal, a plain line every half minute elsewhere.

Each stage (clean, PGD-k, CW-k, PGD-LSE-k, AutoAttack's clean pass and each of its attacks) shows the points
done out of the stage's points, the share still robust (correct, for the clean pass), the elapsed time and
an estimate of the time left. For the per-point stages, robust is the share of the points done so far that
survived. For an AutoAttack attack it is the robust accuracy over all points with the attack part-way
(points the attack has not reached yet still count as robust, as in AutoAttack's own breakdown), so it
falls to that attack's figure as the stage ends. A resumed AutoAttack attack starts at the points its
earlier sessions finished; its estimate comes from this session's rate only.

Everything goes to stderr: a tqdm bar when stderr is a TTY; otherwise (a log file, CI) one line when a
stage starts, at most one line per `interval` seconds while it runs (at the first update after the
interval: a stage whose batches take longer reports once per batch) and one when it ends, since a
redrawn bar turns into carriage-return soup in a file. Only rank 0 of a torchrun launch reports.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import torch.distributed as dist
from tqdm import tqdm

# Seconds between two progress lines when stderr is not a terminal.
LOG_INTERVAL_S = 30.0
_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} points [{elapsed}<{remaining}{postfix}]"
_clock = time.monotonic  # a name of its own so that tests can move time


def _is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class EvalProgress:
    """Where an evaluation reports its progress; `EvalProgress(False)` (or a non-zero rank) reports nothing.

    `stream` None: sys.stderr, looked up when a stage starts. `tty` None: ask the stream.
    """

    def __init__(self, enabled: bool = True, *, stream: TextIO | None = None, tty: bool | None = None,
                 interval: float = LOG_INTERVAL_S, prefix: str = ""):
        self.enabled = enabled and _is_rank0()
        self._stream = stream
        self._tty = tty
        self.interval = interval
        self.prefix = prefix

    def labelled(self, label: str) -> EvalProgress:
        """The same destination, with `label` (a model's name) before every stage name."""
        return EvalProgress(self.enabled, stream=self._stream, tty=self._tty, interval=self.interval,
                            prefix=f"{self.prefix}{label} ")

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def _on_tty(self) -> bool:
        if self._tty is not None:
            return self._tty
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def stage(self, name: str, total: int, *, initial: int = 0, counted: str = "robust") -> Stage:
        """A stage of `total` points of which `initial` were done before (a resumed AutoAttack attack)."""
        desc = f"{self.prefix}{name}"
        if not self.enabled:
            return Stage()
        if self._on_tty():
            return _BarStage(desc, total, initial, counted, self.stream)
        return _LineStage(desc, total, initial, counted, self.stream, self.interval)

    def note(self, message: str) -> None:
        """One line between stages (e.g. a model skipped because its weights were evaluated already)."""
        if not self.enabled:
            return
        if self._on_tty():
            tqdm.write(f"{self.prefix}{message}", file=self.stream)
        else:
            self.stream.write(f"{self.prefix}{message}\n")
            self.stream.flush()


class Stage:
    """A stage that shows nothing; the base of the two that do. Use as a context manager: it always closes."""

    active = False  # callers skip work done only for the display (a host sync per batch) when False

    def update(self, points: int, robust: int, of: int | None = None) -> None:
        """`points` more done; `robust` of `of` (default: all points done so far) are still robust."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _share(robust: int, of: int) -> str:
    return f"{100.0 * robust / of:.1f}%" if of else "-"


class _BarStage(Stage):
    active = True

    def __init__(self, desc: str, total: int, initial: int, counted: str, stream: TextIO):
        self.counted = counted
        self.done = initial
        self.bar = tqdm(total=total, initial=initial, desc=desc, file=stream, leave=True, dynamic_ncols=True,
                        bar_format=_BAR_FORMAT, mininterval=0.5)

    def update(self, points: int, robust: int, of: int | None = None) -> None:
        self.done += points
        self.bar.set_postfix_str(f"{self.counted} {_share(robust, self.done if of is None else of)}",
                                 refresh=False)
        self.bar.update(points)

    def close(self) -> None:
        self.bar.close()


class _LineStage(Stage):
    active = True

    def __init__(self, desc: str, total: int, initial: int, counted: str, stream: TextIO, interval: float):
        self.desc, self.total, self.initial, self.counted = desc, total, initial, counted
        self.stream, self.interval = stream, interval
        self.done = initial
        self.shown = ""
        self.started = self.last_line = _clock()
        resumed = f", {initial} done in earlier sessions" if initial else ""
        self._write(f"{desc}: started on {total} points{resumed}")

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def _elapsed_and_left(self) -> str:
        elapsed = _clock() - self.started
        done_here = self.done - self.initial
        text = f"{tqdm.format_interval(elapsed)} elapsed"
        if self.done < self.total and done_here > 0:
            text += f", about {tqdm.format_interval(elapsed / done_here * (self.total - self.done))} left"
        return text

    def update(self, points: int, robust: int, of: int | None = None) -> None:
        self.done += points
        self.shown = f"{self.counted} {_share(robust, self.done if of is None else of)}"
        if _clock() - self.last_line >= self.interval and self.done < self.total:
            self.last_line = _clock()
            self._write(f"{self.desc}: {self.done}/{self.total} points, {self.shown}, {self._elapsed_and_left()}")

    def close(self) -> None:
        ending = "done" if self.done >= self.total else f"stopped at {self.done}/{self.total} points"
        shown = f", {self.shown}" if self.shown else ""
        self._write(f"{self.desc}: {ending}{shown}, {self._elapsed_and_left()}")


def as_progress(progress: EvalProgress | bool | None) -> EvalProgress:
    """The Python API's `progress` argument: an EvalProgress, True (stderr) or False / None (silent)."""
    if isinstance(progress, EvalProgress):
        return progress
    return EvalProgress(bool(progress))
