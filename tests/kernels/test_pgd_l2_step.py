"""pgd_l2_step_ against its torch reference, a float64 oracle, and its edge cases."""

import pytest
import torch

from generalist_trainer.kernels import pgd_l2_step_
from generalist_trainer.kernels.pgd_l2_step import NORM_GUARD, pgd_l2_step_reference
from tests.kernels.conftest import ARITH_TOL, DEVICE, X_DTYPES, assert_close

# (shape, memory format): one element per sample, odd sizes, channels_last, and samples longer than one
# 4096-element block so that the kernel's loops take several trips.
SHAPES = [((1, 1), None), ((1, 7), None), ((3, 5, 7), None), ((4, 3, 9, 11), torch.channels_last),
          ((2, 5001), None)]


def _inputs(shape, dtype, grad_dtype=None, memory_format=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen)
    x_adv = (x + 0.02 * torch.randn(shape, generator=gen)).clamp(0, 1)
    grad = torch.randn(shape, generator=gen)
    fmt = {} if memory_format is None else {"memory_format": memory_format}
    to = lambda t, dt: t.to(device=DEVICE, dtype=dt).contiguous(**fmt)  # noqa: E731
    return to(x_adv, dtype), to(grad, grad_dtype or dtype), to(x, dtype)


def _oracle(x_adv, grad, x, eps, step, lo, hi):
    n = x_adv.shape[0]
    xa, g, x0 = (t.double().reshape(n, -1) for t in (x_adv, grad, x))
    g_hat = g / (g.norm(dim=1, keepdim=True) + NORM_GUARD)
    delta = xa + step * g_hat - x0
    dn = delta.norm(dim=1, keepdim=True)
    delta = delta * torch.clamp(eps / dn, max=1.0)
    return (x0 + delta).clamp(lo, hi).reshape(x_adv.shape)


