"""lerp_ against torch.lerp."""

import pytest
import torch

from generalist_trainer.kernels import lerp_
from generalist_trainer.kernels.lerp import lerp_reference
from tests.kernels.conftest import ARITH_TOL, DEVICE, X_DTYPES, assert_close


@pytest.mark.parametrize("n", [1, 7, 4099])
@pytest.mark.parametrize("dtype", X_DTYPES)
@pytest.mark.parametrize("weight", [0.0, 0.001, 0.3, 0.5, 0.9, 1.0, -0.25, 1.5])
def test_matches_reference(provider, n, dtype, weight):
    gen = torch.Generator().manual_seed(n)
    dst = torch.randn(n, generator=gen).to(DEVICE, dtype)
    src = torch.randn(n, generator=gen).to(DEVICE, dtype)
    expected = lerp_reference(dst.clone(), src, weight)
    out = dst.clone()
    assert lerp_(out, src, weight, policy=provider) is out
    assert_close(out, expected, ARITH_TOL[dtype], f"{provider} {dtype} w={weight}")
    if weight in (0.0, 1.0):  # exact at the ends, as torch.lerp
        assert torch.equal(out, dst if weight == 0.0 else src)


def test_channels_last_and_layout_mismatch(provider):
    dst = torch.randn(2, 3, 4, 5, device=DEVICE).contiguous(memory_format=torch.channels_last)
    src = torch.randn(2, 3, 4, 5, device=DEVICE)
    expected = lerp_reference(dst.clone(), src, 0.3)
    out = dst.clone()
    lerp_(out, src, 0.3, policy=provider)
    assert out.stride() == dst.stride()
    assert_close(out, expected, ARITH_TOL[torch.float32], "layouts")


def test_argument_errors():
    a = torch.randn(5)
    with pytest.raises(TypeError, match="src must have dst's dtype"):
        lerp_(a, a.half(), 0.5)
    with pytest.raises(ValueError, match="src has shape"):
        lerp_(a, a[:4], 0.5)
    with pytest.raises(ValueError, match="weight must be a finite number"):
        lerp_(a, a, float("nan"))


@pytest.mark.parametrize("dtype", X_DTYPES)
def test_poisoned_dst_is_fully_rewritten(provider, dtype):
    """weight 1 must give src exactly in every element, whatever dst held (a skipped one keeps 1e4)."""
    src = torch.randn(4099, generator=torch.Generator().manual_seed(2)).to(DEVICE, dtype)
    dst = torch.full_like(src, 1.0e4)
    lerp_(dst, src, 1.0, policy=provider)
    assert torch.equal(dst, src)
