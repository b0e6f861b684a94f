"""The TF32 policy is set through one API family, so that every reader (inductor, cuDNN) sees one consistent state."""

import dataclasses
import inspect

import pytest
import torch

from generalist_trainer.trainer.engine import (
    apply_cudnn_tf32_policy,
    cudnn_tf32_state,
    resolve_engine,
    restore_cudnn_tf32_state,
)
from tests.engine.helpers import tiny_config


@pytest.fixture
def saved_switches():
    state = cudnn_tf32_state()
    yield
    restore_cudnn_tf32_state(state)


def _settings(tf32: bool):
    return dataclasses.replace(resolve_engine(tiny_config(), torch.device("cpu")), tf32=tf32)


@pytest.mark.parametrize("tf32", [True, False])
def test_both_api_families_read_the_policy_after_it_is_applied(saved_switches, tf32):
    """Set through `fp32_precision`, reading `allow_tf32` afterwards raises (what inductor does on torch 2.10 /
    2.11 when it lowers a matmul); set through `allow_tf32`, both families agree, matmul and convolution alike."""
    state = apply_cudnn_tf32_policy(_settings(tf32))
    assert state == {"cudnn_benchmark": False, "matmul_allow_tf32": tf32, "cudnn_allow_tf32": tf32}
    # The legacy getters: they raise when the families were mixed.
    assert torch.backends.cuda.matmul.allow_tf32 is tf32
    assert torch.backends.cudnn.allow_tf32 is tf32
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        assert torch.backends.cuda.matmul.fp32_precision == ("tf32" if tf32 else "ieee")
        # cuDNN conv and RNN agree (a disagreement makes `cudnn.allow_tf32` unreadable).
        assert torch.backends.cudnn.conv.fp32_precision == torch.backends.cudnn.rnn.fp32_precision
    assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch < 2.9")
def test_applying_the_policy_repairs_a_state_mixed_by_someone_else(saved_switches):
    apply_cudnn_tf32_policy(_settings(False))  # a known start: IEEE fp32 through both families
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
        torch.backends.cuda.matmul.allow_tf32  # noqa: B018 (the read is the test)
    apply_cudnn_tf32_policy(_settings(False))
    assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False


def test_restore_puts_back_what_cudnn_tf32_state_read(saved_switches):
    before = cudnn_tf32_state()
    apply_cudnn_tf32_policy(_settings(not before["matmul_allow_tf32"]))
    assert cudnn_tf32_state() != before
    restore_cudnn_tf32_state(before)
    assert cudnn_tf32_state() == before


def test_the_gpu_equality_tests_run_with_deterministic_cudnn():
    """Each GPU test that compares two runs of the same arithmetic asks for deterministic cuDNN (tests/engine/
    conftest.py), so a difference it finds is the engine's, not cuDNN's choice of a non-deterministic algorithm."""
    from tests.engine import test_compile, test_cuda_graphs, test_streams

    for test in (test_streams.test_two_streams_equal_one_stream_on_cuda,
                 test_cuda_graphs.test_captured_step_equals_eager_on_cuda,
                 test_compile.test_compiled_steps_equal_eager_steps_on_cuda):
        assert "deterministic_cudnn" in inspect.signature(test).parameters, test.__name__


def test_deterministic_cudnn_fixture_sets_and_restores_the_flags():
    from tests.engine.conftest import deterministic_cudnn

    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    fixture = deterministic_cudnn.__wrapped__()
    next(fixture)
    assert torch.backends.cudnn.deterministic is True and torch.backends.cudnn.benchmark is False
    with pytest.raises(StopIteration):
        next(fixture)
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == before
