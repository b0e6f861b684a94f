"""The engine configuration resolved against the device and the method: every `auto` (null) field decided,
every explicit request checked for whether this device and launch can honour it.

`engine.*` fields (trainer/config.py EngineConfig) that config validation cannot judge without the device
are judged here. Rules: an explicit request that cannot be honoured raises ConfigError naming the field;
`auto` falls back quietly and records why in `notes` (printed once when the method is built).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import RunConfig
from ..errors import ConfigError

# What each precision name autocasts to; fp32 runs without autocast.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass(frozen=True)
class EngineSettings:
    """Resolved engine: concrete values only (no auto), valid for `device`."""

    device: torch.device
    precision: str  # bf16 | fp16 | fp32
    eval_precision: str  # bf16 | fp16 | fp32
    channels_last: bool
    cudnn_benchmark: bool
    tf32: bool
    two_streams: bool
    cuda_graphs: bool
    cuda_graph_warmup_steps: int
    compile: bool
    optimizer_impl: str  # torch | apex
    attack_zero_grad_every_step: bool
    deterministic: bool
    notes: tuple[str, ...] = ()

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return AUTOCAST_DTYPES[self.precision]

    @property
    def loss_scaling(self) -> bool:
        """fp16 gradients underflow without a loss scale; bf16 has fp32's exponent range and needs none."""
        return self.precision == "fp16"

    def describe(self) -> str:
        flags = [f"precision {self.precision}", f"eval {self.eval_precision}",
                 f"channels_last {'on' if self.channels_last else 'off'}"]
        if self.device.type == "cuda":
            flags += [f"cudnn.benchmark {'on' if self.cudnn_benchmark else 'off'}",
                      f"tf32 {'on' if self.tf32 else 'off'}", f"two streams {'on' if self.two_streams else 'off'}",
                      f"cuda graphs {'on' if self.cuda_graphs else 'off'}"]
        flags += [f"compile {'on' if self.compile else 'off'}", f"optimizer {self.optimizer_impl}"]
        text = "engine: " + ", ".join(flags)
        return text + "".join(f"\n  ({note})" for note in self.notes)


def _fail(field: str, value: object, why: str) -> ConfigError:
    return ConfigError(f"config field 'engine.{field}' = {value!r}: {why}")


def _bf16_supported(device: torch.device) -> bool:
    return device.type != "cuda" or torch.cuda.is_bf16_supported()


def resolve_engine(cfg: RunConfig, device: torch.device, *, distributed: bool = False) -> EngineSettings:
    """Decide every auto field of `cfg.engine` for `device` (and a torchrun launch when `distributed`)."""
    en = cfg.engine
    cuda = device.type == "cuda"
    generalist = cfg.method.name == "generalist"
    notes: list[str] = []

    if en.cuda_graphs and not cuda:
        raise _fail("cuda_graphs", en.cuda_graphs, f"needs a CUDA device; this run is on {device}")
    if en.cuda_graphs and distributed:
        raise _fail("cuda_graphs", en.cuda_graphs, "not supported under torchrun (DistributedDataParallel's "
                    "gradient all-reduce is not captured); set it to false")
    if en.two_streams and not cuda:
        raise _fail("two_streams", en.two_streams, f"needs a CUDA device (streams are CUDA's); this run is on {device}")
    if en.two_streams and not generalist:
        raise _fail("two_streams", en.two_streams, f"only Generalist has two independent expert updates; "
                    f"method.name is {cfg.method.name!r}")
    if en.optimizer_impl == "apex" and not cuda:
        raise _fail("optimizer_impl", en.optimizer_impl, f"apex's FusedSGD runs on CUDA only; this run is on {device}")

    precision = en.precision
    if precision == "auto":
        if not cuda:
            precision = "fp32"
        elif _bf16_supported(device):
            precision = "bf16"
        elif en.cuda_graphs:
            precision = "fp32"
            notes.append(f"auto precision: {device} has no bf16, and fp16's loss scaler cannot be graph-captured")
        else:
            precision = "fp16"
            notes.append(f"auto precision: {device} has no bf16; fp16 with a dynamic loss scale")
    elif precision == "bf16" and not _bf16_supported(device):
        raise _fail("precision", precision, f"{device} does not support bfloat16; use fp16 or fp32")
    if en.eval_precision == "bf16" and not _bf16_supported(device):
        raise _fail("eval_precision", en.eval_precision, f"{device} does not support bfloat16")

    two_streams = en.two_streams
    if two_streams is None:
        two_streams = cuda and generalist and not distributed
        if cuda and generalist and distributed:
            notes.append("auto two_streams: off under torchrun (the overlap with DDP's all-reduce is unmeasured)")

    # On for both devices: on the CPU too, NHWC convolutions and max-pooling beat NCHW (the Generalist step of
    # the small CNN 1.17-1.25x, bench/results/2026-12-02-cpu-amd-epyc-end-to-end-smoke.json). A network with no
    # 4-D tensors is unaffected (only 4-D weights and batches change layout).
    channels_last = True if en.channels_last is None else en.channels_last
    cudnn_benchmark = (cuda and not cfg.train.deterministic) if en.cudnn_benchmark is None else en.cudnn_benchmark
    return EngineSettings(
        device=device, precision=precision, eval_precision=en.eval_precision, channels_last=channels_last,
        cudnn_benchmark=cudnn_benchmark, tf32=en.tf32, two_streams=two_streams, cuda_graphs=en.cuda_graphs,
        cuda_graph_warmup_steps=en.cuda_graph_warmup_steps, compile=en.compile, optimizer_impl=en.optimizer_impl,
        attack_zero_grad_every_step=en.attack_zero_grad_every_step, deterministic=cfg.train.deterministic,
        notes=tuple(notes),
    )
