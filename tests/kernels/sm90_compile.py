"""Compile every Triton kernel variant the launchers in kernels/*.py can pick, for sm_90, with no GPU.

The variants come from the launchers themselves: each launcher (`pgd_linf_step_triton`, ...) is called
on CPU tensors for every input kind it tells apart (dtypes from kernels.ops._X_DTYPES, scalar or per-sample
eps and step, lerp weights on either side of 0.5, L2 sample sizes for every BLOCK, ...) while its kernels'
`kernel[grid]` is intercepted. Each intercepted launch goes through the JIT's own argument binder for a
GPUTarget("cuda", 90, 32) backend, so the signature, the constexprs and the divisibility-16 attributes are
the ones the JIT would give the same tensors on a GPU, and then through `triton.compile` (ttir -> ttgir ->
llir -> ptx -> cubin with Triton's ptxas). Each variant's PTX global loads and stores are counted by width.

    python -m tests.kernels.sm90_compile [--out FILE.json] [--jobs N]

must run with TRITON_INTERPRET unset (under the interpreter @triton.jit makes no compilable kernels);
tests/kernels/test_sm90_compile.py runs it in a subprocess and asserts on the JSON. Works with the Triton
releases the project meets: 3.6 (the GPU image) and 3.9 (the CPU machines); both take
ASTSource(fn, signature, constexprs, attrs) and bind arguments with create_function_from_signature and
JITFunction._pack_args, which this module checks for and names when missing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import re
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from itertools import product

TARGET_ARCH = 90
# Modules holding @triton.jit kernels; every JITFunction in them must be launched below or called by one.
def kernel_module(name: str):
    """The module of a "kernels.<file>" name below (the package is installed as generalist_trainer.kernels)."""
    return importlib.import_module(f"generalist_trainer.{name}")


KERNEL_MODULES = ("kernels.pgd_step", "kernels.pgd_l2_step", "kernels.generalist_average", "kernels.lerp")
# A CIFAR-10 batch (N, 3, 32, 32): numel and per-sample stride are multiples of 16, as in training.
BATCH_SHAPE = (32, 3, 32, 32)
# The same launch with sizes that are not multiples of 16: the JIT compiles another variant for them.
ODD_BATCH_SHAPE = (3, 3, 5, 7)
# What each enumerated launcher takes; a new parameter fails the run until the enumeration below covers it.
LAUNCHER_PARAMS = {
    "kernels.pgd_step.pgd_linf_step_triton": ("x_adv", "grad", "x", "eps", "step", "lo", "hi"),
    "kernels.pgd_step.pgd_random_start_triton": ("x", "eps", "seed", "lo", "hi", "out", "sample_offset"),
    "kernels.pgd_l2_step.pgd_l2_step_triton": ("x_adv", "grad", "x", "eps", "step", "lo", "hi"),
    "kernels.generalist_average.generalist_average_triton": ("theta_r", "theta_n", "s_r", "s_n", "g", "decay", "beta",
                                                             "redistribute"),
    "kernels.lerp.lerp_triton": ("dst", "src", "weight"),
}
_ACCESS = re.compile(r"\b(ld|st)\.global((?:\.[\w:]+)+)")
_WIDTH = re.compile(r"^[bfsu](\d+)$")


def _launch_cases(torch, odd: bool = False):
    """(launcher name, thunk) for every input kind each launcher distinguishes.

    odd=True: sizes that are not multiples of 16 (the JIT compiles those separately, without the divisibility
    hint on numel), one dtype per storage width and scalar eps / step only: they must compile; their access
    widths are reported, not required.
    """
    from generalist_trainer.kernels import generalist_average, lerp, ops, pgd_l2_step, pgd_step

    x_dtypes = ops._X_DTYPES  # the dtypes the public ops accept: the launchers see nothing else
    flags = (False, True)
    if odd:
        x_dtypes, flags = (torch.float32, torch.bfloat16), (False,)
    shape = ODD_BATCH_SHAPE if odd else BATCH_SHAPE
    n = shape[0]

    def per_sample(flag: bool, value: float):
        return torch.full((n,), value, dtype=torch.float32) if flag else value

    for xd, gd, eps_t, step_t in product(x_dtypes, x_dtypes, flags, flags):
        yield "kernels.pgd_step.pgd_linf_step_triton", lambda xd=xd, gd=gd, e=eps_t, s=step_t: (
            pgd_step.pgd_linf_step_triton(torch.empty(shape, dtype=xd), torch.empty(shape, dtype=gd),
                                          torch.empty(shape, dtype=xd), per_sample(e, 0.03), per_sample(s, 0.01)))
    # sample_offset: a rank's slice of the global batch (> 0 on every rank but the first).
    for xd, eps_t, offset in product(x_dtypes, flags, (0, 3)):
        yield "kernels.pgd_step.pgd_random_start_triton", lambda xd=xd, e=eps_t, k=offset: (
            pgd_step.pgd_random_start_triton(torch.empty(shape, dtype=xd), per_sample(e, 0.03), seed=7,
                                             sample_offset=k))
    # L2: BLOCK = min(next_pow2(D), _MAX_BLOCK) from the per-sample size D; one D per BLOCK, plus the image sizes
    # training meets (Fashion-MNIST 784, CIFAR 3072: not powers of two, so the loops mask).
    top = pgd_l2_step._MAX_BLOCK
    if odd:
        sample_sizes = [3 * 5 * 7, 3 * 33 * 33]
    else:
        sample_sizes = sorted({2**k for k in range(top.bit_length())} | {784, 3072})
    for d, xd, gd, eps_t, step_t in product(sample_sizes, x_dtypes, x_dtypes, flags, flags):
        yield "kernels.pgd_l2_step.pgd_l2_step_triton", lambda d=d, xd=xd, gd=gd, e=eps_t, s=step_t: (
            pgd_l2_step.pgd_l2_step_triton(torch.empty(n, d, dtype=xd), torch.empty(n, d, dtype=gd),
                                           torch.empty(n, d, dtype=xd), per_sample(e, 0.5), per_sample(s, 0.1)))
    # Averaging: weight 1 - decay and beta each on either side of 0.5 (torch.lerp's two formulas).
    flat = 1001 if odd else 11_173_968  # ResNet-18's arena, padded to 16 elements per tensor
    for decay, beta, redistribute in product((0.999, 0.3), (0.2, 0.8), (False, True)):
        if odd and (decay, beta) != (0.999, 0.2):
            continue
        yield "kernels.generalist_average.generalist_average_triton", lambda d=decay, b=beta, r=redistribute: (
            generalist_average.generalist_average_triton(*[torch.empty(flat) for _ in range(5)], d, b, r))
    for xd, weight in product(x_dtypes, (0.3, 0.7)):
        yield "kernels.lerp.lerp_triton", lambda xd=xd, w=weight: (
            lerp.lerp_triton(torch.empty(flat, dtype=xd), torch.empty(flat, dtype=xd), w))


class _Recorder:
    """Stands in for a JITFunction in its module while the launchers run: records `kernel[grid](...)`."""

    def __init__(self, kernel, name: str, log: list):
        self.kernel, self.name, self.log = kernel, name, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append((self.name, self.kernel, args, kwargs))
        return launch


def _jit_functions(triton):
    found = {}
    for mod_name in KERNEL_MODULES:
        mod = kernel_module(mod_name)
        for attr, value in vars(mod).items():
            if isinstance(value, triton.runtime.JITFunction) and getattr(value.fn, "__module__", "") == mod_name:
                found[f"{mod_name}.{attr}"] = (mod, attr, value)
    return found


@contextlib.contextmanager
def _recording(triton):
    """Swap every module-level JITFunction of the kernel modules for a recorder (then restore them)."""
    log: list = []
    swapped = []
    for mod_name in KERNEL_MODULES:
        mod = kernel_module(mod_name)
        for attr, value in list(vars(mod).items()):
            if isinstance(value, triton.runtime.JITFunction):
                full = f"{value.fn.__module__}.{value.fn.__name__}"
                setattr(mod, attr, _Recorder(value, full, log))
                swapped.append((mod, attr, value))
    try:
        yield log
    finally:
        for mod, attr, value in swapped:
            setattr(mod, attr, value)


def _bind(triton, backend, kernel, args, kwargs):
    """What the JIT passes to triton.compile for these arguments: signature, constexprs, attrs, options."""
    from triton.runtime.jit import create_function_from_signature

    if not hasattr(kernel, "_pack_args"):
        raise RuntimeError(f"triton {triton.__version__}: JITFunction has no _pack_args; this check knows the "
                           "binder of triton 3.6 to 3.9 only (update tests/kernels/sm90_compile.py)")
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, dict(kwargs), bound, specialization, options)
    return signature, constexprs, attrs, options.__dict__


def _widths(ptx: str) -> dict[str, int]:
    """Global loads and stores in the PTX by kind and width in bits: {"ld128": 4, "ld32": 16, "st128": 4}."""
    counts: Counter = Counter()
    for op, mods in _ACCESS.findall(ptx):
        parts = mods.strip(".").split(".")
        lanes = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d+", p)), 1)
        bits = next((int(m.group(1)) for p in parts if (m := _WIDTH.match(p))), 0)
        counts[f"{op}{lanes * bits}"] += 1
    return dict(counts)


def _tensor_summary(args) -> list[dict]:
    """The tensor arguments of a launch; one passed twice (a placeholder pointer) names its first position."""
    out = []
    for i, a in enumerate(args):
        if hasattr(a, "data_ptr") and hasattr(a, "dtype"):
            first = next(j for j, b in enumerate(args) if b is a)
            out.append({"arg": i, "dtype": str(a.dtype).replace("torch.", ""), "numel": a.numel(),
                        "element_bytes": a.element_size(), "alias_of": first if first != i else None})
    return out


def _variants_of(odd: bool, backend, torch, triton) -> tuple[dict[str, dict], int]:
    variants: dict[str, dict] = {}
    n_cases = 0
    for launcher, thunk in _launch_cases(torch, odd):
        with _recording(triton) as log:
            thunk()
        n_cases += 1
        for name, kernel, args, kwargs in log:
            signature, constexprs, attrs, options = _bind(triton, backend, kernel, args, kwargs)
            # The kernel's declared tl.constexpr parameters; the JIT also turns an int argument equal to 1 into
            # a constant, which is a specialisation of the value, not a launcher choice.
            declared = {p.name for p in kernel.params if p.is_constexpr}
            named_constexprs = {kernel.arg_names[path[0]]: value for path, value in constexprs.items()
                                if kernel.arg_names[path[0]] in declared}
            divisible = sorted(kernel.arg_names[path[0]] for path, a in attrs.items()
                               if ["tt.divisibility", 16] in [list(x) for x in a])
            key = json.dumps([name, signature, sorted((str(k), repr(v)) for k, v in constexprs.items()),
                              divisible, options.get("num_warps")], sort_keys=True)
            variants.setdefault(key, {
                "kernel": name, "launcher": launcher, "signature": signature,
                "constexprs": {k: v for k, v in named_constexprs.items() if isinstance(v, (bool, int, float))},
                "divisible_by_16": divisible, "num_warps": options.get("num_warps"),
                "tensors": _tensor_summary(args), "odd_sizes": odd,
                "_compile": (kernel.fn.__module__, kernel.fn.__name__, signature, constexprs, attrs, options),
            })
    return variants, n_cases


def collect_variants() -> tuple[list[dict], int]:
    """Run every launcher case under the recorder: one dict per distinct compile, and the number of cases."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    backend = make_backend(GPUTarget("cuda", TARGET_ARCH, 32))
    for qualname, params in LAUNCHER_PARAMS.items():
        mod_name, fn_name = qualname.rsplit(".", 1)
        got = tuple(inspect.signature(getattr(kernel_module(mod_name), fn_name)).parameters)
        if got != params:
            raise RuntimeError(f"{qualname} now takes {got}, the enumeration was written for {params}: extend "
                               "_launch_cases in tests/kernels/sm90_compile.py to every new input kind")
    variants, n_cases = _variants_of(False, backend, torch, triton)
    odd, n_odd = _variants_of(True, backend, torch, triton)
    for key, v in odd.items():
        variants.setdefault(key, v)
    return list(variants.values()), n_cases + n_odd


