"""The kernel benchmarks run end to end at tiny sizes and write a results file marked with its device."""

import json

import torch

from generalist_trainer.bench import bench_averaging, bench_pgd_step, common


def _run(module, args, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    threads = torch.get_num_threads()
    try:
        rows = module.main([*args, "--threads", "0", "--rep-ms", "5", "--out-dir", str(tmp_path / "out")])
    finally:
        torch.set_num_threads(threads)
    files = list((tmp_path / "results").glob("*.json"))
    assert len(files) == 1 and (tmp_path / "out" / files[0].name).is_file()
    run = json.loads(files[0].read_text())[-1]
    meta = run["meta"]
    for key in ("device", "device_kind", "torch", "triton", "git_commit", "timestamp_utc", "copy_GBps"):
        assert key in meta, key
    if meta["device_kind"] == "cpu":
        assert files[0].name.split("-", 3)[3].startswith("cpu-") and "not GPU figures" in meta["note"]
    return rows, run


def test_pgd_benchmark_smoke(tmp_path, monkeypatch):
    rows, run = _run(bench_pgd_step, ["--sizes", "6K", "--dtypes", "fp32", "--ops", "linf,random_start",
                                      "--providers", "torch,triton,cuda"], tmp_path, monkeypatch)
    assert run["benchmark"] == "pgd_step" and len(rows) == 6
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["provider"] for r in ok} >= {"torch"}
    assert all(r["GBps"] > 0 and 0 < r["frac_of_copy"] for r in ok)
    assert all(r["status"].startswith(("ok", "skipped")) for r in rows), rows


def test_averaging_benchmark_smoke(tmp_path, monkeypatch):
    rows, run = _run(bench_averaging, ["--sizes", "64K", "--providers", "torch,triton,foreach_lerp,state_dict_per_key",
                                       "--no-redistribute"], tmp_path, monkeypatch)
    assert run["benchmark"] == "averaging"
    r18 = {r["provider"]: r for r in rows if r.get("case") == "resnet18"}
    assert r18["state_dict_per_key"]["state_dict_keys"] == 122 and r18["torch"]["params"] == 11_173_962
    assert run["summary"]["speedup_vs_state_dict_per_key"] > 0
