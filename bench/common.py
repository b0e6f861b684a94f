"""Timing, copy bandwidth and results files shared by the kernel benchmarks (spec/performance.md).

- `bench(fn, device)`: median time of `fn` like triton.testing.do_bench: warm-up, then per-call CUDA
  events with L2 flushed before each call on a GPU, perf_counter on the CPU.
- `wall_time(fn, device)`: back-to-back calls with one synchronize at the end, so host-side launch
  overhead counts; what a training loop pays when the device is waiting on Python.
- `copy_bandwidth(device)`: measured device-to-device copy, counting bytes read plus written; every
  GB/s figure is reported beside its fraction of this, measured in the same run.
- `write_results(...)`: appends one run (device, versions, git commit, timestamp, rows) to
  bench/results/<date>-<device>.json and to --out-dir when given.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
_L2_FLUSH_BYTES = 256 * 2**20  # larger than any current GPU's L2 (H100 50 MB, H200 60 MB)


def parse_size(text: str) -> int:
    """'1M' -> 2**20, '64K' -> 2**16, '1000' -> 1000."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)\s*", text)
    if not m:
        raise ValueError(f"cannot read size {text!r}; use e.g. 1M, 64K or 1000")
    return int(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2).lower()]


def parse_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(fn: Callable[[], object], device: torch.device, *, warmup_ms: float = 25.0, rep_ms: float = 100.0,
          min_reps: int = 5, max_reps: int = 1000) -> dict:
    """Median, min and max milliseconds of fn() over repeated calls, after warm-up."""
    fn()  # first call: compilation, autotuning, allocator growth
    synchronize(device)
    if device.type == "cuda":
        flush = torch.empty(_L2_FLUSH_BYTES, dtype=torch.int8, device=device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(3):
            flush.zero_()
            fn()
        end.record()
        torch.cuda.synchronize(device)
        estimate = max(start.elapsed_time(end) / 3, 1e-3)
        for _ in range(max(1, int(warmup_ms / estimate))):
            fn()
        reps = min(max(min_reps, int(rep_ms / estimate)), max_reps)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for s, e in zip(starts, ends):
            flush.zero_()  # each call starts from cold L2, as in triton.testing.do_bench
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        t0 = time.perf_counter()
        fn()
        estimate = max((time.perf_counter() - t0) * 1e3, 1e-3)
        for _ in range(max(1, int(warmup_ms / estimate))):
            fn()
        reps = min(max(min_reps, int(rep_ms / estimate)), max_reps)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "reps": len(times)}


def wall_time(fn: Callable[[], object], device: torch.device, *, reps: int = 20) -> float:
    """Milliseconds per call of `reps` back-to-back calls (warm), synchronised once at the end."""
    fn()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3 / reps


def copy_bandwidth(device: torch.device, nbytes: int) -> dict:
    """GB/s of dst.copy_(src) over `nbytes`, counting the bytes read and written (2 * nbytes)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src), device)
    return {"copy_GBps": 2 * src.numel() * 4 / (t["median_ms"] * 1e-3) / 1e9, "copy_bytes": nbytes, **t}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def device_info(device: torch.device) -> dict:
    """What every results file records beside its numbers."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = {
        "device_kind": device.type,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "host_cpu": _cpu_model(),
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    commit = os.environ.get("BENCH_GIT_COMMIT") or _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain")  # untracked files count: new code is often not committed yet
    info["git_commit"] = commit or "unknown"
    if os.environ.get("BENCH_KERNEL_TESTS"):  # set by bench/run_gpu_kernels.sh
        info["kernel_tests"] = os.environ["BENCH_KERNEL_TESTS"]
    info["git_dirty"] = None if status is None else bool(status)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device=props.name, cuda=torch.version.cuda, sm_count=props.multi_processor_count,
                    memory_GiB=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}")
    else:
        info.update(device=f"CPU: {_cpu_model()}", cpu_threads=torch.get_num_threads(),
                    note="CPU smoke run: CPU timings, for ratios within this run only; not GPU figures")
    return info


