"""engine.* config: validation without the device, resolution of auto against a device, clear errors."""

import pytest
import torch

from generalist_trainer.trainer.config import load_config
from generalist_trainer.trainer.engine import settings as settings_module
from generalist_trainer.trainer.engine.settings import resolve_engine
from generalist_trainer.trainer.errors import ConfigError

from .helpers import tiny_config, tiny_method


def test_defaults_on_the_cpu_are_fp32_single_stream_channels_last():
    s = resolve_engine(tiny_config(), torch.device("cpu"))
    assert (s.precision, s.eval_precision, s.channels_last, s.cudnn_benchmark, s.two_streams, s.cuda_graphs,
            s.compile, s.optimizer_impl) == ("fp32", "fp32", True, False, False, False, False, "torch")
    assert s.tf32 is True and s.autocast_dtype is None and not s.loss_scaling


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_on_cuda_picks_bf16_two_streams_channels_last_and_benchmark(monkeypatch, bf16):
    # Resolution only reads the device's properties; a CUDA device object needs no GPU here.
    monkeypatch.setattr(settings_module, "_bf16_supported", lambda device: bf16)
    cuda = torch.device("cuda")
    s = resolve_engine(tiny_config(), cuda)
    assert s.precision == ("bf16" if bf16 else "fp16") and s.loss_scaling == (not bf16)
    assert s.two_streams and s.channels_last and s.cudnn_benchmark and s.eval_precision == "fp32"
    assert not resolve_engine(tiny_config(method="pgd_at"), cuda).two_streams  # one network: nothing to overlap
    distributed = resolve_engine(tiny_config(), cuda, distributed=True)
    assert not distributed.two_streams and any("torchrun" in n for n in distributed.notes)
    assert not resolve_engine(tiny_config("train.deterministic=true"), cuda).cudnn_benchmark
    explicit = resolve_engine(tiny_config("engine.two_streams=false", "engine.channels_last=false",
                                          "engine.precision=fp32"), cuda)
    assert (explicit.two_streams, explicit.channels_last, explicit.precision) == (False, False, "fp32")


def test_explicit_bf16_on_a_gpu_without_it_is_an_error(monkeypatch):
    monkeypatch.setattr(settings_module, "_bf16_supported", lambda device: False)
    with pytest.raises(ConfigError, match="engine.precision"):
        resolve_engine(tiny_config("engine.precision=bf16"), torch.device("cuda"))


@pytest.mark.parametrize("overrides, field", [
    (["engine.two_streams=true"], "engine.two_streams"),
    (["engine.cuda_graphs=true"], "engine.cuda_graphs"),
    (["engine.optimizer_impl=apex"], "engine.optimizer_impl"),
])
def test_requests_a_cpu_cannot_honour_are_errors_when_the_device_is_known(overrides, field):
    # train.device=auto resolves to the CPU here: caught when the method is built, before any step.
    cfg = load_config(None, ["model.arch=small_cnn", "train.device=auto", *overrides])
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        resolve_engine(cfg, torch.device("cpu"))


@pytest.mark.parametrize("overrides, field", [
    (["train.device=cpu", "engine.two_streams=true"], "engine.two_streams"),
    (["train.device=cpu", "engine.cuda_graphs=true"], "engine.cuda_graphs"),
    (["train.device=cpu", "engine.optimizer_impl=apex"], "engine.optimizer_impl"),
    (["method.name=pgd_at", "engine.two_streams=true"], "engine.two_streams"),
    (["engine.cuda_graphs=true", "engine.precision=fp16"], "engine.cuda_graphs"),
    (["engine.cuda_graphs=true", "method.ducat.enabled=true"], "engine.cuda_graphs"),
    (["engine.cuda_graphs=true", "method.generalist.robust_objective=trades"], "engine.cuda_graphs"),
    (["engine.cuda_graphs=true", "method.name=trades"], "engine.cuda_graphs"),
    (["engine.cuda_graphs=true", "engine.optimizer_impl=apex"], "engine.cuda_graphs"),
    (["engine.cudnn_benchmark=true", "train.deterministic=true"], "engine.cudnn_benchmark"),
    (["engine.precision=fp8"], "engine.precision"),
    (["engine.eval_precision=auto"], "engine.eval_precision"),
    (["engine.optimizer_impl=bnb"], "engine.optimizer_impl"),
    (["engine.cuda_graph_warmup_steps=0"], "engine.cuda_graph_warmup_steps"),
])
def test_config_validation_names_the_engine_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, ["model.arch=small_cnn", *overrides])


def test_unknown_engine_field_is_an_error():
    with pytest.raises(ConfigError, match="engine.streams"):
        load_config(None, ["engine.streams=2"])


def test_method_holds_its_resolved_engine_and_cpu_fp16_and_bf16_are_honoured():
    m = tiny_method("engine.precision=bf16", method="pgd_at")
    assert m.engine.settings.precision == "bf16" and m.engine.settings.autocast_dtype == torch.bfloat16
    m = tiny_method("engine.precision=fp16")
    assert m.robust_scaler.enabled and m.natural_scaler.enabled
    assert "precision fp16" in m.engine.settings.describe()
