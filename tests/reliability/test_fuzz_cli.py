"""Property-based fuzzing of the command line: whatever the override strings or the config file (random bytes,
random YAML, random keys and values near the real schema), `main` either accepts a valid config or answers with
the project's one-line error and exit code 2, never a traceback.

The work itself is stubbed out (training, evaluation): what is fuzzed is everything before it, parsing,
validation, the resume rules and the run-folder lock. Two subprocess checks make sure the real entry point
(`python -m generalist_trainer`) behaves the same.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import generalist_trainer.trainer.eval.saved_models as saved_models
import generalist_trainer.trainer.model_loading as model_loading
import generalist_trainer.trainer.training as training
from generalist_trainer.trainer.cli import main
from generalist_trainer.trainer.config import EvalConfig, RunConfig, to_dict, validate
from tests.reliability.runs import REPO_ROOT, TINY, subprocess_env

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


class _Accepted(Exception):
    """Raised by the stubbed work: the command line got as far as training or evaluating."""


def _field_paths(tree: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in tree.items():
        paths.append(prefix + key)
        if isinstance(value, dict):
            paths += _field_paths(value, f"{prefix}{key}.")
    return paths


FIELDS = _field_paths(to_dict(RunConfig()))
SECTIONS = [f for f in FIELDS if "." not in f]
# Values a hostile user might type, each a different way for YAML or the config types to go wrong.
HOSTILE_VALUES = [
    "[0.1", "!!python/object/apply:os.system ['echo pwned']", "!!python/name:os.system", "2001-13-45",
    "!!timestamp 2020-99-99", "1" * 5000, "[" * 3000, "&a [*a]", "&a {x: *a}", "!!binary xyz", "!!int abc",
    "!!float x", "!!set {a, b}", ".nan", "-.inf", "1.0e999", "1e999", "~", "", "'", '"\\x', "\x00", "\ud800",
    "{a: 1}", "? [a]: 1", "<<: 5", "0x1F", "0o17", "9" * 400, "-3", "[1, 2, 3]", "[]", "{}", "null", "yes",
    "[1, [2, [3]]]", "{1: 2, null: 3}", "- a\n- b", "a: b: c", "%YAML 9.9\n--- 1", "--- 1\n--- 2", "\t1",
]

yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                         st.text(max_size=12), st.sampled_from(["linf", "generalist", "cpu", "cuda:0", "auto"]))
yaml_values = st.recursive(yaml_scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), children, max_size=4),
                           max_leaves=12)


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


values = st.one_of(st.sampled_from(HOSTILE_VALUES), st.text(max_size=30), yaml_values.map(_flow),
                   st.text(alphabet=":-[]{}!&*#|>'\",?%@` \n\t.0123456789eEnulx", max_size=20))
keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=20),
                 st.lists(st.sampled_from(SECTIONS) | st.text(max_size=6), min_size=1, max_size=4).map(".".join))
overrides = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, values), st.text(max_size=30)),
                     max_size=5)

# Config files: random bytes, random YAML mappings over the schema's names, schema-shaped ones with random
# values (these reach validation), and YAML-ish text.
schema_shaped = st.dictionaries(
    st.sampled_from(SECTIONS),
    st.dictionaries(st.sampled_from([f.split(".")[-1] for f in FIELDS]), yaml_values, max_size=4),
    max_size=4).map(lambda d: yaml.safe_dump(d).encode())
config_files = st.one_of(
    st.binary(max_size=300),
    st.dictionaries(st.sampled_from(SECTIONS) | st.text(max_size=8), yaml_values, max_size=5)
    .map(lambda d: yaml.safe_dump(d).encode()),
    schema_shaped,
    st.text(alphabet=":-[]{}!&*#|>'\" \n\tabcdeilnoprstu.0123456789", max_size=200).map(str.encode),
    st.sampled_from(HOSTILE_VALUES).map(lambda v: f"train:\n  epochs: {v}\n".encode("utf-8", "surrogatepass")),
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch working folder (a fuzzed `--resume=.` must not take the repository for a run) with the work
    stubbed out, and one small real run for the commands that read a checkpoint."""
    folder = tmp_path_factory.mktemp("fuzz_cli")
    run = folder / "run"
    assert main(["train", "--no-eval", *TINY, "method.name=natural", "train.max_steps=1",
                 "train.deterministic=false", "train.threads=0", f"train.out_dir={run}"]) == 0

    def accept_training(cfg, resume=False):
        validate(cfg)
        raise _Accepted

    def accept_evaluation(run_or_file, *, eval_cfg=None, **kwargs):
        assert isinstance(eval_cfg, EvalConfig)
        raise _Accepted

    def accept_export(run_or_file, out_dir, which="best"):
        raise _Accepted

    previous = os.getcwd()
    os.chdir(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "train", accept_training)
        patch.setattr(saved_models, "evaluate_checkpoint", accept_evaluation)
        patch.setattr(model_loading, "export_checkpoint", accept_export)
        yield folder, run
    os.chdir(previous)


