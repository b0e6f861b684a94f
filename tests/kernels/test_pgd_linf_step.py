"""pgd_linf_step_ against its torch reference, a float64 oracle, and its edge cases."""

import pytest
import torch

from generalist_trainer.kernels import KernelUnavailableError, pgd_linf_step_
from generalist_trainer.kernels.pgd_step import pgd_linf_step_reference
from tests.kernels.conftest import DEVICE, STORE_TOL, X_DTYPES, assert_close

# (shape, memory format): odd sizes that exercise masking, one spanning two 4096-element programs.
SHAPES = [((1,), None), ((7,), None), ((3, 7), None), ((5, 3, 7, 9), torch.channels_last),
          ((3, 1, 37, 37), None)]


def _inputs(shape, dtype, grad_dtype, memory_format=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen)
    x_adv = (x + 0.05 * torch.randn(shape, generator=gen)).clamp(0, 1)
    grad = torch.randn(shape, generator=gen)
    grad[torch.rand(shape, generator=gen) < 0.05] = 0.0
    fmt = {} if memory_format is None else {"memory_format": memory_format}
    to = lambda t, dt: t.to(device=DEVICE, dtype=dt).contiguous(**fmt)  # noqa: E731
    return to(x_adv, dtype), to(grad, grad_dtype), to(x, dtype)


def _per_sample(n, scale, seed):
    return (torch.rand(n, generator=torch.Generator().manual_seed(seed)) * scale).to(DEVICE)


