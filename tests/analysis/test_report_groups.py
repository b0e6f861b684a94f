"""`trainer report`: panels only where there is data, an integer epoch axis, runs grouped by method and config
apart from the seed, and each method's mean and spread (tested on the data the plots get, not on pixels)."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from generalist_trainer.trainer.analysis.report import (
    RunRecord,
    epoch_curve,
    group_runs,
    load_run,
    mean_std,
    tradeoff_points,
    training_figure,
    training_panels,
    write_report,
)


def config(method: str, seed: int = 0, **extra) -> dict:
    cfg = {"method": {"name": method, "trades_beta": 6.0}, "train": {"seed": seed, "epochs": 3,
                                                                      "out_dir": f"runs/{method}_{seed}"},
           "data": {"dataset": "fashion-mnist"}, "eval": {"num_points": 1000}}
    for dotted, value in extra.items():
        section, key = dotted.split("__")
        cfg.setdefault(section, {})[key] = value
    return cfg


def evaluation(clean: float, version: str = "standard", **attacks: float) -> dict:
    return {"num_points": 1000, "eval_config": {"autoattack_version": version},
            "models": {"model": {"clean": clean, **attacks}}}


EPOCHS = [{"epoch": 1.0, "val_clean": 0.6, "val_pgd10": 0.4}, {"epoch": 2.0, "val_clean": 0.7, "val_pgd10": 0.5},
          {"epoch": 3.0, "val_clean": 0.72, "val_pgd10": 0.52}]


def test_panels_only_where_there_is_data():
    no_loss = RunRecord(Path("a"), config("pgd_at"), epochs=EPOCHS)
    assert list(training_panels([no_loss])) == ["accuracy"]  # no steps.jsonl, no loss column: no loss panel
    epoch_losses = RunRecord(Path("b"), config("pgd_at"),
                             epochs=[{**r, "train_loss": 1.0 / r["epoch"]} for r in EPOCHS])
    panels = training_panels([epoch_losses])
    assert panels["loss"]["x"] == "epoch" and list(panels["loss"]["curves"]) == ["train_loss"]
    steps = RunRecord(Path("c"), config("pgd_at"), epochs=EPOCHS, steps=[{"step": s, "loss": 2.0 / s} for s in (1, 2)])
    assert training_panels([steps])["loss"]["x"] == "step"
    assert training_panels([RunRecord(Path("d"), config("pgd_at"))]) == {}


def test_figure_has_one_axes_per_panel_and_whole_epochs_on_the_axis():
    pytest.importorskip("matplotlib")
    fig = training_figure(RunRecord(Path("a"), config("pgd_at"), epochs=EPOCHS))
    try:
        assert len(fig.axes) == 1  # the accuracy panel only
        ax = fig.axes[0]
        fig.canvas.draw()
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert ax.get_ylabel() == "accuracy (%)" and ax.get_xlabel() == "epoch"
        assert max(max(line.get_ydata()) for line in ax.get_lines()) == pytest.approx(72.0)  # plotted in %
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    assert training_figure(RunRecord(Path("d"), config("pgd_at"))) is None


def test_runs_group_by_config_apart_from_seed_and_where_they_were_written():
    runs = [RunRecord(Path(f"pgd{s}"), config("pgd_at", s, train__threads=s + 1)) for s in range(3)]
    runs += [RunRecord(Path(f"trades{s}"), config("trades", s)) for s in range(2)]
    runs += [RunRecord(Path("trades_b3"), config("trades", 0, method__trades_beta=3.0)),
             RunRecord(Path("natural"), config("natural")),
             RunRecord(Path("pgd_long"), config("pgd_at", 0, train__epochs=8))]
    groups = group_runs(runs)
    assert [(g.label, [r.name for r in g.records]) for g in groups] == [
        ("pgd_at (train.epochs=3)", ["pgd0", "pgd1", "pgd2"]),
        ("trades (method.trades_beta=6.0)", ["trades0", "trades1"]),
        ("trades (method.trades_beta=3.0)", ["trades_b3"]),
        ("natural", ["natural"]),
        ("pgd_at (train.epochs=8)", ["pgd_long"])]
    assert groups[0].seeds == [0, 1, 2]


def test_tradeoff_points_are_mean_and_std_over_seeds():
    cleans, pgds, aas = [0.71, 0.74, 0.72], [0.50, 0.53, 0.49], [0.44, 0.47, 0.45]
    runs = []
    for s in range(3):
        runs.append(RunRecord(Path(f"pgd{s}"), config("pgd_at", s),
                              evals=[("eval_n1000.json", evaluation(cleans[s], pgd20=pgds[s], autoattack=aas[s]))]))
    # One seed without CW: CW is not common to the group, so it cannot be the group's robust attack.
    runs[1].evals[0][1]["models"]["model"]["cw20"] = 0.01
    # AutoAttack cut to APGD is another attack than the standard one: trades' seeds share only PGD-20.
    runs += [RunRecord(Path("trades0"), config("trades", 0),
                       evals=[("eval.json", evaluation(0.70, pgd20=0.52, autoattack=0.40))]),
             RunRecord(Path("trades1"), config("trades", 1),
                       evals=[("eval.json", evaluation(0.68, "apgd", pgd20=0.54, autoattack=0.41))])]
    pgd_at, trades = tradeoff_points(group_runs(runs))
    assert pgd_at.attack == "autoattack" and pgd_at.seeds == [0, 1, 2]
    assert pgd_at.clean_mean_std == pytest.approx((statistics.mean(cleans), statistics.stdev(cleans)))
    assert pgd_at.robust_mean_std == pytest.approx((statistics.mean(aas), statistics.stdev(aas)))
    assert trades.attack == "pgd20" and trades.robust == [0.52, 0.54]
    single = tradeoff_points(group_runs(runs[:1]))[0]
    assert single.clean_mean_std[0] == 0.71 and math.isnan(single.clean_mean_std[1])  # one run: no bars


def test_mean_std_and_epoch_curve_against_statistics():
    assert mean_std([1.0, 2.0, 4.0]) == pytest.approx((statistics.mean([1, 2, 4]), statistics.stdev([1, 2, 4])))
    runs = [RunRecord(Path(f"r{i}"), config("pgd_at", i),
                      epochs=[{**r, "val_clean": r["val_clean"] + 0.01 * i} for r in EPOCHS]) for i in range(3)]
    curve = epoch_curve(runs, "val_clean")
    assert [c[0] for c in curve] == [1, 2, 3] and all(c[3] == 3 for c in curve)
    assert curve[0][1] == pytest.approx(0.61) and curve[0][2] == pytest.approx(statistics.stdev([0.6, 0.61, 0.62]))


def write_run(folder: Path, cfg: dict, epochs: list[dict], evals: dict[str, dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    with (folder / "epochs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(epochs[0]))
        writer.writeheader()
        writer.writerows(epochs)
    for name, data in evals.items():
        (folder / name).write_text(json.dumps(data))
    return folder


def test_report_of_seeds_without_steps(tmp_path):
    pytest.importorskip("matplotlib")
    runs = []
    for s, (clean, pgd) in enumerate([(0.70, 0.50), (0.72, 0.53), (0.74, 0.51)]):
        data = evaluation(clean, pgd20=pgd)
        data["models"]["robust"] = {"same_weights_as": "model", "clean": clean, "pgd20": pgd}
        runs.append(write_run(tmp_path / f"generalist_s{s}", config("generalist", s), EPOCHS, {"eval_best.json": data}))
    assert load_run(runs[0]).steps == []
    out = write_report(runs, tmp_path / "report.md", emit_warnings=False)
    text = out.read_text()
    assert "| generalist | 3 | 0, 1, 2 | 72.0 ± 2.0 | 51.3 ± 1.5 | PGD-20 | 1000 |" in text
    assert "| generalist_s0 | eval_best.json | model | 1000 | ? | 70.0 | 50.0 | - | - |  |" in text
    assert ("| generalist_s0 | eval_best.json | robust | 1000 | ? | 70.0 | 50.0 | - | - | same weights as model |"
            in text)
    assert "| 70.0 |" in text and "70.00" not in text  # one decimal
    assert (tmp_path / "report_figures" / "training_generalist.png").exists()  # one figure for the three seeds
    assert not (tmp_path / "report_figures" / "training_generalist_s0.png").exists()
