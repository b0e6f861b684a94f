"""Run the table scripts (scripts/fmnist_table.sh, scripts/ducat_table.sh) with a stand-in interpreter.

The stand-in records every `python -m generalist_trainer ...` call, marks trainings DONE and writes the evaluation JSON
it is given; anything else (the table printers) runs on the real interpreter.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_PY = r"""#!/usr/bin/env bash
if [ "$1" != "-m" ] || [ "$2" != "generalist_trainer" ]; then exec "$REAL_PY" "$@"; fi
echo "$*" >> "$CALLS"
cmd=$3; shift 3
out=""; dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift ;;
    --resume) dir=$2; shift ;;
    train.out_dir=*) dir=${1#train.out_dir=} ;;
    --*|*=*) ;;
    *) [ -z "$dir" ] && dir=$1 ;;
  esac
  shift
done
case "$dir" in *"$FAIL_RUN") exit 3 ;; esac
if [ "$cmd" = train ]; then mkdir -p "$dir" && touch "$dir/DONE"; fi
if [ "$cmd" = eval ]; then echo "$RESULT_JSON" > "$out"; fi
"""


def run_table_script(script: str, tmp_path: Path, result: dict, fail_run: str = "no-such-run",
                     **env_extra: str) -> subprocess.CompletedProcess:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    fake = tmp_path / "fake_py"
    fake.write_text(FAKE_PY)
    fake.chmod(0o755)
    env = {**os.environ, "PY": str(fake), "REAL_PY": sys.executable, "OUT": str(tmp_path / "table"), "N": "1000",
           "AA_N": "1000", "CALLS": str(tmp_path / "calls.txt"), "FAIL_RUN": fail_run,
           "RESULT_JSON": json.dumps({"models": {"global": result}}), **env_extra}
    return subprocess.run(["bash", str(ROOT / "scripts" / script)], env=env, capture_output=True, text=True,
                          timeout=120)
