"""Policy resolution: auto / triton / torch / cuda, the kill switch, and the errors that name a reason."""

import pytest
import torch

from generalist_trainer.kernels import (
    KernelUnavailableError,
    cuda_native,
    dispatch,
    lerp_,
    resolve_policy,
    set_default_policy,
)
from tests.kernels.conftest import DEVICE, triton_runs_here


def test_auto_uses_triton_on_cuda_and_the_reference_elsewhere():
    cpu = torch.zeros(3)
    assert resolve_policy("auto", cpu) == "torch"
    assert resolve_policy(None, cpu) == "torch"
    if torch.cuda.is_available() and dispatch.HAS_TRITON:
        assert resolve_policy("auto", torch.zeros(3, device="cuda")) == "triton"


def test_torch_policy_and_default_policy():
    t = torch.zeros(3, device=DEVICE)
    assert resolve_policy("torch", t) == "torch"
    set_default_policy("torch")
    assert resolve_policy(None, t) == "torch"
    with pytest.raises(ValueError, match="unknown kernel policy 'fastest'"):
        set_default_policy("fastest")
    with pytest.raises(ValueError, match="unknown kernel policy"):
        resolve_policy("Triton", t)


def test_explicit_triton_runs_where_it_can():
    ok, why = triton_runs_here()
    if not ok:
        pytest.skip(why)
    assert resolve_policy("triton", torch.zeros(3, device=DEVICE)) == "triton"
    set_default_policy("triton")
    assert resolve_policy(None, torch.zeros(3, device=DEVICE)) == "triton"


def test_explicit_triton_without_triton_names_the_install(monkeypatch):
    monkeypatch.setattr(dispatch, "HAS_TRITON", False)
    monkeypatch.setattr(dispatch, "TRITON_IMPORT_ERROR", "ModuleNotFoundError: No module named 'triton'")
    with pytest.raises(KernelUnavailableError, match=r"triton is not importable.*pip install triton"):
        resolve_policy("triton", torch.zeros(3))
    assert resolve_policy("auto", torch.zeros(3)) == "torch"


def test_explicit_triton_on_cpu_without_interpreter_names_the_switch(monkeypatch):
    monkeypatch.setattr(dispatch, "TRITON_INTERPRETED", False)
    with pytest.raises(KernelUnavailableError, match=r"tensors are on cpu.*TRITON_INTERPRET=1"):
        resolve_policy("triton", torch.zeros(3))
    with pytest.raises(KernelUnavailableError, match="TRITON_INTERPRET=1"):
        lerp_(torch.zeros(3), torch.ones(3), 0.5, policy="triton")


def test_environment_kill_switch_forces_the_reference(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    t = torch.zeros(3, device=DEVICE)
    for policy in (None, "auto", "triton", "torch", "cuda"):
        assert resolve_policy(policy, t) == "torch"
    monkeypatch.setattr(dispatch, "HAS_TRITON", False)
    assert resolve_policy("triton", t) == "torch"  # no error: the switch wins
    monkeypatch.setenv(dispatch.ENV_VAR, "auto")
    assert resolve_policy("torch", t) == "torch"
    monkeypatch.setenv(dispatch.ENV_VAR, "off")
    with pytest.raises(ValueError, match="GENERALIST_KERNELS='off' is not understood"):
        resolve_policy(None, t)


def test_kill_switch_reaches_the_public_ops(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    monkeypatch.setattr(dispatch, "TRITON_INTERPRETED", False)  # would make 'triton' fail on the CPU
    dst = torch.zeros(3)
    lerp_(dst, torch.ones(3), 0.5, policy="triton")
    assert torch.equal(dst, torch.full((3,), 0.5))


def test_cuda_policy_names_the_reason(monkeypatch):
    with pytest.raises(KernelUnavailableError, match="tensors are on cpu"):
        resolve_policy("cuda", torch.zeros(3))
    if not torch.cuda.is_available():
        return
    monkeypatch.setattr(cuda_native, "_lib", None)
    monkeypatch.setenv(cuda_native.LIB_ENV, "/nonexistent/libgeneralist_kernels_cuda.so")
    with pytest.raises(KernelUnavailableError, match=r"not found at /nonexistent.*cmake"):
        resolve_policy("cuda", torch.zeros(3, device="cuda"))


def test_missing_native_library_is_reported_with_the_build_command(monkeypatch, tmp_path):
    monkeypatch.setattr(cuda_native, "_lib", None)
    monkeypatch.setenv(cuda_native.LIB_ENV, str(tmp_path / "nope.so"))
    with pytest.raises(KernelUnavailableError, match=r"GENERALIST_KERNELS_CUDA_LIB.*cmake -S \. -B build"):
        cuda_native.load()
    assert not cuda_native.available()


def test_tensors_on_several_devices_are_rejected():
    with pytest.raises(ValueError, match="several devices"):
        resolve_policy("auto", torch.zeros(1), torch.zeros(1, device="meta"))
