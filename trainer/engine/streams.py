"""Generalist's two independent expert updates, run concurrently on two CUDA streams or one after the other.

In each Generalist iteration the natural expert's forward, backward and optimiser step do not depend on the
robust expert's PGD attack and step (and vice versa) until the averaging that follows both. On CUDA the
natural update is therefore issued on a side stream while the robust update (the 10-step attack, most of the
iteration's FLOPs) runs on the current stream; events join them before the averaging kernel.

Correctness across streams:
- fork: the side stream waits on an event recorded on the current stream after everything the iteration
  depends on was issued there (the batch, the previous iteration's averaging and redistribution, which
  write the natural expert's weights);
- join: the current stream waits on an event recorded on the side stream after the natural update, before
  anything reads the natural expert's weights or metrics;
- memory: the batch tensors (allocated on the current stream) are `record_stream`-ed on the side stream, so
  the caching allocator does not hand their memory out again while the side stream may still read them; the
  natural update's returned tensors (its metrics, allocated on the side stream) are `record_stream`-ed on the
  current stream for the same reason. The natural expert's gradients and momentum buffers are made and used
  on the side stream only.
- randomness: both updates may draw random numbers (the attack's start, dropout). Drawn from one generator,
  the numbers each update gets would depend on which was issued first, so the natural update runs on
  generators of its own, seeded from one draw of the global CPU generator made before either update
  (`independent_rng`). Both orders, and both paths, then give the same numbers; a resume stays exact because
  the seed comes from the checkpointed global generator.

The single-stream path is the same code with `enabled=False`: the two updates run in the given order on the
current stream. `order` exists so that tests can run both orders and show the updates are independent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

Metrics = Mapping[str, object]
T = TypeVar("T")
ORDERS = ("robust_first", "natural_first")


def draw_update_seed() -> int:
    """A 63-bit seed from the global CPU generator (checkpointed; no device synchronisation)."""
    return int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64).item())


def _device_generator(device: torch.device) -> torch.Generator | None:
    if device.type != "cuda":
        return None
    torch.cuda.init()
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.default_generators[index]


@contextmanager
def independent_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block on the global CPU generator (and `device`'s CUDA generator) seeded with `seed`, then put
    both back exactly as they were, as if the block had drawn nothing.

    Both generators are host-side state (the CUDA one is a Philox seed and offset), so this does not
    synchronise the device. Not for use inside CUDA graph capture (the capture registers the generator).
    """
    generators = [torch.default_generator]
    cuda_gen = _device_generator(device)
    if cuda_gen is not None:
        generators.append(cuda_gen)
    saved = [g.get_state() for g in generators]
    for g in generators:
        g.manual_seed(seed)
    try:
        yield
    finally:
        for g, state in zip(generators, saved):
            g.set_state(state)


class RankRandomForward(nn.Module):
    """`module`'s forward on random generators of this rank's own, for the training forward under torchrun.

    Every rank starts from the same seed, so that the global generators rank 0 checkpoints are every rank's
    and a resume is exact; drawn from them, dropout would repeat one mask pattern on every rank's slice. Here
    each forward runs on generators seeded from (run seed, network, step, call within the step, rank), and
    `independent_rng` puts the global ones back afterwards: the masks differ between ranks (and between
    forwards), the shared stream the attacks' random starts come from stays in step on every rank, and a
    resume is exact, since every input of the seed is configuration or checkpointed state. What it does not
    give is one process's masks: a rank's masks are not those one process would draw for the same rows.
    """

    def __init__(self, module: nn.Module, *, name: str, rank: int, seed: int, device: torch.device,
                 step: Callable[[], int]):
        super().__init__()
        self.module = module
        self.name, self.rank, self.seed, self.device, self.step = name, rank, seed, torch.device(device), step
        self._step: int | None = None
        self._calls = 0

    def forward(self, *args: object, **kwargs: object) -> object:
        step = self.step()
        if step != self._step:
            self._step, self._calls = step, 0
        key = f"{self.seed}/{self.name}/{step}/{self._calls}/{self.rank}".encode()
        self._calls += 1
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1  # 63 bits
        with independent_rng(seed, self.device):
            return self.module(*args, **kwargs)


def _tensors(metrics: Metrics) -> list[torch.Tensor]:
    """The device tensors of a dict of metrics (typed `Metric`s or plain values)."""
    values = [getattr(v, "value", v) for v in metrics.values()]
    return [v for v in values if isinstance(v, torch.Tensor)]


class ExpertStreams:
    """Runs a robust and a natural update, concurrently on two CUDA streams when enabled, else in order."""

    def __init__(self, device: torch.device, enabled: bool):
        if enabled and device.type != "cuda":
            raise ValueError(f"ExpertStreams: two streams need a CUDA device, got {device}")
        self.device = device
        self.enabled = enabled
        self.side = torch.cuda.Stream(device) if enabled else None

    def run(self, robust: Callable[[], T], natural: Callable[[], T], *, inputs: Sequence[torch.Tensor] = (),
            order: str = "robust_first") -> tuple[T, T]:
        """(robust(), natural()). `inputs`: the tensors natural() reads that the current stream produced."""
        if order not in ORDERS:
            raise ValueError(f"ExpertStreams.run: order {order!r}, expected one of {ORDERS}")
        if self.side is None:
            if order == "natural_first":
                natural_out = natural()
                return robust(), natural_out
            robust_out = robust()
            return robust_out, natural()
        main = torch.cuda.current_stream(self.device)
        # Not `main.is_capturing()`: torch.cuda.Stream has no such method in torch 2.11 (the GPU image's).
        capturing = torch.cuda.is_current_stream_capturing()
        forked = torch.cuda.Event()
        forked.record(main)
        self.side.wait_event(forked)
        # Issued first: it is the short one, and the host then issues the attack's many launches while the
        # side stream already computes.
        with torch.cuda.stream(self.side):
            natural_out = natural()
            joined = torch.cuda.Event()
            joined.record(self.side)
        if not capturing:  # a graph's memory is its own private pool, outside the caching allocator's reuse
            for t in inputs:
                t.record_stream(self.side)
        robust_out = robust()
        main.wait_event(joined)
        if not capturing and isinstance(natural_out, Mapping):
            for t in _tensors(natural_out):
                t.record_stream(main)
        return robust_out, natural_out
