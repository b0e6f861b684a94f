"""End-to-end Generalist benchmark: the trainer against the reference-style loop, same model, batch, data,
attack and device, in one run (spec/performance.md "How to measure" and "The reference-style loop").

    python -m generalist_trainer.bench.bench_end_to_end                      # GPU: ResNet-18, CIFAR-shaped data, PGD-10
    python -m generalist_trainer.bench.bench_end_to_end --smoke --device cpu  # CPU smoke: small CNN, tiny batches
    python -m generalist_trainer.bench.bench_end_to_end --table FILE         # markdown table of a results file

What runs (each on fresh networks from one seed, on the same synthetic CIFAR-shaped training set):
- `reference` (bench/reference_loop.py) at --ratio-batch: fp32 eager, DataLoader with CPU crop/flip,
  experts one after the other, PGD with loss.backward(), per-key state_dict averaging; torch's default
  cuDNN/TF32 switches (the trainer's cuDNN/TF32 policy is not applied to it);
- `ours`: the trainer's Generalist (trainer/methods/generalist.py) with the default engine (on CUDA: bf16
  autocast, channels_last, cuDNN benchmark, TF32, two streams; fused SGD; the gpu-resident loader), at
  --ratio-batch and --mfu-batch;
- `ours_one_stream`: the same with engine.two_streams=false, at --ratio-batch (CUDA only);
- --extra variants at --ratio-batch: `graphs` (engine.cuda_graphs), `compile` (engine.compile), and
  `channels_last` / `nchw` (engine.channels_last forced on / off).
Timing: --warmup iterations (compile, autotuning, graph capture), then --repeats windows of --iters
iterations, each window synchronised at both ends; images/s is batch * iters / the median window. Data
loading is inside the window (end to end). The per-phase breakdown (data, attack, robust_update,
natural_update, averaging, and "other") comes from a separate instrumented pass of the same loop with the
device synchronised at every phase boundary (so no overlap: it explains the time, it is not the time).

MFU: model FLOPs (2 x MACs; the forward measured with torch.utils.flop_counter on this model) per image of
a Generalist PGD-k iteration, (2k + 6) x forward (k attack steps of forward + input-backward, two training
steps of 3 x forward; spec/generalist.md "Cost per image"), times images/s, over the peak: a dense matmul
measured in this run (bf16 on CUDA, fp32 on the CPU), or --peak-tflops.

Summary figures and their GPU targets (recorded with the verdict; never asserted): speedup of `ours` over
`reference` at batch 128 (>= 8), MFU of `ours` at batch 512 (>= 0.30), `ours` over `ours_one_stream` at
batch 128 (>= 1.15). Results: bench/results/<date>-<device>-end-to-end.json (a JSON list of runs; its own
file because bench/common.py's markdown tables read kernel rows only; `...-end-to-end-smoke.json` for
--smoke runs) and --out-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from ..trainer.config import RunConfig, load_config, to_dict
from ..trainer.engine import (
    PHASES,
    PhaseTimer,
    apply_cudnn_tf32_policy,
    cudnn_tf32_state,
    phase,
    restore_cudnn_tf32_state,
    timing_phases,
)
from ..trainer.engine.profiling import endless_batches
from ..trainer.methods.generalist_schedule import mix_beta
from ..trainer.models import build_model
from ..trainer.session import Session, open_session
from .common import RESULTS_DIR, device_info, device_slug, setup_cpu_threads, synchronize
from .reference_loop import ReferenceGeneralist, endless, reference_loader

BENCHMARK = "end_to_end"
TARGETS = {"speedup_vs_reference": 8.0, "mfu": 0.30, "two_stream_speedup": 1.15}
EXTRA_VARIANTS = {"graphs": ["engine.cuda_graphs=true"], "compile": ["engine.compile=true"],
                  # Memory order forced either way, whatever the device's default (the CPU default was NCHW).
                  "channels_last": ["engine.channels_last=true"], "nchw": ["engine.channels_last=false"]}
ROW_FIELDS = ("variant", "batch_size", "status", "images_per_s", "ms_per_iter", "mfu", "window_seconds", "iters",
              "repeats", "warmup", "engine", "phases")


# ---------------------------------------------------------------------------------------------------
# FLOPs and peak


def forward_flops_per_image(model: torch.nn.Module, image_shape: tuple[int, int, int], device: torch.device) -> float:
    """Model FLOPs (2 x MACs) of one forward of one image, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    x = torch.rand(2, *image_shape, device=device)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for m, training in flags:
            m.training = training
    return counter.get_total_flops() / 2


