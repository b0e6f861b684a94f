"""`python -m generalist_trainer profile`: a torch.profiler trace of N training iterations, with one range per phase.

The run is built exactly as `train` builds it (seed, data splits, method, engine, cuDNN/TF32 policy, training
loader), then a few warm-up iterations run unrecorded (cuDNN autotuning, torch.compile, the CUDA graph
capture) and N iterations are recorded. Every phase of an iteration (PHASES: data, attack, robust_update,
natural_update, averaging) is a `record_function` range, and an NVTX range on CUDA, so that the attack's
kernels can be told apart from the updates' in the Chrome trace (chrome://tracing, Perfetto) or in Nsight
Systems. Nothing is written but the trace: no run folder, no checkpoint.

Prints the top operators / kernels by self time (device time on CUDA, CPU time otherwise) and the time
spent in each phase.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from ..config import RunConfig
from ..errors import ConfigError
from ..runtime import configure_threads, seed_everything
from ..session import open_session
from .cudnn_tf32 import apply_cudnn_tf32_policy
from .phases import PHASES, phase, phase_ranges

log = logging.getLogger(__name__)


def endless_batches(loader, device: torch.device, first_epoch: int = 1, *,
                    with_index: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
    """The loader's batches (x, y), epoch after epoch, moved to `device` (a no-op for device-resident loaders);
    with_index: (x, y, index), index the rows' dataset indices (for an objective with per-sample state, IAT)."""
    epoch = first_epoch
    while True:
        if not with_index:
            for x, y in loader.batches(epoch):
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        else:
            for (x, y), index in zip(loader.batches(epoch), loader.batch_indices(epoch)):
                yield (x.to(device, non_blocking=True), y.to(device, non_blocking=True),
                       index.to(device, non_blocking=True))
        epoch += 1


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_training(cfg: RunConfig, *, steps: int = 5, warmup: int | None = None, out: str | Path = "trace.json",
                     top_k: int = 20) -> dict:
    """Record `steps` training iterations after `warmup` unrecorded ones; write the Chrome trace to `out`.

    warmup None: 2, or enough to get past the CUDA graph capture (engine.cuda_graph_warmup_steps + 1).
    Returns {"trace", "steps", "sort_by", "top": [{name, self_ms, calls}], "phases_ms": {phase: ms}}.
    """
    if steps < 1:
        raise ConfigError(f"profile: --steps {steps}, expected an integer >= 1")
    if warmup is not None and warmup < 0:
        raise ConfigError(f"profile: --warmup {warmup}, expected an integer >= 0")
    configure_threads(cfg.train.threads)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    session = open_session(cfg)
    method, device = session.method, session.device
    settings = method.engine.settings
    apply_cudnn_tf32_policy(settings)
    log.info(settings.describe())
    if warmup is None:
        warmup = settings.cuda_graph_warmup_steps + 1 if settings.cuda_graphs else 2
    method.start_epoch(1)
    batches = endless_batches(session.train_loader(), device, with_index=method.needs_sample_index)

    def iteration() -> None:
        with phase("data"):
            batch = next(batches)  # (x, y), or (x, y, index) for an objective with per-sample state
        method.device_step(*batch)  # no host read: the profile shows the step as training runs it

    for _ in range(warmup):
        iteration()
    _synchronize(device)

    cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with phase_ranges(), torch.profiler.profile(activities=activities) as prof:
        for i in range(steps):
            with torch.profiler.record_function(f"iteration {i}"):
                iteration()
        _synchronize(device)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out))

    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    averages = prof.key_averages()
    log.info(averages.table(sort_by=sort_by, row_limit=top_k))
    ranked = sorted((e for e in averages if e.key not in PHASES and not e.key.startswith("iteration ")),
                    key=lambda e: getattr(e, sort_by), reverse=True)[:top_k]
    top = [{"name": e.key, "self_ms": getattr(e, sort_by) / 1e3, "calls": e.count} for e in ranked]
    # Phase totals: CPU-side wall time of each range, nested phases included (robust_update holds attack);
    # on CUDA that is what the host spent issuing the phase, the device time is in the trace.
    phases_ms = {e.key: e.cpu_time_total / 1e3 for e in averages if e.key in PHASES}
    shown = ", ".join(f"{k} {v:.1f}" for k, v in sorted(phases_ms.items(), key=lambda kv: -kv[1]))
    log.info("time per phase over %d iterations (host wall ms, nested phases included): %s", steps, shown)
    log.info("trace: %s", out)
    return {"trace": str(out), "steps": steps, "warmup": warmup, "sort_by": sort_by, "top": top,
            "phases_ms": phases_ms}
