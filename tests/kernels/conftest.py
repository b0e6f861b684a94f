"""Fixtures for the kernel tests: providers, device, tolerances, and a comparison that says where it fails.

On a machine without a GPU the Triton provider runs through the interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), so sizes stay in the thousands of elements.
"""

import pytest
import torch

from generalist_trainer.kernels import dispatch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
X_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# (atol, rtol) for results that differ only in how the final fp32 value is rounded to the storage dtype:
# exact in fp32 and fp16; one bf16 unit in the last place (2**-7 relative), because the Triton
# interpreter rounds fp32 -> bf16 toward zero where GPUs and torch round to nearest even.
STORE_TOL = {torch.float32: (0.0, 0.0), torch.float16: (0.0, 0.0), torch.bfloat16: (0.0, 2.0**-7)}
# (atol, rtol) for results whose fp32 arithmetic may also differ in order (reductions, fused multiply-add):
# a few fp32 units on O(1) values, plus one storage unit (fp16 2**-10, bf16 2**-7 relative).
ARITH_TOL = {torch.float32: (1e-6, 1e-6), torch.float16: (1e-6, 2.0**-10), torch.bfloat16: (1e-6, 2.0**-7)}


def triton_runs_here() -> tuple[bool, str]:
    if not dispatch.HAS_TRITON:
        return False, f"triton not importable: {dispatch.TRITON_IMPORT_ERROR}"
    if DEVICE.type != "cuda" and not dispatch.TRITON_INTERPRETED:
        return False, "no GPU and TRITON_INTERPRET was not set before triton was imported"
    return True, ""


@pytest.fixture(params=["torch", "triton"])
def provider(request) -> str:
    if request.param == "triton":
        ok, why = triton_runs_here()
        if not ok:
            pytest.skip(why)
    return request.param


@pytest.fixture(autouse=True)
def _clean_policy(monkeypatch):
    """Every test starts from policy 'auto' with the kill switch unset, whatever the environment says."""
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    dispatch.set_default_policy("auto")
    yield
    dispatch.set_default_policy("auto")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: tuple[float, float], what: str = "") -> None:
    """torch.testing.assert_close with NaNs compared equal, naming the worst element on failure."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    atol, rtol = tol
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    bad = ~torch.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    if bad.any():
        idx = bad.nonzero()
        err = torch.where(bad, (a - e).abs().nan_to_num(float("inf")), torch.zeros_like(a))
        worst = tuple(int(i) for i in torch.unravel_index(err.argmax(), a.shape)) if a.dim() else ()
        raise AssertionError(
            f"{what}: {len(idx)} of {a.numel()} elements differ beyond atol={atol}, rtol={rtol}; first at "
            f"{tuple(idx[0].tolist())}: {a[tuple(idx[0])].item()!r} vs {e[tuple(idx[0])].item()!r}; worst at "
            f"{worst}: {a[worst].item()!r} vs {e[worst].item()!r}")
