"""Process-wide math-library switches of a training run: cuDNN benchmark mode and the TF32 policy.

Both are global to the process, so they are set once where a run starts (trainer/training.py, the profile
command, the end-to-end benchmark), from the resolved engine, and printed, never left to whatever a library
default happens to be in the installed torch version:
- cudnn.benchmark times the candidate convolution algorithms for each new input shape and keeps the fastest
  (the training step's shapes are static, so it pays once); it is off under train.deterministic.
- TF32 runs fp32 matmuls and convolutions on tensor cores with a 10-bit mantissa. Set explicitly, for cuBLAS
  matmuls and every cuDNN operator alike, through ONE API family: the `allow_tf32` flags. torch >= 2.9 also has
  per-operator `fp32_precision` switches, but mixing the families is an error when the other one is read: set
  through `fp32_precision`, torch.compile's inductor (torch 2.10 / 2.11, which still reads `allow_tf32`) fails to
  lower a matmul, and a cuDNN conv switch that disagrees with the cuDNN RNN switch makes `cudnn.allow_tf32`
  unreadable. The legacy setters write both families consistently (conv and RNN together), so either can be
  read afterwards; they exist in every torch this project supports.
"""

from __future__ import annotations

import torch

from .settings import EngineSettings


def cudnn_tf32_state() -> dict[str, object]:
    """The current values of every switch set here (to report them, or to restore them in tests)."""
    return {"cudnn_benchmark": torch.backends.cudnn.benchmark,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}


def restore_cudnn_tf32_state(state: dict[str, object]) -> None:
    torch.backends.cudnn.benchmark = bool(state["cudnn_benchmark"])
    torch.backends.cuda.matmul.allow_tf32 = bool(state["matmul_allow_tf32"])
    torch.backends.cudnn.allow_tf32 = bool(state["cudnn_allow_tf32"])


def apply_cudnn_tf32_policy(settings: EngineSettings) -> dict[str, object]:
    """Set cudnn.benchmark and the TF32 policy from `settings`; returns the resulting switches."""
    torch.backends.cudnn.benchmark = settings.cudnn_benchmark
    # Matmuls and convolutions agree: both TF32 or both IEEE fp32.
    torch.backends.cuda.matmul.allow_tf32 = settings.tf32
    torch.backends.cudnn.allow_tf32 = settings.tf32
    return cudnn_tf32_state()
