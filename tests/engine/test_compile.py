"""`engine.compile`: the methods' forwards run through torch.compile, and training steps give what eager
gives. On the CPU the graphs go through dynamo and AOTAutograd to the `aot_eager` backend (inductor's C++
code generation takes minutes on two cores); the CUDA test compiles with the default inductor backend."""

import functools

import pytest
import torch

from generalist_trainer.trainer.engine.compile import compile_module, is_compiled

from .helpers import assert_same_state, tiny_batch, tiny_method

COMMON = ["model.dropout=0", "engine.precision=fp32"]


def _steps(method, device, n=3):
    method.start_epoch(1)
    torch.manual_seed(3)
    return [method.train_step(*tiny_batch(seed=s, device=device)) for s in range(n)]


def _compare(eager, compiled, eager_metrics, compiled_metrics, *, atol, rtol):
    for a, b in zip(eager_metrics, compiled_metrics):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=rtol, abs=atol), k
    assert_same_state(eager, compiled, exact=False, atol=atol, rtol=rtol)


def test_compile_flag_off_leaves_the_module_itself():
    module = torch.nn.Linear(2, 2)
    assert compile_module(module, False) is module and not is_compiled(module)


def test_compiled_steps_equal_eager_steps_on_the_cpu(monkeypatch):
    method = "generalist"
    graphs = []
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counting_backend))
    torch._dynamo.reset()
    try:
        eager = tiny_method(*COMMON, method=method)
        compiled = tiny_method(*COMMON, "engine.compile=true", method=method)
        assert compiled.engine.settings.compile and not eager.engine.settings.compile
        assert is_compiled(compiled.robust_run) and is_compiled(compiled.natural_run)
        assert not is_compiled(eager.robust_run)
        # What checkpoints and the flat arenas see is the plain module, never the wrapper.
        assert all(not is_compiled(net) for net in compiled.networks().values())
        eager_metrics, compiled_metrics = _steps(eager, "cpu"), _steps(compiled, "cpu")
    finally:
        torch._dynamo.reset()
    assert graphs, "nothing went through torch.compile"
    # Same kernels in the same order: equal up to floating-point reassociation inside fused graphs.
    _compare(eager, compiled, eager_metrics, compiled_metrics, atol=1e-6, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_steps_equal_eager_steps_on_cuda(deterministic_cudnn):
    # fp32 without TF32: under bf16 a last-bit difference can flip the sign of an input-gradient entry, and the
    # attack then moves that pixel the other way, so bf16 steps are not comparable entry by entry.
    common = ["model.dropout=0", "engine.precision=fp32", "engine.tf32=false", "engine.cudnn_benchmark=false",
              "engine.two_streams=false"]
    torch._dynamo.reset()
    try:
        eager = tiny_method(*common, device="cuda")
        compiled = tiny_method(*common, "engine.compile=true", device="cuda")
        eager_metrics, compiled_metrics = _steps(eager, "cuda"), _steps(compiled, "cuda")
    finally:
        torch._dynamo.reset()
    _compare(eager, compiled, eager_metrics, compiled_metrics, atol=1e-5, rtol=1e-4)
