"""Bookkeeping for bench/gpu_all.sh: the stages summary JSON, the version probe, pytest outcome lines.

    python -m generalist_trainer.bench.gpu_stages init FILE --commit SHA --plan "name:limit:selected:cuda,..."
    python -m generalist_trainer.bench.gpu_stages versions FILE       # torch/triton/CUDA/device into FILE; 3: no CUDA
    python -m generalist_trainer.bench.gpu_stages record FILE NAME STATUS SECONDS [DETAIL]
    python -m generalist_trainer.bench.gpu_stages finish FILE
    python -m generalist_trainer.bench.gpu_stages table FILE           # the stages as a plain table
    python -m generalist_trainer.bench.gpu_stages pytest-outcome LOG  # "N passed, M skipped" of a pytest log; 1: none

FILE is rewritten atomically after every change, so what the device machine sends back at any moment is a
complete JSON document: the script, commit, versions, the stage plan with each stage's limit, and each
finished stage's status, seconds and detail. Only `versions` imports torch.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import sys
from pathlib import Path

_SUMMARY = re.compile(r"^=*\s*((?:\d+ (?:passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?)"
                      r"(?:, )?)+)(?: in [\d.]+s.*)?\s*=*$")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def parse_plan(text: str) -> list[dict]:
    """'setup:20:1:0,gpu_tests:100:1:1' -> [{name, limit_s, selected, needs_cuda}, ...]."""
    stages = []
    for item in filter(None, text.split(",")):
        name, limit, selected, cuda = item.split(":")
        stages.append({"name": name, "limit_s": int(limit), "selected": selected == "1", "needs_cuda": cuda == "1",
                       "status": "pending" if selected == "1" else "not selected"})
    return stages


def init(path: Path, commit: str, plan: str, dry_run: bool) -> dict:
    stages = parse_plan(plan)
    data = {
        "script": "bench/gpu_all.sh",
        "git_commit": commit,
        "started_utc": _now(),
        "finished_utc": None,
        "dry_run": dry_run,
        "host": platform.node(),
        "selected_budget_s": sum(s["limit_s"] for s in stages if s["selected"]),
        "versions": {},
        "stages": stages,
    }
    save(path, data)
    return data


def probe_versions() -> dict:
    info: dict = {"python": platform.python_version()}
    try:
        import torch
    except Exception as exc:  # the GPU image's python has torch; anything else is worth recording as is
        info["torch"] = f"not importable: {type(exc).__name__}: {exc}"
        info["cuda_available"] = False
        return info
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as exc:
        info["triton"] = f"not importable: {type(exc).__name__}: {exc}"
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                    memory_GiB=round(props.total_memory / 2**30, 1), device_count=torch.cuda.device_count())
        if torch.backends.cudnn.is_available():
            info["cudnn"] = torch.backends.cudnn.version()
    return info


def versions(path: Path) -> int:
    info = probe_versions()
    data = load(path)
    data.setdefault("versions", {}).update(info)
    save(path, data)
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    return 0 if info.get("cuda_available") else 3


def record(path: Path, name: str, status: str, seconds: float, detail: str) -> None:
    data = load(path)
    for stage in data.setdefault("stages", []):
        if stage["name"] == name:
            break
    else:
        stage = {"name": name}
        data["stages"].append(stage)
    stage.update(status=status, seconds=round(seconds, 1), finished_utc=_now())
    if detail:
        stage["detail"] = detail
    save(path, data)


def finish(path: Path) -> None:
    data = load(path)
    data["finished_utc"] = _now()
    counts: dict[str, int] = {}
    for stage in data.get("stages", []):
        key = stage["status"].split(":")[0].split(" ")[0]
        counts[key] = counts.get(key, 0) + 1
    data["outcome"] = counts
    save(path, data)


def table(path: Path) -> str:
    data = load(path)
    lines = [f"{'stage':<22} {'limit s':>7} {'seconds':>7}  status"]
    for stage in data.get("stages", []):
        seconds = stage.get("seconds")
        status = stage["status"] + (f" ({stage['detail']})" if stage.get("detail") else "")
        lines.append(f"{stage['name']:<22} {stage['limit_s']:>7} {'' if seconds is None else seconds:>7}  {status}")
    v = data.get("versions", {})
    lines.append(f"commit {data.get('git_commit')}; torch {v.get('torch')}, triton {v.get('triton')}, "
                 f"device {v.get('device', 'none')}")
    return "\n".join(lines)


def pytest_outcome(log: Path) -> str | None:
    """The counts of pytest's closing line ('3 passed, 2 skipped'), the last one in the log."""
    found = None
    for line in log.read_text(errors="replace").splitlines():
        m = _SUMMARY.match(line.strip())
        if m:
            found = m.group(1).rstrip(", ")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("init")
    s.add_argument("file", type=Path)
    s.add_argument("--commit", default="unknown")
    s.add_argument("--plan", required=True)
    s.add_argument("--dry-run", action="store_true")
    s = sub.add_parser("versions")
    s.add_argument("file", type=Path)
    s = sub.add_parser("record")
    s.add_argument("file", type=Path)
    s.add_argument("name")
    s.add_argument("status")
    s.add_argument("seconds", type=float)
    s.add_argument("detail", nargs="?", default="")
    s = sub.add_parser("finish")
    s.add_argument("file", type=Path)
    s = sub.add_parser("table")
    s.add_argument("file", type=Path)
    s = sub.add_parser("pytest-outcome")
    s.add_argument("log", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "init":
        init(args.file, args.commit, args.plan, args.dry_run)
    elif args.cmd == "versions":
        return versions(args.file)
    elif args.cmd == "record":
        record(args.file, args.name, args.status, args.seconds, args.detail)
    elif args.cmd == "finish":
        finish(args.file)
    elif args.cmd == "table":
        print(table(args.file))
    else:
        outcome = pytest_outcome(args.log)
        if outcome is None:
            return 1
        print(outcome)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
