"""The README's "Python" section: its example runs as written, in a fresh interpreter, in seconds on the CPU."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def python_section() -> str:
    readme = (REPO / "README.md").read_text()
    headings = [m.group(1) for m in re.finditer(r"^## (.+)$", readme, re.M)]
    # Right after the CLI's sections: a reader meets the library next.
    assert headings.index("Python") == headings.index("Using it") + 1, headings
    start = readme.index("\n## Python\n")
    return readme[start:readme.index("\n## ", start + 1)]


def test_the_readme_python_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", python_section(), re.S)
    assert len(blocks) == 1
    example = blocks[0]
    for name in ("load_config", "train", "load_model", "evaluate", "attacks.PGD"):
        assert f"gt.{name}" in example, name
    assert "state_file=" in example
    # The example as a user runs it (its own folder for runs/); the checks after it only read what it made.
    checks = """
assert result.finished and (result.run_dir / "best.pt").is_file()
assert not model.training and model(x).shape == (16, 10)
assert abs(x_adv - x).max() <= 0.1 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
import json; assert json.loads(open("runs/yours.autoattack.json").read())["attack_index"] == 2
print("EXAMPLE OK")
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", example + checks], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert lines[-1] == "EXAMPLE OK"
    accuracies = [ast.literal_eval(line) for line in lines if line.startswith("{'clean'")]  # the printed dicts
    assert [sorted(k for k in a if not k.startswith("seconds_")) for a in accuracies] == [
        ["clean", "cw5", "pgd5"], ["autoattack", "autoattack_after_apgd-ce", "autoattack_after_apgd-t", "clean"]]
    assert accuracies[0]["clean"] == 1.0  # labelled with its own predictions
