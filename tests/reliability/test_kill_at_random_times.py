"""SIGKILL a real training run at random moments (seeded draws), resume until it finishes: bit-exact end state.

Complements test_kill_and_resume.py, whose kills sit at chosen points of a save: here they land
wherever the process happens to be (a step, a validation, a save, the log writes).
"""

import random
import signal
import subprocess
import time

from generalist_trainer.trainer.checkpoint import BEST, LAST, load_checkpoint
from tests.reliability.runs import (
    REPO_ROOT,
    STEPS,
    assert_logged_once,
    assert_same_state,
    subprocess_env,
    train_command,
)

KILLS = 3
STARTED = "steps/epoch"  # printed once the data and networks are built, right before the first step


def _start(run_dir):
    resume = (run_dir / LAST).exists()
    return subprocess.Popen(train_command(run_dir, resume), cwd=REPO_ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_after_start(proc, delay):
    """SIGKILL `delay` seconds after training started; False when the run ended first (or failed)."""
    for line in proc.stdout:
        if STARTED in line:
            break
    time.sleep(delay)
    if proc.poll() is not None:
        proc.stdout.read()
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    return True


def test_random_kills_then_resume_end_bit_exact(tmp_path, reference_run):
    run = tmp_path / "run"
    draws = random.Random(20240607)
    kills = 0
    for _ in range(KILLS):
        proc = _start(run)
        # The eight steps take about a second on an idle core; most kills land inside training.
        if _kill_after_start(proc, draws.uniform(0.0, 1.2)):
            kills += 1
            assert proc.returncode == -signal.SIGKILL
            # Whatever the moment, what is on disk is a complete, verified checkpoint (or none yet).
            if (run / LAST).exists():
                load_checkpoint(run / LAST)
            if (run / BEST).exists():
                load_checkpoint(run / BEST)
        else:
            assert proc.returncode == 0
            break
    assert kills >= 1, "no kill landed before the end of the run"
    while not (run / "DONE").exists():
        proc = _start(run)
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, output
    assert load_checkpoint(run / LAST)["position"]["global_step"] == STEPS
    assert_same_state(run / LAST, reference_run / LAST)
    assert_same_state(run / BEST, reference_run / BEST)
    assert_logged_once(run)