def streams_and_tables(variant: dict) -> tuple[list[dict], list[dict]]:
    """A launch's distinct tensors split into the streamed operands (the largest numel) and per-sample tables."""
    distinct = [t for t in variant["tensors"] if t["alias_of"] is None]
    top = max(t["numel"] for t in distinct)
    return [t for t in distinct if t["numel"] == top], [t for t in distinct if t["numel"] != top]


def vector_width_problems(variants: list[dict]) -> list[str]:
    """Where a memory-bound variant misses 128-bit global loads and stores, one line each.

    Applies to the sizes training uses (multiples of 16, 16-byte aligned) wherever each thread holds at
    least 16 bytes of every streamed operand (BLOCK * element size / threads): there every global store
    and every load of a streamed operand must be 128 bits wide. Per-sample tables (fp32 gathers) may add
    32-bit loads, and no constexpr flag may change how many 128-bit loads a kernel issues for the same
    dtypes, BLOCK and warps.
    """
    problems = []
    loads_by_group: dict[tuple, dict[str, int]] = {}
    for v in variants:
        if v["odd_sizes"] or not v.get("ok"):
            continue
        streams, tables = streams_and_tables(v)
        block, threads = v["constexprs"].get("BLOCK"), 32 * v["num_warps"]
        if block is None or min(t["element_bytes"] for t in streams) * block < 16 * threads:
            continue
        acc = v["accesses"]
        what = f"{v['kernel']} {[t['dtype'] for t in streams]} {v['constexprs']} num_warps={v['num_warps']}"
        narrow = {k: n for k, n in acc.items() if k not in ("ld128", "st128") and not (tables and k == "ld32")}
        if not acc.get("ld128") or not acc.get("st128") or narrow:
            problems.append(f"{what}: global accesses {acc}, expected 128-bit only"
                            + (" besides 32-bit per-sample gathers" if tables else ""))
        group = (v["kernel"], tuple((t["arg"], t["dtype"]) for t in streams), block, v["num_warps"])
        loads_by_group.setdefault(group, {})[json.dumps(v["constexprs"])] = acc.get("ld128", 0)
    for (kernel, streams, block, warps), counts in loads_by_group.items():
        if len(set(counts.values())) > 1:
            problems.append(f"{kernel} streams {list(streams)} BLOCK={block} num_warps={warps}: the number of "
                            f"128-bit loads changes with the constexpr flags: {counts}")
    return problems


