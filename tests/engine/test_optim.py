"""The optimiser implementations behind `engine.optimizer_impl`: torch's SGD (fused on CUDA, foreach on the
CPU) by default, apex's FusedSGD when asked for, and a clear error naming what to install when apex is
missing. apex is never installed here: its presence is simulated by a stand-in module."""

import sys
import types

import pytest
import torch

from generalist_trainer.trainer.config import OptimConfig, Schedule
from generalist_trainer.trainer.errors import ConfigError, MissingDependencyError
from generalist_trainer.trainer.optim import APEX_INSTALL, apex_fused_sgd, build_sgd, set_lr

CFG = OptimConfig(lr=Schedule(values=(0.1, 0.1, 0.01, 0.001)), momentum=0.8, weight_decay=1e-3, nesterov=True)
CUDA = torch.device("cuda")  # never touched by the apex paths below: they fail or return before any tensor op


def _params(device="cpu"):
    return [torch.nn.Parameter(torch.ones(3, device=device)), torch.nn.Parameter(torch.zeros(2, 2, device=device))]


@pytest.fixture
def no_apex(monkeypatch):
    # A None entry makes `import apex...` raise ImportError, whether or not apex is installed.
    monkeypatch.setitem(sys.modules, "apex", None)
    monkeypatch.setitem(sys.modules, "apex.optimizers", None)


@pytest.fixture
def fake_apex(monkeypatch):
    made = []

    class FusedSGD:
        def __init__(self, params, **kwargs):
            self.params, self.kwargs = list(params), kwargs
            made.append(self)

    apex = types.ModuleType("apex")
    optimizers = types.ModuleType("apex.optimizers")
    optimizers.FusedSGD = FusedSGD
    apex.optimizers = optimizers
    monkeypatch.setitem(sys.modules, "apex", apex)
    monkeypatch.setitem(sys.modules, "apex.optimizers", optimizers)
    return made


def test_apex_asked_for_but_missing_is_an_error_naming_what_to_install(no_apex):
    with pytest.raises(MissingDependencyError) as info:
        build_sgd(_params(), CFG, CUDA, impl="apex")
    text = str(info.value)
    assert "engine.optimizer_impl" in text and "apex" in text and APEX_INSTALL in text
    assert "engine.optimizer_impl=torch" in text  # the way out without installing anything
    assert isinstance(info.value, ImportError)
    with pytest.raises(MissingDependencyError, match="NVIDIA apex is not importable"):
        apex_fused_sgd()


def test_apex_when_importable_is_fused_sgd_with_the_configured_hyper_parameters(fake_apex):
    params = _params()
    opt = build_sgd(params, CFG, CUDA, impl="apex")
    assert fake_apex == [opt] and opt.params == params
    assert opt.kwargs == {"lr": 0.1, "momentum": 0.8, "weight_decay": 1e-3, "nesterov": True}


def test_apex_refuses_the_cpu_and_cuda_graphs_even_when_installed(fake_apex):
    with pytest.raises(ConfigError, match="CUDA only"):
        build_sgd(_params(), CFG, torch.device("cpu"), impl="apex")
    with pytest.raises(ConfigError, match="cannot be captured"):
        build_sgd(_params(), CFG, CUDA, impl="apex", capturable=True)
    assert fake_apex == []


def test_unknown_implementation_is_a_config_error():
    with pytest.raises(ConfigError, match="'torch' or 'apex'"):
        build_sgd(_params(), CFG, torch.device("cpu"), impl="fancy")


def test_torch_sgd_on_the_cpu_is_foreach_with_the_configured_hyper_parameters():
    opt = build_sgd(_params(), CFG, torch.device("cpu"))
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD) and group["foreach"] and not group["fused"]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.1, 0.8, 1e-3, True)
    set_lr(opt, 0.02)
    assert group["lr"] == 0.02
    with pytest.raises(ConfigError, match="capturable=True needs CUDA"):
        build_sgd(_params(), CFG, torch.device("cpu"), capturable=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("capturable", [False, True])
def test_torch_sgd_on_cuda_is_fused_and_a_capturable_lr_is_a_device_tensor_set_in_place(capturable):
    params = _params("cuda")
    opt = build_sgd(params, CFG, CUDA, capturable=capturable)
    group = opt.param_groups[0]
    assert group["fused"]
    if capturable:
        lr = group["lr"]
        assert isinstance(lr, torch.Tensor) and lr.device.type == "cuda"
        set_lr(opt, 0.02)
        assert group["lr"] is lr and float(lr) == pytest.approx(0.02)
    # The fused step is the plain SGD step.
    reference = [p.detach().clone().requires_grad_(True) for p in params]
    ref_opt = torch.optim.SGD(reference, lr=float(group["lr"]), momentum=0.8, weight_decay=1e-3, nesterov=True)
    for _ in range(3):
        for ps, o in ((params, opt), (reference, ref_opt)):
            o.zero_grad()
            sum((p * p).sum() for p in ps).backward()
            o.step()
    for p, r in zip(params, reference):
        torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-7)
