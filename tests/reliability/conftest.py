import pytest

from generalist_trainer.trainer.checkpoint import LAST, load_checkpoint
from tests.reliability.runs import STEPS, run_train


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """An uninterrupted `python -m generalist_trainer train` of the tiny run, shared by the kill-and-resume tests."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = run_train(run_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert load_checkpoint(run_dir / LAST)["position"]["global_step"] == STEPS
    return run_dir
