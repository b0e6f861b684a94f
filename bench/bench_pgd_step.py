"""Benchmark of the fused PGD ops: L-inf step, L2 step, random start.

Providers: torch (the eager reference), compile (torch.compile of that reference), triton and cuda (the
public ops with that policy). Inputs are CIFAR-shaped batches (B, 3, 32, 32) with B = size // 3072.
Reports the median time, GB/s of the one-pass byte count (L-inf and L2 step: read x_adv, x, grad and
write x_adv; random start: read x, write x_adv) and its fraction of the copy bandwidth measured in the
same run. Target (GPU): L-inf step >= 85% of copy bandwidth from 16M elements.

    python -m generalist_trainer.bench.bench_pgd_step                    # GPU: sizes 1M..256M, fp32 and bf16
    python -m generalist_trainer.bench.bench_pgd_step --smoke            # CPU smoke run at small sizes
"""

from __future__ import annotations

import argparse

import torch

from ..kernels import KernelUnavailableError, pgd_l2_step_, pgd_linf_step_, pgd_random_start
from ..kernels.pgd_l2_step import pgd_l2_step_reference
from ..kernels.pgd_step import pgd_linf_step_reference, pgd_random_start_reference
from .common import (
    bench,
    copy_bandwidth,
    device_info,
    parse_list,
    parse_size,
    print_row,
    setup_cpu_threads,
    write_results,
)

PROVIDERS = ("torch", "compile", "triton", "cuda")
OPS = ("linf", "l2", "random_start")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GPU_SIZES = "1M,4M,16M,64M,256M"
SMOKE_SIZES = "256K,1M"
EPS, STEP = 8 / 255, 2 / 255

_REFERENCES = {"linf": pgd_linf_step_reference, "l2": pgd_l2_step_reference,
               "random_start": pgd_random_start_reference}


def bytes_moved(op: str, numel: int, dtype: torch.dtype) -> int:
    item = torch.empty((), dtype=dtype).element_size()
    return numel * (2 * item if op == "random_start" else 4 * item)


def make_call(op: str, provider: str, x_adv, grad, x):
    """A zero-argument callable running `op` with `provider`, or a string saying why it cannot run."""
    device = x.device
    if provider == "triton" and device.type != "cuda":
        return "skipped: Triton runs on the CPU only through its interpreter, whose timings mean nothing"
    if provider in ("triton", "cuda"):
        policy = provider
        try:  # a tiny call first, so that an unavailable provider becomes a skipped row with its reason
            t = torch.zeros(1, 4, device=device, dtype=x.dtype)
            if op == "random_start":
                pgd_random_start(t, EPS, 0, policy=policy)
            elif op == "l2":
                pgd_l2_step_(t, t.clone(), t.clone(), EPS, STEP, policy=policy)
            else:
                pgd_linf_step_(t, t.clone(), t.clone(), EPS, STEP, policy=policy)
        except KernelUnavailableError as exc:
            return f"skipped: {exc}"
        if op == "random_start":
            return lambda: pgd_random_start(x, EPS, 1234, policy=policy)
        step_fn = pgd_l2_step_ if op == "l2" else pgd_linf_step_
        return lambda: step_fn(x_adv, grad, x, EPS, STEP, policy=policy)
    ref = _REFERENCES[op]
    if provider == "compile":
        # Static shapes, compiled afresh per case: with dynamic=True inductor 2.13 fails on the L2 reference.
        torch._dynamo.reset()
        ref = torch.compile(ref, dynamic=False)
    if op == "random_start":
        return lambda: ref(x, EPS, 1234)
    return lambda: ref(x_adv, grad, x, EPS, STEP)


def run(sizes: list[int], dtypes: list[str], ops: list[str], providers: list[str], device: torch.device,
        rep_ms: float, copy_bytes: int) -> tuple[dict, list[dict]]:
    copy = copy_bandwidth(device, copy_bytes)
    print(f"copy bandwidth: {copy['copy_GBps']:.1f} GB/s over {copy_bytes / 2**20:.0f} MiB", flush=True)
    rows = []
    print_row(None)
    for op in ops:
        for dname in dtypes:
            dtype = DTYPES[dname]
            for size in sizes:
                batch = max(1, size // 3072)
                gen = torch.Generator(device=device).manual_seed(0)
                x = torch.rand(batch, 3, 32, 32, device=device, generator=gen).to(dtype)
                x_adv = (x.float() + 0.01).clamp_(0, 1).to(dtype)
                grad = torch.randn(batch, 3, 32, 32, device=device, generator=gen).to(dtype)
                numel = x.numel()
                for provider in providers:
                    row = {"op": op, "provider": provider, "dtype": dname, "numel": numel,
                           "shape": list(x.shape), "bytes": bytes_moved(op, numel, dtype)}
                    call = make_call(op, provider, x_adv, grad, x)
                    if isinstance(call, str):
                        row["status"] = call
                    else:
                        try:
                            t = bench(call, device, rep_ms=rep_ms)
                        except Exception as exc:  # a provider failing must not lose the other rows
                            row["status"] = f"error: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
                        else:
                            gbps = row["bytes"] / (t["median_ms"] * 1e-3) / 1e9
                            row.update(status="ok", **t, GBps=gbps, frac_of_copy=gbps / copy["copy_GBps"])
                    rows.append(row)
                    print_row(row)
                del x, x_adv, grad
    return copy, rows


def main(argv: list[str] | None = None) -> list:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", help=f"comma-separated element counts (GPU default {GPU_SIZES}, "
                                    f"CPU/smoke default {SMOKE_SIZES})")
    p.add_argument("--dtypes", default="fp32,bf16", help="of fp32, bf16, fp16")
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--smoke", action="store_true", help="small sizes (the default on the CPU)")
    p.add_argument("--rep-ms", type=float, default=None, help="time budget per measurement")
    p.add_argument("--threads", type=int, default=1, help="CPU runs: intra-op threads (default 1)")
    p.add_argument("--out-dir", action="append", default=[], help="also append the results file here")
    p.add_argument("--no-write", action="store_true", help="print only; write no results file")
    args = p.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    setup_cpu_threads(device, args.threads)
    smoke = args.smoke or device.type != "cuda"
    sizes = [parse_size(s) for s in parse_list(args.sizes or (SMOKE_SIZES if smoke else GPU_SIZES))]
    dtypes, ops, providers = parse_list(args.dtypes), parse_list(args.ops), parse_list(args.providers)
    for name, chosen, allowed in (("dtype", dtypes, DTYPES), ("op", ops, OPS), ("provider", providers, PROVIDERS)):
        bad = [c for c in chosen if c not in allowed]
        if bad:
            p.error(f"unknown {name} {bad}; choose from {list(allowed)}")
    rep_ms = args.rep_ms or (100.0 if device.type == "cuda" else 300.0)
    copy_bytes = 2**30 if device.type == "cuda" and not smoke else 64 * 2**20
    info = device_info(device)
    print(f"{info['device']}  torch {info['torch']}  triton {info['triton']}  commit {info['git_commit'][:12]}")
    copy, rows = run(sizes, dtypes, ops, providers, device, rep_ms, copy_bytes)
    info.update(copy)
    config = {"sizes": sizes, "dtypes": dtypes, "ops": ops, "providers": providers, "smoke": smoke,
              "eps": EPS, "step": STEP, "rep_ms": rep_ms, "shape": "(size // 3072, 3, 32, 32)"}
    if not args.no_write:
        for path in write_results("pgd_step", info, config, rows, args.out_dir):
            print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
