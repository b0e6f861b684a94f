"""torch.library registration: opcheck on every custom op, and torch.compile(fullgraph=True) against eager."""

import shutil

import pytest
import torch

import kernels  # noqa: F401  (registers the ops)
from generalist_trainer.kernels import generalist_average_, lerp_, pgd_l2_step_, pgd_linf_step_, pgd_random_start
from tests.kernels.conftest import DEVICE

ops = torch.ops.generalist_kernels
# torch's own opcheck machinery goes through torch.jit, which warns about itself on this release.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def _opcheck_cases():
    x = torch.rand(3, 2, 5, device=DEVICE)
    xa = (x + 0.01).clamp(0, 1)
    g = torch.randn(3, 2, 5, device=DEVICE)
    eps_t = torch.full((3,), 0.03, device=DEVICE)
    flat = [torch.randn(37, device=DEVICE) for _ in range(5)]
    return [
        ("pgd_linf_step_", (xa, g, x, 0.03, None, 0.01, None, 0.0, 1.0, "")),
        ("pgd_linf_step_", (xa, g, x, 0.0, eps_t, 0.01, None, 0.0, 1.0, "torch")),
        ("pgd_l2_step_", (xa, g, x, 0.5, None, 0.1, None, 0.0, 1.0, "")),
        ("pgd_random_start", (x, 0.0, eps_t, 5, 0.0, 1.0, "", 0, 3)),
        ("pgd_random_start", (x, 0.03, None, 5, 0.0, 1.0, "", 2, 8)),  # rows 2..4 of a batch of 8
        ("generalist_average_", (*flat, 0.9, 0.5, "")),
        ("generalist_average_redistribute_", (*flat, 0.9, 0.5, "")),
        ("lerp_", (flat[0], flat[1], 0.3, "")),
    ]


@pytest.mark.parametrize("name,args", _opcheck_cases(), ids=[c[0] for c in _opcheck_cases()])
def test_opcheck(name, args):
    # schema (declared mutations), fake tensor implementation, and AOT dispatch with dynamic shapes
    torch.library.opcheck(getattr(ops, name).default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def _step_and_average(x_adv, grad, x, eps, theta_r, theta_n, s_r, s_n, g, policy):
    start = pgd_random_start(x, eps, seed=11, policy=policy)
    pgd_linf_step_(x_adv, grad, x, eps, 0.01, policy=policy)
    pgd_l2_step_(start, grad, x, 0.5, 0.1, policy=policy)
    generalist_average_(theta_r, theta_n, s_r, s_n, g, decay=0.9, beta=0.7, redistribute=True, policy=policy)
    lerp_(s_r, theta_n, 0.3, policy=policy)
    return start * 2.0


def _inputs():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 5, 5, generator=gen).to(DEVICE)
    x_adv = (x + 0.02 * torch.randn(4, 3, 5, 5, generator=gen).to(DEVICE)).clamp(0, 1)
    grad = torch.randn(4, 3, 5, 5, generator=gen).to(DEVICE)
    eps = torch.rand(4, generator=gen).to(DEVICE) * 0.05
    flat = [torch.randn(1001, generator=gen).to(DEVICE) for _ in range(5)]
    return [x_adv, grad, x, eps, *flat]


def _compare(backend, policy):
    eager_args, compiled_args = _inputs(), _inputs()
    expected = _step_and_average(*eager_args, policy)
    torch._dynamo.reset()
    compiled = torch.compile(_step_and_average, fullgraph=True, backend=backend)
    got = compiled(*compiled_args, policy)
    assert torch.equal(got, expected)
    for i, (a, b) in enumerate(zip(compiled_args, eager_args)):
        assert torch.equal(a, b), f"argument {i} differs after the compiled call"


@pytest.mark.parametrize("policy", [None, "triton"])
def test_compiled_matches_eager_aot(policy):
    """Fake implementations and functionalisation of the mutations, without code generation."""
    from tests.kernels.conftest import triton_runs_here

    if policy == "triton" and not triton_runs_here()[0]:
        pytest.skip(triton_runs_here()[1])
    _compare("aot_eager", policy)


def test_compiled_matches_eager_inductor():
    """The full inductor pipeline (C++ code generation on the CPU, a few seconds with a warm cache)."""
    if DEVICE.type == "cpu" and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("inductor on the CPU needs a C++ compiler; none on PATH")
    _compare("inductor", None)
