"""The end-to-end benchmark as a CPU smoke run (small CNN, tiny sizes, no timing assertions), and the
reference-style loop doing the same arithmetic as the trainer, so that the ratio compares equal work."""

import json

import pytest
import torch

from generalist_trainer.bench import bench_end_to_end as e2e
from generalist_trainer.bench.reference_loop import ReferenceGeneralist, pgd_with_backward
from generalist_trainer.trainer.attacks import PGD
from generalist_trainer.trainer.engine import PHASES
from generalist_trainer.trainer.models import build_model

from .helpers import tiny_batch, tiny_method

SMOKE = ["--smoke", "--device", "cpu", "--train-size", "48", "--ratio-batch", "8", "--mfu-batch", "16", "--warmup", "1",
         "--iters", "1", "--repeats", "2", "--threads", "0"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    patch = pytest.MonkeyPatch()
    patch.setattr(e2e, "RESULTS_DIR", tmp / "results")
    threads = torch.get_num_threads()
    try:
        result = e2e.main([*SMOKE, "--out-dir", str(tmp / "out")])
    finally:
        torch.set_num_threads(threads)
        patch.undo()
    return tmp, result


def test_smoke_run_writes_one_results_file_in_each_place_marked_as_cpu(smoke_run):
    tmp, result = smoke_run
    files = list((tmp / "results").glob("*.json"))
    assert len(files) == 1 and (tmp / "out" / files[0].name).is_file()
    assert files[0].name.endswith("-end-to-end-smoke.json") and "-cpu-" in files[0].name
    (run,) = json.loads(files[0].read_text())  # written after every variant, but as one run
    assert run == json.loads(json.dumps(result)) and run["complete"] is True
    assert run["config"]["plan"] == [["reference", 8], ["ours", 8], ["ours", 16]]
    meta = run["meta"]
    for key in ("device", "device_kind", "torch", "triton", "python", "git_commit", "timestamp_utc"):
        assert meta.get(key) is not None, key
    assert meta["device_kind"] == "cpu" and "not GPU figures" in meta["note"]
    assert run["config"]["smoke"] and run["config"]["arch"] == "small_cnn"


def test_smoke_run_times_reference_and_ours_with_images_per_s_and_mfu(smoke_run):
    _, run = smoke_run
    rows = {(r["variant"], r["batch_size"]): r for r in run["rows"]}
    # Two streams need CUDA: the one-stream variant is a GPU-only row.
    assert set(rows) == {("reference", 8), ("ours", 8), ("ours", 16)}
    for key, r in rows.items():
        assert r["status"] == "ok", (key, r.get("traceback"))
        assert r["images_per_s"] > 0 and 0 < r["mfu"] and r["ms_per_iter"] > 0, key
        assert len(r["window_seconds"]) == 2
        assert r["images_per_s"] == pytest.approx(r["batch_size"] / (r["ms_per_iter"] / 1e3))
    assert rows[("reference", 8)]["engine"]["style"] == "reference"
    assert rows[("ours", 8)]["engine"]["precision"] == "fp32"  # the CPU default


def test_phase_breakdown_covers_every_phase_of_both_loops(smoke_run):
    _, run = smoke_run
    for variant in ("reference", "ours"):
        (row,) = [r for r in run["rows"] if r["variant"] == variant and r["batch_size"] == 8]
        phases = row["phases"]
        assert set(phases) == {*PHASES, "other", "total_ms"}
        for name in PHASES:  # each phase is entered by both loops
            assert phases[name]["ms"] > 0, (variant, name)
        assert phases["attack"]["mfu"] > 0 and phases["averaging"]["mfu"] is None
        parts = sum(phases[name]["ms"] for name in (*PHASES, "other"))
        assert parts == pytest.approx(phases["total_ms"], rel=1e-6)
    (big,) = [r for r in run["rows"] if r["batch_size"] == 16]
    assert big["phases"] is None  # only the ratio batch gets the instrumented pass


def test_summary_holds_the_ratio_and_no_gpu_verdict_on_the_cpu(smoke_run):
    _, run = smoke_run
    s = run["summary"]
    rows = {(r["variant"], r["batch_size"]): r for r in run["rows"]}
    ratio = rows[("ours", 8)]["images_per_s"] / rows[("reference", 8)]["images_per_s"]
    assert s["speedup_vs_reference"]["value"] == pytest.approx(ratio)
    assert s["mfu"]["value"] == pytest.approx(rows[("ours", 16)]["mfu"]) and s["mfu"]["batch_size"] == 16
    assert s["two_stream_speedup"]["value"] is None and "CUDA" in s["two_stream_speedup"]["missing"]
    for key, target in e2e.TARGETS.items():
        assert s[key]["target"] == target and s[key]["met"] is None, key  # CPU timings are never a verdict
    # (2k + 6) forwards per image at k = 2 attack steps.
    assert s["flops_per_image"] == pytest.approx(10 * s["forward_flops_per_image"])
    assert s["peak_tflops"] > 0


def test_markdown_table_of_the_results_file(smoke_run):
    tmp, _ = smoke_run
    (path,) = (tmp / "results").glob("*.json")
    table = e2e.markdown_table(path)
    assert "not GPU figures" in table and "| reference | 8 |" in table and "| ours | 16 |" in table
    assert "Phases of ours at batch 8" in table and "| attack |" in table
    assert "no verdict" in table


def test_a_failing_variant_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    monkeypatch.setattr(e2e, "RESULTS_DIR", tmp_path)

    def broken(session):
        raise RuntimeError("variant broke")

    monkeypatch.setattr(e2e, "ours_iteration", broken)
    result = e2e.main([*SMOKE, "--no-breakdown", "--no-write"])
    status = {(r["variant"], r["batch_size"]): r["status"] for r in result["rows"]}
    assert status[("reference", 8)] == "ok"
    assert status[("ours", 8)] == status[("ours", 16)] == "error: RuntimeError: variant broke"
    assert result["summary"]["speedup_vs_reference"]["value"] is None
    assert not list(tmp_path.iterdir())  # --no-write


def test_a_run_cut_short_keeps_the_rows_it_finished(tmp_path, monkeypatch):
    monkeypatch.setattr(e2e, "RESULTS_DIR", tmp_path)
    real = e2e.run_variant

    def cut_after_the_first(variant, *args, **kwargs):
        if variant != "reference":
            raise KeyboardInterrupt  # as a time limit's signal would end the process
        return real(variant, *args, **kwargs)

    monkeypatch.setattr(e2e, "run_variant", cut_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        e2e.main([*SMOKE, "--no-breakdown"])
    (path,) = tmp_path.glob("*-end-to-end-smoke.json")
    (run,) = json.loads(path.read_text())
    assert run["complete"] is False and [r["variant"] for r in run["rows"]] == ["reference"]
    assert run["rows"][0]["status"] == "ok" and run["summary"]["speedup_vs_reference"]["value"] is None


def test_unknown_extra_variant_is_refused():
    with pytest.raises(SystemExit):
        e2e.parse_args(["--smoke", "--device", "cpu", "--extra", "graphs,warp"])


# ---------------------------------------------------------------------------------------------------
# The reference-style loop does the trainer's arithmetic


def _factory():
    cfg = tiny_method().cfg
    return build_model(cfg.model, num_classes=4, in_channels=1, image_size=12, mean=(0.5,), std=(0.25,))


def test_reference_pgd_with_backward_is_the_trainers_pgd_from_the_same_start():
    torch.manual_seed(0)
    model = _factory()
    x, y = tiny_batch()
    eps, step, steps = 0.1, 0.03, 3
    torch.manual_seed(7)
    reference = pgd_with_backward(model, x, y, eps, step, steps)
    torch.manual_seed(7)  # the same uniform start as the reference draws
    start = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
    attack = PGD(eps, step, steps)
    attack.start = lambda _x: start.clone()
    ours = attack(model, x, y)
    assert model.training  # both leave the model as they found it
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_reference_generalist_step_equals_the_trainers_step():
    # eps = 0: both attacks return x, so the two loops differ only in how they compute the same updates and
    # averages (optimisers, decay, beta, weight decay per expert).
    ours = tiny_method("attack.eps=0", "method.generalist.natural_optim.lr.values=[0.05,0.05,0.05,0.05]",
                       "method.generalist.natural_optim.momentum=0.8")
    g = ours.cfg.method.generalist
    ref = ReferenceGeneralist(_factory, torch.device("cpu"), eps=0.0, step=0.05, steps=2,
                              lr=g.robust_optim.lr.at(1, ours.cfg.train.epochs), momentum=g.robust_optim.momentum,
                              robust_weight_decay=g.robust_optim.weight_decay, natural_lr=0.05,
                              natural_momentum=0.8, natural_weight_decay=g.natural_optim.weight_decay,
                              beta=1.0, decay_max=g.decay_max, decay_warmup=g.decay_warmup)
    for name, net in ours.networks().items():  # one shared initialisation, as both build it
        getattr(ref, {"robust": "robust", "natural": "natural", "avg_robust": "avg_robust",
                      "avg_natural": "avg_natural", "global": "global_model"}[name]).load_state_dict(net.state_dict())
    ours.start_epoch(1)
    assert ours.beta == 1.0
    for s in range(3):
        x, y = tiny_batch(seed=s)
        metrics = ours.train_step(x, y)
        robust_loss, natural_loss = ref.step(x, y)
        assert metrics["robust_loss"] == pytest.approx(robust_loss, rel=1e-5)
        assert metrics["natural_loss"] == pytest.approx(natural_loss, rel=1e-5)
    pairs = {"robust": ref.robust, "natural": ref.natural, "avg_robust": ref.avg_robust,
             "avg_natural": ref.avg_natural, "global": ref.global_model}
    for name, net in ours.networks().items():
        theirs = pairs[name].state_dict()
        for key, value in net.state_dict().items():
            if value.is_floating_point():  # integer counters: the reference truncates, the trainer rounds
                torch.testing.assert_close(value, theirs[key], rtol=1e-5, atol=1e-6,
                                           msg=lambda m, k=f"{name}.{key}": f"{k}: {m}")