@pytest.mark.parametrize("shape,memory_format", SHAPES)
@pytest.mark.parametrize("dtype", X_DTYPES)
@pytest.mark.parametrize("grad_dtype", [None, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("per_sample", ["none", "eps", "both"])
def test_matches_reference(provider, shape, memory_format, dtype, grad_dtype, per_sample):
    x_adv, grad, x = _inputs(shape, dtype, grad_dtype or dtype, memory_format)
    n = shape[0]
    eps = _per_sample(n, 0.06, 1) if per_sample != "none" else 8 / 255
    step = _per_sample(n, 0.02, 2) if per_sample == "both" else 2 / 255
    expected = pgd_linf_step_reference(x_adv.clone(), grad, x, eps, step)
    out = x_adv.clone()
    returned = pgd_linf_step_(out, grad, x, eps, step, policy=provider)
    assert returned is out
    assert out.stride() == x_adv.stride()
    assert_close(out, expected, STORE_TOL[dtype], f"{provider} {dtype} {shape}")


@pytest.mark.parametrize("dtype", X_DTYPES)
def test_reference_matches_float64_oracle(dtype):
    x_adv, grad, x = _inputs((4, 3, 11, 13), dtype, torch.float32, seed=3)
    eps, step, lo, hi = 0.03, 0.01, 0.1, 0.9
    xa, g, x0 = x_adv.double(), grad.double(), x.double()
    oracle = torch.clamp(torch.clamp(xa + step * torch.sign(g), x0 - eps, x0 + eps), lo, hi)
    out = pgd_linf_step_reference(x_adv.clone(), grad, x, eps, step, lo, hi)
    # the oracle rounds once from float64, the reference computes x -/+ eps in fp32: one storage unit apart
    tol = (1e-7, {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}[dtype])
    assert_close(out.double(), oracle.to(dtype).double(), tol, f"oracle {dtype}")


@pytest.mark.parametrize("dtype", X_DTYPES)
def test_poisoned_x_adv_is_fully_rewritten(provider, dtype):
    """x_adv starts far outside every ball: an element the kernel skips would stay at the poison."""
    shape = (3, 1, 37, 37)  # 4107 elements: two programs, the second almost empty
    _, grad, x = _inputs(shape, dtype, dtype, seed=4)
    out = torch.full(shape, 1.0e4, dtype=dtype, device=DEVICE)
    pgd_linf_step_(out, grad, x, 0.03, 0.01, lo=-10.0, hi=10.0, policy=provider)
    # (1e4 + step) clamped to the ball is x + eps, whatever the gradient's sign
    expected = pgd_linf_step_reference(torch.full_like(out, 1.0e4), grad, x, 0.03, 0.01, -10.0, 10.0)
    assert_close(out, expected, STORE_TOL[dtype], f"poisoned {provider} {dtype}")
    assert (out.float() < 100).all()


@pytest.mark.parametrize("dtype", X_DTYPES)
def test_non_finite_and_zero_gradient(provider, dtype):
    """sign(0) = sign(NaN) = 0: those elements stay; +inf / -inf move by +step / -step."""
    x = torch.full((2, 6), 0.5, dtype=dtype, device=DEVICE)
    x_adv = x.clone()
    nan, inf = float("nan"), float("inf")
    grad = torch.tensor([[nan, inf, -inf, 0.0, -0.0, 1e-30], [nan, nan, inf, -inf, 3.0, -2.0]], device=DEVICE)
    step = 2.0**-6  # representable in every dtype, so the expected values are exact
    pgd_linf_step_(x_adv, grad.to(torch.float32), x, 0.25, step, policy=provider)
    e = 0.5 + step * torch.tensor([[0, 1, -1, 0, 0, 1], [0, 0, 1, -1, 1, -1]], device=DEVICE)
    assert torch.equal(x_adv, e.to(dtype)), x_adv
    assert torch.isfinite(x_adv).all()


def test_nan_in_x_adv_propagates(provider):
    x = torch.full((9,), 0.5, device=DEVICE)
    x_adv = x.clone()
    x_adv[3] = float("nan")
    pgd_linf_step_(x_adv, torch.ones(9, device=DEVICE), x, 0.1, 0.01, policy=provider)
    assert torch.isnan(x_adv[3]) and torch.isfinite(x_adv[torch.arange(9, device=DEVICE) != 3]).all()


def test_grad_in_another_layout(provider):
    """A contiguous grad for a channels_last x_adv is brought to x_adv's layout, not misread."""
    x_adv, grad, x = _inputs((3, 4, 5, 6), torch.float32, torch.float32, torch.channels_last, seed=5)
    grad = grad.contiguous()
    expected = pgd_linf_step_reference(x_adv.clone(), grad, x, 0.03, 0.01)
    out = pgd_linf_step_(x_adv.clone(), grad, x, 0.03, 0.01, policy=provider)
    assert_close(out, expected, (0.0, 0.0), "mixed layouts")


def test_per_sample_with_batch_dim_innermost(provider):
    """Per-sample eps indexes samples by storage offset, also when the batch dim is not the outermost."""
    x_adv, grad, x = (t.t() for t in _inputs((6, 5), torch.float32, torch.float32, seed=6))  # (5, 6), strides (1, 5)
    eps = _per_sample(5, 0.06, 7)
    step = _per_sample(5, 0.1, 8)
    expected = pgd_linf_step_reference(x_adv.clone(), grad, x, eps, step)
    out = x_adv.clone()  # clone keeps the transposed (dense) strides
    assert out.stride() == (1, 5)
    pgd_linf_step_(out, grad, x, eps, step, policy=provider)
    assert_close(out, expected, (0.0, 0.0), "batch innermost")


def test_zero_eps_and_zero_step(provider):
    x_adv, grad, x = _inputs((4, 7), torch.float32, torch.float32, seed=9)
    out = pgd_linf_step_(x_adv.clone(), grad, x, 0.0, 0.01, policy=provider)
    assert torch.equal(out, x.clamp(0, 1))
    out = pgd_linf_step_(x_adv.clone(), grad, x, 1.0, 0.0, policy=provider)
    assert torch.equal(out, x_adv)


def test_empty_tensor(provider):
    t = torch.empty(0, 3, device=DEVICE)
    assert pgd_linf_step_(t, t.clone(), t.clone(), 0.1, 0.1, policy=provider).shape == (0, 3)


def test_large_odd_size_on_the_default_path():
    """A few million + 3 elements through the default policy: the torch reference on the CPU, Triton on a GPU.
    Checked against a float64 oracle rather than the reference, which is what runs here without a GPU."""
    n = 3 * 2**20 + 3
    gen = torch.Generator().manual_seed(10)
    x = torch.rand(n, generator=gen).to(DEVICE)
    x_adv = (x + 0.02 * torch.randn(n, generator=gen).to(DEVICE)).clamp(0, 1)
    grad = torch.randn(n, generator=gen).to(DEVICE)
    oracle = torch.clamp(torch.clamp(x_adv.double() + 0.01 * torch.sign(grad.double()), x.double() - 0.03,
                                     x.double() + 0.03), 0, 1)
    out = pgd_linf_step_(x_adv.clone(), grad, x, 0.03, 0.01)
    assert_close(out.double(), oracle.float().double(), (1e-7, 2.0**-23), "3M+3")


def test_argument_errors():
    x = torch.rand(2, 3)
    with pytest.raises(TypeError, match="x must have x_adv's dtype"):
        pgd_linf_step_(x.clone(), x, x.half(), 0.1, 0.1)
    with pytest.raises(ValueError, match="grad has shape"):
        pgd_linf_step_(x.clone(), x[:, :2], x, 0.1, 0.1)
    with pytest.raises(ValueError, match=r"eps must be a float or a tensor of shape \(2,\)"):
        pgd_linf_step_(x.clone(), x, x, torch.ones(3), 0.1)
    with pytest.raises(ValueError, match="eps must be a finite non-negative"):
        pgd_linf_step_(x.clone(), x, x, -0.1, 0.1)
    with pytest.raises(TypeError, match="step must be a float"):
        pgd_linf_step_(x.clone(), x, x, 0.1, "0.1")
    with pytest.raises(ValueError, match="lo=1.0 must not exceed hi=0.0"):
        pgd_linf_step_(x.clone(), x, x, 0.1, 0.1, lo=1.0, hi=0.0)
    with pytest.raises(ValueError, match="x_adv must be dense"):
        pgd_linf_step_(torch.rand(2, 6)[:, ::2], x, x, 0.1, 0.1)
    with pytest.raises(TypeError, match="grad must be one of"):
        pgd_linf_step_(x.clone(), x.double(), x, 0.1, 0.1)
    with pytest.raises(TypeError, match="x_adv must be one of"):
        pgd_linf_step_(x.double(), x, x.double(), 0.1, 0.1)
    with pytest.raises(ValueError, match="unknown policy"):
        pgd_linf_step_(x.clone(), x, x, 0.1, 0.1, policy="fast")


def test_explicit_triton_without_interpreter_names_the_reason(monkeypatch):
    from generalist_trainer.kernels import dispatch

    monkeypatch.setattr(dispatch, "TRITON_INTERPRETED", False)
    x = torch.rand(2, 3)
    with pytest.raises(KernelUnavailableError, match="TRITON_INTERPRET=1"):
        pgd_linf_step_(x.clone(), x, x, 0.1, 0.1, policy="triton")
