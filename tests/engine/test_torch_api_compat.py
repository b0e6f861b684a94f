"""The GPU paths use only torch APIs that exist in torch 2.11, the version of the GPU machine's image.

The CPU machines run a newer torch, so a call that exists only there (`torch.cuda.Stream.is_capturing`, added
after 2.11) passes every CPU test and fails on the first GPU step. This test reads the sources instead:
every `torch.*` name they reach must be on TORCH_2_11, and no attribute known to be missing from 2.11's
objects may be used at all.

How TORCH_2_11 was established: each name below was looked up in the Python sources and the `torch/_C` type
stubs of the torch 2.11.0 wheel from PyPI (torch-2.11.0-cp311-cp311-manylinux_2_28_x86_64.whl, version
2.11.0+cu130; it cannot be imported without its CUDA libraries, so it was read, not run). In that wheel
`torch.cuda.Stream` (torch/cuda/streams.py and `_CudaStreamBase` in torch/_C/__init__.pyi) has query,
record_event, synchronize, wait_event, wait_stream and priority_range, and no `is_capturing`; capture is
queried with `torch.cuda.is_current_stream_capturing()` (torch/cuda/graphs.py), as the docs of every
version since 1.10 show. A new torch name used on a GPU path must be checked the same way before it is added.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The modules a GPU training step runs through (engine, methods, attacks, loop, DDP, device loader, optimiser).
GPU_PATH = [*sorted((REPO / "trainer/engine").glob("*.py")), *sorted((REPO / "trainer/methods").glob("*.py")),
            *sorted((REPO / "trainer/attacks").glob("*.py")),
            *(REPO / "trainer" / name for name in ("distributed.py", "runtime.py", "guards.py", "optim.py",
                                                    "training.py", "data/gpu_loader.py"))]

TORCH_2_11 = frozenset("""
torch torch.Generator torch.Tensor torch.aminmax torch.amp torch.amp.GradScaler torch.arange torch.autocast
torch.autograd torch.autograd.grad torch.backends torch.backends.cuda torch.backends.cuda.matmul
torch.backends.cuda.matmul.allow_tf32 torch.backends.cudnn torch.backends.cudnn.allow_tf32
torch.backends.cudnn.benchmark torch.bfloat16 torch.cat torch.channels_last torch.compile torch.contiguous_format
torch.cuda torch.cuda.CUDAGraph torch.cuda.Event torch.cuda.Stream torch.cuda.current_device
torch.cuda.current_stream torch.cuda.default_generators torch.cuda.device_count torch.cuda.get_rng_state_all
torch.cuda.graph torch.cuda.init torch.cuda.is_available torch.cuda.is_bf16_supported
torch.cuda.is_current_stream_capturing torch.cuda.nvtx torch.cuda.nvtx.range_pop torch.cuda.nvtx.range_push
torch.cuda.set_device torch.cuda.set_rng_state_all torch.cuda.stream torch.cuda.synchronize torch.default_generator
torch.device torch.distributed torch.distributed.ReduceOp torch.distributed.ReduceOp.MAX
torch.distributed.ReduceOp.MIN torch.distributed.ReduceOp.SUM torch.distributed.all_gather
torch.distributed.all_gather_object torch.distributed.all_reduce torch.distributed.barrier
torch.distributed.broadcast torch.distributed.destroy_process_group torch.distributed.get_backend
torch.distributed.get_rank torch.distributed.get_world_size torch.distributed.init_process_group
torch.distributed.is_available torch.distributed.is_initialized torch.distributed.is_nccl_available torch.dtype
torch.empty torch.empty_like torch.enable_grad torch.equal torch.float16 torch.float32 torch.float64 torch.from_numpy
torch.full torch.get_rng_state torch.int32 torch.int64 torch.isfinite torch.isinf torch.isnan torch.manual_seed
torch.max torch.memory_format torch.min torch.minimum torch.nn torch.nn.Module torch.nn.Parameter
torch.nn.functional torch.nn.functional.cross_entropy torch.nn.functional.kl_div torch.nn.functional.log_softmax
torch.nn.functional.softmax torch.nn.parallel torch.nn.parallel.DistributedDataParallel
torch.nn.parallel.DistributedDataParallel.__init__ torch.no_grad torch.optim torch.optim.Optimizer torch.optim.SGD
torch.profiler torch.profiler.ProfilerActivity torch.profiler.ProfilerActivity.CPU
torch.profiler.ProfilerActivity.CUDA torch.profiler.profile torch.profiler.record_function torch.rand torch.randint
torch.randn torch.set_num_threads torch.set_rng_state torch.stack torch.tensor torch.uint8
torch.use_deterministic_algorithms torch.where torch.zeros torch.zeros_like torch.preserve_format
""".split())

# Attributes of torch objects (streams, events, tensors) that torch 2.11 does not have, under any receiver.
MISSING_IN_2_11 = {"is_capturing": "torch.cuda.Stream has no is_capturing in 2.11: use "
                                   "torch.cuda.is_current_stream_capturing()"}


def _torch_aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> the torch path it stands for (import torch; from torch import nn; import torch.x as y)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "torch":
                    aliases[a.asname or "torch"] = a.name if a.asname else "torch"
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "torch":
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def torch_names(path: Path) -> set[str]:
    """Every dotted torch name the module reaches: its torch imports and each attribute chain on one of them."""
    tree = ast.parse(path.read_text())
    aliases = _torch_aliases(tree)
    names = set(aliases.values())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, base = [], node
            while isinstance(base, ast.Attribute):
                parts.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                names.add(".".join([aliases[base.id], *reversed(parts)]))
    return names


def test_the_gpu_path_uses_only_names_that_exist_in_torch_2_11():
    unknown = {f"{path.relative_to(REPO)}: {name}" for path in GPU_PATH for name in torch_names(path)
               if name not in TORCH_2_11}
    assert not unknown, ("torch names not checked against torch 2.11 (see this module's docstring): "
                         + ", ".join(sorted(unknown)))


def test_no_attribute_missing_from_torch_2_11_is_used_anywhere():
    sources = [*sorted((REPO / "trainer").rglob("*.py")), *sorted((REPO / "kernels").rglob("*.py")),
               *sorted((REPO / "bench").rglob("*.py"))]
    found = [f"{path.relative_to(REPO)}:{node.lineno} .{node.attr} ({MISSING_IN_2_11[node.attr]})"
             for path in sources for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Attribute) and node.attr in MISSING_IN_2_11]
    assert not found, "\n".join(found)


def test_tf32_is_set_through_one_api_family():
    """trainer/engine/cudnn_tf32.py sets TF32 through allow_tf32 only; an fp32_precision assignment anywhere would mix
    the two families, which torch.compile on torch 2.10 / 2.11 cannot read."""
    found = [f"{path.relative_to(REPO)}:{node.lineno}"
             for path in [*sorted((REPO / "trainer").rglob("*.py")), *sorted((REPO / "bench").rglob("*.py"))]
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Assign | ast.AugAssign) and any(
                 isinstance(t, ast.Attribute) and t.attr == "fp32_precision"
                 for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))]
    assert not found, found


def test_the_scanner_sees_a_stream_method_and_an_unlisted_name(tmp_path):
    """The checks above can fail: the old streams.py line and a made-up name are both found."""
    probe = tmp_path / "probe.py"
    probe.write_text("import torch\nmain = torch.cuda.current_stream()\ncapturing = main.is_capturing()\n"
                     "torch.cuda.graphs.frobnicate()\n")
    assert "torch.cuda.graphs.frobnicate" in torch_names(probe) - TORCH_2_11
    tree = ast.parse(probe.read_text())
    assert any(isinstance(n, ast.Attribute) and n.attr in MISSING_IN_2_11 for n in ast.walk(tree))
