"""FlatArena: packing, views, module behaviour, state_dict round trips, copy_from, check()."""

import copy

import pytest
import torch
from torch import nn

from generalist_trainer.kernels import FlatArena, generalist_average_
from tests.kernels.conftest import DEVICE


class Net(nn.Module):
    """Conv + BatchNorm (with its int64 counter) + a tied pair of linear layers + a plain float buffer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)
        self.head = nn.Linear(5, 5)
        self.tied = nn.Linear(5, 5)
        self.tied.weight = self.head.weight  # one Parameter, two holders
        self.register_buffer("scale", torch.tensor([2.0]))
        self.register_buffer("unused", None)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.tied(self.head(self.fc(h))) * self.scale


def _net(seed=0):
    torch.manual_seed(seed)
    return Net().to(DEVICE)


def _inside(t, arena):
    start = arena.flat.data_ptr()
    end = start + arena.flat.numel() * arena.flat.element_size()
    return start <= t.data_ptr() < end


def test_packs_values_and_keeps_the_module_working():
    net = _net()
    before = copy.deepcopy(net.state_dict())
    x = torch.randn(2, 3, 6, 6, device=DEVICE)
    net.eval()
    y_before = net(x)
    arena = FlatArena(net)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(net(x), y_before)
    for name, p in net.named_parameters():
        assert _inside(p, arena) and p.requires_grad and isinstance(p, nn.Parameter), name
    for name, b in net.named_buffers():
        assert _inside(b, arena) == b.is_floating_point(), name
    # packing order, shared weight packed once, float buffers in, int counter out
    assert arena.names[:3] == ["conv.weight", "bn.weight", "bn.bias"]
    assert arena.names.count("head.weight") == 1 and "tied.weight" not in arena.names
    assert "scale" in arena.names and "bn.running_var" in arena.names
    assert list(arena.int_buffers) == ["bn.num_batches_tracked"]
    assert arena.int_buffers["bn.num_batches_tracked"] is net.bn.num_batches_tracked
    assert arena.numel == arena.flat.numel() and arena.numel % 16 == 0
    # parameters fill the prefix flat[:params_numel], buffers the rest
    params_end = arena.flat.data_ptr() + arena.params_numel * arena.flat.element_size()
    assert all(p.data_ptr() < params_end for p in net.parameters())
    assert all(b.data_ptr() >= params_end for b in net.buffers() if b.is_floating_point())
    assert arena.names.index("tied.bias") < arena.names.index("scale")
    assert arena.flat.dim() == 1 and arena.flat.is_contiguous() and not arena.flat.requires_grad
    arena.check()


def test_training_writes_into_the_arena():
    net = _net()
    arena = FlatArena(net)
    flat_before = arena.flat.clone()
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = net(torch.randn(4, 3, 6, 6, device=DEVICE)).square().mean()
    loss.backward()
    assert net.conv.weight.grad is not None
    opt.step()
    assert not torch.equal(arena.flat, flat_before)  # weights and BatchNorm running stats moved in place
    assert net.bn.num_batches_tracked.item() == 1
    assert torch.equal(net.tied.weight, net.head.weight)
    arena.check()


def test_writes_to_the_flat_buffer_show_in_the_module():
    net = _net()
    arena = FlatArena(net)
    with torch.no_grad():
        arena.flat.fill_(0.25)
    assert (net.conv.weight == 0.25).all() and (net.bn.running_mean == 0.25).all() and net.scale.item() == 0.25


def test_state_dict_round_trip_writes_into_the_views():
    src, dst = _net(1), _net(2)
    arena = FlatArena(dst)
    ptr = arena.flat.data_ptr()
    src.bn.num_batches_tracked.fill_(7)
    dst.load_state_dict(src.state_dict())
    assert arena.flat.data_ptr() == ptr
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    assert arena.int_buffers["bn.num_batches_tracked"].item() == 7
    arena.check()


def test_copy_from_copies_flat_and_int_buffers():
    a_net, b_net = _net(1), _net(2)
    a, b = FlatArena(a_net), FlatArena(b_net)
    a_net.bn.num_batches_tracked.fill_(3)
    b.copy_from(a)
    assert torch.equal(b.flat, a.flat)
    assert b_net.bn.num_batches_tracked.item() == 3
    for k, v in a_net.state_dict().items():
        assert torch.equal(b_net.state_dict()[k], v), k


def test_copy_from_rejects_another_layout():
    a = FlatArena(_net())
    b = FlatArena(nn.Sequential(nn.Linear(3, 4)).to(DEVICE))
    with pytest.raises(ValueError, match="layouts differ"):
        a.copy_from(b)


def test_check_detects_a_moved_module():
    net = _net()
    arena = FlatArena(net)
    net.to(DEVICE)  # same device and dtype: tensors stay where they are
    arena.check()
    net.double()
    with pytest.raises(RuntimeError, match="no longer a view of the flat buffer"):
        arena.check()


def test_check_detects_assign_loading():
    net = _net()
    arena = FlatArena(net)
    net.load_state_dict({k: v.clone() for k, v in net.state_dict().items()}, assign=True)
    with pytest.raises(RuntimeError, match="conv.weight is no longer a view"):
        arena.check()


def test_rejects_mixed_dtypes():
    net = _net()
    net.fc.double()
    with pytest.raises(TypeError, match="several dtypes"):
        FlatArena(net)


def test_channels_last_weights_keep_their_layout():
    net = _net().to(memory_format=torch.channels_last)
    stride = net.conv.weight.stride()
    assert stride != net.conv.weight.contiguous().stride()
    FlatArena(net)
    assert net.conv.weight.stride() == stride
    assert net(torch.randn(1, 3, 6, 6, device=DEVICE)).shape == (1, 5)


def test_averaging_five_arenas_updates_the_modules():
    nets = [_net(0) for _ in range(5)]
    with torch.no_grad():
        for p in nets[0].parameters():
            p.add_(1.0)  # theta_R differs from the others
    arenas = [FlatArena(n) for n in nets]
    generalist_average_(*(a.flat for a in arenas), decay=0.5, beta=1.0, redistribute=True)
    ref = _net(0)
    for (name, p_sr), p0 in zip(nets[2].named_parameters(), ref.parameters()):
        assert torch.allclose(p_sr, p0 + 0.5), name  # S_R = 0.5 S_R + 0.5 (theta_R) = origin + 0.5
    for name, p_theta_n in nets[1].named_parameters():
        assert torch.equal(p_theta_n, dict(nets[4].named_parameters())[name]), name  # redistributed
    for a in arenas:
        a.check()
