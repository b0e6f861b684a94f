"""Mixed precision of the training step: the autocast context, and a per-optimiser dynamic loss scale for fp16.

- bf16 (the default on CUDA) has fp32's exponent range: gradients do not underflow, no loss scale is needed.
- fp16 has a 5-bit exponent: small gradients flush to zero. Each optimiser gets its own torch.amp.GradScaler
  (Generalist's two experts have independent losses, and under two streams their steps run on different
  streams, so they must not share one scale). A step whose gradients overflow is skipped by the scaler and
  reported as `skipped_steps`, which the NaN guard (trainer/guards.py) counts instead of failing on.
- Losses are always computed in fp32 (`cross_entropy` in trainer/methods/base.py casts the logits): the
  attack's loss and the sign of its input gradient must not be spoiled by a low-precision reduction. The
  attack reports the fraction of exactly-zero input gradients (`attack_zero_grad_fraction`) so that an
  underflow shows up in the logs instead of as a silently weaker attack.
- Evaluation runs in `engine.eval_precision`, fp32 unless asked otherwise.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from .settings import AUTOCAST_DTYPES


def autocast(precision: str, device: torch.device, *, cache_enabled: bool = True) -> AbstractContextManager:
    """torch.autocast to `precision` (bf16 | fp16) on `device`'s type; a no-op context for fp32.

    cache_enabled=False under CUDA graph capture: autocast's cache of casted weights would otherwise keep
    tensors from the capture that a replay does not refresh (torch's CUDA graphs notes).
    """
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache_enabled)


class LossScaler:
    """Zero the gradients, backward, optimiser step, for one optimiser; with a dynamic loss scale when enabled.

    Disabled (bf16 / fp32) it is exactly `zero_grad(); loss.backward(); optimizer.step()` and never touches the
    host. Enabled (fp16) it is torch.amp.GradScaler's scale / step / update, and `update` returns whether the step
    was skipped for non-finite gradients as a device tensor: the scale, a device tensor, went down. No host read:
    GradScaler hands its overflow flag to an optimiser that supports it (the fused SGD the engine builds under
    fp16, `_step_supports_amp_scaling`), which skips the update on the device; with any other optimiser (apex's)
    GradScaler itself reads the flag on the host before stepping.
    """

    def __init__(self, device: torch.device, enabled: bool):
        self.enabled = enabled
        self.scaler = torch.amp.GradScaler(device.type, enabled=enabled)

    def update(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> torch.Tensor | int:
        """One optimisation step on `loss`; returns 1 when the loss scaler skipped it, else 0 (a 0-dim int64 device
        tensor when enabled)."""
        optimizer.zero_grad(set_to_none=True)
        if not self.enabled:
            loss.backward()
            optimizer.step()
            return 0
        self.scaler.scale(loss).backward()  # the first scale() creates the scale tensor
        scale_before = self.scaler._get_scale_async().clone()  # (1,) fp32 on the device
        self.scaler.step(optimizer)  # skips the update when a gradient is inf / NaN after unscaling
        self.scaler.update()  # halves the scale (in place) after an overflow, grows it after growth_interval steps
        return (self.scaler._get_scale_async() < scale_before).reshape(()).to(torch.int64)

    def state_dict(self) -> dict:
        """Plain Python values (checkpoints load with weights_only=True); empty when disabled."""
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.enabled and state:
            self.scaler.load_state_dict(state)


class Precision:
    """The training step's autocast and loss scalers for one resolved engine."""

    def __init__(self, precision: str, eval_precision: str, device: torch.device, *, graph_safe: bool = False):
        self.precision = precision
        self.eval_precision = eval_precision
        self.device = device
        self.graph_safe = graph_safe

    def autocast(self) -> AbstractContextManager:
        return autocast(self.precision, self.device, cache_enabled=not self.graph_safe)

    def eval_autocast(self) -> AbstractContextManager:
        return autocast(self.eval_precision, self.device)

    def loss_scaler(self) -> LossScaler:
        return LossScaler(self.device, enabled=self.precision == "fp16")