def iteration_flops_per_image(forward: float, attack_steps: int) -> dict[str, float]:
    """Per phase: attack k x (forward + input-backward ~ 2 forwards), each training step 3 forwards."""
    return {"attack": 2 * attack_steps * forward, "robust_update": 3 * forward, "natural_update": 3 * forward,
            "averaging": 0.0, "data": 0.0}


def measure_peak_tflops(device: torch.device, n: int) -> dict:
    """Dense matmul throughput: bf16 on CUDA (tensor cores), fp32 on the CPU; the median of timed calls."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    times = []
    for _ in range(10 if device.type == "cuda" else 3):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        synchronize(device)
        times.append((time.perf_counter() - t0) / 5)
    return {"peak_tflops_measured": 2 * n**3 / statistics.median(times) / 1e12, "peak_matmul_n": n,
            "peak_dtype": str(dtype).replace("torch.", "")}


# ---------------------------------------------------------------------------------------------------
# Runs


def run_config(args: argparse.Namespace, device: torch.device, batch_size: int, extra: list[str]) -> RunConfig:
    """The trainer's config for one variant: Generalist, PGD-k Linf, one seed, synthetic CIFAR-shaped data."""
    c, h, w = args.image_shape
    return load_config(None, [
        "data.dataset=synthetic", f"data.synthetic_shape=[{c}, {h}, {w}]",
        f"data.synthetic_train_size={args.train_size}", "data.synthetic_test_size=16", "data.val_size=0",
        f"data.batch_size={batch_size}", f"model.arch={args.arch}", "method.name=generalist",
        f"attack.steps={args.attack_steps}", f"train.device={device}", "train.seed=0", "train.epochs=120",
        *extra,
    ])


def timed(iteration: Callable[[], object], device: torch.device, *, warmup: int, iters: int, repeats: int) -> dict:
    for _ in range(warmup):
        iteration()
    synchronize(device)
    windows = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            iteration()
        synchronize(device)
        windows.append(time.perf_counter() - t0)
    return {"window_seconds": windows, "seconds_per_iter": statistics.median(windows) / iters}


def phase_breakdown(iteration: Callable[[], object], device: torch.device, iters: int, batch_size: int,
                    flops: dict[str, float], peak_flops: float) -> dict:
    """ms per iteration of each phase (exclusive), "other" for the rest, from a synchronised pass."""
    timer = PhaseTimer(device)
    with timing_phases(timer):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            iteration()
        synchronize(device)
        total = (time.perf_counter() - t0) / iters
    out = {}
    for name in PHASES:
        seconds = timer.seconds.get(name, 0.0) / iters
        out[name] = {"ms": seconds * 1e3, "share": seconds / total,
                     "images_per_s": batch_size / seconds if seconds > 0 else None,
                     "mfu": (flops[name] * batch_size / seconds / peak_flops) if seconds > 0 and flops[name] else None}
    other = total - sum(timer.seconds.get(name, 0.0) for name in PHASES) / iters
    out["other"] = {"ms": other * 1e3, "share": other / total, "images_per_s": None, "mfu": None}
    out["total_ms"] = total * 1e3
    return out


def ours_iteration(session: Session) -> Callable[[], None]:
    method = session.method
    method.start_epoch(1)
    batches = endless_batches(session.train_loader(), session.device)

    def iteration() -> None:
        with phase("data"):
            x, y = next(batches)
        method.device_step(x, y)  # as the training loop runs it: metrics stay on the device, no host read

    return iteration