def _compile_one(job) -> dict:
    mod_name, fn_name, signature, constexprs, attrs, options = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(kernel_module(mod_name), fn_name)
    started = time.perf_counter()
    try:
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs),
                                  target=GPUTarget("cuda", TARGET_ARCH, 32), options=options)
    except Exception as exc:  # a compiler failure is a result to report, not a crash of the sweep
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[-2000:]}",
                "seconds": round(time.perf_counter() - started, 3)}
    asm = compiled.asm
    if not asm.get("cubin"):
        return {"ok": False, "error": "no cubin produced", "seconds": round(time.perf_counter() - started, 3)}
    return {"ok": True, "error": None, "seconds": round(time.perf_counter() - started, 3),
            "accesses": _widths(asm["ptx"]),
            "ptx_target": next(iter(re.findall(r"^\.target\s+(\S+)", asm["ptx"], re.M)), None)}


def _init_worker():
    os.environ.pop("TRITON_INTERPRET", None)


def helper_functions(triton) -> set[str]:
    """JITFunctions that kernels call (their name followed by "(" in another JITFunction's source)."""
    everything = [fn for _, _, fn in _jit_functions(triton).values()]
    return {f"{fn.fn.__module__}.{fn.fn.__name__}" for fn in everything
            if any(other is not fn and re.search(rf"\b{re.escape(fn.fn.__name__)}\s*\(", other.src)
                   for other in everything)}


