"""A save SIGKILLed at each of its crash points (trainer/checkpoint.py CRASH_POINTS), in a forked child:
what is left on disk always resumes from the last complete version, and the next save cleans up.

test_kill_and_resume.py kills whole training runs at a few of these points; this covers every point, for a
first save (nothing to keep yet) and for a save over an existing last.pt / last.prev.pt pair, in milliseconds.
"""

import os
import signal

import pytest
import torch

from generalist_trainer.trainer.checkpoint import (
    CRASH_ENV_VAR,
    CRASH_POINTS,
    LAST,
    load_newest_valid,
    previous_version,
    save_checkpoint,
)
from generalist_trainer.trainer.errors import CheckpointError


def _state(step):
    return {"config": {}, "networks": {"model": {"w": torch.full((64, 64), float(step))}}, "optimizers": {},
            "position": {"epoch": 1, "batch": step, "global_step": step}, "method_state": {},
            "rng": {"torch": torch.get_rng_state()}}


def _save_killed_at(path, step, point):
    """save_checkpoint(path, state of `step`) in a child process that SIGKILLs itself at `point`."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.environ[CRASH_ENV_VAR] = f"{point}@{path.name}:1"
            save_checkpoint(path, _state(step))
        finally:
            os._exit(3)  # reached only when the crash point did not fire
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{point}: exit status {status}"


def _step(state):
    return state["position"]["global_step"]


def _temporaries(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_first_save_killed_anywhere_leaves_nothing_or_the_complete_file(tmp_path, point):
    path = tmp_path / LAST
    _save_killed_at(path, 1, point)
    if point == "after_replace":
        assert _step(load_newest_valid(path)[0]) == 1
    else:
        assert not path.exists() and not previous_version(path).exists()
        with pytest.raises(CheckpointError, match="no usable checkpoint"):
            load_newest_valid(path)
    save_checkpoint(path, _state(2))
    assert _step(load_newest_valid(path)[0]) == 2 and not _temporaries(tmp_path)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_later_save_killed_anywhere_resumes_from_the_newest_complete_version(tmp_path, point):
    path = tmp_path / LAST
    save_checkpoint(path, _state(1))
    save_checkpoint(path, _state(2))
    _save_killed_at(path, 3, point)
    newest = 3 if point == "after_replace" else 2
    state, used = load_newest_valid(path, set_aside_rejected=True)
    assert used == path and _step(state) == newest
    # The version kept as previous is complete too: the fallback of the next damaged last.pt.
    kept = {"before_replace": 2, "after_replace": 2}.get(point, 1)
    assert _step(load_newest_valid(previous_version(path))[0]) == kept
    # The next save removes what the killed one left and keeps the newest complete version as previous.
    save_checkpoint(path, _state(4))
    assert _step(load_newest_valid(path)[0]) == 4
    assert _step(load_newest_valid(previous_version(path))[0]) == newest
    assert not _temporaries(tmp_path)
