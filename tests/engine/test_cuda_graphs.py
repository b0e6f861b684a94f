"""CUDA graphs. On the CPU: the configuration errors, and that what a graph would capture never reads a value
on the host (the step is capturable in that sense). On a GPU: the captured step against eager, and the eager
fallback for a batch of another shape. The capture itself is verified only where a GPU is present."""

import pytest
import torch

from generalist_trainer.trainer.attacks import PGD
from generalist_trainer.trainer.config import load_config
from generalist_trainer.trainer.engine.cuda_graphs import GraphedStep, GraphSafePGD
from generalist_trainer.trainer.errors import ConfigError

from .helpers import HostReadError, NoHostReads, assert_same_state, tiny_batch, tiny_method


def test_graphs_on_the_cpu_are_refused():
    with pytest.raises(ConfigError, match=r"engine\.cuda_graphs"):
        tiny_method("engine.cuda_graphs=true")
    with pytest.raises(ConfigError, match=r"engine\.cuda_graphs"):
        load_config(None, ["train.device=auto", "engine.cuda_graphs=true", "train.device=cpu"])
    with pytest.raises(ValueError, match="CUDA"):
        GraphedStep(lambda x, y: {}, [], torch.device("cpu"), warmup_steps=1)


def test_the_no_host_read_check_catches_the_plain_attack():
    m = tiny_method(method="pgd_at")
    with pytest.raises(HostReadError), NoHostReads():
        PGD(0.1, 0.05, 2)(m.model, *tiny_batch())  # its input check and its seed draw read the host


def test_graph_safe_pgd_reads_nothing_on_the_host_and_stays_in_the_ball():
    m = tiny_method(method="pgd_at")
    x, y = tiny_batch()
    for norm in ("linf", "l2"):
        torch.manual_seed(0)
        with NoHostReads():
            x_adv = GraphSafePGD(0.1, 0.05, 2, norm=norm)(m.model, x, y)
        assert x_adv.shape == x.shape and bool((x_adv >= 0).all() and (x_adv <= 1).all())
        delta = (x_adv - x).flatten(1)
        bound = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert bool((bound <= 0.1 + 1e-5).all())


def test_graph_safe_pgd_without_random_start_is_pgd():
    m = tiny_method(method="pgd_at")
    x, y = tiny_batch()
    expected = PGD(0.1, 0.05, 3, random_start=False)(m.model, x, y)
    assert torch.equal(GraphSafePGD(0.1, 0.05, 3, random_start=False)(m.model, x, y), expected)


@pytest.mark.parametrize("method", ["pgd_at", "natural", "generalist"])
def test_the_step_a_graph_captures_reads_nothing_on_the_host(method):
    m = tiny_method(method=method)
    m.start_epoch(1)
    if method in ("pgd_at", "generalist"):
        m.objective.attack = GraphSafePGD(0.1, 0.05, 2)
    step = m._graph_updates if method == "generalist" else m._step
    x, y = tiny_batch()
    with NoHostReads():
        metrics = step(x, y)
    assert all(isinstance(m.value, torch.Tensor) for m in metrics.values()), metrics


def _run(method: str, graphs: bool, batches: list[tuple[torch.Tensor, torch.Tensor]]):
    m = tiny_method("attack.random_start=false", "engine.precision=fp32", "engine.tf32=false",
                    "engine.cudnn_benchmark=false", "engine.cuda_graph_warmup_steps=2",
                    f"engine.cuda_graphs={str(graphs).lower()}", method=method, device="cuda")
    m.start_epoch(1)
    metrics = [m.train_step(x, y) for x, y in batches]
    return m, metrics


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["pgd_at", "generalist"])
def test_captured_step_equals_eager_on_cuda(method, deterministic_cudnn):
    batches = [tiny_batch(seed=s, device="cuda") for s in range(6)]
    batches.append(tiny_batch(n=5, seed=9, device="cuda"))  # a partial batch: the eager fallback
    batches.append(tiny_batch(seed=10, device="cuda"))  # and a replay after it
    eager, eager_metrics = _run(method, False, batches)
    graphed, graphed_metrics = _run(method, True, batches)
    assert graphed.graphed_step.captured and graphed.graphed_step.eager_fallbacks == 1
    for a, b in zip(eager_metrics, graphed_metrics):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
    assert_same_state(eager, graphed, exact=False, atol=1e-5, rtol=1e-4)