def run(jobs: int) -> dict:
    """Collect, compile (in `jobs` processes) and describe every variant; the JSON report as a dict."""
    import torch
    import triton

    from generalist_trainer.kernels import dispatch

    if dispatch.TRITON_INTERPRETED:
        raise SystemExit("TRITON_INTERPRET is set: @triton.jit made interpreter functions; unset it and rerun")
    started = time.perf_counter()
    variants, n_cases = collect_variants()
    jobs_list = [v.pop("_compile") for v in variants]
    if jobs > 1:
        import multiprocessing

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker) as pool:
            results = list(pool.map(_compile_one, jobs_list, chunksize=4))
    else:
        results = [_compile_one(j) for j in jobs_list]
    for v, r in zip(variants, results):
        v.update(r)
    jit = {f"{fn.fn.__module__}.{fn.fn.__name__}" for _, _, fn in _jit_functions(triton).values()}
    return {
        "triton": triton.__version__, "torch": torch.__version__, "python": sys.version.split()[0],
        "target": f"cuda sm_{TARGET_ARCH}", "seconds": round(time.perf_counter() - started, 1),
        "jit_functions": sorted(jit), "helpers": sorted(helper_functions(triton)),
        "launcher_cases": n_cases, "variants": variants,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the JSON report here")
    parser.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="compiler processes")
    args = parser.parse_args(argv)
    report = run(args.jobs)
    failed = [v for v in report["variants"] if not v["ok"]]
    problems = vector_width_problems(report["variants"])
    by_kernel = Counter(v["kernel"].rsplit(".", 1)[1] for v in report["variants"])
    print(f"triton {report['triton']}: {len(report['variants'])} variants compiled for {report['target']} in "
          f"{report['seconds']} s ({', '.join(f'{k} {n}' for k, n in sorted(by_kernel.items()))}); "
          f"{len(failed)} failed; {len(problems)} without their 128-bit accesses")
    for v in failed[:10]:
        print(f"FAILED {v['kernel']} {v['signature']} {v['constexprs']}: {v['error'][:500]}")
    for line in problems[:10]:
        print(f"NARROW {line}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
