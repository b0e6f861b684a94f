"""Step metrics that stay on the device until the step is over, then come to the host in one transfer.

A metric read on the host (`float(loss)`) waits for the device to finish everything issued before it. Inside
a step that stalls the host in the middle of the iteration (no more kernels are issued until the wait ends),
breaks the overlap of Generalist's two streams, and cannot be captured in a CUDA graph. So the methods keep
their metrics as 0-dim tensors and `host_scalars` turns them into Python floats once, at the end.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

MetricValue = float | int | torch.Tensor


def host_scalars(metrics: Mapping[str, MetricValue]) -> dict[str, float]:
    """{name: float}; every tensor value (0-dim or 1-element) comes over in one stacked device-to-host copy."""
    names = [k for k, v in metrics.items() if isinstance(v, torch.Tensor)]
    values: dict[str, float] = {}
    if names:
        stacked = torch.stack([metrics[k].detach().reshape(()).to(torch.float64) for k in names])
        values = dict(zip(names, stacked.tolist()))
    return {k: values[k] if k in values else float(v) for k, v in metrics.items()}
