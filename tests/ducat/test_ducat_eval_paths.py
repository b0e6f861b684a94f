"""Every evaluation path of a DUCAT run sees the max-folded C logits, never the raw 2C head.

The head of a trained DUCAT checkpoint is rewritten so that each dummy column is its real column + 1:
argmax-then-mod-C (and the max-fold) decide exactly as the real columns do, while the raw 2C argmax is
always a dummy column, so a path that forgot the fold would score 0 where the folded model scores its
real accuracy. At a negligible eps the attacks cannot flip a decision, so PGD, CW, the adaptive pgd_lse,
AutoAttack, the training-time validation and `sweep` must all report that real accuracy.
"""

import pytest
import torch

from generalist_trainer.trainer.analysis.run_analysis import sweep_checkpoint
from generalist_trainer.trainer.checkpoint import load_checkpoint, load_export, save_checkpoint
from generalist_trainer.trainer.config import EvalConfig, load_config
from generalist_trainer.trainer.eval import autoattack_adapter, autoattack_resumable
from generalist_trainer.trainer.eval.saved_models import evaluate_checkpoint
from generalist_trainer.trainer.model_loading import export_checkpoint
from generalist_trainer.trainer.session import dataset_tensors, session_from_checkpoint
from generalist_trainer.trainer.training import train, validate
from tests.ducat.test_ducat_export import TINY

C = 4
TINY_EPS = 1e-6


@pytest.fixture(scope="module")
def skewed_run(tmp_path_factory):
    """A DUCAT PGD-AT run whose last.pt has dummy columns = real columns + 1."""
    run = tmp_path_factory.mktemp("ducat_skewed")
    train(load_config(None, [*TINY, "method.name=pgd_at", f"train.out_dir={run}"]))
    state = load_checkpoint(run / "last.pt")
    weights = state["networks"]["model"]
    head = [k for k, v in weights.items() if k.endswith(".weight") and v.dim() == 2 and v.shape[0] == 2 * C]
    assert len(head) == 1, head
    w, b = weights[head[0]], weights[head[0][: -len("weight")] + "bias"]
    w[C:] = w[:C]
    b[C:] = b[:C] + 1.0
    state.pop("format_version", None)
    save_checkpoint(run / "last.pt", state)
    return run


def shorten(adversary):
    """The official attacks with fewer iterations (and 3 target classes: this head has C = 4): which model
    they attack is under test, not their strength."""
    adversary.apgd.n_iter = adversary.apgd_targeted.n_iter = 5
    adversary.apgd_targeted.n_target_classes = 3
    adversary.fab.n_iter, adversary.fab.n_target_classes = 5, 3
    adversary.square.n_queries = 50
    return adversary


def real_column_accuracy(session, x: torch.Tensor, y: torch.Tensor) -> float:
    network = session.method.networks()["model"].eval()
    with torch.no_grad():
        logits = network(x)
    assert not bool((logits.argmax(1) < C).any())  # the raw 2C argmax is always a dummy column
    return float((logits[:, :C].argmax(1) == y).float().mean())


def test_every_attack_and_autoattack_see_the_folded_logits(skewed_run, monkeypatch):
    pytest.importorskip("pyautoattack")
    real_build = autoattack_adapter.build_autoattack
    monkeypatch.setattr(autoattack_resumable, "build_autoattack", lambda *a, **k: shorten(real_build(*a, **k)))
    session, _ = session_from_checkpoint(str(skewed_run / "last.pt"), "cpu")
    x, y = dataset_tensors(session.splits.test, 16, session.device)
    expected = real_column_accuracy(session, x, y)
    assert expected > 0  # otherwise the test could not tell a folded path from a raw one

    ecfg = EvalConfig(num_points=16, eps=TINY_EPS, pgd_steps=2, cw_steps=2, autoattack_resume=False,
                      attacks=("clean", "pgd", "cw", "pgd_lse", "autoattack"))
    res = evaluate_checkpoint(skewed_run, which="last", eval_cfg=ecfg, device="cpu")["models"]["model"]
    for key in ("clean", "pgd2", "cw2", "pgd_lse2", "autoattack"):
        assert res[key] == pytest.approx(expected), key


def test_training_validation_sees_the_folded_logits(skewed_run):
    session, _ = session_from_checkpoint(str(skewed_run / "last.pt"), "cpu")
    x, y = dataset_tensors(session.splits.val, session.cfg.train.val_points, session.device)
    expected = real_column_accuracy(session, x, y)
    assert expected > 0
    val = validate(session, epoch=1)
    assert val["val_clean"] == pytest.approx(expected)


def test_sweep_sees_the_folded_logits(skewed_run):
    session, _ = session_from_checkpoint(str(skewed_run / "last.pt"), "cpu")
    x, y = dataset_tensors(session.splits.test, 16, session.device)
    expected = real_column_accuracy(session, x, y)
    report = sweep_checkpoint(skewed_run, which="last", eps_values=[TINY_EPS], num_points=16, steps=2,
                              device="cpu", out=skewed_run / "sweep.json", emit_warnings=False)
    assert report["models"]["model"]["clean"] == pytest.approx(expected)
    assert all(p["accuracy"] == pytest.approx(expected) for p in report["models"]["model"]["curve"])


def test_export_decides_by_the_real_columns(skewed_run, tmp_path):
    export_checkpoint(skewed_run, tmp_path, which="last")
    session, _ = session_from_checkpoint(str(skewed_run / "last.pt"), "cpu")
    x, _ = dataset_tensors(session.splits.test, 16, session.device)
    with torch.no_grad():
        reference = session.method.networks()["model"].eval()(x)[:, :C].argmax(1)
        assert torch.equal(load_export(tmp_path)(x).argmax(1), reference)