def reference_iteration(session: Session, args: argparse.Namespace) -> Callable[[], None]:
    cfg, train = session.cfg, session.splits.train

    def factory() -> torch.nn.Module:
        return build_model(cfg.model, num_classes=train.num_classes, in_channels=train.channels,
                           image_size=train.image_size, mean=train.mean, std=train.std)

    g = cfg.method.generalist
    torch.manual_seed(cfg.train.seed)
    # The trainer's epoch-1 hyper-parameters (what `ours` runs in the timed windows), so both do the same work.
    epochs = cfg.train.epochs
    ref = ReferenceGeneralist(factory, session.device, eps=cfg.attack.eps, step=cfg.attack.step,
                              steps=cfg.attack.steps, lr=g.robust_optim.lr.at(1, epochs),
                              momentum=g.robust_optim.momentum, robust_weight_decay=g.robust_optim.weight_decay,
                              natural_lr=g.natural_optim.lr.at(1, epochs), natural_momentum=g.natural_optim.momentum,
                              natural_weight_decay=g.natural_optim.weight_decay, beta=mix_beta(1, epochs, g),
                              decay_max=g.decay_max, decay_warmup=g.decay_warmup)
    padding, flip = session.augmentation()
    loader = reference_loader(train, cfg.data.batch_size, padding=padding, flip=flip,
                              num_workers=args.reference_workers, seed=cfg.train.seed)
    batches = endless(loader, session.device)

    def iteration() -> None:
        with phase("data"):
            x, y = next(batches)
        ref.step(x, y)

    return iteration


def run_variant(variant: str, batch_size: int, args: argparse.Namespace, device: torch.device, flops: dict,
                peak_flops: float, default_switches: dict, breakdown: bool) -> dict:
    row: dict = {"variant": variant, "batch_size": batch_size, "iters": args.iters, "repeats": args.repeats,
                 "warmup": args.warmup, "images_per_s": None, "ms_per_iter": None, "mfu": None,
                 "window_seconds": None, "engine": None, "phases": None}
    extra = {"ours": [], "ours_one_stream": ["engine.two_streams=false"], "reference": []}.get(variant)
    if extra is None:
        extra = EXTRA_VARIANTS[variant.removeprefix("ours_")]
    try:
        torch.manual_seed(0)
        session = open_session(run_config(args, device, batch_size, extra))
        if variant == "reference":
            restore_cudnn_tf32_state(default_switches)  # torch's defaults, as the authors' code runs
            row["engine"] = {"precision": "fp32", "cudnn_tf32": cudnn_tf32_state(), "style": "reference"}
            iteration = reference_iteration(session, args)
        else:
            settings = session.method.engine.settings
            row["engine"] = {k: v for k, v in vars(settings).items() if k != "device"}
            row["engine"]["notes"] = list(settings.notes)
            row["engine"]["cudnn_tf32"] = apply_cudnn_tf32_policy(settings)
            iteration = ours_iteration(session)
        t = timed(iteration, device, warmup=args.warmup, iters=args.iters, repeats=args.repeats)
        per_image = sum(flops.values())
        images_per_s = batch_size / t["seconds_per_iter"]
        row.update(status="ok", images_per_s=images_per_s, ms_per_iter=t["seconds_per_iter"] * 1e3,
                   mfu=per_image * images_per_s / peak_flops, window_seconds=t["window_seconds"])
        if breakdown:
            row["phases"] = phase_breakdown(iteration, device, args.iters, batch_size, flops, peak_flops)
    except Exception as exc:  # one variant failing (say compile on this torch) must not lose the others
        row["status"] = f"error: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc) else ''}"
        row["traceback"] = traceback.format_exc()[-2000:]
    finally:
        restore_cudnn_tf32_state(default_switches)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def _find(rows: list[dict], variant: str, batch_size: int) -> dict | None:
    for r in rows:
        if r["variant"] == variant and r["batch_size"] == batch_size and r["status"] == "ok":
            return r
    return None


