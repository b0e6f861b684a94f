"""Typed step metrics that stay on the device, summed there, and read by the host only at boundaries.

A metric read on the host (`float(loss)`) waits for the device to finish everything issued before it. Inside
a step that stalls the host in the middle of the iteration (no more kernels are issued until the wait ends),
breaks the overlap of Generalist's two streams, and cannot be captured in a CUDA graph; between steps it still
idles the device while the host issues the next step. So:
- a step returns its metrics as `Metric`s, each a 0-dim device tensor (or a host float such as a schedule
  value) typed by what it is: a loss term (and the network whose update it drives), a value to average, or
  the optimiser steps an fp16 loss scaler skipped. The NaN/Inf guard (trainer/guards.py) works from these
  types, not from metric names;
- the training loop folds each step into a `StepAccumulator`: device-side sums over the epoch, the last step's
  values, and a device-side record of the first non-finite loss and of the first failed device check;
- at a logging or checkpoint boundary `read()` brings all of it to the host in one copy (under torchrun after
  one all-reduce of the sums and one of the records, so every rank reads the same global-batch numbers and
  stops at the same boundary).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

MetricValue = float | int | torch.Tensor


class Kind(enum.Enum):
    LOSS = "loss"  # an objective term (a loss, TRADES' KL): averaged over steps, must be finite
    MEAN = "mean"  # any other value averaged over steps (accuracies, fractions, schedule values)
    SKIPPED_STEPS = "skipped_steps"  # optimiser steps an fp16 loss scaler skipped: summed; excuses the step's losses


@dataclass(frozen=True)
class Metric:
    value: torch.Tensor | float  # a 0-dim (or 1-element) device tensor, or a host float
    kind: Kind = Kind.MEAN
    network: str | None = None  # LOSS: the network the loss trains (the guard names it)


StepMetrics = dict[str, Metric]


def _value(value: MetricValue) -> torch.Tensor | float:
    return value.detach() if isinstance(value, torch.Tensor) else float(value)


def loss_metric(value: MetricValue, network: str | None = None) -> Metric:
    return Metric(_value(value), Kind.LOSS, network)


def mean_metric(value: MetricValue) -> Metric:
    return Metric(_value(value), Kind.MEAN)


def skipped_metric(value: MetricValue) -> Metric:
    return Metric(_value(value), Kind.SKIPPED_STEPS)


def for_network(metrics: Mapping[str, Metric], network: str) -> StepMetrics:
    """`metrics` with `network` filled in on every loss that names none (shared loss functions do not know whose
    update they drive; the method that calls them does)."""
    return {k: Metric(m.value, m.kind, network) if m.kind is Kind.LOSS and m.network is None else m
            for k, m in metrics.items()}


def host_values(metrics: Mapping[str, Metric]) -> dict[str, float]:
    """{name: float} in the metrics' order; every tensor value comes over in one stacked device-to-host copy."""
    names = [k for k, m in metrics.items() if isinstance(m.value, torch.Tensor)]
    values: dict[str, float] = {}
    if names:
        stacked = torch.stack([metrics[k].value.reshape(()).to(torch.float64) for k in names])
        values = dict(zip(names, stacked.tolist()))
    return {k: values[k] if k in values else float(m.value) for k, m in metrics.items()}


@dataclass(frozen=True)
class NonFiniteLoss:
    step: int
    metric: str
    network: str | None
    value: float  # nan, inf or -inf


@dataclass(frozen=True)
class CheckFailure:
    step: int
    index: int  # which of the checked items failed first (the caller's numbering)


@dataclass(frozen=True)
class Snapshot:
    """What one read brought to the host."""

    step: int  # the last step recorded
    last: dict[str, float]  # that step's metrics, in its order (global-batch means under torchrun)
    sums: dict[str, float]  # each metric summed over the epoch's recorded steps, in first-seen order
    steps: int  # steps recorded in this epoch
    kinds: dict[str, Kind]
    non_finite: NonFiniteLoss | None  # the epoch's first non-finite loss outside steps a loss scaler skipped
    checks: dict[str, CheckFailure | None]  # per device check (record_check), its first failure this epoch
    new_skipped: int  # optimiser steps the loss scalers skipped since the previous read
    unread_from: int  # the first step recorded since the previous read

    def epoch_means(self) -> dict[str, float]:
        """Means over the epoch's steps (divided by every recorded step, as if absent where a metric was missing),
        except the skipped optimiser steps, which are counted (their sum)."""
        count = max(self.steps, 1)
        return {k: v if self.kinds[k] is Kind.SKIPPED_STEPS else v / count for k, v in self.sums.items()}


# A non-finite loss is recorded as one float64 code, so that "the first one" is a minimum (on the device, and over
# ranks): ((step * _LAYOUTS + layout) * _POSITIONS + position) * 4 + class. Exact below 2^53, i.e. for
# 2^53 / 2^14 ~ 5.5e11 steps; a device check's code, step * _CHECK_SLOTS + index, for 8.6e9 steps.
_LAYOUTS = 64
_POSITIONS = 64
_CLASSES = (math.nan, math.inf, -math.inf)
_CHECK_SLOTS = 2 ** 20  # items per device check, in the check code step * _CHECK_SLOTS + index


