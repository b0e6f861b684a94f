"""Generalist's two expert updates are independent until the averaging: the order they are issued in (as the
two-stream path issues them: natural first) changes nothing, neither touches the other's state, and their
random numbers do not depend on the order. Real overlap on two CUDA streams is checked on a GPU only."""

import contextlib

import pytest
import torch

import generalist_trainer.trainer.methods.generalist as generalist_module
from generalist_trainer.trainer.engine.streams import ExpertStreams, independent_rng

from .helpers import (
    StorageAccess,
    assert_same_state,
    method_tensors,
    overlap,
    storage_key,
    tiny_batch,
    tiny_method,
    touches,
)

# Dropout and the attack's random start both draw random numbers in both updates.
RANDOM = ["model.dropout=0.3"]


def _two_steps(method, order):
    method.update_order = order
    method.start_epoch(1)
    torch.manual_seed(5)
    return [method.train_step(*tiny_batch(seed=s)) for s in (1, 2)]


@pytest.mark.parametrize("extra", [RANDOM, [*RANDOM, "method.generalist.robust_objective=trades"]])
def test_natural_first_gives_exactly_the_sequential_step(extra):
    a, b = tiny_method(*extra), tiny_method(*extra)
    assert _two_steps(a, "robust_first") == _two_steps(b, "natural_first")
    assert_same_state(a, b)


def test_without_independent_generators_the_order_would_matter(monkeypatch):
    # The control for the test above: with one shared generator the two orders draw different numbers.
    monkeypatch.setattr(generalist_module, "independent_rng", lambda seed, device: contextlib.nullcontext())
    a, b = tiny_method(*RANDOM), tiny_method(*RANDOM)
    _two_steps(a, "robust_first")
    _two_steps(b, "natural_first")
    ta, tb = method_tensors(a), method_tensors(b)
    assert any(not torch.equal(ta[k], tb[k]) for k in ta)


def test_independent_rng_restores_the_global_generator():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    with independent_rng(123, torch.device("cpu")):
        inside = torch.rand(4)
    assert torch.equal(torch.rand(4), expected)
    with independent_rng(123, torch.device("cpu")):
        assert torch.equal(torch.rand(4), inside)


def _owned(method, expert: str) -> set[int]:
    net = getattr(method, expert)
    tensors = [*net.parameters(), *net.buffers(), *(p.grad for p in net.parameters() if p.grad is not None)]
    tensors += [v for s in method.optimizers()[expert].state.values() for v in s.values()
                if isinstance(v, torch.Tensor)]
    return {storage_key(t) for t in tensors}


def _averaged(method) -> set[int]:
    nets = (method.avg_robust, method.avg_natural, method.global_model)
    return {storage_key(t) for net in nets for t in [*net.parameters(), *net.buffers()]}


def test_each_update_reads_and_writes_nothing_of_the_other_expert_or_the_averages():
    m = tiny_method(*RANDOM)
    m.start_epoch(1)
    m.train_step(*tiny_batch(seed=1))  # momentum buffers exist from here on
    x, y = tiny_batch(seed=2)
    m._robust_update(x, y)  # the robust gradients stay alive through the natural update below
    robust, averaged = _owned(m, "robust"), _averaged(m)
    with StorageAccess() as natural_log:
        m._natural_update(x, y)
    assert touches(natural_log.read, m.arenas["natural"].flat)  # the log does see the weights
    assert touches(natural_log.written, m.arenas["natural"].flat)  # and the optimiser's update
    # Element by element: the five networks' BatchNorm counters share one storage, in rows of their own.
    assert not overlap(natural_log.read | natural_log.written, robust | averaged)

    # Neither update writes the batch both of them read. Checked against the batch each log saw, while it is
    # still alive: a later batch could be allocated where one of the logged temporaries used to be.
    assert not touches(natural_log.written, x)

    x, y = tiny_batch(seed=3)
    m._natural_update(x, y)
    natural = _owned(m, "natural")
    with StorageAccess() as robust_log:
        m._robust_update(x, y)
    assert touches(robust_log.written, m.arenas["robust"].flat)
    assert not overlap(robust_log.read | robust_log.written, natural | averaged)
    assert not touches(robust_log.written, x)


def test_two_streams_need_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        ExpertStreams(torch.device("cpu"), enabled=True)
    with pytest.raises(ValueError, match="order"):
        ExpertStreams(torch.device("cpu"), enabled=False).run(lambda: 1, lambda: 2, order="parallel")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_two_streams_equal_one_stream_on_cuda(precision, deterministic_cudnn):
    common = [*RANDOM, f"engine.precision={precision}", "engine.tf32=false", "engine.cudnn_benchmark=false"]
    one = tiny_method(*common, "engine.two_streams=false", device="cuda")
    two = tiny_method(*common, "engine.two_streams=true", device="cuda")
    assert two.streams.enabled and not one.streams.enabled
    for m in (one, two):
        m.start_epoch(1)
    torch.manual_seed(5)
    metrics_one = [one.train_step(*tiny_batch(seed=s, device="cuda")) for s in range(4)]
    torch.manual_seed(5)
    metrics_two = [two.train_step(*tiny_batch(seed=s, device="cuda")) for s in range(4)]
    for a, b in zip(metrics_one, metrics_two):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
    # Same kernels on the same data in another interleaving: equal up to floating-point non-determinism.
    assert_same_state(one, two, exact=False, atol=1e-4, rtol=1e-3)