def summarise(rows: list[dict], args: argparse.Namespace, device: torch.device, flops: dict, peak: dict) -> dict:
    """The three target figures, each with its batch size, value, GPU target and verdict (None on the CPU)."""
    def figure(value: float | None, batch: int, target: float, why_missing: str) -> dict:
        met = None if value is None or device.type != "cuda" else bool(value >= target)
        return {"batch_size": batch, "value": value, "target": target, "met": met,
                **({"missing": why_missing} if value is None else {})}

    ours_r, ref = _find(rows, "ours", args.ratio_batch), _find(rows, "reference", args.ratio_batch)
    ours_m = _find(rows, "ours", args.mfu_batch)
    one = _find(rows, "ours_one_stream", args.ratio_batch)
    speedup = ours_r["images_per_s"] / ref["images_per_s"] if ours_r and ref else None
    two_stream = ours_r["images_per_s"] / one["images_per_s"] if ours_r and one else None
    return {
        "speedup_vs_reference": figure(speedup, args.ratio_batch, TARGETS["speedup_vs_reference"],
                                       "ours or reference did not run at this batch"),
        "mfu": figure(ours_m["mfu"] if ours_m else None, args.mfu_batch, TARGETS["mfu"],
                      "ours did not run at this batch"),
        "two_stream_speedup": figure(two_stream, args.ratio_batch, TARGETS["two_stream_speedup"],
                                     "two streams need CUDA" if device.type != "cuda" else "a variant failed"),
        "flops_per_image": sum(flops.values()), "flops_per_image_by_phase": flops, **peak,
    }


# ---------------------------------------------------------------------------------------------------
# Results file and table


def results_path(info: dict, directory: Path | str, *, smoke: bool = False) -> Path:
    """<dir>/<date>-<device>-end-to-end.json; smoke-sized runs end in -end-to-end-smoke.json, so that they
    are never mistaken for (or appended to) the full-size figures."""
    suffix = "-end-to-end-smoke" if smoke else "-end-to-end"
    return Path(directory) / f"{info['timestamp_utc'][:10]}-{device_slug(info)}{suffix}.json"


def write_results(run: dict, out_dirs: list[str]) -> list[Path]:
    """Write `run` into <dir>/<date>-<device>-end-to-end[-smoke].json (a JSON list of runs) in bench/results and
    every --out-dir: appended the first time, replaced in place by later writes of the same run (meta.run_id).
    main() writes after every variant, so a run cut short (a time limit on a lent GPU) keeps the rows it
    finished, with "complete": false."""
    written = []
    for directory in [RESULTS_DIR, *out_dirs]:
        path = results_path(run["meta"], directory, smoke=bool(run["config"].get("smoke")))
        path.parent.mkdir(parents=True, exist_ok=True)
        runs = json.loads(path.read_text()) if path.is_file() else []
        if runs and runs[-1].get("meta", {}).get("run_id") == run["meta"]["run_id"]:
            runs[-1] = run
        else:
            runs.append(run)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(runs, indent=1) + "\n")
        tmp.replace(path)
        written.append(path)
    return written


