"""Process-wide math-library switches of a training run: cuDNN benchmark mode and the TF32 policy.

Both are global to the process, so they are set once where a run starts (trainer/training.py, the profile
command, the end-to-end benchmark), from the resolved engine, and printed, never left to whatever a library
default happens to be in the installed torch version:
- cudnn.benchmark times the candidate convolution algorithms for each new input shape and keeps the fastest
  (the training step's shapes are static, so it pays once); it is off under train.deterministic.
- TF32 runs fp32 matmuls and convolutions on tensor cores with a 10-bit mantissa. Set explicitly, both for
  matmuls and cuDNN convolutions, through torch's `fp32_precision` switches when they exist (torch >= 2.9;
  mixing them with the legacy `allow_tf32` flags is an error there), else through the legacy flags.
"""

from __future__ import annotations

import torch

from trainer.engine.settings import EngineSettings


def _has_fp32_precision_api() -> bool:
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv")


def backend_state() -> dict[str, object]:
    """The current values of every switch set here (to report them, or to restore them in tests)."""
    state: dict[str, object] = {"cudnn_benchmark": torch.backends.cudnn.benchmark}
    if _has_fp32_precision_api():
        state["matmul_fp32_precision"] = torch.backends.cuda.matmul.fp32_precision
        state["conv_fp32_precision"] = torch.backends.cudnn.conv.fp32_precision
    else:
        state["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        state["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    return state


def restore_backend_state(state: dict[str, object]) -> None:
    torch.backends.cudnn.benchmark = bool(state["cudnn_benchmark"])
    if "matmul_fp32_precision" in state:
        torch.backends.cuda.matmul.fp32_precision = state["matmul_fp32_precision"]
        torch.backends.cudnn.conv.fp32_precision = state["conv_fp32_precision"]
    else:
        torch.backends.cuda.matmul.allow_tf32 = bool(state["matmul_allow_tf32"])
        torch.backends.cudnn.allow_tf32 = bool(state["cudnn_allow_tf32"])


def apply_backend_policy(settings: EngineSettings) -> dict[str, object]:
    """Set cudnn.benchmark and the TF32 policy from `settings`; returns the resulting switches."""
    torch.backends.cudnn.benchmark = settings.cudnn_benchmark
    if _has_fp32_precision_api():
        precision = "tf32" if settings.tf32 else "ieee"
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = settings.tf32
        torch.backends.cudnn.allow_tf32 = settings.tf32
    return backend_state()
