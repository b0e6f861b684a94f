"""Named phases of a training iteration, for the profiler and for the benchmark's per-phase breakdown.

The methods wrap their work in `with phase(name):` using the names in PHASES (the training loop and the
benchmark wrap the loader in "data"). By default a phase is a shared no-op context: the training step pays
one global read per phase. Two things can switch phases on, separately:
- `phase_ranges()`: each phase becomes a torch.profiler `record_function` range (visible in Chrome traces and
  in key_averages) and, on CUDA, an NVTX range (visible in Nsight Systems);
- `timing_phases(timer)`: each phase's wall time is added to `timer`, with the device synchronised at both
  ends so the time is the phase's own. That serialises the GPU (no overlap between phases or streams), so it
  is for an instrumented pass that explains a timing, never for the timing itself.
Phases nest: a step's "robust_update" holds its "attack"; the timer counts each second once, for the
innermost phase open at that moment (exclusive time), and profiler ranges nest as ranges do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

PHASES = ("data", "attack", "robust_update", "natural_update", "averaging")

_NULL = nullcontext()
_ranges_on = False
_timer: PhaseTimer | None = None


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class PhaseTimer:
    """Exclusive seconds and entry counts per phase name, the device synchronised at each phase boundary."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._open: list[list] = []  # [name, time the innermost open phase last resumed]

    def sync(self) -> None:
        if self.device.type == "cuda" and not _capturing():
            torch.cuda.synchronize(self.device)

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def enter(self, name: str) -> None:
        self.sync()
        now = time.perf_counter()
        if self._open:  # the enclosing phase pauses while this one runs
            outer = self._open[-1]
            self._add(outer[0], now - outer[1])
        self._open.append([name, now])
        self.counts[name] = self.counts.get(name, 0) + 1

    def exit(self) -> None:
        self.sync()
        now = time.perf_counter()
        name, resumed = self._open.pop()
        self._add(name, now - resumed)
        if self._open:
            self._open[-1][1] = now

    def reset(self) -> None:
        self.seconds.clear()
        self.counts.clear()
        self._open.clear()


class _Phase:
    __slots__ = ("name", "_range", "_nvtx", "_timer")

    def __init__(self, name: str):
        self.name = name
        self._range = None
        self._nvtx = False
        self._timer: PhaseTimer | None = None

    def __enter__(self) -> _Phase:
        if _timer is not None:
            self._timer = _timer
            _timer.enter(self.name)
        if _ranges_on:
            self._range = torch.profiler.record_function(self.name)
            self._range.__enter__()
            if torch.cuda.is_available():
                torch.cuda.nvtx.range_push(self.name)
                self._nvtx = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._nvtx:
            torch.cuda.nvtx.range_pop()
        if self._range is not None:
            self._range.__exit__(*exc)
        if self._timer is not None:
            self._timer.exit()


def phase(name: str) -> AbstractContextManager:
    """A context marking one phase of the iteration; a shared no-op unless ranges or timing are on."""
    if not _ranges_on and _timer is None:
        return _NULL
    return _Phase(name)


@contextmanager
def phase_ranges(enabled: bool = True) -> Iterator[None]:
    """Within the block, phases are profiler (and, on CUDA, NVTX) ranges."""
    global _ranges_on
    previous, _ranges_on = _ranges_on, enabled
    try:
        yield
    finally:
        _ranges_on = previous


@contextmanager
def timing_phases(timer: PhaseTimer) -> Iterator[PhaseTimer]:
    """Within the block, every phase's synchronised wall time is added to `timer`."""
    global _timer
    previous, _timer = _timer, timer
    try:
        yield timer
    finally:
        _timer = previous
