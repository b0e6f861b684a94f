"""Every committed study plan parses, and every training it declares is a valid config (preset + the plan's and the
row's overrides), so a plan never fails hours into a study on a typo."""

from __future__ import annotations

from pathlib import Path

import pytest

from generalist_trainer.trainer.config import load_config
from generalist_trainer.trainer.study.plan import load_plan

REPO = Path(__file__).resolve().parents[2]
PLANS = sorted((REPO / "configs" / "studies").glob("*.yaml"))


@pytest.mark.parametrize("plan_path", PLANS, ids=[p.stem for p in PLANS])
def test_plan_parses_and_each_training_config_validates(plan_path):
    plan = load_plan(plan_path)
    assert plan.runs
    for spec in plan.runs:
        for seed in spec.seeds:
            cfg = load_config(REPO / spec.config, [*plan.overrides, *spec.overrides, f"train.seed={seed}"])
            assert cfg.train.seed == seed


def test_the_extension_reuses_the_core_grid_folders_and_rows():
    core, extension = (load_plan(REPO / "configs" / "studies" / f"{n}.yaml") for n in ("fashion_mnist",
                                                                                        "fashion_mnist_extension"))
    assert (extension.runs_dir, extension.results_dir) == (core.runs_dir, core.results_dir)
    assert extension.overrides == core.overrides
    ext = {r.name: r for r in extension.runs}
    for row in core.runs:
        assert (ext[row.name].config, ext[row.name].overrides, ext[row.name].seeds) == (row.config, row.overrides,
                                                                                       row.seeds)
