"""generalist_average_ against its torch reference, a float64 oracle, and its argument checks."""

import pytest
import torch

from generalist_trainer.kernels import generalist_average_
from generalist_trainer.kernels.generalist_average import generalist_average_reference
from tests.kernels.conftest import ARITH_TOL, DEVICE, assert_close

NAMES = ("theta_r", "theta_n", "s_r", "s_n", "g")


def _buffers(n, seed=0, poison=None):
    gen = torch.Generator().manual_seed(seed)
    bufs = [torch.randn(n, generator=gen).to(DEVICE) for _ in NAMES]
    if poison is not None:  # the three outputs start at a value no correct update leaves in place
        for b in bufs[2:]:
            b.fill_(poison)
    return bufs


def _oracle(theta_r, theta_n, s_r, s_n, g, decay, beta, redistribute):
    tr, tn, sr, sn, gg = (t.double() for t in (theta_r, theta_n, s_r, s_n, g))
    sr = decay * sr + (1 - decay) * tr
    sn = decay * sn + (1 - decay) * tn
    gg = decay * gg + (1 - decay) * (beta * sr + (1 - beta) * sn)  # the UPDATED averages
    if redistribute:
        tr, tn = gg, gg
    return [tr, tn, sr, sn, gg]


@pytest.mark.parametrize("n", [1, 7, 4099])
@pytest.mark.parametrize("decay,beta", [(0.9, 1.0), (0.999, 0.4), (0.1, 0.73)])
@pytest.mark.parametrize("redistribute", [False, True])
@pytest.mark.parametrize("poison", [None, 1.0e6])
def test_matches_reference(provider, n, decay, beta, redistribute, poison):
    bufs = _buffers(n, seed=n, poison=poison)
    expected = [b.clone() for b in bufs]
    generalist_average_reference(*expected, decay, beta, redistribute)
    generalist_average_(*bufs, decay=decay, beta=beta, redistribute=redistribute, policy=provider)
    for name, got, want in zip(NAMES, bufs, expected):
        assert_close(got, want, ARITH_TOL[torch.float32], f"{provider} {name} n={n}")


@pytest.mark.parametrize("redistribute", [False, True])
def test_reference_matches_float64_oracle(redistribute):
    bufs = _buffers(1000, seed=3)
    oracle = _oracle(*bufs, 0.95, 0.6, redistribute)
    generalist_average_reference(*bufs, 0.95, 0.6, redistribute)
    for name, got, want in zip(NAMES, bufs, oracle):
        assert_close(got.double(), want, (1e-6, 1e-6), f"oracle {name}")


def test_inputs_untouched_without_redistribution(provider):
    bufs = _buffers(77, seed=4)
    theta = [b.clone() for b in bufs[:2]]
    generalist_average_(*bufs, decay=0.5, beta=0.5, policy=provider)
    assert torch.equal(bufs[0], theta[0]) and torch.equal(bufs[1], theta[1])


def test_decay_extremes(provider):
    bufs = _buffers(33, seed=5)
    before = [b.clone() for b in bufs]
    generalist_average_(*bufs, decay=1.0, beta=0.3, policy=provider)  # d = 1: nothing moves
    assert all(torch.equal(a, b) for a, b in zip(bufs, before))
    generalist_average_(*bufs, decay=0.0, beta=1.0, redistribute=True, policy=provider)  # d = 0: copies
    theta_r, theta_n, s_r, s_n, g = bufs
    assert torch.equal(s_n, before[1])  # S_N <- theta_N
    for b in (theta_r, theta_n, s_r, g):  # S_R <- theta_R, G <- S_R (beta 1), experts <- G
        assert torch.equal(b, before[0])


def test_large_odd_size_on_the_default_path():
    """A few million + 3 parameters through the default policy (the reference here, Triton on a GPU)."""
    bufs = _buffers(3 * 2**20 + 3, seed=6)
    oracle = _oracle(*bufs, 0.99, 0.4, True)
    generalist_average_(*bufs, decay=0.99, beta=0.4, redistribute=True)
    for name, got, want in zip(NAMES, bufs, oracle):
        assert_close(got.double(), want, (1e-6, 1e-6), f"3M+3 {name}")


def test_errors_name_the_argument():
    bufs = _buffers(10)
    for i, name in enumerate(NAMES):
        bad = list(bufs)
        bad[i] = bufs[i].double()
        with pytest.raises(TypeError, match=f"{name} must be one of torch.float32"):
            generalist_average_(*bad, decay=0.9, beta=0.5)
        bad[i] = torch.zeros(11, device=DEVICE)
        with pytest.raises(ValueError, match=f"{name} has 11 elements, the other buffers 10"):
            generalist_average_(*bad, decay=0.9, beta=0.5)
        bad[i] = torch.zeros(2, 5, device=DEVICE)
        with pytest.raises(ValueError, match=f"{name} must be a 1-D contiguous buffer"):
            generalist_average_(*bad, decay=0.9, beta=0.5)
    with pytest.raises(ValueError, match="s_r and g share memory"):
        generalist_average_(bufs[0], bufs[1], bufs[2], bufs[3], bufs[2], decay=0.9, beta=0.5)
    with pytest.raises(ValueError, match="decay must be a number in"):
        generalist_average_(*bufs, decay=1.5, beta=0.5)
    with pytest.raises(ValueError, match="beta must be a number in"):
        generalist_average_(*bufs, decay=0.5, beta=-0.1)
    with pytest.raises(ValueError, match="s_n is on meta, the other buffers on"):
        generalist_average_(bufs[0], bufs[1], bufs[2], bufs[3].to("meta"), bufs[4], decay=0.9, beta=0.5)