@dataclass(frozen=True)
class _Layout:
    """The device metrics of a step, ordered losses first, then skipped steps, then the rest."""

    names: tuple[str, ...]
    losses: int
    skipped: int
    epoch_index: torch.Tensor | None  # (K,) int64 positions in the epoch sums; None when they are 0..K-1


class StepAccumulator:
    """An epoch of step metrics on the device between host reads; see the module docstring.

    Per step (`add`, `record_check`): device ops only, a fixed handful whatever the number of steps. `read`:
    one device-to-host copy of everything (and under torchrun one all-reduce of the sums and one of the records).
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._layouts: dict[tuple[str, ...], int] = {}
        self._layout_list: list[_Layout] = []
        self._positions: dict[int, torch.Tensor] = {}
        self._check_codes: dict[str, torch.Tensor] = {}
        self.start_epoch()

    def start_epoch(self) -> None:
        self._epoch_names: dict[str, int] = {}  # device metric -> position in self._sums
        self._order: dict[str, None] = {}  # every metric name, first-seen order
        self._kinds: dict[str, Kind] = {}
        self._networks: dict[str, str | None] = {}
        self._sums: torch.Tensor | None = None  # (K,) float64
        self._host_sums: dict[str, float] = {}
        self._steps = 0
        self._step = 0
        self._last: torch.Tensor | None = None  # (K_step,) float64, the last step's device values
        self._last_layout: _Layout | None = None
        self._last_host: dict[str, float] = {}
        self._last_order: list[str] = []
        self._layouts.clear()
        self._layout_list.clear()
        # First non-finite loss, and the first failure of each device check: 0-dim float64 codes, +inf while none.
        self._loss_code = torch.full((), math.inf, dtype=torch.float64, device=self.device)
        self._check_codes = {name: self._loss_code.clone() for name in self._check_codes}
        self._host_non_finite: NonFiniteLoss | None = None
        self._skipped_read = 0.0
        self._unread_from: int | None = None  # the first step added since the previous read
        self._snapshot: Snapshot | None = None
        self._dirty = False

    # ---------------------------------------------------------------------------------------------
    # Per step: device ops only

    def _layout(self, metrics: Mapping[str, Metric], names: list[str]) -> _Layout:
        key = tuple(names)
        index = self._layouts.get(key)
        if index is not None:
            return self._layout_list[index]
        if len(self._layout_list) >= _LAYOUTS or len(names) > _POSITIONS:
            raise ValueError(f"StepAccumulator: more than {_LAYOUTS} metric layouts in an epoch or more than "
                             f"{_POSITIONS} device metrics in a step ({names})")
        for name in names:
            if name not in self._epoch_names:
                self._epoch_names[name] = len(self._epoch_names)
        positions = [self._epoch_names[n] for n in names]
        in_order = positions == list(range(len(positions)))
        # Built once per layout (a host-to-device copy), not per step; None: the sums' first K positions.
        index = None if in_order else torch.tensor(positions, dtype=torch.int64, device=self.device)
        layout = _Layout(key, sum(metrics[n].kind is Kind.LOSS for n in names),
                         sum(metrics[n].kind is Kind.SKIPPED_STEPS for n in names), index)
        self._layouts[key] = len(self._layout_list)
        self._layout_list.append(layout)
        return layout

    def _arange(self, n: int) -> torch.Tensor:
        positions = self._positions.get(n)
        if positions is None:
            positions = self._positions[n] = torch.arange(n, dtype=torch.float64, device=self.device)
        return positions

    def add(self, metrics: Mapping[str, Metric], step: int) -> None:
        """Fold one step's metrics in (no host read). `step`: the step's 1-based global number."""
        order = {Kind.LOSS: 0, Kind.SKIPPED_STEPS: 1, Kind.MEAN: 2}
        device = sorted((k for k, m in metrics.items() if isinstance(m.value, torch.Tensor)),
                        key=lambda k: order[metrics[k].kind])  # stable: each kind keeps the step's order
        for k, m in metrics.items():
            self._order.setdefault(k)
            self._kinds[k] = m.kind
            self._networks[k] = m.network
        host = {k: float(m.value) for k, m in metrics.items() if not isinstance(m.value, torch.Tensor)}
        for k, v in host.items():
            self._host_sums[k] = self._host_sums.get(k, 0.0) + v
            if metrics[k].kind is Kind.LOSS and not math.isfinite(v) and self._host_non_finite is None:
                self._host_non_finite = NonFiniteLoss(step, k, metrics[k].network, v)
        layout = self._layout(metrics, device)
        if device:
            values = torch.stack([metrics[k].value.reshape(()).to(torch.float64) for k in device])  # (K_step,)
            width = len(self._epoch_names)
            if self._sums is None:
                self._sums = torch.zeros(width, dtype=torch.float64, device=self.device)
            elif self._sums.numel() < width:  # a metric first seen this step (e.g. DUCAT's after activation)
                self._sums = torch.cat([self._sums, self._sums.new_zeros(width - self._sums.numel())])
            if layout.epoch_index is None:
                (self._sums if self._sums.numel() == len(device) else self._sums[:len(device)]).add_(values)
            else:
                self._sums.index_add_(0, layout.epoch_index, values)
            if layout.losses:
                self._watch_losses(values, layout, step)
            self._last = values
        else:
            self._last = None
        self._last_layout = layout
        self._last_host = host
        self._last_order = list(metrics)
        self._steps += 1
        self._step = step
        if self._unread_from is None:
            self._unread_from = step
        self._dirty = True

    def _watch_losses(self, values: torch.Tensor, layout: _Layout, step: int) -> None:
        losses = values[:layout.losses]
        code = self._arange(layout.losses) * 4 + (
            (step * _LAYOUTS + self._layouts[layout.names]) * _POSITIONS * 4)
        # 0 for NaN, 1 for +inf, 2 for -inf (finite entries are masked out below).
        code = code + torch.where(torch.isnan(losses), 0.0, torch.where(losses > 0, 1.0, 2.0))
        bad = ~torch.isfinite(losses)
        if layout.skipped:  # a step the loss scaler skipped has non-finite losses by design
            bad = bad & (values[layout.losses] <= 0)
        self._loss_code = torch.minimum(self._loss_code, torch.where(bad, code, math.inf).min())

    def record_check(self, name: str, failed: torch.Tensor, step: int) -> None:
        """Record a device-side check of (T,) items: `failed` (T,) bool. The first failing item of the first step
        that failed is kept until the epoch ends; `read()` reports it under `name`."""
        current = self._check_codes.get(name)
        if current is None:
            current = torch.full((), math.inf, dtype=torch.float64, device=self.device)
        code = self._arange(failed.numel()) + step * _CHECK_SLOTS
        self._check_codes[name] = torch.minimum(current, torch.where(failed.reshape(-1), code, math.inf).min())
        self._dirty = True

    # ---------------------------------------------------------------------------------------------
    # At a boundary: one read

    def read(self) -> Snapshot:
        """Everything recorded so far in this epoch, on the host (one copy; until the next step, later reads
        return the same, with nothing new skipped)."""
        if self._snapshot is not None and not self._dirty:
            return dataclasses.replace(self._snapshot, new_skipped=0)
        from ..distributed import all_reduce_min, all_reduce_sum, is_distributed, world_size

        last = self._last if self._last is not None else self._loss_code.new_zeros(0)
        sums = self._sums if self._sums is not None else self._loss_code.new_zeros(0)
        means = torch.cat([last, sums])
        records = torch.stack([self._loss_code, *self._check_codes.values()])
        if is_distributed():
            means = all_reduce_sum(means) / world_size()  # the mean over ranks of each rank's slice mean
            records = all_reduce_min(records)
        values = torch.cat([means, records]).tolist()  # the one device-to-host copy
        n_last = last.numel()
        last_values, sum_values = values[:n_last], values[n_last:n_last + sums.numel()]
        record_values = values[n_last + sums.numel():]
        layout = self._last_layout
        step_device = dict(zip(layout.names, last_values)) if layout is not None else {}
        step_values = {k: step_device[k] if k in step_device else self._last_host[k] for k in self._last_order}
        epoch_device = {k: sum_values[i] for k, i in self._epoch_names.items()}
        sums_all = {k: epoch_device[k] if k in epoch_device else self._host_sums[k] for k in self._order}
        skipped = sum(v for k, v in sums_all.items() if self._kinds[k] is Kind.SKIPPED_STEPS)
        snapshot = Snapshot(
            step=self._step, last=step_values, sums=sums_all, steps=self._steps, kinds=dict(self._kinds),
            non_finite=self._decode_loss(record_values[0]),
            checks={name: self._decode_check(code) for name, code in zip(self._check_codes, record_values[1:])},
            new_skipped=int(round(skipped - self._skipped_read)),
            unread_from=self._unread_from if self._unread_from is not None else self._step)
        self._skipped_read = skipped
        self._unread_from = None
        self._snapshot, self._dirty = snapshot, False
        return snapshot

    def _decode_loss(self, code: float) -> NonFiniteLoss | None:
        device = None
        if math.isfinite(code):
            code = int(code)
            cls, rest = code % 4, code // 4
            position, rest = rest % _POSITIONS, rest // _POSITIONS
            layout, step = rest % _LAYOUTS, rest // _LAYOUTS
            name = self._layout_list[layout].names[position]
            device = NonFiniteLoss(step, name, self._networks.get(name), _CLASSES[cls])
        host = self._host_non_finite
        if device is None or (host is not None and host.step < device.step):
            return host
        return device

    @staticmethod
    def _decode_check(code: float) -> CheckFailure | None:
        if not math.isfinite(code):
            return None
        return CheckFailure(int(code) // _CHECK_SLOTS, int(code) % _CHECK_SLOTS)
