"""torch.compile of a method's networks, behind `engine.compile`.

What is compiled is the module's forward as the method calls it: the attack's forwards (eval mode) and the
training forward (train mode) each get a graph (dynamo guards on the training flag). Backward is compiled
through AOTAutograd with the forward. The plain module stays what `Method.networks()` returns, so
checkpoints, exports, evaluation and the flat parameter arena see the module itself, never the
`OptimizedModule` wrapper (trainer/checkpoint.py `unwrap` strips `_orig_mod` where a wrapper does reach it).

The compiled wrapper shares the module's parameters and buffers (it holds the module as `_orig_mod`), so
in-place updates of those tensors (the optimiser step, Generalist's averaging and redistribution on the flat
arena) are seen by the next compiled call without recompiling.
"""

from __future__ import annotations

import torch
from torch import nn


def compile_module(module: nn.Module, enabled: bool, *, mode: str | None = None) -> nn.Module:
    """`module` itself, or torch.compile(module) when enabled (mode: torch.compile's, None = default)."""
    if not enabled:
        return module
    return torch.compile(module, mode=mode)


def is_compiled(module: nn.Module) -> bool:
    return hasattr(module, "_orig_mod")
