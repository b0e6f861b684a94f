"""A module's floating-point parameters and buffers packed into one contiguous 1-D tensor.

After FlatArena(module), every float parameter's `.data` and every float buffer is a view into
`arena.flat`, so an op over the whole network (Generalist's averaging, a copy, a lerp) is one kernel
launch over `arena.flat`, whatever the number of layers. The module itself works as before: forward,
autograd (requires_grad is kept), optimisers holding its Parameter objects, and state_dict() /
load_state_dict(), which copy into the views.

Parameters come first: they fill the prefix flat[:params_numel], the float buffers (BatchNorm running
statistics) the rest. `arena.names` lists the packed tensors' qualified names in that order. Non-float
buffers (BatchNorm's int64 num_batches_tracked) cannot live in a float buffer; they stay ordinary
tensors, listed in `arena.int_buffers` (qualified name -> the module's own tensor).

Build the arena after the module is on its final device and dtype. A later module.to(...), .cuda(),
.half() or load_state_dict(..., assign=True) gives the module new tensors outside the arena, silently
detaching it; `arena.check()` detects that cheaply and raises.

The state_dict() tensors of an arena-backed module share the flat buffer's storage: torch.save stores
that storage once, but safetensors.torch.save_file refuses shared tensors, so clone them before exporting.

Each tensor starts on a 16-element boundary (64 bytes in fp32) so that its view is as aligned for
vectorised kernels as a tensor of its own; the padding is zero and stays zero under the averaging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layout import is_dense

_ALIGN = 16


@dataclass(frozen=True)
class _Slot:
    name: str  # qualified name of the first owner, as in named_parameters() / named_buffers()
    owners: tuple[tuple[nn.Module, str, bool], ...]  # (module, attribute, is_parameter) of every holder
    offset: int
    shape: torch.Size
    stride: tuple[int, ...]


def _dense_strides(t: torch.Tensor) -> tuple[int, ...]:
    # Keep a tensor's own memory order (e.g. a channels_last conv weight) when it is dense, so that
    # cudnn sees the same layout as before; otherwise store it contiguous.
    return tuple(t.stride()) if is_dense(t) else tuple(torch.empty(t.shape, device="meta").stride())


class FlatArena:
    """Packs `module`'s float parameters and buffers into `self.flat`; see the module docstring."""

    def __init__(self, module: nn.Module):
        self.module = module
        tensors: dict[int, tuple[torch.Tensor, str, list[tuple[nn.Module, str, bool]]]] = {}
        int_buffers: dict[str, torch.Tensor] = {}
        seen_int: set[int] = set()
        # Parameters first, then buffers, so that the parameters fill one prefix of the flat buffer
        # (flat[:params_numel], e.g. for a flat optimiser). Every holder is walked (remove_duplicate=False)
        # so that a tensor shared by two submodules or two attributes is packed once and all are re-pointed.
        modules = list(module.named_modules(remove_duplicate=False))
        holders = [(prefix, mod, attr, t, True) for prefix, mod in modules for attr, t in mod._parameters.items()]
        holders += [(prefix, mod, attr, t, False) for prefix, mod in modules for attr, t in mod._buffers.items()]
        for prefix, mod, attr, t, is_param in holders:
            if t is None:
                continue
            name = f"{prefix}.{attr}" if prefix else attr
            if not t.is_floating_point():
                if is_param:
                    raise TypeError(f"FlatArena: parameter {name} has non-float dtype {t.dtype}")
                if id(t) not in seen_int:
                    seen_int.add(id(t))
                    int_buffers[name] = t
                continue
            entry = tensors.setdefault(id(t), (t, name, []))
            entry[2].append((mod, attr, is_param))

        dtypes = {t.dtype for t, _, _ in tensors.values()}
        devices = {t.device for t, _, _ in tensors.values()}
        if len(dtypes) > 1:
            by = {str(d): [n for t, n, _ in tensors.values() if t.dtype == d][:3] for d in dtypes}
            raise TypeError(f"FlatArena: float tensors have several dtypes {by}; cast the module to one dtype first")
        if len(devices) > 1:
            by = {str(d): [n for t, n, _ in tensors.values() if t.device == d][:3] for d in devices}
            raise ValueError(f"FlatArena: tensors are on several devices {by}; move the module to one device first")
        self.dtype = dtypes.pop() if dtypes else torch.get_default_dtype()
        self.device = devices.pop() if devices else torch.device("cpu")

        slots = []
        offset = 0
        self.params_numel = 0
        for t, name, owners in tensors.values():
            slots.append(_Slot(name, tuple(owners), offset, t.shape, _dense_strides(t)))
            offset += -(-t.numel() // _ALIGN) * _ALIGN
            if owners[0][2]:
                self.params_numel = offset
        self.flat = torch.zeros(offset, dtype=self.dtype, device=self.device)
        with torch.no_grad():
            for slot, (t, _, _) in zip(slots, tensors.values()):
                view = self._view(slot)
                view.copy_(t)
                # .data assignment changes the tensor object in place, so every reference to it (the
                # module, an optimiser, a user's variable) sees the arena's storage from now on.
                t.data = view
        self._slots = tuple(slots)
        self.names = [s.name for s in slots]
        self.numel = self.flat.numel()
        self.int_buffers = int_buffers

    def _view(self, slot: _Slot) -> torch.Tensor:
        return self.flat.as_strided(slot.shape, slot.stride, self.flat.storage_offset() + slot.offset)

    def __repr__(self) -> str:
        return (f"FlatArena({len(self.names)} tensors, {self.numel} elements, {self.dtype}, {self.device}, "
                f"{len(self.int_buffers)} int buffers)")

    def check(self) -> None:
        """Raise RuntimeError if a module tensor is no longer the arena view it was made (e.g. after .to())."""
        base = self.flat.data_ptr()
        item = self.flat.element_size()
        for slot in self._slots:
            for mod, attr, is_param in slot.owners:
                t = (mod._parameters if is_param else mod._buffers).get(attr)
                if (t is None or t.data_ptr() != base + slot.offset * item or t.shape != slot.shape
                        or t.dtype != self.dtype or t.device != self.device):
                    raise RuntimeError(
                        f"FlatArena: {slot.name} is no longer a view of the flat buffer (was the module moved "
                        "with .to()/.cuda()/.half() or loaded with assign=True after the arena was built?); "
                        "build a new FlatArena")

    def layout(self) -> tuple:
        """What copy_from compares: names, shapes, offsets, dtype, size and the int buffers' shapes."""
        return (tuple((s.name, tuple(s.shape), s.offset) for s in self._slots), self.dtype, self.numel,
                tuple((k, tuple(v.shape), v.dtype) for k, v in self.int_buffers.items()))

    @torch.no_grad()
    def copy_from(self, other: FlatArena) -> None:
        """Copy `other`'s flat buffer and int buffers into this arena (same architecture required)."""
        mine, theirs = self.layout(), other.layout()
        if mine != theirs:
            raise ValueError(f"FlatArena.copy_from: layouts differ ({_first_difference(mine, theirs)})")
        self.flat.copy_(other.flat)
        for key, t in self.int_buffers.items():
            t.copy_(other.int_buffers[key])


def _first_difference(a: tuple, b: tuple) -> str:
    slots_a, dtype_a, numel_a, ints_a = a
    slots_b, dtype_b, numel_b, ints_b = b
    for sa, sb in zip(slots_a, slots_b):
        if sa != sb:
            return f"{sa[0]} {list(sa[1])} at {sa[2]} vs {sb[0]} {list(sb[1])} at {sb[2]}"
    if len(slots_a) != len(slots_b):
        return f"{len(slots_a)} vs {len(slots_b)} tensors"
    if dtype_a != dtype_b:
        return f"dtype {dtype_a} vs {dtype_b}"
    if numel_a != numel_b:
        return f"{numel_a} vs {numel_b} elements"
    return f"int buffers {ints_a} vs {ints_b}"
