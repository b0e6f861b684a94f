"""Memory-layout helpers shared by the launchers and the argument checks.

The elementwise kernels walk a tensor's storage as a flat array, so what they need is that a tensor be
dense (its elements fill exactly numel consecutive slots, in any dimension order: contiguous,
channels_last, ...) and that every operand walk the same order.
"""

from __future__ import annotations

import torch


def is_dense(t: torch.Tensor) -> bool:
    """True when `t`'s elements occupy exactly t.numel() consecutive slots (no gaps, no overlap)."""
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when a and b have the same shape and walk memory in the same order (size-1 dims ignored)."""
    if a.shape != b.shape:
        return False
    return all(sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape) if n != 1)


def batch_outermost(t: torch.Tensor) -> bool:
    """For a dense `t`: True when each sample t[i] is one contiguous run of memory (as in contiguous and
    channels_last tensors), so that a per-sample reduction can walk it as a row."""
    if t.dim() == 0 or t.shape[0] <= 1 or t.numel() == 0:
        return True
    return t.stride(0) == t.numel() // t.shape[0]


def sample_stride(t: torch.Tensor) -> int:
    """Distance in elements between consecutive samples t[i] and t[i+1], 1 when there is one sample.

    For a dense tensor the sample index of storage slot k is (k // stride0) % N, whatever the dimension
    order; a size-1 batch dim may carry any stride, so it is normalised to 1.
    """
    if t.dim() == 0 or t.shape[0] <= 1:
        return 1
    return t.stride(0)


def per_sample_view(v: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A (N,) per-sample value viewed as (N, 1, ..., 1) so that it broadcasts over `like`; floats pass."""
    if isinstance(v, torch.Tensor):
        return v.view((-1,) + (1,) * (like.dim() - 1))
    return v
