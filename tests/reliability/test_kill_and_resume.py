"""SIGKILL a real `python -m generalist_trainer train` at chosen moments of its checkpoint saves, `--resume` each time:
the run ends with exactly the parameters (and optimiser, RNG and method state) of an uninterrupted run.

The kills come from the TRAINER_CRASH_AT hook of trainer/checkpoint.py, so each lands at a known step
of a save: while the payload streams into the temporary file, after the previous version is kept but
before the rename, after the rename but before the folder fsync, and while writing best.pt.
"""

import os

from generalist_trainer.trainer.checkpoint import BEST, LAST, load_checkpoint, previous_version
from tests.reliability.runs import STEPS, assert_logged_once, assert_same_state, run_train

SIGKILLED = -9


def _step(path):
    return load_checkpoint(path)["position"]["global_step"]


def _temporaries(run_dir, name):
    return sorted(run_dir.glob(f".{name}.*.tmp"))


def _killed(run_dir, resume, crash_at):
    result = run_train(run_dir, resume=resume, crash_at=crash_at)
    assert result.returncode == SIGKILLED, f"{crash_at} did not kill the run:\n{result.stdout}\n{result.stderr}"
    return result


def test_sigkill_at_every_moment_of_a_save_then_resume_is_bit_exact(tmp_path, reference_run):
    run = tmp_path / "run"
    last, best = run / LAST, run / BEST

    # 1. Killed while the third save (step 3) streams its payload: a partial temporary file, last.pt at step 2.
    _killed(run, resume=False, crash_at="mid_payload@last.pt:3")
    assert _step(last) == 2 and _step(previous_version(last)) == 1
    assert _temporaries(run, LAST), "the kill should have left the partial temporary file"

    # 2. Resumed at step 2, killed after keeping last.pt (step 3) as last.prev.pt, before renaming step 4 in.
    result = _killed(run, resume=True, crash_at="before_replace@last.pt:2")
    assert f"resumed {last}: epoch 1, batch 2, step 2" in result.stdout
    assert _step(last) == 3 and os.path.samefile(last, previous_version(last))
    assert len(_temporaries(run, LAST)) == 1, "the stale temporary of kill 1 is removed by the next save"

    # 3. Resumed at step 3, killed right after renaming step 4 (the last batch of epoch 1) in.
    _killed(run, resume=True, crash_at="after_replace@last.pt:1")
    assert _step(last) == 4 and _step(previous_version(last)) == 3

    # 4. Resumed at the end of epoch 1, killed while writing the first best.pt: nothing of it is published,
    #    and last.pt still sits before the epoch-end validation, so the next resume redoes it and writes best.pt.
    _killed(run, resume=True, crash_at="before_footer@best.pt:1")
    assert not best.exists() and _temporaries(run, BEST)
    assert load_checkpoint(last)["position"] == {"epoch": 1, "batch": 4, "global_step": 4}

    # 5. Resumed without a kill: runs to the end.
    result = run_train(run, resume=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (run / "DONE").read_text().strip() == str(STEPS)
    assert not _temporaries(run, LAST) and not _temporaries(run, BEST)

    assert_same_state(last, reference_run / LAST)
    assert_same_state(best, reference_run / BEST)
    assert_logged_once(run)
