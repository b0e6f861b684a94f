"""The fault paths of the command line: each ends in one line on stderr (exit 2, or 130 for Ctrl-C), never a
traceback, and nothing already written is lost.

Subprocesses where the behaviour is the process's own (its exit code after a signal, a disk filling up, what
reaches the terminal); in-process `main` calls elsewhere, which take the same code path faster.
"""

import errno
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import generalist_trainer.trainer.training as training
from generalist_trainer.trainer.checkpoint import BEST, LAST, load_checkpoint, previous_version, save_checkpoint
from generalist_trainer.trainer.cli import main
from generalist_trainer.trainer.config import load_config
from generalist_trainer.trainer.errors import CheckpointError, ConfigError
from generalist_trainer.trainer.run_lock import LOCK_FILE
from tests.reliability.disk_full import fill_disk_on
from tests.reliability.runs import REPO_ROOT, STEPS, TINY, assert_same_state, run_train, subprocess_env, train_command

IN_PROCESS = ("train.deterministic=false", "train.threads=0")
NATURAL = [*TINY, "method.name=natural", *IN_PROCESS]


def _cli(*args, cwd=REPO_ROOT, timeout=240):
    return subprocess.run([sys.executable, "-m", "generalist_trainer", *args], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def _one_line_error(result):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _stderr_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished two-epoch natural run (last.pt, last.prev.pt, best.pt); tests work on copies of it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--no-eval", *NATURAL, f"train.out_dir={run}"]) == 0
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return shutil.copytree(finished_run, tmp_path / "run")


# ---------------------------------------------------------------------------------------------
# Overrides and config files that are not YAML


@pytest.mark.parametrize("value, problem", [
    ("[0.1", r"expected ',' or '\]', but got '<stream end>'"),
    ("!!python/object/apply:os.system ['touch pwned']", r"could not determine a constructor for the tag "
                                                          r"'tag:yaml.org,2002:python/object/apply:os.system'"),
])
def test_an_override_that_is_not_valid_yaml_is_one_line_naming_it(tmp_path, value, problem):
    result = _cli("train", "--no-eval", f"attack.eps={value}", f"train.out_dir={tmp_path / 'run'}", cwd=tmp_path)
    line = _one_line_error(result)
    assert re.fullmatch(rf"error: override {re.escape(repr(f'attack.eps={value}'))}: the value is not valid YAML "
                        rf"\((.*, )?{problem} at line 1, column \d+\)", line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing may be run or written"


def test_a_config_file_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    line = _one_line_error(_cli("train", "--config", str(config), cwd=tmp_path))
    assert line == f"error: config file {config}: not UTF-8 text (byte 0xe9 at offset 9); expected a YAML file"


def test_yaml_errors_of_a_config_file_are_one_line(tmp_path, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("train:\n  epochs: [1,\n  seed: 2\n")
    assert main(["train", "--config", str(config)]) == 2
    assert re.fullmatch(rf"error: config file {config}: not valid YAML \(.* at line \d+, column \d+\)",
                        _stderr_line(capsys))


# ---------------------------------------------------------------------------------------------
# Output paths, checked before the work


def test_export_into_a_path_that_is_a_file_is_refused(finished_run, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    assert main(["export", str(finished_run), "--out", str(taken)]) == 2
    assert _stderr_line(capsys) == f"error: export --out {taken}: is a file, not a folder"
    assert main(["export", str(finished_run), "--out", str(taken / "sub")]) == 2
    assert _stderr_line(capsys) == f"error: export --out {taken / 'sub'}: {taken} is a file, not a folder"
    assert taken.read_text() == "a file"


def test_eval_into_a_path_below_a_file_is_refused_before_evaluating(finished_run, tmp_path, capsys, monkeypatch):
    import generalist_trainer.trainer.eval.saved_models as saved_models

    def never(*args, **kwargs):
        raise AssertionError("the evaluation started before its output path was checked")

    monkeypatch.setattr(saved_models, "session_from_checkpoint", never)
    taken = tmp_path / "taken"
    taken.write_text("a file")
    assert main(["eval", str(finished_run), "--out", str(taken / "x.json")]) == 2
    assert _stderr_line(capsys) == f"error: eval --out {taken / 'x.json'}: {taken} is a file, not a folder"
    assert main(["eval", str(finished_run), "--out", str(tmp_path)]) == 2
    assert _stderr_line(capsys) == f"error: eval --out {tmp_path}: is a folder; expected a file path"
    # The library function checks too, before building anything.
    with pytest.raises(ConfigError, match=rf"evaluation output {taken / 'x.json'}: {taken} is a file"):
        saved_models.evaluate_checkpoint(finished_run, out=taken / "x.json")


@pytest.mark.parametrize("command", ["sweep", "lipschitz", "report"])
def test_analysis_commands_check_their_output_path_first(finished_run, tmp_path, capsys, command):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    assert main([command, str(finished_run), "--out", str(taken / "x")]) == 2
    assert _stderr_line(capsys) == f"error: {command} --out {taken / 'x'}: {taken} is a file, not a folder"


def test_exported_weights_get_the_mode_a_plain_open_would(finished_run, tmp_path):
    previous = os.umask(0o022)
    try:
        assert main(["export", str(finished_run), "--out", str(tmp_path / "export")]) == 0
    finally:
        os.umask(previous)
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE((tmp_path / "export" / name).stat().st_mode) == 0o644, name
    assert not [p for p in (tmp_path / "export").iterdir() if p.name.startswith(".")], "no temporary left"


# ---------------------------------------------------------------------------------------------
# A full disk during a checkpoint save


def test_a_full_disk_during_a_save_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, reference_run):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "tests.reliability.disk_full", LAST, "3",
               *train_command(run, resume=False)[3:]]  # the CLI arguments of the tiny run
    result = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True,
                            timeout=240)
    line = _one_line_error(result)
    assert line == (f"error: checkpoint {run / LAST}: no space left on device while writing it (the partial file "
                    f"was removed); the previous checkpoint {run / LAST} (epoch 1, batch 2, step 2) is intact")
    assert load_checkpoint(run / LAST)["position"]["global_step"] == 2
    assert not list(run.glob(".*.tmp")) and not (run / LOCK_FILE).exists()
    # Once there is room again the run resumes from it and ends as if nothing had happened.
    result = run_train(run, resume=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_same_state(run / LAST, reference_run / LAST)


def test_a_full_disk_on_the_first_save_says_nothing_was_saved_before(tmp_path, monkeypatch):
    state = {"config": {}, "networks": {}, "optimizers": {}, "method_state": {}, "rng": {},
             "position": {"epoch": 1, "batch": 1, "global_step": 1}}
    fill_disk_on(LAST, 1, monkeypatch.setattr)
    payload = {**state, "networks": {"model": {"w": torch.zeros(10_000)}}}
    with pytest.raises(CheckpointError, match=rf"^checkpoint {tmp_path / LAST}: no space left on device while "
                                              r"writing it .*; no earlier version of it was saved$"):
        save_checkpoint(tmp_path / LAST, payload)
    assert list(tmp_path.iterdir()) == []
    # A previous version that no longer verifies is not called intact.
    monkeypatch.undo()
    save_checkpoint(tmp_path / LAST, state)
    (tmp_path / LAST).write_bytes((tmp_path / LAST).read_bytes()[:-10])
    fill_disk_on(LAST, 1, monkeypatch.setattr)
    with pytest.raises(CheckpointError, match=r"no intact earlier version is left \(checkpoint .*last.pt: .*\)$"):
        save_checkpoint(tmp_path / LAST, payload)


# ---------------------------------------------------------------------------------------------
# Ctrl-C


def test_ctrl_c_is_one_line_with_the_step_and_the_resume_command(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "generalist_trainer", "train", "--no-eval", *TINY, "method.name=natural",
               "train.epochs=40", "train.checkpoint_every_steps=2", f"train.out_dir={run}"]
    # Ctrl-C's default action in the child whatever this process inherited: a suite started in the background by
    # a shell without job control runs with SIGINT ignored, and an ignored signal stays ignored across exec.
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not ((run / "steps.jsonl").exists() and len((run / "steps.jsonl").read_text().splitlines()) >= 5):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, out + err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    match = re.fullmatch(rf"interrupted at step (\d+); resume with: python -m generalist_trainer train --resume {run} "
                         r"\(it continues from the last checkpoint, step (\d+)\)", err.strip())
    assert match, err
    step, saved = int(match[1]), int(match[2])
    assert step >= 5 and saved % 2 == 0 and step - 2 <= saved <= step
    assert load_checkpoint(run / LAST)["position"]["global_step"] == saved
    assert not (run / LOCK_FILE).exists()
    # The command it prints works.
    result = _cli("train", "--resume", str(run), "--no-eval", "train.max_steps=" + str(saved + 1))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resumed {run / LAST}: " in result.stdout and f"step {saved}" in result.stdout


def test_ctrl_c_before_the_first_checkpoint_says_how_to_start_again(tmp_path, capsys, monkeypatch):
    """And --resume of such a run (killed before its first checkpoint) says the same rather than 'no checkpoint'."""
    run = tmp_path / "run"

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_checkpoint", interrupted)
    assert main(["train", "--no-eval", *NATURAL, "train.checkpoint_every_steps=1", f"train.out_dir={run}"]) == 130
    again = f"python -m generalist_trainer train --config {run / 'config.yaml'}"
    assert _stderr_line(capsys) == (f"interrupted at step 1, before the first checkpoint (nothing to resume); start "
                                    f"again with: {again}")
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--no-eval"]) == 2
    line = _stderr_line(capsys)
    assert line.startswith("error: no usable checkpoint") and line.endswith(
        f"; nothing was saved in {run} yet (the run stopped before its first checkpoint); start it afresh there "
        f"with: {again}")
    assert main(again.split()[3:] + ["--no-eval"]) == 0
    assert (run / "DONE").exists()


# ---------------------------------------------------------------------------------------------
# What a resume may and may not change


def test_resume_refuses_a_config_file(run_copy, tmp_path, capsys):
    other = tmp_path / "other.yaml"
    other.write_text("train:\n  epochs: 9\n")
    assert main(["train", "--resume", str(run_copy), "--config", str(other), "--no-eval"]) == 2
    assert "a resumed run keeps the config saved in its checkpoint" in _stderr_line(capsys)


def test_resume_with_another_length_needs_change_length(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--no-eval", *NATURAL, f"train.out_dir={run}", "train.max_steps=5"]) == 0  # epoch 2, batch 1
    before = (run / LAST).read_bytes()
    assert main(["train", "--resume", str(run), "--no-eval", "train.epochs=3", "train.max_steps=null"]) == 2
    line = _stderr_line(capsys)
    assert "'train.epochs=3': this run was started for 2 epochs" in line and "fractions of the run" in line
    assert "--change-length" in line
    assert (run / LAST).read_bytes() == before, "a refused resume must not touch the run"
    assert main(["train", "--resume", str(run), "--no-eval", "--change-length", "train.epochs=1"]) == 2
    assert "2 epoch(s) of this run are already trained (or begun)" in _stderr_line(capsys)
    assert main(["train", "--resume", str(run), "--no-eval", "--change-length", "train.epochs=3",
                 "train.max_steps=null"]) == 0
    assert "run length changed from 2 to 3 epochs" in capsys.readouterr().out
    state = load_checkpoint(run / LAST)
    assert state["config"]["train"]["epochs"] == 3 and state["position"] == {"epoch": 4, "batch": 0,
                                                                            "global_step": 12}
    assert main(["train", "--no-eval", "--change-length", *NATURAL, f"train.out_dir={tmp_path / 'new'}"]) == 2
    assert "--change-length: only with --resume" in _stderr_line(capsys)


def test_threads_must_not_be_negative():
    with pytest.raises(ConfigError, match=r"config field 'train.threads' = -3: expected an integer in \[0, 4096\]"):
        load_config(None, ["train.threads=-3"])


def test_an_empty_attack_list_is_refused(run_copy, capsys):
    with pytest.raises(ConfigError, match=r"config field 'eval.attacks' = \(\): expected a non-empty list"):
        load_config(None, ["eval.attacks=[]"])
    assert main(["eval", str(run_copy), "eval.attacks=[]"]) == 2
    assert "config field 'eval.attacks' = (): expected a non-empty list" in _stderr_line(capsys)
    assert not list(run_copy.glob("eval_*.json"))


# ---------------------------------------------------------------------------------------------
# Messages that say what to do


def test_unusable_last_checkpoints_with_a_valid_best_say_so_and_the_advice_works(run_copy, capsys):
    for name in (LAST, previous_version(run_copy / LAST).name):
        (run_copy / name).write_bytes(b"not a checkpoint at all, but long enough to hold a footer" * 2)
    assert main(["train", "--resume", str(run_copy), "--no-eval"]) == 2
    line = _stderr_line(capsys)
    best_position = load_checkpoint(run_copy / BEST)["position"]
    assert line.startswith("error: no usable checkpoint")
    assert (f"but {run_copy / BEST} is valid (saved after epoch {best_position['epoch'] - 1}, step "
            f"{best_position['global_step']}): to continue from it, copy it over last.pt (cp {run_copy / BEST} "
            f"{run_copy / LAST}) and resume") in line
    shutil.copy(run_copy / BEST, run_copy / LAST)
    assert main(["train", "--resume", str(run_copy), "--no-eval"]) == 0
    assert load_checkpoint(run_copy / LAST)["position"]["global_step"] == STEPS


@pytest.mark.parametrize("argv, message", [
    (["train", "--no-such-option"],
     "unrecognized arguments: --no-such-option (see: python -m generalist_trainer train --help)"),
    (["sweep", "run", "eval.num_points=3"],
     "unrecognized arguments: eval.num_points=3 (see: python -m generalist_trainer sweep --help)"),
    (["eval", "run", "--which", "middle"], "argument --which: invalid choice: 'middle' (choose from 'best', "
                                           "'last') (see: python -m generalist_trainer eval --help)"),
    (["no-such-command"], "argument command: invalid choice: 'no-such-command'"),
])
def test_argparse_mistakes_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert _stderr_line(capsys).startswith(f"error: {message}")


def test_file_system_errors_outside_checkpoints_are_one_line(finished_run, tmp_path, capsys, monkeypatch):
    """An OSError the code does not anticipate (here: the results JSON cannot be written) is reported, not traced."""
    import errno

    import generalist_trainer.trainer.eval.saved_models as saved_models

    def full(path, write, keep_previous=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(saved_models, "atomic_write", full)
    out = tmp_path / "e.json"
    assert main(["eval", str(finished_run), "--out", str(out), "eval.attacks=[clean]", "eval.num_points=8"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"error: no space left on device: {out}" and "Traceback" not in err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_while_appending_a_log_names_the_file(tmp_path):
    # /dev/full takes the open and fails the write with ENOSPC, as a full file system does mid-run.
    from generalist_trainer.trainer.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path)
    logger.steps_path = Path("/dev/full")
    with pytest.raises(OSError) as caught:
        logger.log_step({"step": 1, "loss": 0.5})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == "/dev/full"
    logger.epochs_path = Path("/dev/full")
    with pytest.raises(OSError) as caught:
        logger.log_epoch({"epoch": 1})
    assert caught.value.filename == "/dev/full"
