"""Benchmark of Generalist's average-mix(-redistribute) update.

Two parts:
1. Flat fp32 buffers of 1M..256M elements. Providers: torch (the eager reference), compile
   (torch.compile of the reference), triton and cuda (generalist_average_ with that policy). GB/s counts
   32 bytes per element (read theta_R, theta_N, S_R, S_N, G; write S_R, S_N, G), 40 with redistribution,
   with the fraction of the copy bandwidth measured in the same run.
2. ResNet-18 for CIFAR (11.2M parameters, 122 state_dict entries), five networks. Besides the fused
   providers on FlatArena buffers, two per-tensor compositions of torch._foreach_* ops, and the
   reference-style update: per state_dict key, with a state_dict rebuilt for every key as in the authors'
   code (spec/generalist.md; here G's, once per key, so about 120 builds per step). Speed-ups are
   ratios of wall time per step (back-to-back calls, host overhead included), since the per-key and
   foreach updates are bound by Python and launches, not by memory.
Targets (GPU): fused >= 85% of copy bandwidth from 16M elements; on ResNet-18 >= 20x faster than the
per-key update and >= 2x faster than the best foreach composition.

    python -m generalist_trainer.bench.bench_averaging              # GPU: 1M..256M plus ResNet-18
    python -m generalist_trainer.bench.bench_averaging --smoke      # CPU smoke run
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from ..kernels import FlatArena, KernelUnavailableError, generalist_average_
from ..kernels.generalist_average import generalist_average_reference
from .common import (
    bench,
    copy_bandwidth,
    device_info,
    parse_list,
    parse_size,
    print_row,
    setup_cpu_threads,
    wall_time,
    write_results,
)

FUSED = ("torch", "compile", "triton", "cuda")
PER_TENSOR = ("foreach_lerp", "foreach_muladd", "state_dict_per_key")
GPU_SIZES = "1M,4M,16M,64M,256M"
SMOKE_SIZES = "1M,4M"
DECAY, BETA = 0.999, 0.6


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """ResNet-18 for 32x32 inputs (3x3 stem, no max-pool): 11,173,962 parameters. Only its tensors matter
    here; the trainer has its own model zoo."""
    layers, cin = [], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [_Block(cin, cout, stride), _Block(cout, cout, 1)]
        cin = cout
    return nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), *layers,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))


@torch.no_grad()
def state_dict_per_key_update(nets: list[nn.Module], decay: float, beta: float) -> None:
    """The reference style: one state_dict entry at a time, G's state_dict rebuilt for every key. Integer
    entries (BatchNorm's counter) are mixed too and truncated by copy_, as such code does."""
    theta_r, theta_n, s_r, s_n, g = nets
    sd_tr, sd_tn, sd_sr, sd_sn = (n.state_dict() for n in (theta_r, theta_n, s_r, s_n))
    for key in sd_sr:
        g_key = g.state_dict()[key]
        sr, sn = sd_sr[key], sd_sn[key]
        sr.copy_(decay * sr + (1 - decay) * sd_tr[key])
        sn.copy_(decay * sn + (1 - decay) * sd_tn[key])
        g_key.copy_(decay * g_key + (1 - decay) * (beta * sr + (1 - beta) * sn))


@torch.no_grad()
def foreach_lerp_update(lists: list[list[torch.Tensor]], decay: float, beta: float) -> None:
    """Per-tensor lerps: S <- lerp(S, theta, 1-d); mix = lerp(S_N, S_R, beta); G <- lerp(G, mix, 1-d)."""
    theta_r, theta_n, s_r, s_n, g = lists
    torch._foreach_lerp_(s_r, theta_r, 1 - decay)
    torch._foreach_lerp_(s_n, theta_n, 1 - decay)
    mix = torch._foreach_lerp(s_n, s_r, beta)
    torch._foreach_lerp_(g, mix, 1 - decay)


@torch.no_grad()
def foreach_muladd_update(lists: list[list[torch.Tensor]], decay: float, beta: float) -> None:
    """Per-tensor composition with mul/add, the formula as written."""
    theta_r, theta_n, s_r, s_n, g = lists
    torch._foreach_mul_(s_r, decay)
    torch._foreach_add_(s_r, theta_r, alpha=1 - decay)
    torch._foreach_mul_(s_n, decay)
    torch._foreach_add_(s_n, theta_n, alpha=1 - decay)
    mix = torch._foreach_mul(s_r, beta)
    torch._foreach_add_(mix, s_n, alpha=1 - beta)
    torch._foreach_mul_(g, decay)
    torch._foreach_add_(g, mix, alpha=1 - decay)


def fused_call(provider: str, flats: list[torch.Tensor], redistribute: bool):
    """A zero-argument callable for a fused provider on five flat buffers, or a string saying why not."""
    device = flats[0].device
    if provider == "torch":
        return lambda: generalist_average_reference(*flats, DECAY, BETA, redistribute)
    if provider == "compile":
        torch._dynamo.reset()
        compiled = torch.compile(generalist_average_reference, dynamic=False)
        return lambda: compiled(*flats, DECAY, BETA, redistribute)
    if provider == "triton" and device.type != "cuda":
        return "skipped: Triton runs on the CPU only through its interpreter, whose timings mean nothing"
    try:
        generalist_average_(*(torch.zeros(4, device=device) for _ in range(5)), decay=DECAY, beta=BETA,
                            policy=provider)
    except KernelUnavailableError as exc:
        return f"skipped: {exc}"
    return lambda: generalist_average_(*flats, decay=DECAY, beta=BETA, redistribute=redistribute, policy=provider)


def _measure(row: dict, call, device: torch.device, rep_ms: float, copy_gbps: float) -> dict:
    if isinstance(call, str):
        row["status"] = call
        return row
    try:
        t = bench(call, device, rep_ms=rep_ms)
        wall = wall_time(call, device, reps=max(3, min(50, int(rep_ms / max(t["median_ms"], 1e-3)))))
    except Exception as exc:  # a provider failing must not lose the other rows
        row["status"] = f"error: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
        return row
    gbps = row["bytes"] / (t["median_ms"] * 1e-3) / 1e9
    row.update(status="ok", **t, wall_ms=wall, GBps=gbps, frac_of_copy=gbps / copy_gbps)
    return row


def run_flat(sizes: list[int], providers: list[str], device: torch.device, rep_ms: float, copy_gbps: float,
             redistribute_modes: list[bool]) -> list[dict]:
    rows = []
    for size in sizes:
        gen = torch.Generator(device=device).manual_seed(size)
        flats = [torch.randn(size, device=device, generator=gen) for _ in range(5)]
        for redistribute in redistribute_modes:
            for provider in providers:
                row = {"op": "average_redist" if redistribute else "average", "case": "flat", "provider": provider,
                       "dtype": "fp32", "numel": size, "bytes": (40 if redistribute else 32) * size}
                rows.append(_measure(row, fused_call(provider, flats, redistribute), device, rep_ms, copy_gbps))
                print_row(row)
        del flats
    return rows


def run_resnet18(providers: list[str], device: torch.device, rep_ms: float, copy_gbps: float) -> tuple[list, dict]:
    torch.manual_seed(0)
    origin = resnet18_cifar().to(device)
    nets = [origin] + [resnet18_cifar().to(device) for _ in range(4)]
    for n in nets[1:]:
        n.load_state_dict(origin.state_dict())
    n_params = sum(p.numel() for p in origin.parameters())
    keys = len(origin.state_dict())
    # per-tensor providers work on separate, ordinary networks; fused ones on arenas of their own copies
    plain = [resnet18_cifar().to(device) for _ in range(5)]
    for n in plain:
        n.load_state_dict(origin.state_dict())
    lists = [[t for t in list(n.parameters()) + list(n.buffers()) if t.is_floating_point()] for n in plain]
    arenas = [FlatArena(n) for n in nets]
    flats = [a.flat for a in arenas]
    rows = []
    for provider in providers:
        row = {"op": "average", "case": "resnet18", "provider": provider, "dtype": "fp32", "numel": arenas[0].numel,
               "params": n_params, "state_dict_keys": keys, "bytes": 32 * arenas[0].numel}
        if provider == "state_dict_per_key":
            call = lambda: state_dict_per_key_update(plain, DECAY, BETA)  # noqa: E731
        elif provider == "foreach_lerp":
            call = lambda: foreach_lerp_update(lists, DECAY, BETA)  # noqa: E731
        elif provider == "foreach_muladd":
            call = lambda: foreach_muladd_update(lists, DECAY, BETA)  # noqa: E731
        else:
            call = fused_call(provider, flats, False)
        rows.append(_measure(row, call, device, rep_ms, copy_gbps))
        print_row(row)
    ok = {r["provider"]: r["wall_ms"] for r in rows if r.get("status") == "ok"}
    fused = {p: t for p, t in ok.items() if p in FUSED}
    summary = {"params": n_params, "state_dict_keys": keys, "wall_ms": ok}
    if fused:
        best = min(fused, key=fused.get)
        summary["best_fused"] = best
        if "state_dict_per_key" in ok:
            summary["speedup_vs_state_dict_per_key"] = ok["state_dict_per_key"] / fused[best]
        foreach = [ok[p] for p in ("foreach_lerp", "foreach_muladd") if p in ok]
        if foreach:
            summary["speedup_vs_best_foreach"] = min(foreach) / fused[best]
    return rows, summary


def main(argv: list[str] | None = None) -> list:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", help=f"flat sizes (GPU default {GPU_SIZES}, CPU/smoke default {SMOKE_SIZES}); "
                                    "'none' to skip the flat part")
    p.add_argument("--providers", default=",".join(FUSED + PER_TENSOR))
    p.add_argument("--no-resnet18", action="store_true", help="skip the ResNet-18 part")
    p.add_argument("--no-redistribute", action="store_true", help="flat part: skip the redistribution rows")
    p.add_argument("--smoke", action="store_true", help="small sizes (the default on the CPU)")
    p.add_argument("--rep-ms", type=float, default=None, help="time budget per measurement")
    p.add_argument("--threads", type=int, default=1, help="CPU runs: intra-op threads (default 1)")
    p.add_argument("--out-dir", action="append", default=[], help="also append the results file here")
    p.add_argument("--no-write", action="store_true", help="print only; write no results file")
    args = p.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    setup_cpu_threads(device, args.threads)
    smoke = args.smoke or device.type != "cuda"
    size_text = args.sizes or (SMOKE_SIZES if smoke else GPU_SIZES)
    sizes = [] if size_text == "none" else [parse_size(s) for s in parse_list(size_text)]
    providers = parse_list(args.providers)
    bad = [x for x in providers if x not in FUSED + PER_TENSOR]
    if bad:
        p.error(f"unknown providers {bad}; choose from {list(FUSED + PER_TENSOR)}")
    rep_ms = args.rep_ms or (100.0 if device.type == "cuda" else 300.0)
    copy_bytes = 2**30 if device.type == "cuda" and not smoke else 64 * 2**20
    info = device_info(device)
    print(f"{info['device']}  torch {info['torch']}  triton {info['triton']}  commit {info['git_commit'][:12]}")
    copy = copy_bandwidth(device, copy_bytes)
    info.update(copy)
    print(f"copy bandwidth: {copy['copy_GBps']:.1f} GB/s over {copy_bytes / 2**20:.0f} MiB", flush=True)
    print_row(None)
    modes = [False] if args.no_redistribute else [False, True]
    rows = run_flat(sizes, [x for x in providers if x in FUSED], device, rep_ms, copy["copy_GBps"], modes)
    summary = None
    if not args.no_resnet18:
        r18, summary = run_resnet18(providers, device, rep_ms, copy["copy_GBps"])
        rows += r18
        print("ResNet-18 summary:", {k: (round(v, 2) if isinstance(v, float) else v) for k, v in summary.items()
                                     if k != "wall_ms"})
    config = {"sizes": sizes, "providers": providers, "smoke": smoke, "decay": DECAY, "beta": BETA,
              "rep_ms": rep_ms, "resnet18": not args.no_resnet18, "redistribute_modes": modes}
    if not args.no_write:
        for path in write_results("averaging", info, config, rows, args.out_dir, summary=summary):
            print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
