"""Config keys renamed so that "backend" no longer names three things (issue 14, item 6): data.backend ->
data.loader, train.dist_backend -> train.process_group, --data-backend -> --loader.

A user's config file, dict or override with an old key is a one-line error naming the old key, the new one and the
file (exit 2); what older versions stored (checkpoints, a run folder's config.yaml) still resumes, loads and reports.

tests/data/checkpoints/old_keys_run/ was written by commit ac6a441 (before the rename) with
    python -m generalist_trainer train data.dataset=synthetic data.synthetic_shape=[1,4,4] data.synthetic_train_size=64
      data.synthetic_test_size=32 data.val_size=16 data.batch_size=16 data.synthetic_classes=4 method.name=pgd_at
      attack.steps=1 attack.eps=0.1 attack.step=0.1 train.epochs=2 train.val_points=16 train.val_pgd_steps=1
      train.device=cpu train.threads=1 train.progress=false train.dist_backend=gloo data.backend=cpu
      data.num_workers=0 engine.channels_last=false train.max_steps=3 train.out_dir=old_keys_run --no-eval
The same commit, run uninterrupted with train.max_steps=5 (and resumed from that folder to step 5), ends with the
networks of OLD_CODE_STEP5_DIGEST.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from generalist_trainer.trainer.analysis.report import load_run
from generalist_trainer.trainer.checkpoint import load_checkpoint
from generalist_trainer.trainer.cli import main
from generalist_trainer.trainer.config import RENAMED_KEYS, load_config, save_config, to_dict
from generalist_trainer.trainer.errors import ConfigError
from generalist_trainer.trainer.model_loading import load_model

OLD_RUN = Path(__file__).resolve().parents[1] / "data" / "checkpoints" / "old_keys_run"
OLD_CODE_STEP5_DIGEST = "c82542f8a03fcf1d9eee998970878b97"


def _networks_digest(state: dict) -> str:
    h = hashlib.sha256()
    for net in sorted(state["networks"]):
        for key, value in sorted(state["networks"][net].items()):
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(("old", "new"), sorted(RENAMED_KEYS.items()))
def test_an_old_key_in_a_user_config_file_is_a_one_line_error(tmp_path, capsys, old, new):
    section, key = old.split(".")
    preset = tmp_path / "mine.yaml"
    preset.write_text(yaml.safe_dump({section: {key: "auto"}}))
    assert main(["train", "--config", str(preset), f"train.out_dir={tmp_path / 'run'}"]) == 2
    err = _one_error_line(capsys)
    assert f"config file {preset}" in err and f"'{old}'" in err and f"'{new}'" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("old", "new"), sorted(RENAMED_KEYS.items()))
def test_an_old_key_in_an_override_is_a_one_line_error(tmp_path, capsys, old, new):
    assert main(["train", f"{old}=auto", f"train.out_dir={tmp_path / 'run'}"]) == 2
    err = _one_error_line(capsys)
    assert f"override '{old}=auto'" in err and f"'{new}'" in err, err


def test_the_old_flag_names_the_new_one(tmp_path, capsys):
    assert main(["train", "--data-backend", "cpu", f"train.out_dir={tmp_path / 'run'}"]) == 2
    err = _one_error_line(capsys)
    assert "--data-backend" in err and "--loader" in err, err


def test_an_old_key_in_a_dict_config_names_the_new_one():
    with pytest.raises(ConfigError, match=r"'train.dist_backend' was renamed to 'train.process_group'"):
        load_config({"train": {"dist_backend": "gloo"}})


def test_the_new_keys_round_trip_through_save_config(tmp_path):
    cfg = load_config(None, ["data.loader=torch", "data.num_workers=0", "train.process_group=gloo"])
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "backend" not in text
    saved = yaml.safe_load(text)
    assert saved["data"]["loader"] == "torch" and saved["train"]["process_group"] == "gloo"
    assert load_config(tmp_path / "config.yaml") == cfg
    assert to_dict(load_config(tmp_path / "config.yaml")) == to_dict(cfg)


def test_the_committed_run_was_written_with_the_old_keys():
    # Guards the fixture: the tests below prove nothing if it were rewritten by the new code.
    raw = torch.load(OLD_RUN / "last.pt", weights_only=True)
    assert raw["config"]["data"]["backend"] == "cpu" and raw["config"]["train"]["dist_backend"] == "gloo"
    assert "loader" not in raw["config"]["data"]
    assert "backend:" in (OLD_RUN / "config.yaml").read_text()


def test_an_old_checkpoint_loads_under_the_new_keys(caplog):
    caplog.set_level(logging.INFO, logger="generalist_trainer")
    state = load_checkpoint(OLD_RUN / "last.pt")
    assert state["config"]["data"]["loader"] == "cpu" and "backend" not in state["config"]["data"]
    assert state["config"]["train"]["process_group"] == "gloo" and "dist_backend" not in state["config"]["train"]
    assert "old key(s) data.backend, train.dist_backend" in caplog.text
    model = load_model(OLD_RUN, which="last")
    assert model(torch.rand(2, 1, 4, 4)).shape == (2, 4)


def test_an_old_run_resumes_bit_identically_and_keeps_resume_overrides_checked(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    assert main(["train", "--resume", str(run), "data.backend=cpu"]) == 2
    assert "'data.backend' was renamed to 'data.loader'" in _one_error_line(capsys)
    assert main(["train", "--resume", str(run), "--no-eval", "train.max_steps=5", "data.loader=cpu"]) == 0
    state = load_checkpoint(run / "last.pt")
    assert state["position"]["global_step"] == 5
    assert _networks_digest(state) == OLD_CODE_STEP5_DIGEST
    # The resumed run writes its config under the new names.
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["loader"] == "cpu" and "backend" not in saved["data"]


def test_report_reads_an_old_run_folder_under_the_new_keys():
    record = load_run(OLD_RUN)
    assert record.config["data"]["loader"] == "cpu" and record.config["train"]["process_group"] == "gloo"