def device_slug(info: dict) -> str:
    name = info["device"] if info["device_kind"] == "cuda" else "cpu-" + info["host_cpu"]
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:48].rstrip("-")


def write_results(benchmark: str, info: dict, config: dict, rows: list[dict],
                  out_dirs: list[Path | str] = (), summary: dict | None = None) -> list[Path]:
    """Append one run to <dir>/<date>-<device>.json (a JSON list of runs) in bench/results and out_dirs."""
    run = {"benchmark": benchmark, "meta": info, "config": config, "rows": rows}
    if summary is not None:
        run["summary"] = summary
    name = f"{info['timestamp_utc'][:10]}-{device_slug(info)}.json"
    written = []
    for d in [RESULTS_DIR, *out_dirs]:
        path = Path(d) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        runs = json.loads(path.read_text()) if path.is_file() else []
        runs.append(run)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(runs, indent=1) + "\n")
        tmp.replace(path)
        written.append(path)
    return written


def setup_cpu_threads(device: torch.device, threads: int) -> None:
    """On the CPU, pin intra-op threads: the project's CPU machines are two shared cores, where OpenMP
    barriers between busy cores turn a 50-microsecond op into milliseconds and make timings noise."""
    if device.type == "cpu" and threads > 0:
        torch.set_num_threads(threads)


_COLUMNS = (("op", 14), ("provider", 18), ("dtype", 6), ("numel", 11), ("median_ms", 10), ("wall_ms", 10),
            ("GBps", 8), ("frac_of_copy", 12), ("status", 0))


def print_row(row: dict | None) -> None:
    """One fixed-width console line per result row; None prints the header."""
    cells = []
    for name, width in _COLUMNS:
        v = name if row is None else row.get(name)
        if isinstance(v, float):
            v = f"{v:.4g}"
        cells.append(("" if v is None else str(v)).ljust(width))
    print(" ".join(cells).rstrip(), flush=True)


def markdown_tables(path: Path | str) -> str:
    """Markdown tables of the latest run of each benchmark in a results file (for bench/README.md)."""
    runs = json.loads(Path(path).read_text())
    latest = {}
    for run in runs:
        latest[run["benchmark"]] = run
    out = []
    for name, run in latest.items():
        m = run["meta"]
        out.append(f"**{name}** on {m['device']}, torch {m['torch']}, triton {m['triton']}, commit "
                   f"{m['git_commit'][:12]}{' (dirty)' if m.get('git_dirty') else ''}, {m['timestamp_utc']}; "
                   f"copy bandwidth {m['copy_GBps']:.1f} GB/s"
                   + (f"; kernel tests {m['kernel_tests']}" if m.get("kernel_tests") else "") + ".\n")
        out.append("| op | case | provider | dtype | elements | median ms | wall ms | GB/s | of copy |")
        out.append("|---|---|---|---|---:|---:|---:|---:|---:|")
        for r in run["rows"]:
            if r.get("status") != "ok":
                continue
            wall = f"{r['wall_ms']:.3g}" if "wall_ms" in r else ""
            out.append(f"| {r['op']} | {r.get('case', '')} | {r['provider']} | {r['dtype']} | {r['numel']:,} | "
                       f"{r['median_ms']:.3g} | {wall} | {r['GBps']:.3g} | {r['frac_of_copy']:.0%} |")
        skipped = sorted({f"{r['provider']}: {r['status']}" for r in run["rows"] if r.get("status") != "ok"})
        if skipped:
            out.append("\nNot measured: " + "; ".join(skipped))
        if run.get("summary"):
            s = run["summary"]
            parts = [f"{k} = {v:.2f}" for k, v in s.items() if k.startswith("speedup")]
            if parts:
                out.append(f"\nResNet-18 ({s['params']:,} parameters, {s['state_dict_keys']} state_dict keys), "
                           f"best fused provider {s.get('best_fused')}: " + ", ".join(parts) + " (wall time per step).")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:] or sorted(str(p) for p in RESULTS_DIR.glob("*.json"))[-1:]:
        print(markdown_tables(arg))
