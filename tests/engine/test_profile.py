"""`python -m generalist_trainer profile` on the CPU: a Chrome trace of N iterations with one range per phase, and the
table of top operators by self time printed (on CUDA the same command ranks kernels by device time)."""

import json

import pytest
import torch

from generalist_trainer.trainer import cli
from generalist_trainer.trainer.config import load_config
from generalist_trainer.trainer.engine import PHASES
from generalist_trainer.trainer.engine.profiling import profile_training

TINY = ["data.dataset=synthetic", "data.synthetic_shape=[1, 12, 12]", "data.synthetic_train_size=48",
        "data.synthetic_test_size=16", "data.val_size=0", "data.batch_size=8", "model.arch=small_cnn",
        "method.name=generalist", "attack.steps=2", "train.device=cpu", "train.threads=0"]


def _trace_names(path) -> list[str]:
    trace = json.loads(path.read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return [e.get("name", "") for e in events]


def test_profile_command_writes_a_chrome_trace_with_phase_ranges_and_prints_top_ops(tmp_path, capsys):
    out = tmp_path / "traces" / "trace.json"
    threads = torch.get_num_threads()
    try:
        rc = cli.main(["profile", "--steps", "2", "--warmup", "1", "--top", "7", "--out", str(out), *TINY])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0 and out.is_file()
    names = _trace_names(out)
    for name in (*PHASES, "iteration 0", "iteration 1"):
        assert name in names, name
    assert "iteration 2" not in names  # the warm-up iteration is not recorded
    assert names.count("attack") == 2 and names.count("averaging") == 2
    assert any(n.startswith("aten::convolution") for n in names)
    printed = capsys.readouterr().out
    assert "Self CPU" in printed and "aten::" in printed  # torch.profiler's key_averages table
    assert "time per phase over 2 iterations" in printed and f"trace: {out}" in printed
    assert "engine: precision fp32" in printed


def test_profile_returns_the_top_operators_and_every_phase(tmp_path):
    threads = torch.get_num_threads()
    try:
        result = profile_training(load_config(None, TINY), steps=1, warmup=0, out=tmp_path / "t.json", top_k=3)
    finally:
        torch.set_num_threads(threads)
    assert result["sort_by"] == "self_cpu_time_total" and result["steps"] == 1 and result["warmup"] == 0
    assert 0 < len(result["top"]) <= 3
    assert all(t["self_ms"] >= 0 and t["calls"] >= 1 for t in result["top"])
    assert [t["self_ms"] for t in result["top"]] == sorted((t["self_ms"] for t in result["top"]), reverse=True)
    assert not {t["name"] for t in result["top"]} & set(PHASES)  # ranges are not operators
    assert set(result["phases_ms"]) == set(PHASES)
    # Nested: the robust update's range holds the attack's.
    assert result["phases_ms"]["robust_update"] >= result["phases_ms"]["attack"] > 0


@pytest.mark.parametrize("flag,value", [("--steps", "0"), ("--warmup", "-1")])
def test_bad_step_counts_exit_2_naming_the_flag(tmp_path, capsys, flag, value):
    rc = cli.main(["profile", flag, value, "--out", str(tmp_path / "t.json"), *TINY])
    captured = capsys.readouterr()
    assert rc == 2 and flag in captured.err
    assert "engine:" not in captured.out  # refused before the run is built
    assert not (tmp_path / "t.json").exists()
