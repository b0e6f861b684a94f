"""Fixtures of the engine tests."""

import pytest
import torch


@pytest.fixture
def deterministic_cudnn():
    """cuDNN restricted to deterministic algorithms (and no benchmark search) for the test, then restored.

    The GPU equality tests (one stream against two, a captured step against eager) compare two runs of the
    same arithmetic. cuDNN's fastest weight-gradient algorithms accumulate with atomics in a run-dependent
    order, so without this they could differ by more than rounding for reasons that are not a bug.
    """
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