def _answer(argv: list[str]) -> str:
    """'accepted', or the one error line; anything else (a traceback, exit 1, several lines) fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except _Accepted:
            return "accepted"
        except SystemExit as stop:  # argparse: a bad command line (2), or -h / --help among random options (0)
            if stop.code == 0:
                assert "usage:" in out.getvalue(), (argv, err.getvalue())
                return "help"
            code = stop.code
    lines = err.getvalue().splitlines()
    assert code == 2, (argv, code, err.getvalue())
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err.getvalue())
    return lines[0]


@FUZZ
@given(items=overrides)
def test_train_overrides(workdir, items):
    folder, _ = workdir
    _answer(["train", "--no-eval", *items, f"train.out_dir={folder / 'out'}"])


@FUZZ
@given(content=config_files, items=overrides)
def test_config_files(workdir, content, items):
    folder, _ = workdir
    config = folder / "fuzzed.yaml"
    config.write_bytes(content)
    _answer(["train", "--no-eval", "--config", str(config), *items, f"train.out_dir={folder / 'out'}"])


@settings(FUZZ, max_examples=80)
@given(items=overrides)
def test_resume_eval_and_export_arguments(workdir, items):
    folder, run = workdir
    _answer(["train", "--resume", str(run), "--no-eval", *items])
    _answer(["eval", str(run), *items])
    _answer(["export", str(run), "--out", str(folder / "export"), *items])  # takes no overrides at all


def test_the_fuzzers_reach_acceptance_and_validation(workdir):
    """The strategies are not all rejected at the first hurdle: valid inputs pass, schema-shaped ones reach
    the validation of values."""
    folder, run = workdir
    assert _answer(["train", "--no-eval", "train.epochs=3", f"train.out_dir={folder / 'out'}"]) == "accepted"
    assert _answer(["eval", str(run), "eval.num_points=4"]) == "accepted"
    assert _answer(["export", str(run), "--out", str(folder / "export")]) == "accepted"
    assert _answer(["train", "--no-eval", "train.threads=-3", f"train.out_dir={folder / 'out'}"]).startswith(
        "error: config field 'train.threads' = -3")
    config = folder / "shaped.yaml"
    config.write_bytes(yaml.safe_dump({"attack": {"steps": -1}}).encode())
    assert "config field 'attack.steps' = -1" in _answer(["train", "--config", str(config)])


@pytest.mark.parametrize("args", [
    ["train", "--config", "{config}"],  # a config file of random bytes
    ["train", "attack.eps=" + "[" * 3000],  # nested too deeply for the YAML parser's recursion
])
def test_the_real_entry_point_answers_in_one_line(tmp_path, args):
    config = tmp_path / "random.yaml"
    config.write_bytes(bytes(range(256)) * 2)
    result = subprocess.run([sys.executable, "-m", "generalist_trainer", *[a.format(config=config) for a in args]],
                            cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
