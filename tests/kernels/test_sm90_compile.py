"""Every Triton kernel variant the launchers can pick compiles for sm_90 (H100/H200) with the real compiler,
no GPU needed, and the memory-bound kernels keep their 128-bit global loads and stores.

tests/kernels/sm90_compile.py does the work in a subprocess without TRITON_INTERPRET (the interpreter,
which tests/conftest.py turns on here, makes no compilable kernels). SM90_COMPILE_PYTHON names a second
interpreter to run the same checks under, e.g. one whose triton is the GPU image's 3.6:

    python3.11 -m venv /tmp/venv-triton36 && /tmp/venv-triton36/bin/pip install triton==3.6.0
    echo $PWD/.venv/lib/python3.11/site-packages > /tmp/venv-triton36/lib/python3.11/site-packages/zz_main.pth
    SM90_COMPILE_PYTHON=/tmp/venv-triton36/bin/python .venv/bin/python -m pytest tests/kernels/test_sm90_compile.py

Compiled kernels land in Triton's cache (~/.triton/cache), so a rerun takes seconds; a cold run compiles
about 550 variants (a few CPU minutes).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernels import sm90_compile

ROOT = Path(__file__).resolve().parents[2]
ALT_PYTHON = os.environ.get("SM90_COMPILE_PYTHON")


def _has_cuda_backend(python: str) -> tuple[bool, str]:
    probe = "import triton, triton.backends.nvidia.compiler; print(triton.__version__)"
    proc = subprocess.run([python, "-c", probe], capture_output=True, text=True, env=_env(), cwd=ROOT)
    if proc.returncode != 0:
        return False, f"{python}: triton with its CUDA backend does not import: {proc.stderr.strip()[-300:]}"
    return True, proc.stdout.strip()


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 is its (and 3.6's) default
    return env


@pytest.fixture(scope="module", params=["this-python", "SM90_COMPILE_PYTHON"])
def report(request, tmp_path_factory) -> dict:
    if request.param == "this-python":
        python = sys.executable
    elif ALT_PYTHON:
        python = ALT_PYTHON
    else:
        pytest.skip("SM90_COMPILE_PYTHON is not set (a second interpreter, e.g. with the GPU image's triton 3.6)")
    ok, why = _has_cuda_backend(python)
    if not ok:
        if python == sys.executable:
            pytest.skip(why)
        pytest.fail(why)  # an interpreter named explicitly must work
    out = tmp_path_factory.mktemp("sm90") / "report.json"
    proc = subprocess.run([python, "-m", "tests.kernels.sm90_compile", "--out", str(out)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=3600)
    if not out.is_file():
        pytest.fail(f"the compile sweep wrote no report (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def test_every_variant_compiles_for_sm90(report):
    failed = [f"{v['kernel']} {v['signature']} {v['constexprs']}: {v['error'][:300]}"
              for v in report["variants"] if not v["ok"]]
    assert not failed, f"triton {report['triton']}: {len(failed)} variants fail to compile:\n" + "\n".join(failed[:20])
    targets = {v["ptx_target"] for v in report["variants"]}
    assert targets <= {"sm_90", "sm_90a"}, targets


def test_every_kernel_and_flag_is_reached(report):
    """Each kernel in kernels/*.py is launched by some case (or called by a kernel), each bool constexpr
    is seen both ways, and every dtype the public ops accept reaches every kernel that takes it."""
    launched = {v["kernel"] for v in report["variants"]}
    never = set(report["jit_functions"]) - launched - set(report["helpers"])
    assert not never, f"kernels no launcher case reaches: {sorted(never)}; add them to _launch_cases"
    seen: dict[tuple[str, str], set] = {}
    for v in report["variants"]:
        for name, value in v["constexprs"].items():
            seen.setdefault((v["kernel"], name), set()).add(value)
    one_sided = {k: vals for k, vals in seen.items() if all(type(x) is bool for x in vals) and len(vals) < 2}
    assert not one_sided, f"bool constexprs only ever seen one way: {one_sided}"
    from generalist_trainer.kernels.ops import _X_DTYPES

    wanted = {str(d).replace("torch.", "") for d in _X_DTYPES}
    for kernel in launched:
        dtypes = {t["dtype"] for v in report["variants"] if v["kernel"] == kernel and not v["odd_sizes"]
                  for t in sm90_compile.streams_and_tables(v)[0]}
        assert dtypes == {"float32"} or dtypes == wanted, f"{kernel}: stream dtypes {dtypes}"


def test_training_sizes_get_the_divisibility_hints(report):
    """The JIT marks 16-byte-aligned pointers and sizes that are multiples of 16 divisible by 16."""
    for v in report["variants"]:
        if v["odd_sizes"]:
            continue
        pointers = [name for name, ty in v["signature"].items() if ty.startswith("*")]
        missing = set(pointers) - set(v["divisible_by_16"])
        assert not missing, f"{v['kernel']}: pointers without the divisibility hint: {missing}"


def test_memory_bound_kernels_keep_128_bit_accesses(report):
    problems = sm90_compile.vector_width_problems(report["variants"])
    assert not problems, f"triton {report['triton']}:\n" + "\n".join(problems[:20])
    checked = [v for v in report["variants"] if not v["odd_sizes"] and v["accesses"].get("st128")]
    assert len(checked) >= 100, f"only {len(checked)} variants with 128-bit stores: the rule checked too little"


def _variant(kernel: str, accesses: dict, constexprs: dict | None = None, table: bool = False) -> dict:
    tensors = [{"arg": i, "dtype": "float32", "numel": 4096, "element_bytes": 4, "alias_of": None} for i in range(3)]
    tensors.append({"arg": 3, "dtype": "float32", "numel": 32, "element_bytes": 4, "alias_of": None} if table
                   else {"arg": 3, "dtype": "float32", "numel": 4096, "element_bytes": 4, "alias_of": 0})
    return {"kernel": kernel, "odd_sizes": False, "ok": True, "num_warps": 8, "tensors": tensors,
            "constexprs": {"BLOCK": 4096, "FLAG": table, **(constexprs or {})}, "accesses": accesses}


def test_the_width_rule_flags_narrow_accesses():
    """The rule the sweep applies, on hand-made variants: it must catch each way of losing 128-bit accesses."""
    good = _variant("k", {"ld128": 12, "st128": 4})
    assert sm90_compile.vector_width_problems([good]) == []
    assert sm90_compile.vector_width_problems([_variant("k", {"ld128": 12, "ld32": 16, "st128": 4}, table=True)]) == []
    for bad in ({"ld32": 48, "st32": 16}, {"ld128": 8, "ld64": 8, "st128": 4}, {"ld128": 12, "st64": 8},
                {"ld128": 12, "ld32": 16, "st128": 4}):
        assert sm90_compile.vector_width_problems([_variant("k", bad)]), bad
    # a flag that costs vector width on the same dtypes is caught even when each variant looks fine alone
    costly = _variant("k", {"ld128": 10, "ld32": 16, "st128": 4}, table=True)
    assert any("changes with the constexpr flags" in p for p in sm90_compile.vector_width_problems([good, costly]))
    # too few bytes per thread for 128 bits: no requirement
    small = _variant("k", {"ld32": 3, "st32": 1}, {"BLOCK": 256})
    small["num_warps"] = 4
    assert sm90_compile.vector_width_problems([small]) == []


def test_ptx_access_widths_are_read_from_the_instructions():
    ptx = """
    @%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
    @%p2 ld.global.L1::evict_last.v2.b64 { %rd5, %rd6 }, [ %rd2 + 0 ];
    ld.global.b16 %rs1, [ %rd3 + 0 ];
    @%p1 st.global.v4.b32 [ %rd4 + 0 ], { %r5, %r6, %r7, %r8 };
    st.global.b32 [ %rd4 + 0 ], %r9;
    ld.shared.v4.b32 { %r1, %r2, %r3, %r4 }, [ %r10 + 0 ];
    """
    assert sm90_compile._widths(ptx) == {"ld128": 2, "ld16": 1, "st128": 1, "st32": 1}
