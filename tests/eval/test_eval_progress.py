"""Evaluation progress (trainer/eval/progress.py): a bar or line per stage that appears, ends, reports the
stage's final figure, starts a resumed AutoAttack attack where its state left off, and can be switched off."""

from __future__ import annotations

import io
import re

import pytest
from tqdm import tqdm

pytest.importorskip("pyautoattack")

from generalist_trainer.trainer.config import AttackConfig, EvalConfig  # noqa: E402
from generalist_trainer.trainer.eval import autoattack_adapter, autoattack_resumable, progress  # noqa: E402
from generalist_trainer.trainer.eval.autoattack_resumable import autoattack_robust  # noqa: E402
from generalist_trainer.trainer.eval.progress import EvalProgress  # noqa: E402
from generalist_trainer.trainer.eval.robustness import evaluate_model  # noqa: E402
from tests.eval.aa_shard_worker import EPS, SETTINGS, shorten, tiny_problem  # noqa: E402

BATCH = SETTINGS["batch_size"]
ALL_ATTACKS = EvalConfig(num_points=20, eps=EPS, attacks=("clean", "pgd", "cw", "autoattack"), pgd_steps=3,
                         cw_steps=3)
AA_STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")


@pytest.fixture(autouse=True)
def short_attacks(monkeypatch):
    """The official attacks with fewer iterations (as in test_autoattack_resumable.py)."""
    real_build = autoattack_adapter.build_autoattack
    monkeypatch.setattr(autoattack_resumable, "build_autoattack", lambda *a, **k: shorten(real_build(*a, **k)))


