"""Tiny methods and batches for the engine tests (small CNN on 1x12x12 inputs, 4 classes, CPU)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from generalist_trainer.trainer.config import load_config
from generalist_trainer.trainer.methods import build_method
from generalist_trainer.trainer.models import build_model

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


Span = tuple[int, int, int]  # (storage address, first byte, one past the last byte)


class HostReads(TorchDispatchMode):
    """Counts the reads of a tensor value on the host: .item(), float(t), int(t), bool(t), torch.equal (one
    `_local_scalar_dense` or `equal` each), .tolist() and .numpy(). On a GPU each is a device sync.

    Not counted: the value of a one-element draw from the CPU generator (`draw_seed`, `draw_update_seed`): that
    generator lives on the host, so on a GPU run reading its draw waits for nothing.
    """

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []
        self._host_draws: set[int] = set()
        self._patched: list[tuple[str, object]] = []

    def __enter__(self):
        for name in ("tolist", "numpy"):
            original = getattr(torch.Tensor, name)
            self._patched.append((name, original))

            def counted(tensor, *args, _original=original, _name=name, **kwargs):
                self.reads.append(f"Tensor.{_name}")
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counted)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._patched:
            setattr(torch.Tensor, name, original)
        self._patched.clear()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if (func in (torch.ops.aten.randint.low, torch.ops.aten.randint.default) and out.numel() == 1
                and out.device.type == "cpu"):
            self._host_draws.add(out.untyped_storage().data_ptr())
        elif func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            if args[0].untyped_storage().data_ptr() not in self._host_draws:
                self.reads.append(str(func))
        elif func in (torch.ops.aten.equal.default, torch.ops.aten.is_nonzero.default):
            self.reads.append(str(func))
        return out


def storage_key(t: torch.Tensor) -> Span:
    """The bytes of its storage a tensor can reach. Spans, not whole storages: tensors of different networks
    may share one storage without sharing an element (Generalist's packed BatchNorm counters)."""
    extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if size > 0)
    first = t.storage_offset() * t.element_size()
    return t.untyped_storage().data_ptr(), first, first + extent * t.element_size()


def overlap(a: set[Span], b: set[Span]) -> bool:
    """Whether a span of `a` and a span of `b` share a byte."""
    by_storage: dict[int, list[tuple[int, int]]] = {}
    for ptr, lo, hi in b:
        by_storage.setdefault(ptr, []).append((lo, hi))
    return any(lo < b_hi and b_lo < hi for ptr, lo, hi in a for b_lo, b_hi in by_storage.get(ptr, ()))


def touches(spans: set[Span], t: torch.Tensor) -> bool:
    return overlap(spans, {storage_key(t)})


class StorageAccess(TorchDispatchMode):
    """Records the spans every op reads and writes (writes: arguments the op's schema marks as mutated)."""

    def __init__(self):
        super().__init__()
        self.read: set[Span] = set()
        self.written: set[Span] = set()

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
