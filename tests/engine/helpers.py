"""Tiny methods and batches for the engine tests (small CNN on 1x12x12 inputs, 4 classes, CPU)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trainer.config import load_config
from trainer.methods import build_method
from trainer.models import build_model

BASE = ["model.arch=small_cnn", "train.epochs=8", "attack.steps=2", "attack.eps=0.1", "attack.step=0.05",
        "train.device=cpu"]


def tiny_config(*overrides: str, method: str = "generalist"):
    return load_config(None, [*BASE, f"method.name={method}", *overrides])


def tiny_method(*overrides: str, method: str = "generalist", seed: int = 0, device: str = "cpu"):
    cfg = tiny_config(*overrides, f"train.device={device}", method=method)

    def factory() -> torch.nn.Module:
        return build_model(cfg.model, num_classes=4, in_channels=1, image_size=12, mean=(0.5,), std=(0.25,))

    torch.manual_seed(seed)
    return build_method(cfg, factory, torch.device(device))


def tiny_batch(n: int = 8, seed: int = 1, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 12, 12, generator=gen).to(device),
            torch.randint(0, 4, (n,), generator=gen).to(device))


def method_tensors(method) -> dict[str, torch.Tensor]:
    """Every network tensor and optimiser state tensor, by a readable name."""
    out = {f"{net}.{k}": v for net, module in method.networks().items() for k, v in module.state_dict().items()}
    for name, opt in method.optimizers().items():
        for i, state in opt.state_dict()["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    out[f"optimizer.{name}.{i}.{key}"] = value
    return out


def assert_same_state(a, b, *, exact: bool = True, atol: float = 0.0, rtol: float = 0.0) -> None:
    ta, tb = method_tensors(a), method_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        if exact:
            assert torch.equal(ta[k], tb[k]), f"{k} differs"
        else:
            torch.testing.assert_close(ta[k].double(), tb[k].double(), atol=atol, rtol=rtol,
                                       msg=lambda m, k=k: f"{k}: {m}")


class HostReadError(AssertionError):
    pass


class NoHostReads(TorchDispatchMode):
    """Fails on any op that copies a tensor value to the host (.item(), float(t), bool(t), .tolist()):
    what a CUDA graph capture cannot contain."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            raise HostReadError(f"host read via {func}")
        return func(*args, **(kwargs or {}))


def storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class StorageAccess(TorchDispatchMode):
    """Records the storages every op reads and writes (writes: arguments the op's schema marks as mutated)."""

    def __init__(self):
        super().__init__()
        self.read: set[int] = set()
        self.written: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for i, arg in enumerate(func._schema.arguments):
            if i < len(args):
                value = args[i]
            elif arg.name in kwargs:
                value = kwargs[arg.name]
            else:
                continue
            if isinstance(value, torch.Tensor):
                tensors = [value]
            elif isinstance(value, (list, tuple)):
                tensors = [v for v in value if isinstance(v, torch.Tensor)]
            else:
                tensors = []
            mutated = arg.alias_info is not None and arg.alias_info.is_write
            for t in tensors:
                if t.numel() and t.device.type != "meta":
                    (self.written if mutated else self.read).add(storage_key(t))
        return func(*args, **kwargs)
