"""Test-wide setup. Without a GPU, Triton kernels run through the Triton interpreter.

TRITON_INTERPRET must be set before triton is first imported anywhere in the process, so it is set
here, at the root of the test tree, before any test module imports `kernels`.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Two cores on CI: keep intra-op threads from oversubscribing when pytest-xdist is not used.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