def _fmt(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def markdown_table(path: Path | str) -> str:
    """The latest run of a results file as markdown: variants, then the phase breakdown, then the summary."""
    run = json.loads(Path(path).read_text())[-1]
    m, s = run["meta"], run["summary"]
    out = [f"**end_to_end** on {m['device']}, torch {m['torch']}, triton {m['triton']}, commit "
           f"{m['git_commit'][:12]}{' (dirty)' if m.get('git_dirty') else ''}, {m['timestamp_utc']}; "
           f"{run['config']['arch']}, PGD-{run['config']['attack_steps']}, peak "
           f"{s['peak_tflops']:.4g} TFLOP/s ({s['peak_source']}).\n",
           *([f"{m['note']}.\n"] if m.get("note") else []),
           "| variant | batch | images/s | ms/iter | MFU | status |", "|---|---:|---:|---:|---:|---|"]
    for r in run["rows"]:
        out.append(f"| {r['variant']} | {r['batch_size']} | {_fmt(r['images_per_s'], '.1f')} | "
                   f"{_fmt(r['ms_per_iter'], '.2f')} | {_fmt(r['mfu'], '.1%')} | {r['status'][:60]} |")
    for r in run["rows"]:
        if r.get("phases"):
            out.append(f"\nPhases of {r['variant']} at batch {r['batch_size']} (synchronised pass, "
                       f"{r['phases']['total_ms']:.2f} ms/iter):\n")
            out.append("| phase | ms/iter | share | MFU |")
            out.append("|---|---:|---:|---:|")
            for name in (*PHASES, "other"):
                p = r["phases"][name]
                out.append(f"| {name} | {p['ms']:.2f} | {p['share']:.0%} | {_fmt(p['mfu'], '.1%')} |")
    out.append("")
    for key, label in (("speedup_vs_reference", "ours / reference images/s"), ("mfu", "MFU of ours"),
                       ("two_stream_speedup", "two streams / one stream images/s")):
        f = s[key]
        verdict = {True: "met", False: "not met", None: "no verdict (not a GPU run or not measured)"}[f["met"]]
        out.append(f"- {label} at batch {f['batch_size']}: {_fmt(f['value'], '.3g') or 'n/a'} "
                   f"(GPU target >= {f['target']:g}; {verdict})")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU-sized run: small CNN, 1x12x12 images, tiny batches "
                   "(the default on the CPU)")
    p.add_argument("--arch", help="model.arch (GPU default resnet18, smoke small_cnn)")
    p.add_argument("--image-shape", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="synthetic image shape (GPU default 3 32 32, smoke 1 12 12)")
    p.add_argument("--train-size", type=int, help="synthetic training images (GPU default 50000, smoke 256)")
    p.add_argument("--attack-steps", type=int, help="PGD steps (GPU default 10, smoke 2)")
    p.add_argument("--ratio-batch", type=int, help="batch of the speed-up and two-stream figures (GPU default 128)")
    p.add_argument("--mfu-batch", type=int, help="batch of the MFU figure (GPU default 512)")
    p.add_argument("--warmup", type=int, help="untimed iterations per variant (GPU default 10, smoke 1)")
    p.add_argument("--iters", type=int, help="iterations per timed window (GPU default 20, smoke 2)")
    p.add_argument("--repeats", type=int, help="timed windows; the median counts (GPU default 5, smoke 2)")
    p.add_argument("--extra", default="", help="comma-separated extra variants of ours at --ratio-batch: "
                   f"{','.join(EXTRA_VARIANTS)}")
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-phase pass")
    p.add_argument("--reference-workers", type=int, help="DataLoader workers of the reference (GPU default 4, "
                   "smoke 0)")
    p.add_argument("--peak-tflops", type=float, help="peak for MFU instead of the matmul measured in this run")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--threads", type=int, default=0, help="CPU runs: intra-op threads (0: leave torch's)")
    p.add_argument("--out-dir", action="append", default=[], help="also append the results file here")
    p.add_argument("--no-write", action="store_true", help="print only; write no results file")
    p.add_argument("--table", metavar="FILE", help="print the markdown table of a results file and exit")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device is visible to torch")
    smoke = args.smoke or device.type != "cuda"
    defaults = dict(arch="small_cnn", image_shape=[1, 12, 12], train_size=256, attack_steps=2, ratio_batch=8,
                    mfu_batch=16, warmup=1, iters=2, repeats=2, reference_workers=0) if smoke else dict(
        arch="resnet18", image_shape=[3, 32, 32], train_size=50000, attack_steps=10, ratio_batch=128,
        mfu_batch=512, warmup=10, iters=20, repeats=5, reference_workers=4)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.smoke, args.device = smoke, device
    args.extra = [e for e in (t.strip() for t in args.extra.split(",")) if e]
    unknown = [e for e in args.extra if e not in EXTRA_VARIANTS]
    if unknown:
        p.error(f"unknown --extra {unknown}; choose from {list(EXTRA_VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.table:
        print(markdown_table(args.table))
        return {}
    device = args.device
    setup_cpu_threads(device, args.threads)
    default_switches = cudnn_tf32_state()  # torch's own switches, before any engine policy is applied
    info = device_info(device)
    if os.environ.get("BENCH_ENGINE_TESTS"):  # set by bench/run_gpu_end_to_end.sh
        info["engine_tests"] = os.environ["BENCH_ENGINE_TESTS"]
    print(f"{info['device']}  torch {info['torch']}  triton {info['triton']}  commit {info['git_commit'][:12]}")

    probe = open_session(run_config(args, device, args.ratio_batch, []))
    forward = forward_flops_per_image(probe.method.global_model, tuple(args.image_shape), device)
    del probe
    flops = iteration_flops_per_image(forward, args.attack_steps)
    peak = measure_peak_tflops(device, 8192 if device.type == "cuda" else 256)
    peak["peak_tflops"] = args.peak_tflops or peak["peak_tflops_measured"]
    peak["peak_source"] = "--peak-tflops" if args.peak_tflops else f"{peak['peak_dtype']} matmul measured in this run"
    peak["forward_flops_per_image"] = forward
    peak_flops = peak["peak_tflops"] * 1e12
    print(f"model {args.arch}: {forward / 1e9:.4g} GFLOP forward per image, {sum(flops.values()) / 1e9:.4g} GFLOP "
          f"per Generalist PGD-{args.attack_steps} iteration per image; peak {peak['peak_tflops']:.4g} TFLOP/s "
          f"({peak['peak_source']})")

    plan = [("reference", args.ratio_batch, True), ("ours", args.ratio_batch, True)]
    if args.mfu_batch != args.ratio_batch:
        plan.append(("ours", args.mfu_batch, False))
    if device.type == "cuda":
        plan.append(("ours_one_stream", args.ratio_batch, False))
    plan += [(f"ours_{name}", args.ratio_batch, False) for name in args.extra]  # last: the least proven paths
    config = {"arch": args.arch, "image_shape": args.image_shape, "train_size": args.train_size,
              "attack_steps": args.attack_steps, "ratio_batch": args.ratio_batch, "mfu_batch": args.mfu_batch,
              "warmup": args.warmup, "iters": args.iters, "repeats": args.repeats, "extra": args.extra,
              "reference_workers": args.reference_workers, "smoke": args.smoke, "data": "synthetic",
              "plan": [[variant, batch] for variant, batch, _ in plan],
              "trainer_config": to_dict(run_config(args, device, args.ratio_batch, []))}
    info["run_id"] = f"{info['timestamp_utc']}-{os.getpid()}"
    rows: list[dict] = []
    result = {"benchmark": BENCHMARK, "meta": info, "config": config, "rows": rows, "complete": False}
    written: list[Path] = []
    for variant, batch, breakdown in plan:
        row = run_variant(variant, batch, args, device, flops, peak_flops, default_switches,
                          breakdown and not args.no_breakdown)
        rows.append(row)
        shown = (f"{row['images_per_s']:.1f} images/s, {row['ms_per_iter']:.2f} ms/iter, MFU {row['mfu']:.2%}"
                 if row["status"] == "ok" else row["status"])
        print(f"{variant:>18} batch {batch:>4}: {shown}", flush=True)
        result["summary"] = summarise(rows, args, device, flops, peak)
        if not args.no_write:
            written = write_results(result, args.out_dir)
    result["complete"] = True
    if not args.no_write:
        written = write_results(result, args.out_dir)
    for key in ("speedup_vs_reference", "mfu", "two_stream_speedup"):
        f = result["summary"][key]
        print(f"{key} at batch {f['batch_size']}: {f['value'] if f['value'] is None else round(f['value'], 4)} "
              f"(GPU target >= {f['target']}; met: {f['met']})")
    for path in written:
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