def lines_of(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_each_stage_starts_and_ends_with_its_final_figure_in_plain_lines():
    model, x, y = tiny_problem()
    stream = io.StringIO()
    result = evaluate_model(model, x, y, ALL_ATTACKS, AttackConfig(eps=EPS), BATCH,
                            progress=EvalProgress(stream=stream, tty=False, interval=0.0))
    lines = lines_of(stream)
    assert "\r" not in stream.getvalue()  # a log file gets whole lines
    stages = {"clean": ("correct", result["clean"]), "pgd3": ("robust", result["pgd3"]),
              "cw3": ("robust", result["cw3"]), "autoattack clean": ("correct", result["clean"]),
              **{f"autoattack {s}": ("robust", result[f"autoattack_after_{s}"]) for s in AA_STAGES}}
    for stage, (counted, accuracy) in stages.items():
        own = [ln for ln in lines if ln.startswith(f"{stage}: ")]
        assert own[0].startswith(f"{stage}: started on "), own
        assert own[-1].startswith(f"{stage}: done, {counted} {100 * accuracy:.1f}%, "), own
        assert re.search(r"\d\d:\d\d elapsed$", own[-1])
    # Interval 0: a line per batch in between, with the time left while the stage runs.
    pgd = [ln for ln in lines if ln.startswith("pgd3: ")]
    assert len(pgd) == 2 + (len(x) + BATCH - 1) // BATCH - 1  # start, one per batch but the last, done
    assert pgd[1].startswith(f"pgd3: {BATCH}/{len(x)} points, robust ") and pgd[1].endswith(" left")
    # 17 points are correct, so APGD-CE attacks 17 of the 20 and its robust figure is over all 20 points.
    assert "autoattack apgd-ce: started on 17 points" in lines


def test_a_long_interval_leaves_one_line_at_the_start_and_one_at_the_end():
    model, x, y = tiny_problem()
    stream = io.StringIO()
    evaluate_model(model, x, y, EvalConfig(eps=EPS, attacks=("clean", "pgd"), pgd_steps=2), AttackConfig(eps=EPS),
                   BATCH, progress=EvalProgress(stream=stream, tty=False, interval=1e9))
    assert [ln.split(":")[0] + ":" + ln.split(":")[1].split(",")[0] for ln in lines_of(stream)] == [
        "clean: started on 20 points", "clean: done", "pgd2: started on 20 points", "pgd2: done"]


def test_lines_come_once_per_interval_with_the_time_left_at_the_rate_so_far(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress, "_clock", lambda: now[0])
    stream = io.StringIO()
    with EvalProgress(stream=stream, tty=False, interval=30.0).stage("pgd20", 100) as bar:
        for batch in range(10):  # 10 points every 10 s
            now[0] += 10.0
            bar.update(10, 5 * (batch + 1))
    assert lines_of(stream) == [
        "pgd20: started on 100 points",
        "pgd20: 30/100 points, robust 50.0%, 00:30 elapsed, about 01:10 left",
        "pgd20: 60/100 points, robust 50.0%, 01:00 elapsed, about 00:40 left",
        "pgd20: 90/100 points, robust 50.0%, 01:30 elapsed, about 00:10 left",
        "pgd20: done, robust 50.0%, 01:40 elapsed"]


def test_bars_on_a_terminal_reach_the_end_and_are_closed():
    model, x, y = tiny_problem()
    stream = io.StringIO()
    open_before = len(tqdm._instances)
    result = evaluate_model(model, x, y, ALL_ATTACKS, AttackConfig(eps=EPS), BATCH,
                            progress=EvalProgress(stream=stream, tty=True).labelled("global"))
    assert len(tqdm._instances) == open_before  # every bar was closed
    text = stream.getvalue()
    assert text.endswith("\n")  # the next output (the results table) starts on its own line
    final = {}
    for frame in re.split(r"[\r\n]", text):
        if frame.strip():
            final[frame.split(":")[0]] = frame  # the last frame drawn of each bar
    assert set(final) == {"global clean", "global pgd3", "global cw3", "global autoattack clean",
                          *(f"global autoattack {s}" for s in AA_STAGES)}
    assert "100%" in final["global pgd3"] and "20/20 points" in final["global pgd3"]
    assert f"robust {100 * result['pgd3']:.1f}%" in final["global pgd3"]
    assert f"robust {100 * result['autoattack_after_square']:.1f}%" in final["global autoattack square"]


def test_off_means_nothing_written(capsys, monkeypatch):
    model, x, y = tiny_problem()
    cfg = EvalConfig(eps=EPS, attacks=("clean", "pgd"), pgd_steps=2)
    evaluate_model(model, x, y, cfg, AttackConfig(eps=EPS), BATCH, progress=False)
    evaluate_model(model, x, y, cfg, AttackConfig(eps=EPS), BATCH)  # the library's default: silent
    assert capsys.readouterr() == ("", "")
    evaluate_model(model, x, y, cfg, AttackConfig(eps=EPS), BATCH, progress=True)
    assert "pgd2: done" in capsys.readouterr().err  # True: stderr (not a TTY under pytest: lines)
    monkeypatch.setattr(progress, "_is_rank0", lambda: False)  # a torchrun rank other than 0
    evaluate_model(model, x, y, cfg, AttackConfig(eps=EPS), BATCH, progress=True)
    assert capsys.readouterr() == ("", "")


def test_a_resumed_autoattack_starts_its_bar_at_the_resumed_position(tmp_path, monkeypatch):
    model, x, y = tiny_problem()
    state = tmp_path / "aa.json"
    real_unit = autoattack_resumable._attack_unit
    calls = {"n": 0}

    def dying_unit(*args):
        calls["n"] += 1
        if calls["n"] == 4:  # inside APGD-CE, after its units 1-3 (12 of its 17 points)
            raise KeyboardInterrupt
        return real_unit(*args)

    monkeypatch.setattr(autoattack_resumable, "_attack_unit", dying_unit)
    first = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        autoattack_robust(model, x, y, state_path=state, progress=EvalProgress(stream=first, tty=False),
                          **SETTINGS)
    assert lines_of(first)[-1].startswith("autoattack apgd-ce: stopped at 12/17 points, robust ")

    monkeypatch.setattr(autoattack_resumable, "_attack_unit", real_unit)
    lines, bars = io.StringIO(), io.StringIO()
    autoattack_robust(model, x, y, state_path=state, progress=EvalProgress(stream=lines, tty=False), **SETTINGS)
    resumed = lines_of(lines)
    assert not any(ln.startswith("autoattack clean") for ln in resumed)  # the clean pass is not redone
    assert resumed[0] == "autoattack apgd-ce: started on 17 points, 12 done in earlier sessions"
    assert [ln.split(":")[0] for ln in resumed if ": started on" in ln] == [f"autoattack {s}" for s in AA_STAGES]

    # The same on a terminal: the bar's first frame is already at 12 of 17.
    state.unlink()
    monkeypatch.setattr(autoattack_resumable, "_attack_unit", dying_unit)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        autoattack_robust(model, x, y, state_path=state, **SETTINGS)
    monkeypatch.setattr(autoattack_resumable, "_attack_unit", real_unit)
    autoattack_robust(model, x, y, state_path=state, progress=EvalProgress(stream=bars, tty=True), **SETTINGS)
    first_frame = next(f for f in bars.getvalue().split("\r") if f.startswith("autoattack apgd-ce"))
    assert "12/17 points" in first_frame and "71%" in first_frame


def test_labelled_progress_names_the_model_and_notes_go_between_stages():
    stream = io.StringIO()
    reporter = EvalProgress(stream=stream, tty=False)
    reporter.note("robust: same weights as global, evaluated once")
    with reporter.labelled("global").stage("pgd20", 4) as bar:
        bar.update(4, 3)
    assert lines_of(stream)[0] == "robust: same weights as global, evaluated once"
    assert lines_of(stream)[1] == "global pgd20: started on 4 points"
    assert lines_of(stream)[2].startswith("global pgd20: done, robust 75.0%, ")
