"""Generalist's integer buffers (BatchNorm's num_batches_tracked): one (5, K) tensor, mixed in a fixed number of ops
whatever the number of BatchNorm layers, to the integers the per-buffer formula gives."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.engine.helpers import tiny_method


class OpCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _counters(method) -> dict[str, torch.Tensor]:
    return {name: arena.int_buffers for name, arena in method.arenas.items()}


def _reference_mix(ints: dict[str, dict[str, torch.Tensor]], decay: float, beta: float, redistribute: bool) -> None:
    """The per-buffer formula the packed update replaced (in place on plain tensors)."""
    for key, g in ints["global"].items():
        t_r, t_n = ints["robust"][key], ints["natural"][key]
        s_r, s_n = ints["avg_robust"][key], ints["avg_natural"][key]
        new_sr = decay * s_r.double() + (1 - decay) * t_r.double()
        new_sn = decay * s_n.double() + (1 - decay) * t_n.double()
        new_g = decay * g.double() + (1 - decay) * (beta * new_sr + (1 - beta) * new_sn)
        s_r.copy_(new_sr.round())
        s_n.copy_(new_sn.round())
        g.copy_(new_g.round())
        if redistribute:
            t_r.copy_(g)
            t_n.copy_(g)


def _mix_ops(arch: str) -> tuple[int, int]:
    m = tiny_method(f"model.arch={arch}", "data.dataset=cifar10") if arch != "small_cnn" else tiny_method()
    layers = len(m.arenas["global"].int_buffers)
    with OpCount() as count:
        m._average_integer_buffers(0.9, redistribute=True)
    return layers, len(count.ops)


def test_the_mix_is_a_fixed_number_of_ops_whatever_the_number_of_batchnorm_layers():
    few_layers, few_ops = _mix_ops("small_cnn")
    many_layers, many_ops = _mix_ops("resnet18")
    assert many_layers >= 20 > few_layers  # ResNet-18: 20 BatchNorm counters per network
    # Per buffer it was about 23 ops each (460 for a ResNet-18); now one sequence of 24 (half of them views).
    assert few_ops == many_ops <= 24, (few_ops, many_ops)


@pytest.mark.parametrize("redistribute", [False, True])
def test_packed_mix_gives_the_per_buffer_integers(redistribute):
    m = tiny_method()
    gen = torch.Generator().manual_seed(0)
    # Ties included: decay 0.5 with counters one apart mixes to x.5 exactly (rounded half to even by both).
    for decay, beta in [(0.5, 1.0), (0.1, 0.7), (0.91, 0.4), (0.999, 0.55), (0.5, 0.5)]:
        for tensors in _counters(m).values():
            for t in tensors.values():
                t.fill_(int(torch.randint(0, 5, (1,), generator=gen)))
        expected = {net: {k: v.clone() for k, v in tensors.items()} for net, tensors in _counters(m).items()}
        m.beta = beta
        m._average_integer_buffers(decay, redistribute)
        _reference_mix(expected, decay, beta, redistribute)
        for net, tensors in _counters(m).items():
            for key, t in tensors.items():
                assert t.dtype == torch.int64 and torch.equal(t, expected[net][key]), (net, key, decay, beta)


def test_module_buffers_are_views_of_the_packed_tensor():
    m = tiny_method()
    packed = m.int_counters
    assert packed.shape == (5, len(m.arenas["global"].int_buffers)) and packed.dtype == torch.int64
    m.robust.train()
    m.robust(torch.rand(4, 1, 12, 12))  # a training forward counts one batch in every BatchNorm layer
    assert bool((packed[0] == 1).all()) and bool((packed[1:] == 0).all())
    # load_state_dict writes through the views.
    state = m.global_model.state_dict()
    key = next(k for k in state if k.endswith("num_batches_tracked"))
    m.global_model.load_state_dict({**state, key: torch.tensor(7)})
    assert int(m.global_model.state_dict()[key]) == 7 and bool((packed[4] == 7).any())
    # The epoch-end redistribution copies G's counters into both experts, through the views too.
    m.redistribute()
    assert torch.equal(packed[0], packed[4]) and torch.equal(packed[1], packed[4])