@pytest.mark.parametrize("shape,memory_format", SHAPES)
@pytest.mark.parametrize("dtype", X_DTYPES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_matches_reference(provider, shape, memory_format, dtype, per_sample):
    x_adv, grad, x = _inputs(shape, dtype, torch.float32 if dtype != torch.float32 else None, memory_format)
    n = shape[0]
    gen = torch.Generator().manual_seed(1)
    eps = (torch.rand(n, generator=gen) * 0.5).to(DEVICE) if per_sample else 0.5
    step = (torch.rand(n, generator=gen) * 0.3).to(DEVICE) if per_sample else 0.1
    expected = pgd_l2_step_reference(x_adv.clone(), grad, x, eps, step)
    out = x_adv.clone()
    assert pgd_l2_step_(out, grad, x, eps, step, policy=provider) is out
    assert out.stride() == x_adv.stride()
    assert_close(out, expected, ARITH_TOL[dtype], f"{provider} {dtype} {shape}")


@pytest.mark.parametrize("eps", [0.05, 10.0])  # projection active / inactive
def test_reference_matches_float64_oracle(eps):
    x_adv, grad, x = _inputs((5, 3, 8, 8), torch.float32, seed=2)
    out = pgd_l2_step_reference(x_adv.clone(), grad, x, eps, 0.2, -5.0, 5.0)
    assert_close(out.double(), _oracle(x_adv, grad, x, eps, 0.2, -5.0, 5.0), (1e-6, 1e-5), "oracle")


def test_result_lies_in_the_ball(provider):
    x_adv, grad, x = _inputs((6, 3, 7, 7), torch.float32, seed=3)
    eps = torch.tensor([0.0, 0.01, 0.1, 0.5, 1.0, 3.0], device=DEVICE)
    out = pgd_l2_step_(x_adv.clone(), grad, x, eps, 1.0, lo=-10.0, hi=10.0, policy=provider)
    dist = (out - x).flatten(1).norm(dim=1)
    assert (dist <= eps * (1 + 1e-5) + 1e-7).all(), (dist, eps)
    assert torch.equal(out[0], x[0])  # eps 0: back onto x exactly


def test_zero_gradient_sample_does_not_move(provider):
    x_adv, grad, x = _inputs((3, 50), torch.float32, seed=4)
    grad[1] = 0.0
    out = pgd_l2_step_(x_adv.clone(), grad, x, 10.0, 0.5, policy=provider)  # x_adv[1] is inside the ball
    assert torch.equal(out[1], x_adv[1])
    assert not torch.equal(out[0], x_adv[0])


def test_nan_gradient_elements_count_as_zero(provider):
    x_adv, grad, x = _inputs((3, 40), torch.float32, seed=5)
    with_nan = grad.clone()
    with_nan[0, [3, 17]] = float("nan")
    with_nan[2, :] = float("nan")  # all NaN: like a zero gradient
    zeroed = torch.nan_to_num(with_nan, nan=0.0)
    a = pgd_l2_step_(x_adv.clone(), with_nan, x, 0.5, 0.2, policy=provider)
    b = pgd_l2_step_(x_adv.clone(), zeroed, x, 0.5, 0.2, policy=provider)
    assert torch.equal(a, b)
    assert torch.isfinite(a).all()


def test_infinite_gradient_elements_take_over_the_direction(provider):
    x_adv, grad, x = _inputs((2, 40), torch.float32, seed=6)
    with_inf = grad.clone()
    with_inf[0, 5], with_inf[0, 9], with_inf[0, 11] = float("inf"), float("-inf"), float("nan")
    limit = grad.clone()
    limit[0] = 0.0
    limit[0, 5], limit[0, 9] = 1.0, -1.0  # the direction of the normalised gradient as the infs grow
    a = pgd_l2_step_(x_adv.clone(), with_inf, x, 0.5, 0.2, policy=provider)
    b = pgd_l2_step_(x_adv.clone(), limit, x, 0.5, 0.2, policy=provider)
    assert_close(a, b, ARITH_TOL[torch.float32], "inf limit")
    assert torch.isfinite(a).all()


def test_batch_not_outermost_goes_through_a_copy(provider):
    x_adv, grad, x = (t.t() for t in _inputs((9, 4), torch.float32, seed=7))  # (4, 9) with strides (1, 4)
    expected = pgd_l2_step_reference(x_adv.clone(), grad, x, 0.3, 0.2)
    out = x_adv.clone()
    pgd_l2_step_(out, grad, x, 0.3, 0.2, policy=provider)
    assert out.stride() == (1, 4)
    assert_close(out, expected, ARITH_TOL[torch.float32], "batch innermost")


def test_argument_errors():
    x = torch.rand(2, 3)
    with pytest.raises(ValueError, match="batch dim"):
        pgd_l2_step_(torch.tensor(0.5), torch.tensor(1.0), torch.tensor(0.5), 0.1, 0.1)
    with pytest.raises(ValueError, match="step must be a float or a tensor of shape"):
        pgd_l2_step_(x.clone(), x, x, 0.1, torch.ones(2, 1))
    with pytest.raises(ValueError, match="x is on meta"):
        pgd_l2_step_(x.clone(), x, x.to("meta"), 0.1, 0.1)


@pytest.mark.parametrize("dtype", X_DTYPES)
def test_poisoned_x_adv_is_fully_rewritten(provider, dtype):
    """x_adv starts far outside every ball: an element the kernel skips would stay at the poison."""
    _, grad, x = _inputs((3, 4099), dtype, seed=8)  # rows longer than one 4096-element block
    out = torch.full_like(x, 1.0e4)
    pgd_l2_step_(out, grad, x, 0.5, 0.1, lo=-10.0, hi=10.0, policy=provider)
    expected = pgd_l2_step_reference(torch.full_like(x, 1.0e4), grad, x, 0.5, 0.1, -10.0, 10.0)
    assert_close(out, expected, ARITH_TOL[dtype], f"poisoned {provider} {dtype}")
    assert ((out.float() - x.float()).flatten(1).norm(dim=1) <= 0.5 * 1.01).all()
