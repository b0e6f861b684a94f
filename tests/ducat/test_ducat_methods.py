"""DUCAT plugged into PGD-AT, TRADES and Generalist: config checks, 2C heads, one step each, folded eval."""

import pytest
import torch

from generalist_trainer.trainer.config import ModelConfig, load_config
from generalist_trainer.trainer.errors import ConfigError
from generalist_trainer.trainer.eval.class_fold import FoldedLogits
from generalist_trainer.trainer.methods import build_method
from generalist_trainer.trainer.models import build_model, with_dummy_classes
from generalist_trainer.trainer.objectives import Ducat

C = 4


def _config(*overrides):
    return load_config(None, ["model.arch=small_cnn", "train.epochs=4", "attack.steps=2", "attack.eps=0.1",
                              "attack.step=0.05", "method.ducat.enabled=true", *overrides])


def _factory(cfg):
    def factory():
        return build_model(cfg.model, num_classes=C, in_channels=1, image_size=12, mean=(0.5,), std=(0.25,))
    return factory


def _method(*overrides):
    cfg = _config(*overrides)
    torch.manual_seed(0)
    return build_method(cfg, _factory(cfg), torch.device("cpu"))


def _batch(n=8):
    gen = torch.Generator().manual_seed(5)
    return torch.rand(n, 1, 12, 12, generator=gen), torch.randint(0, C, (n,), generator=gen)


def test_natural_training_refuses_ducat():
    with pytest.raises(ConfigError, match=r"method\.ducat\.enabled.*'natural'"):
        _config("method.name=natural")


@pytest.mark.parametrize("override, field", [
    ("method.ducat.start=1.5", "method.ducat.start"),
    ("method.ducat.clean_true_weight=-0.1", "method.ducat.clean_true_weight"),
    ("method.ducat.adv_dummy_weight=0", "method.ducat.adv_dummy_weight"),
    ("method.ducat.natural_target=soft", "method.ducat.natural_target"),
])
def test_invalid_ducat_fields_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        _config("method.name=pgd_at", override)


def test_disabled_ducat_changes_nothing():
    cfg = load_config(None, ["model.arch=small_cnn", "method.name=pgd_at", "attack.steps=1"])
    torch.manual_seed(0)
    method = build_method(cfg, _factory(cfg), torch.device("cpu"))
    assert not isinstance(method.objective, Ducat) and method.model.num_classes == C
    assert "ducat" not in method.start_epoch(1)
    assert not isinstance(method.eval_models()["model"], FoldedLogits)


@pytest.mark.parametrize("arch", ["small_cnn", "preact_resnet18", "resnet18", "wrn"])
def test_dummy_head_has_the_layout_of_a_2c_model(arch):
    model_cfg = ModelConfig(arch=arch, depth=10, widen=1)

    def build(num_classes):
        return build_model(model_cfg, num_classes=num_classes, in_channels=1, image_size=12, mean=(0.5,),
                           std=(0.25,))

    widened, reference = with_dummy_classes(build(C)), build(2 * C)
    assert widened.num_classes == 2 * C
    assert {k: v.shape for k, v in widened.state_dict().items()} == \
           {k: v.shape for k, v in reference.state_dict().items()}
    assert widened.eval()(torch.rand(2, 1, 12, 12)).shape == (2, 2 * C)


STEP_CASES = [
    ("pgd_at", []),
    ("trades", []),
    ("generalist", ["method.generalist.robust_objective=pgd_at"]),
    ("generalist", ["method.generalist.robust_objective=trades"]),
    ("generalist", ["method.generalist.robust_objective=pgd_at", "method.ducat.natural_target=hard"]),
]


@pytest.mark.parametrize("name, extra", STEP_CASES)
@pytest.mark.parametrize("epoch", [1, 4])  # start 105/130 of 4 epochs: DUCAT off in epoch 1, on in epoch 4
def test_one_step_for_each_base_method(name, extra, epoch):
    method = _method(f"method.name={name}", *extra)
    for net in method.networks().values():
        assert net.num_classes == 2 * C
    schedule = method.start_epoch(epoch)
    assert schedule["ducat"] == float(epoch == 4) and method.objective.active == (epoch == 4)
    before = {k: [p.detach().clone() for p in net.parameters()] for k, net in method.networks().items()}
    x, y = _batch()
    metrics = method.train_step(x, y)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    if epoch == 4:
        assert any(k.endswith("adv_dummy") for k in metrics)  # the DUCAT objective ran
    trained = ("model",) if name != "generalist" else ("robust", "natural", "global")
    for key in trained:
        after = list(method.networks()[key].parameters())
        assert any(not torch.equal(a, b) for a, b in zip(after, before[key])), key
    for model in method.eval_models().values():
        assert isinstance(model, FoldedLogits)
        assert model.eval()(x).shape == (8, C)


def test_generalist_networks_share_one_flat_layout():
    method = _method("method.name=generalist")
    sizes = {name: arena.flat.numel() for name, arena in method.arenas.items()}
    assert len(set(sizes.values())) == 1
    method.start_epoch(4)
    method.train_step(*_batch())
    # The five networks start from one origin: the averages moved, and all keep the 2C head.
    assert method.global_model.num_classes == 2 * C


def test_ducat_step_is_deterministic_under_a_seed():
    results = []
    for _ in range(2):
        method = _method("method.name=pgd_at")
        method.start_epoch(4)
        torch.manual_seed(1)
        method.train_step(*_batch())
        results.append(torch.cat([p.detach().flatten() for p in method.model.parameters()]))
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("name", ["pgd_at", "trades", "generalist"])
def test_only_epochs_from_the_activation_on_may_become_best(name):
    ducat = _method(f"method.name={name}", "train.epochs=8", "method.ducat.start=0.5")
    assert [ducat.selectable_epoch(e) for e in range(1, 9)] == [False] * 3 + [True] * 5
    plain = _method(f"method.name={name}", "method.ducat.enabled=false")
    assert all(plain.selectable_epoch(e) for e in range(1, 5))
