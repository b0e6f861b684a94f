"""IAT under torchrun (2 CPU processes, gloo): each rank updates the eps of its slice's rows and the ranks exchange
them every step, so the table equals one process's on the same global batches, and a stopped run resumes exactly."""

import torch

import generalist_trainer.trainer.session as session_module
from generalist_trainer.trainer.checkpoint import LAST, load_checkpoint
from generalist_trainer.trainer.config import load_config
from generalist_trainer.trainer.training import train

from .test_ddp_gloo import TINY, check_replicas_file, networks, torchrun
from .worker import batchnorm_free

IAT = [*TINY, "method.name=iat", "method.iat.warmup_epochs=1", "method.iat.gamma=0.03"]


def eps_table(run_dir):
    return load_checkpoint(run_dir / LAST)["method_state"]["objective"]["iat_eps"]


def test_two_processes_keep_one_eps_table_and_resume_exactly(tmp_path, monkeypatch):
    straight, split = tmp_path / "ddp", tmp_path / "ddp_split"
    torchrun("-m", "tests.distributed.worker", "--no-batchnorm",
             "train", "--no-eval", *IAT, f"train.out_dir={straight}",
             "--then", "train", "--no-eval", *IAT, f"train.out_dir={split}", "train.max_steps=9",
             "--then", "train", "--resume", str(split), "--no-eval", "train.max_steps=null")
    monkeypatch.setattr(session_module, "build_model", batchnorm_free)
    result = train(load_config(None, [*IAT, f"train.out_dir={tmp_path / 'single'}"]))
    assert result.finished and result.global_step == 12

    check_replicas_file(straight)
    single, ddp = eps_table(tmp_path / "single"), eps_table(straight)
    assert single.shape == ddp.shape == (192,)
    # Rows of both ranks' halves carry an eps (clean-misclassified rows are 0): without the exchange, rank 0's table
    # would hold only its own rows' updates.
    assert int((single > 0).sum()) >= 10
    torch.testing.assert_close(ddp, single, rtol=1e-5, atol=1e-6)
    for name, state in networks(tmp_path / "single").items():
        for key, value in state.items():
            torch.testing.assert_close(networks(straight)[name][key], value, rtol=1e-4, atol=1e-5, msg=key)

    # Stopped mid-epoch 2 and resumed on both ranks: bit for bit the straight distributed run, table included.
    check_replicas_file(split)
    assert torch.equal(eps_table(split), ddp)
    for name, state in networks(straight).items():
        for key, value in state.items():
            assert torch.equal(networks(split)[name][key], value), f"{name}.{key} differs after resume"
