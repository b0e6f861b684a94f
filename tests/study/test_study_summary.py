"""The study summary's statistics against a direct computation on made-up results."""

from __future__ import annotations

import math

import numpy as np
import pytest

from generalist_trainer.trainer.study.plan import Column, StudyPlan, SummarySpec
from generalist_trainer.trainer.study.summary import markdown, paired_difference, spread, summarise

# Three seeds of three methods, two columns (accuracies in %).
VALUES = {
    "pgd_at": {0: {"clean": 77.0, "pgd20": 66.0}, 1: {"clean": 77.6, "pgd20": 65.1}, 2: {"clean": 76.5, "pgd20": 66.4}},
    "trades": {0: {"clean": 75.9, "pgd20": 66.8}, 1: {"clean": 76.2, "pgd20": 66.0}, 2: {"clean": 75.1, "pgd20": 67.5}},
    "generalist": {0: {"clean": 78.4, "pgd20": 64.9}, 1: {"clean": 78.0}},  # seed 1 lacks pgd20, seed 2 is missing
}


def plan() -> StudyPlan:
    from pathlib import Path

    from generalist_trainer.trainer.study.plan import RunSpec

    return StudyPlan(name="toy", runs_dir=Path("r"), results_dir=Path("s"),
                     runs=(RunSpec("pgd_at", "c.yaml", (0, 1, 2)),),
                     summary=SummarySpec(baseline="pgd_at", columns=(Column("clean", "clean", "test"),
                                                                    Column("pgd20", "pgd20", "test"))))


def test_spread_is_mean_and_sample_std():
    values = [77.0, 77.6, 76.5]
    s = spread(values)
    assert s.n == 3
    assert s.mean == pytest.approx(np.mean(values))
    assert s.std == pytest.approx(np.std(values, ddof=1))
    one = spread([70.0])
    assert one.mean == 70.0 and one.std is None
    assert spread([]) is None


def test_paired_difference_is_the_student_t_interval_over_seeds():
    method = {s: VALUES["trades"][s]["pgd20"] for s in range(3)}
    base = {s: VALUES["pgd_at"][s]["pgd20"] for s in range(3)}
    d = np.array([method[s] - base[s] for s in range(3)])
    got = paired_difference(method, base)
    half = 4.302652729911275 * d.std(ddof=1) / math.sqrt(3)  # t(0.975, 2), from the tables
    assert got.n == 3
    assert got.mean == pytest.approx(d.mean())
    assert got.std == pytest.approx(d.std(ddof=1))
    assert (got.low, got.high) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))


def test_paired_difference_uses_only_shared_seeds_and_gives_no_interval_for_one_pair():
    got = paired_difference({0: 64.9, 5: 99.0}, {0: 66.0, 1: 65.1})
    assert got.n == 1 and got.mean == pytest.approx(-1.1)
    assert got.low is None and got.high is None
    assert paired_difference({3: 1.0}, {0: 1.0}) is None


def test_summary_and_markdown_from_made_up_results():
    summary = summarise(plan(), VALUES)
    pgd = summary["methods"]["pgd_at"]["columns"]["clean"]
    assert pgd["n"] == 3 and pgd["mean"] == pytest.approx(np.mean([77.0, 77.6, 76.5]))
    gen = summary["methods"]["generalist"]
    assert gen["columns"]["pgd20"]["n"] == 1 and gen["columns"]["pgd20"]["std"] is None
    assert gen["vs_baseline"]["clean"]["n"] == 2  # seeds 0 and 1
    assert gen["vs_baseline"]["clean"]["mean"] == pytest.approx(((78.4 - 77.0) + (78.0 - 77.6)) / 2)
    assert "pgd_at" not in [m for m, e in summary["methods"].items() if e["vs_baseline"]]
    text = markdown(summary)
    assert f"| pgd_at | 3 | {pgd['mean']:.1f} ± {pgd['std']:.1f} |" in text
    trades = summary["methods"]["trades"]["vs_baseline"]["pgd20"]
    assert f"{trades['mean']:+.1f} [{trades['ci95'][0]:+.1f}, {trades['ci95'][1]:+.1f}]" in text
    assert "+1.4 (n = 1)" not in text and "(n = 1)" in text  # generalist pgd20: one pair, no interval


def test_tradeoff_points_pair_the_seeds_that_have_both_figures():
    from generalist_trainer.trainer.study.summary import tradeoff_points

    points = {p["method"]: p for p in tradeoff_points(summarise(plan(), VALUES), "clean", "pgd20")}
    # Generalist has clean for seeds 0 and 1 but pgd20 only for seed 0: its point is seed 0's alone.
    assert points["generalist"]["seeds"] == [0]
    assert points["generalist"]["x"] == pytest.approx(78.4) and points["generalist"]["x_std"] == 0.0
    assert points["trades"]["seeds"] == [0, 1, 2]
    assert points["trades"]["y_std"] == pytest.approx(np.std([66.8, 66.0, 67.5], ddof=1))


@pytest.mark.parametrize("natural_pgd20, panels", [(1.0, 2), (60.0, 1)])
def test_tradeoff_plot_zooms_beside_a_method_far_below_the_rest(tmp_path, natural_pgd20, panels):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from generalist_trainer.trainer.study.summary import tradeoff_plot

    values = {**VALUES, "natural": {0: {"clean": 90.0, "pgd20": natural_pgd20}}}
    summary = summarise(plan(), values)
    assert summary["labels"] == {"clean": "clean", "pgd20": "pgd20"}
    out = tradeoff_plot(summary, "clean", "pgd20", tmp_path / "t.png")
    width, height = Image.open(out).size
    assert width == pytest.approx(panels * 6.4 * 120, abs=2) and height == pytest.approx(4.8 * 120, abs=2)
