"""`trainer eval` runs the sanity checks (trainer/analysis/sanity.py) and stores what fired under "sanity"."""

import json
import warnings

import pytest
import torch

from generalist_trainer.trainer.analysis.sanity import RobustnessSanityWarning
from generalist_trainer.trainer.checkpoint import BEST, load_checkpoint, save_checkpoint
from generalist_trainer.trainer.config import EvalConfig, load_config
from generalist_trainer.trainer.eval.saved_models import evaluate_checkpoint
from generalist_trainer.trainer.training import train

TINY = [
    "data.dataset=synthetic", "data.synthetic_shape=[1, 12, 12]", "data.synthetic_train_size=224",
    "data.synthetic_test_size=64", "data.val_size=32", "data.batch_size=32", "data.eval_batch_size=64",
    "model.arch=small_cnn", "attack.eps=0.1", "attack.step=0.05", "attack.steps=2", "train.epochs=1",
    "train.val_points=32", "train.val_pgd_steps=2", "train.progress=false", "method.name=natural",
]
EVAL = EvalConfig(num_points=32, attacks=("clean", "pgd"), pgd_steps=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "natural"
    assert train(load_config(None, [*TINY, f"train.out_dir={run_dir}"])).finished
    return run_dir


def test_a_sound_model_has_an_empty_sanity_list_in_the_json(run):
    out = run / "sound.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RobustnessSanityWarning)
        report = evaluate_checkpoint(run, eval_cfg=EVAL, out=out)
    assert report["sanity"] == {"model": []}
    assert json.loads(out.read_text())["sanity"] == {"model": []}


def test_a_model_with_zero_input_gradients_is_flagged_in_the_json(run, tmp_path):
    """A zero last layer: the logits are the bias whatever the input, so every input gradient is exactly 0."""
    state = load_checkpoint(run / BEST)
    weights = state["networks"]["model"]
    last = [k for k in weights if k.startswith("classifier.") and k.endswith(".weight")][-1]
    weights[last] = torch.zeros_like(weights[last])
    masked = tmp_path / "masked.pt"
    save_checkpoint(masked, state)
    out = tmp_path / "masked.json"
    with pytest.warns(RobustnessSanityWarning, match="zero_gradients"):
        report = evaluate_checkpoint(masked, eval_cfg=EVAL, out=out)
    saved = json.loads(out.read_text())["sanity"]["model"]
    assert [f["check"] for f in saved] == ["zero_gradients"]
    assert saved[0]["details"]["zero_points"] == 32 and saved[0]["explanation"]
    assert report["sanity"]["model"] == saved
    # The attack still ran: a constant classifier is no more accurate under PGD than on clean inputs.
    assert report["models"]["model"]["pgd2"] == report["models"]["model"]["clean"]


def test_result_checks_run_on_each_models_accuracies(run, tmp_path, monkeypatch):
    """AutoAttack above PGD on the same points is flagged (evaluate_models stands in for a slow AutoAttack)."""
    seen = {}

    def fake_evaluate_models(models, x, y, ecfg, attack_cfg, batch_size, *, autoattack_states=None, progress=None):
        seen["points"] = len(x)
        return {name: {"clean": 0.9, "pgd2": 0.3, "autoattack": 0.5} for name in models}

    monkeypatch.setattr("generalist_trainer.trainer.eval.saved_models.evaluate_models", fake_evaluate_models)
    with pytest.warns(RobustnessSanityWarning, match="autoattack_above_pgd"):
        report = evaluate_checkpoint(run, eval_cfg=EVAL, out=tmp_path / "aa.json")
    assert seen["points"] == 32
    findings = json.loads((tmp_path / "aa.json").read_text())["sanity"]["model"]
    assert [f["check"] for f in findings] == ["autoattack_above_pgd"]
    assert findings[0]["details"] == {"autoattack": 0.5, "attack": "pgd2", "attack_accuracy": 0.3}
    assert report["sanity"]["model"] == findings
