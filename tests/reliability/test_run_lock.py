"""One writer per run folder (trainer/run_lock.py): a second training or a `--resume` of a run that is still
training is refused, naming the holder, while the first runs on undisturbed; a SIGKILLed holder leaves no lock.

The end-to-end tests run real `python -m generalist_trainer train` processes. The holder is paused with SIGSTOP while
the second one tries (it keeps its lock, as a running process does), so the second always meets a run in progress.
"""

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

import generalist_trainer.trainer.run_lock as run_lock
from generalist_trainer.trainer.checkpoint import LAST
from generalist_trainer.trainer.errors import RunFolderInUse
from generalist_trainer.trainer.run_lock import LOCK_FILE, acquire_run_folder
from tests.reliability.runs import (
    REPO_ROOT,
    TINY,
    assert_logged_once,
    assert_same_state,
    run_train,
    subprocess_env,
    train_command,
)

# A process that takes the lock, says so, and holds it until its stdin closes.
HOLDER = ("import sys; from trainer.run_lock import acquire_run_folder; "
          "lock = acquire_run_folder(sys.argv[1], 'holder'); print('held', flush=True); sys.stdin.read()")


def _start_holder(run_dir):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=REPO_ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_the_lock_nests_within_a_process_and_its_file_goes_with_the_last_release(tmp_path):
    outer = acquire_run_folder(tmp_path / "run", "train")
    inner = acquire_run_folder(tmp_path / "run", "train")
    holder = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["command"] == "train"
    inner.release()
    inner.release()  # a second release of the same hold changes nothing
    assert (tmp_path / "run" / LOCK_FILE).exists(), "the outer hold still needs the lock"
    outer.release()
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_a_folder_held_by_another_process_is_refused_naming_its_pid_and_host(tmp_path):
    run = tmp_path / "run"
    holder = _start_holder(run)
    try:
        with pytest.raises(RunFolderInUse, match=rf"run folder {run} is in use by PID {holder.pid} on host "
                                                 rf"{socket.gethostname()} \(holder started .*--resume {run}"):
            acquire_run_folder(run, "train")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    acquire_run_folder(run, "train").release()  # free once the holder has exited


def test_a_sigkilled_holder_leaves_its_file_but_no_lock(tmp_path):
    run = tmp_path / "run"
    holder = _start_holder(run)
    holder.kill()
    holder.wait(timeout=30)
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == holder.pid  # stale details, no lock
    lock = acquire_run_folder(run, "train")
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_child_the_holder_forked_does_not_keep_the_lock_after_the_holder_dies(tmp_path):
    """DataLoader workers are forked: a worker outliving its SIGKILLed parent must not block the resume."""
    run = tmp_path / "run"
    forking_holder = ("import os, sys, time; from trainer.run_lock import acquire_run_folder; "
                      "lock = acquire_run_folder(sys.argv[1], 'holder'); child = os.fork(); "
                      "time.sleep(60) if child == 0 else print(child, flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", forking_holder, str(run)], cwd=REPO_ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        holder.kill()
        holder.wait(timeout=30)
        acquire_run_folder(run, "train").release()
    finally:
        os.kill(child, signal.SIGKILL)


def test_the_file_a_releasing_holder_unlinked_is_not_taken_for_the_lock(tmp_path, monkeypatch):
    """Between our open and our flock the holder unlinks the file and unlocks it (its release): locking that
    orphan would let a third process lock a new file beside us. The lock must end up on the file in the folder."""
    run = tmp_path / "run"
    run.mkdir()
    real_flock = fcntl.flock
    calls = []

    def flock_after_a_release(fd, op):
        if not calls:
            (run / LOCK_FILE).unlink()
        calls.append(op)
        return real_flock(fd, op)

    monkeypatch.setattr(run_lock.fcntl, "flock", flock_after_a_release)
    lock = acquire_run_folder(run, "train")
    monkeypatch.undo()
    assert len(calls) == 2, "the orphaned file should have been dropped and the lock taken again"
    other = os.open(run / LOCK_FILE, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(other)
        lock.release()


def test_a_file_system_without_locks_is_warned_about_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    lock = acquire_run_folder(tmp_path / "run", "train")
    assert "does not support locks" in caplog.text and "not protected" in caplog.text
    lock.release()


# ---------------------------------------------------------------------------------------------
# Real training processes


def _wait_for(condition, process, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the training exited ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _holds_lock(run_dir, pid):
    try:
        return json.loads((run_dir / LOCK_FILE).read_text())["pid"] == pid
    except (OSError, ValueError, KeyError):
        return False


def _start_training(run_dir, tmp_path):
    log = (tmp_path / "first.log").open("w")
    return subprocess.Popen(train_command(run_dir, resume=False), cwd=REPO_ROOT, env=subprocess_env(),
                            stdout=log, stderr=subprocess.STDOUT)


def _refused(command, holder_pid):
    result = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"is in use by PID {holder_pid} on host {socket.gethostname()}" in lines[0], lines[0]
    return lines[0]


def test_a_second_writer_is_refused_and_the_first_run_is_unaffected(tmp_path, reference_run):
    run = tmp_path / "run"
    first = _start_training(run, tmp_path)
    try:
        _wait_for(lambda: _holds_lock(run, first.pid), first, "the lock")
        first.send_signal(signal.SIGSTOP)
        # Another method into the same folder, before or after its first checkpoint: refused either way.
        _refused([sys.executable, "-m", "generalist_trainer", "train", "--no-eval", *TINY, "method.name=pgd_at",
                  f"train.out_dir={run}"], first.pid)
        first.send_signal(signal.SIGCONT)
        _wait_for(lambda: (run / LAST).exists(), first, "the first checkpoint")
        first.send_signal(signal.SIGSTOP)
        message = _refused([sys.executable, "-m", "generalist_trainer", "train", "--resume", str(run), "--no-eval"],
                           first.pid)
        assert "(train started " in message
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=240) == 0, (tmp_path / "first.log").read_text()
    # The first run ends exactly as an undisturbed one, with its own config and every row logged once.
    assert yaml.safe_load((run / "config.yaml").read_text())["method"]["name"] == "generalist"
    assert_same_state(run / LAST, reference_run / LAST)
    assert_logged_once(run)
    assert not (run / LOCK_FILE).exists()


def test_a_run_whose_holder_was_sigkilled_resumes(tmp_path, reference_run):
    run = tmp_path / "run"
    first = _start_training(run, tmp_path)
    try:
        _wait_for(lambda: (run / LAST).exists(), first, "the first checkpoint")
    finally:
        first.kill()
    assert first.wait(timeout=60) == -signal.SIGKILL
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == first.pid  # left behind, not locked
    result = run_train(run, resume=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resumed {run / LAST}" in result.stdout
    assert_same_state(run / LAST, reference_run / LAST)
    assert_logged_once(run)
