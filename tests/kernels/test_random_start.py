"""pgd_random_start: reproducibility, bounds, distribution, and the Triton kernel against the formula."""

import pytest
import torch

from generalist_trainer.kernels import pgd_random_start
from generalist_trainer.kernels.pgd_step import pgd_random_start_reference, pgd_random_start_triton
from tests.kernels.conftest import ARITH_TOL, DEVICE, STORE_TOL, X_DTYPES, assert_close, triton_runs_here


def _x(shape, dtype=torch.float32, memory_format=None, seed=0):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed)).to(device=DEVICE, dtype=dtype)
    return x.contiguous(memory_format=memory_format) if memory_format is not None else x


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 3, 11, 13)])
@pytest.mark.parametrize("dtype", X_DTYPES)
def test_same_seed_same_start_and_within_bounds(provider, shape, dtype):
    x = _x(shape, dtype)
    a = pgd_random_start(x, 8 / 255, seed=123, policy=provider)
    b = pgd_random_start(x, 8 / 255, seed=123, policy=provider)
    c = pgd_random_start(x, 8 / 255, seed=124, policy=provider)
    assert a.dtype == dtype and a.shape == x.shape and a.data_ptr() != x.data_ptr()
    assert torch.equal(a, b)
    assert x.numel() < 5 or not torch.equal(a, c)
    # within [lo, hi] and within eps of x, up to one storage unit of rounding
    unit = {torch.float32: 1e-7, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[dtype]
    d = (a.float() - x.float()).abs()
    assert (d <= 8 / 255 + unit).all()
    assert (a >= 0).all() and (a <= 1).all()


def test_layout_is_preserved(provider):
    x = _x((2, 3, 5, 7), memory_format=torch.channels_last)
    out = pgd_random_start(x, 0.1, seed=1, policy=provider)
    assert out.stride() == x.stride()


def test_noise_is_uniform_on_the_interval(provider):
    x = torch.full((20000,), 0.5, device=DEVICE)
    u = (pgd_random_start(x, 0.25, seed=7, policy=provider) - 0.5) / 0.25
    assert u.min() >= -1.0 and u.max() < 1.0
    # mean 0 and variance 1/3 of U(-1, 1), to about 5 standard errors at this sample size
    assert abs(u.mean().item()) < 0.02
    assert abs(u.var().item() - 1 / 3) < 0.02
    counts = torch.histc(u.cpu(), bins=10, min=-1, max=1)
    assert (counts > 1700).all() and (counts < 2300).all(), counts


def test_per_sample_eps(provider):
    x = _x((3, 50))
    eps = torch.tensor([0.0, 0.1, 0.3], device=DEVICE)
    out = pgd_random_start(x, eps, seed=3, lo=-1.0, hi=2.0, policy=provider)
    assert torch.equal(out[0], x[0])
    for i in (1, 2):
        d = out[i] - x[i]
        assert d.abs().max() <= eps[i] and d.abs().max() > 0.5 * eps[i]


def test_clamped_to_bounds(provider):
    x = torch.tensor([0.0, 1.0, 0.0, 1.0] * 50, device=DEVICE)
    out = pgd_random_start(x, 0.5, seed=5, policy=provider)
    assert (out >= 0).all() and (out <= 1).all()
    assert (out == 0).any() and (out == 1).any()


@pytest.mark.parametrize("dtype", X_DTYPES)
def test_triton_kernel_applies_the_formula_to_its_noise(dtype):
    """Recover the kernel's U(-1, 1) draws (x = 0, eps = 1, wide bounds) and check that a general call is
    clamp(x + eps * u, lo, hi) of those draws, with its output poisoned beforehand."""
    ok, why = triton_runs_here()
    if not ok:
        pytest.skip(why)
    shape = (3, 1, 37, 37)  # 4107 elements: a second, almost empty program
    u = pgd_random_start_triton(torch.zeros(shape, device=DEVICE), 1.0, 99, -2.0, 2.0)
    x = _x(shape, dtype, seed=1)
    eps = torch.tensor([0.02, 0.05, 0.3], device=DEVICE)
    out = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
    pgd_random_start_triton(x, eps, 99, 0.1, 0.9, out=out)
    expected = (x.float() + eps.view(-1, 1, 1, 1) * u).clamp(0.1, 0.9).to(dtype)
    assert_close(out, expected, ARITH_TOL[dtype] if dtype != torch.float32 else (1e-7, 2.0**-23), "formula")


def test_reference_writes_every_element_of_out():
    x = _x((5, 7))
    out = torch.full_like(x, float("nan"))
    pgd_random_start_reference(x, 0.1, 4, out=out)
    assert_close(out, pgd_random_start_reference(x, 0.1, 4), STORE_TOL[torch.float32], "poisoned out")


def test_argument_errors():
    x = torch.rand(4, 3)
    with pytest.raises(ValueError, match="seed must be an int"):
        pgd_random_start(x, 0.1, seed=-1)
    with pytest.raises(ValueError, match="seed must be an int"):
        pgd_random_start(x, 0.1, seed=1.5)
    with pytest.raises(ValueError, match=r"eps must be a float or a tensor of shape \(4,\)"):
        pgd_random_start(x, torch.ones(3), seed=1)


# Sample windows (data parallelism): a rank's slice draws what one process draws for those rows of the batch.


@pytest.mark.parametrize("memory_format", [None, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_window_draws_the_rows_of_the_whole_batch(provider, dtype, memory_format):
    x = _x((6, 3, 5, 7), dtype, memory_format, seed=2)  # 105 elements per sample: not a power of two
    whole = pgd_random_start(x, 8 / 255, seed=31, policy=provider)
    slices = []
    for offset, stop in ((0, 2), (2, 4), (4, 6), (1, 6)):
        part = pgd_random_start(x[offset:stop].contiguous(memory_format=memory_format or torch.contiguous_format),
                                8 / 255, seed=31, policy=provider, sample_offset=offset, total_samples=6)
        assert torch.equal(part, whole[offset:stop]), (provider, offset, stop)
        slices.append(part)
    # Two ranks' halves differ (they are different rows of one draw), and put together they are the whole batch.
    assert not torch.equal(slices[0] - x[0:2], slices[1] - x[2:4])
    assert torch.equal(torch.cat(slices[:3]), whole)


def test_offset_zero_of_the_whole_batch_is_the_plain_draw(provider):
    x = _x((4, 1, 9, 9), seed=5)
    plain = pgd_random_start(x, 0.1, seed=8, policy=provider)
    assert torch.equal(pgd_random_start(x, 0.1, seed=8, policy=provider, sample_offset=0, total_samples=4), plain)
    # The reference with no window is the draw it always was: torch.rand of x's shape from a generator seeded 8.
    if provider == "torch":
        u = torch.rand(x.shape, generator=torch.Generator(device=x.device).manual_seed(8), device=x.device)
        assert torch.equal(plain, (x + 0.1 * u.mul_(2.0).sub_(1.0)).clamp_(0.0, 1.0))


def test_window_argument_errors():
    x = torch.rand(4, 3)
    with pytest.raises(ValueError, match=r"rows \[3, 7\) of x do not fit a batch of 6"):
        pgd_random_start(x, 0.1, seed=1, sample_offset=3, total_samples=6)
    with pytest.raises(ValueError, match="sample_offset must be an int >= 0"):
        pgd_random_start(x, 0.1, seed=1, sample_offset=-1)
    ok, _ = triton_runs_here()
    if ok:
        strided = torch.rand(3, 4, device=DEVICE).t()  # dense, but a sample is not one contiguous run
        with pytest.raises(ValueError, match="each sample contiguous"):
            pgd_random_start_triton(strided, 0.1, 1, sample_offset=1)
