"""IAT (instance-adaptive adversarial training, trainer/objectives/iat.py): its per-sample eps update and loss against
a hand-written loop on a 2-layer net; one step single-network and as Generalist's robust expert; the loaders'
batch indices; kill-and-resume bit-exact with the eps table; config errors; no host read in a step (torchrun:
tests/distributed/test_iat_ddp.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from generalist_trainer.trainer.attacks import PerSamplePGD
from generalist_trainer.trainer.checkpoint import LAST, load_checkpoint
from generalist_trainer.trainer.config import DataConfig, IatConfig, load_config
from generalist_trainer.trainer.data import ArrayDataset, build_train_loader
from generalist_trainer.trainer.data.dali_loader import dali_available
from generalist_trainer.trainer.errors import ConfigError
from generalist_trainer.trainer.objectives.iat import IAT
from generalist_trainer.trainer.training import train
from tests.engine.helpers import HostReads, tiny_batch, tiny_config, tiny_method

# ---------------------------------------------------------------------------------------------
# The update rule and the loss against a direct loop


def _two_layer() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(nn.Flatten(), nn.Linear(9, 12), nn.ReLU(), nn.Linear(12, 3))


def direct_pgd(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, base_step: float,
               steps: int) -> torch.Tensor:
    """L-inf PGD from x (no random start) with radius eps_i and step max(2 eps_i / steps, base_step) per sample."""
    step = torch.clamp(eps / (steps / 2), min=base_step).view(-1, 1, 1, 1)
    radius = eps.view(-1, 1, 1, 1)
    x_adv = x.clone()
    for _ in range(steps):
        leaf = x_adv.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(net(leaf), y, reduction="sum"), leaf)
        x_adv = torch.min(torch.max(x_adv + step * grad.sign(), x - radius), x + radius).clamp(0.0, 1.0)
    return x_adv


def direct_iat_epoch(net, x, y, table, index, *, eps, step, steps, gamma, beta, warmup, max_eps=None):
    """One visit of the batch, written out per sample: the new table and x_adv; counts which branch each took."""
    table = table.clone()
    branches = {"up": 0, "keep": 0, "down": 0, "clean_wrong": 0}
    with torch.no_grad():
        correct = net(x).argmax(1) == y
    if warmup:
        for i, k in enumerate(index.tolist()):
            table[k] = eps if correct[i] else 0.0
    else:
        current = table[index]
        probe_current = direct_pgd(net, x, y, current, step, steps)
        probe_higher = direct_pgd(net, x, y, current + gamma, step, steps)
        with torch.no_grad():
            robust_current = net(probe_current).argmax(1) == y
            robust_higher = net(probe_higher).argmax(1) == y
        for i, k in enumerate(index.tolist()):
            e = current[i]
            if robust_higher[i]:
                new, branch = e + gamma, "up"
            elif robust_current[i]:
                new, branch = e, "keep"
            else:
                new, branch = e - gamma, "down"
            if not correct[i]:
                new, branch = torch.zeros_like(e), "clean_wrong"
            new = torch.clamp(new, min=0.0)
            if max_eps is not None:
                new = torch.clamp(new, max=max_eps)
            branches[branch] += 1
            table[k] = beta * new + (1 - beta) * e
    return table, direct_pgd(net, x, y, table[index], step, steps), branches


@pytest.mark.parametrize("max_eps", [None, 0.12])
def test_iat_eps_table_and_loss_equal_a_direct_loop(max_eps):
    net = _two_layer().eval()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(12, 1, 3, 3, generator=gen), torch.randint(0, 3, (12,), generator=gen)
    index = torch.tensor([7, 2, 11, 0, 5, 9, 1, 3, 10, 4, 8, 6]) + 3  # a batch of a 15-sample training set
    eps, step, steps = 0.1, 0.01, 5
    cfg = IatConfig(warmup_epochs=1, gamma=0.04, beta=0.5, max_eps=max_eps)
    objective = IAT(PerSamplePGD(eps, step, steps, random_start=False), cfg)
    objective.set_training_size(15)
    expected_table = torch.zeros(15)
    seen = {"up": 0, "keep": 0, "down": 0, "clean_wrong": 0}
    for epoch in (1, 2, 3, 4):
        objective.start_epoch(epoch, 4)
        x_adv = objective.adversarial(net, x, y, index)
        expected_table, expected_adv, branches = direct_iat_epoch(
            net, x, y, expected_table, index, eps=eps, step=step, steps=steps, gamma=cfg.gamma, beta=cfg.beta,
            warmup=epoch == 1, max_eps=max_eps)
        seen = {k: seen[k] + branches[k] for k in seen}
        torch.testing.assert_close(objective.eps_table, expected_table, rtol=0, atol=0, msg=f"epoch {epoch}")
        torch.testing.assert_close(x_adv, expected_adv, rtol=0, atol=0, msg=f"epoch {epoch}")
        loss, metrics = objective.loss(net, x, x_adv, y)
        torch.testing.assert_close(loss, F.cross_entropy(net(expected_adv), y), rtol=0, atol=0)
        assert float(metrics["iat_eps"].value) == pytest.approx(float(expected_table[index].mean()), rel=1e-6)
        # Samples outside the batch are never touched.
        assert torch.equal(objective.eps_table[:3], torch.zeros(3))
    assert all(seen[k] > 0 for k in ("up", "keep", "down", "clean_wrong")), seen  # every branch of the rule ran
    if max_eps is not None:
        assert float(objective.eps_table.max()) <= max_eps


def test_iat_attack_keeps_each_sample_in_its_own_ball():
    net = _two_layer().eval()
    x = torch.rand(6, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    eps = torch.tensor([0.0, 0.01, 0.05, 0.1, 0.2, 0.3])
    attack = PerSamplePGD(0.1, 0.02, 4)  # random start: drawn inside each sample's ball
    x_adv = attack(net, x, y, eps=eps, step=torch.full((6,), 0.05))
    distance = (x_adv - x).abs().flatten(1).amax(1)
    assert torch.all(distance <= eps + 1e-7) and torch.equal(x_adv[0], x[0])
    assert float(distance[5]) > 0.1  # the large radii are used, not the configured eps
    with pytest.raises(ValueError, match=r"eps must be a \(6,\) tensor"):
        attack(net, x, y, eps=torch.zeros(5), step=torch.zeros(6))


def test_iat_without_indices_is_an_error():
    objective = IAT(PerSamplePGD(0.1, 0.01, 2), IatConfig())
    objective.set_training_size(4)
    x, y = torch.rand(2, 1, 3, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="dataset indices"):
        objective.adversarial(_two_layer(), x, y)


# ---------------------------------------------------------------------------------------------
# One step inside the methods


@pytest.mark.parametrize("single_network", [True, False], ids=["single", "generalist"])
def test_one_iat_step_single_network_and_generalist(single_network):
    if single_network:
        method, trained = tiny_method("method.iat.warmup_epochs=1", method="iat"), ["model"]
    else:
        method = tiny_method("method.generalist.robust_objective=iat", "method.iat.warmup_epochs=1")
        trained = ["robust", "natural", "global"]
    assert method.needs_sample_index
    method.set_training_size(20)
    x, y = tiny_batch()
    index = torch.arange(8) * 2 + 1
    for epoch in (1, 2):  # warm-up, then the adaptive update
        method.start_epoch(epoch)
        before = {k: [p.detach().clone() for p in method.networks()[k].parameters()] for k in trained}
        table_before = method.objective.eps_table.clone()
        metrics = method.train_step(x, y, index)
        assert metrics and all(math.isfinite(v) for v in metrics.values())
        for key in trained:
            after = list(method.networks()[key].parameters())
            assert any(not torch.equal(a, b) for a, b in zip(after, before[key])), key
        changed = method.objective.eps_table != table_before
        assert changed.any() and not changed[::2].any()  # only the batch's rows are written
    assert method.extra_state()["objective"]["iat_eps"].shape == (20,)


def test_other_methods_do_not_ask_for_indices():
    assert not tiny_method(method="pgd_at").needs_sample_index
    assert not tiny_method().needs_sample_index  # generalist with pgd_at
    assert not tiny_method(method="natural").needs_sample_index


def test_iat_steps_read_nothing_on_the_host():
    method = tiny_method("method.iat.warmup_epochs=1", method="iat")
    method.set_training_size(8)
    counter = HostReads()
    for epoch in (1, 2):
        method.start_epoch(epoch)
        with counter:
            method.device_step(*tiny_batch(seed=epoch), torch.arange(8))
        assert counter.reads == [], f"epoch {epoch}: {counter.reads}"


# ---------------------------------------------------------------------------------------------
# The loaders' batch indices


def _dataset(count=40, side=8, channels=3):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, side, side, channels), dtype=np.uint8)
    return ArrayDataset(images, rng.integers(0, 10, count), 10, "toy", (0.5,) * channels, (0.25,) * channels)


@pytest.mark.parametrize("world_size", [1, 2])
def test_every_loader_gives_the_rows_dataset_indices(world_size):
    ds = _dataset()
    loaders = ["cpu", "gpu", "torch"] + (["dali"] if dali_available() else [])
    cfg = DataConfig(dataset="synthetic", batch_size=8, num_workers=0)
    for rank in range(world_size):
        expected = None
        for name in loaders:
            loader = build_train_loader(dataclasses.replace(cfg, loader=name), ds, device="cpu", seed=2, padding=0,
                                        flip=False, rank=rank, world_size=world_size)
            indices = list(loader.batch_indices(3, start=1))
            batches = list(loader.batches(3, start=1))
            assert len(indices) == len(batches) == 4, name
            for index, (x, y) in zip(indices, batches):
                assert index.dtype == torch.int64 and index.shape == y.shape, name
                # Unaugmented, so each row is the dataset's image and label at its index.
                assert torch.equal(y, torch.from_numpy(ds.labels[index.numpy()]).to(y.dtype)), name
                images = torch.from_numpy(ds.images[index.numpy()]).permute(0, 3, 1, 2).float() / 255
                torch.testing.assert_close(x, images, rtol=0, atol=0, msg=name)
            if expected is None:
                expected = indices
            assert all(torch.equal(a, b) for a, b in zip(indices, expected)), name
        everything = torch.cat(list(loader.batch_indices(3)))
        assert len(set(everything.tolist())) == len(everything)  # a permutation's prefix: no repeats


# ---------------------------------------------------------------------------------------------
# Resume, config, torchrun

TINY_RUN = [
    "data.dataset=synthetic", "data.synthetic_shape=[1, 12, 12]", "data.synthetic_train_size=224",
    "data.synthetic_test_size=64", "data.val_size=32", "data.batch_size=32", "data.eval_batch_size=64",
    "model.arch=small_cnn", "attack.eps=0.1", "attack.step=0.05", "attack.steps=2",
    "train.epochs=2", "train.val_points=32", "train.val_pgd_steps=2", "train.progress=false",
    "train.log_every_steps=1", "eval.num_points=32", "method.iat.warmup_epochs=1", "method.iat.gamma=0.03",
]


@pytest.mark.parametrize("method", ["iat", "generalist"])
def test_kill_and_resume_of_iat_is_bit_exact(tmp_path, method):
    """12 steps straight vs 9 (stopped mid-epoch 2, after the warm-up) + resume: same networks and eps table."""
    extra = [f"method.name={method}", "method.generalist.robust_objective=iat"]
    straight = load_config(None, [*TINY_RUN, *extra, f"train.out_dir={tmp_path / 'a'}"])
    assert train(straight).global_step == 12
    split = load_config(None, [*TINY_RUN, *extra, f"train.out_dir={tmp_path / 'b'}", "train.max_steps=9"])
    assert train(split).global_step == 9
    resumed = train(dataclasses.replace(split, train=dataclasses.replace(split.train, max_steps=None)), resume=True)
    assert resumed.finished and resumed.global_step == 12
    a, b = load_checkpoint(tmp_path / "a" / LAST), load_checkpoint(tmp_path / "b" / LAST)
    table = a["method_state"]["objective"]["iat_eps"]
    assert table.shape == (192,) and bool((table > 0).any())  # 224 - 32 validation images
    assert torch.equal(table, b["method_state"]["objective"]["iat_eps"])
    for net, state in a["networks"].items():
        for key, value in state.items():
            assert torch.equal(value, b["networks"][net][key]), f"{net}.{key} differs after resume"


@pytest.mark.parametrize("override, field_name", [
    ("method.iat.warmup_epochs=-1", "method.iat.warmup_epochs"),
    ("method.iat.gamma=0", "method.iat.gamma"),
    ("method.iat.gamma=abc", "method.iat.gamma"),
    ("method.iat.beta=0", "method.iat.beta"),
    ("method.iat.beta=1.5", "method.iat.beta"),
    ("method.iat.max_eps=-0.1", "method.iat.max_eps"),
    ("method.iat.max_eps=nan", "method.iat.max_eps"),
])
def test_bad_iat_settings_name_their_field(override, field_name):
    with pytest.raises(ConfigError, match=field_name.replace(".", r"\.")) as err:
        tiny_config(override, method="iat")
    assert "\n" not in str(err.value)


def test_iat_refuses_ducat_and_cuda_graphs():
    with pytest.raises(ConfigError, match=r"method\.ducat\.enabled"):
        tiny_config("method.ducat.enabled=true", method="iat")
    with pytest.raises(ConfigError, match=r"method\.ducat\.enabled"):
        tiny_config("method.ducat.enabled=true", "method.generalist.robust_objective=iat")
    graphs = ["engine.cuda_graphs=true", "train.device=cuda"]  # validated without a GPU
    with pytest.raises(ConfigError, match=r"engine\.cuda_graphs.*'iat'"):
        tiny_config(*graphs, method="iat")
    with pytest.raises(ConfigError, match=r"engine\.cuda_graphs.*'iat'"):
        tiny_config(*graphs, "method.generalist.robust_objective=iat")


def test_profile_runs_iat_steps_with_their_indices(tmp_path):
    from generalist_trainer.trainer.engine.profiling import profile_training

    overrides = ["data.dataset=synthetic", "data.synthetic_shape=[1, 12, 12]", "data.synthetic_train_size=48",
                 "data.synthetic_test_size=16", "data.val_size=0", "data.batch_size=8", "model.arch=small_cnn",
                 "method.name=iat", "method.iat.warmup_epochs=0", "attack.steps=2", "train.device=cpu",
                 "train.threads=0"]
    threads = torch.get_num_threads()
    try:
        result = profile_training(load_config(None, overrides), steps=1, warmup=1, out=tmp_path / "t.json", top_k=3)
    finally:
        torch.set_num_threads(threads)
    assert result["steps"] == 1 and result["phases_ms"]["attack"] > 0
