"""The CPU benchmark: every backend and mode in one table, interleaved, one thread.

    python benchmarks/cpu.py                                  # D = 10 14 18, N = 4096, std 0.1 and 1
    python benchmarks/cpu.py --dims 14 --stds 0.1 --repeat 5 --skip memory inference

One command for every CPU number of benchmarks/RESULTS.md and docs/performance.md.
Everything runs on one thread (set here before any framework is imported); times are
the process's CPU time (`cpu_clock`), so that other work on the machine does not count.

* **step**: one forward + backward of the aux loss (float32 `[N, D]`, one codebook,
  default `Config`, z = std * randn) in JAX `jit`, torch eager, torch `compiled()`,
  TensorFlow `compiled()` and TensorFlow eager. All variants of one (D, std) run in
  this process, interleaved round by round, so that a noisy machine slows them
  alike; the table gives each one's median and its ratio to JAX's median.
* **floor**: the three matrix products of a step (the histogram
  $P_A^\\top P_B$ and the two of its gradient) at their shapes, at the best
  single-thread float32 GEMM time measured here (torch and NumPy, normal inputs);
  "x floor" is a step's median over that sum. Below D of about 16 the step is not
  product-bound: the elementwise work on $P_A$, $P_B$ (O(N 2^{D/2})) and the
  per-operation overhead set the floor there.
* **first call**: the first step of each variant at each D (torch.compile / XLA
  compile, with a fresh inductor cache unless `--warm-cache`); and, each in a fresh
  process, the first forward + backward of `torch.compile(LFQ layer)` on a new
  inductor cache ("cold") and again on the cache it left ("warm": a restarted run),
  and then of a second input shape in the same process (one recompile); and all of
  that again after the process first compiles a trivial function (on another new
  cache), which separates what any first `torch.compile` costs from the layer's own,
  and once more with `torch.compile(layer, dynamic=True)` (no recompile at the second
  shape).
* **ops**: aten operations per eager torch step (forward + backward).
* **memory**: each backend's step in a fresh process at `--memory-tokens`,
  D = `--memory-dim`: growth of the resident high-water mark over the size after
  a warm-up step, against `P_A + P_B + histogram` (float32 bytes).
* **inference**: quantize + indices of `2**22` tokens, D = 16, without gradients,
  as GB/s of bytes read and written, against a copy of z into an existing buffer
  and a clone (a copy into new memory, which is what every call does with its
  outputs), under each allocator setting of `ALLOCATORS` (fresh processes); "jax -z"
  is JAX's cheapest kernel of z's size, JAX's own floor. "into buffers" and
  "donated" are an encode loop that keeps its output memory (docs/performance.md):
  compiled torch writing into the caller's buffers, JAX with z donated.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import lfq  # noqa: E402

#: Step, product and inference times are this process's CPU time (all its threads), not
#: wall time: on a machine shared with other work, one thread's CPU time is what the
#: computation costs, while its wall time also counts the time others held the core.
#: First calls are wall time (what a user waits; inductor compiles in worker processes).
cpu_clock = time.process_time

STEP_VARIANTS = ("jax-jit", "torch-eager", "torch-compiled", "tf-compiled", "tf-eager")
MEMORY_VARIANTS = ("jax-jit", "torch-eager", "torch-compiled", "tf-compiled", "numpy-reference")


# ----------------------------------------------------------------------------- steps


def _torch():
    import torch

    torch.set_num_threads(1)
    return torch


def _tf():
    _torch()  # torch before tensorflow (shared libraries)
    import tensorflow as tf

    if not getattr(_tf, "configured", False):
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        _tf.configured = True
    return tf


def make_step(variant: str, z: np.ndarray, cfg: lfq.Config):
    """A no-argument callable running one forward + backward of the aux loss on `z`."""
    if variant.startswith("torch"):
        torch = _torch()
        be = lfq.get("torch")
        be = be.compiled() if variant == "torch-compiled" else be
        zt = torch.from_numpy(z).requires_grad_(True)

        def step():
            zt.grad = None
            be.lfq(zt, cfg).aux_loss.backward()
            return zt.grad

        return step
    if variant == "jax-jit":
        import jax

        be = lfq.get("jax")
        zj = jax.device_put(z)
        fn = jax.jit(jax.value_and_grad(lambda v: be.lfq(v, cfg).aux_loss))
        return lambda: jax.block_until_ready(fn(zj))
    if variant.startswith("tf"):
        tf = _tf()
        be = lfq.get("tensorflow")
        be = be.compiled() if variant == "tf-compiled" else be
        zt = tf.constant(z)
        return lambda: be.vjp("aux_loss", zt, cfg).numpy()
    if variant == "numpy-reference":  # forward only: its gradients are formulas, not autodiff
        from lfq import reference

        return lambda: reference.lfq(z, cfg)
    raise ValueError(f"unknown variant {variant!r}")


def product_shapes(d: int, n: int) -> list[tuple[int, int, int]]:
    """`(M, K, P)` of the step's three products: histogram and the two gradients."""
    a, b = 2 ** ((d + 1) // 2), 2 ** (d // 2)
    return [(a, n, b), (n, b, a), (n, a, b)]


def gemm_floor_ms(d: int, n: int, repeat: int) -> float:
    """Sum over the step's products of the best single-thread float32 GEMM time (torch, NumPy)."""
    torch = _torch()
    rng = np.random.default_rng(0)
    total = 0.0
    for m, k, p in product_shapes(d, n):
        x = rng.random((m, k), dtype=np.float32) + 0.5  # normal numbers only
        y = rng.random((k, p), dtype=np.float32) + 0.5
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        best = float("inf")
        for _ in range(repeat):
            for fn in (lambda: tx @ ty, lambda: x @ y):
                start = cpu_clock()
                fn()
                best = min(best, cpu_clock() - start)
        total += best * 1e3
    return total


def count_torch_ops(z: np.ndarray, cfg: lfq.Config) -> int:
    """aten operations of one eager torch forward + backward."""
    torch = _torch()
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    zt = torch.from_numpy(z).requires_grad_(True)
    be = lfq.get("torch")
    with Count():
        be.lfq(zt, cfg).aux_loss.backward()
    return Count.calls


def time_steps(variants, d: int, n: int, std: float, repeat: int) -> list[dict]:
    """Median ms of every variant at (D, std), interleaved round by round."""
    cfg = lfq.Config(codebook_dim=d)
    z = (std * np.random.default_rng(d).standard_normal((n, d))).astype(np.float32)
    steps, rows = {}, {}
    for v in variants:
        try:
            steps[v] = make_step(v, z, cfg)
            start = time.perf_counter()
            steps[v]()
            rows[v] = {"first_ms": (time.perf_counter() - start) * 1e3, "times": []}
            steps[v]()
        except Exception as err:  # noqa: BLE001 - a benchmark row reports any failure
            rows[v] = {"note": f"{type(err).__name__}: {str(err)[:80]}"}
            steps.pop(v, None)
    for _ in range(repeat):
        for v, step in steps.items():
            start = cpu_clock()
            step()
            rows[v]["times"].append((cpu_clock() - start) * 1e3)
    out = []
    for v in variants:
        row = {"variant": v, "D": d, "N": n, "std": std, **rows[v]}
        times = row.pop("times", None)
        if times:
            row["ms"], row["min_ms"] = statistics.median(times), min(times)
        out.append(row)
    return out


# ----------------------------------------------------------------------------- memory


def _reset_peak() -> None:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def memory_case(variant: str, n: int, d: int) -> dict:
    """Peak resident growth of one step after a warm-up step (run in a fresh process)."""
    cfg = lfq.Config(codebook_dim=d)
    z = (0.1 * np.random.default_rng(0).standard_normal((n, d))).astype(np.float32)
    step = make_step(variant, z, cfg)
    step()
    _reset_peak()
    before = _status_kib("VmRSS")
    step()
    grow = (_status_kib("VmHWM") - before) / 1024
    a, b = 2 ** ((d + 1) // 2), 2 ** (d // 2)
    itemsize = 8 if variant == "numpy-reference" else 4
    unit = (n * (a + b) + a * b) * itemsize / 2**20
    return {"variant": variant, "N": n, "D": d, "peak_mib": grow, "pab_mib": unit, "x_pab": grow / unit}


def run_child(mode: str, args: list, timeout: float, opener: str = "{", env=None) -> tuple[Any, str]:
    """This script run as `mode json(args)` in a fresh process: `(result, "")` with the last
    stdout line starting with `opener` parsed as JSON, or `(None, note)` with the tail of
    its stderr, or the timeout, as the note."""
    cmd = [sys.executable, os.path.abspath(__file__), mode, json.dumps(args)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(opener)]
    return (json.loads(lines[-1]), "") if lines else (None, proc.stderr[-200:])


def run_memory(n: int, d: int, timeout: float, variants=MEMORY_VARIANTS) -> list[dict]:
    rows = []
    for v in variants:
        found, note = run_child("--_memory", [v, n, d], timeout)
        rows.append(found if found is not None else {"variant": v, "note": note})
    return rows


# ----------------------------------------------------------------------------- first calls


def first_call_case(d: int, after_other: bool = False, dynamic: bool = False) -> dict:
    """Seconds of the first forward + backward of `torch.compile(LFQ layer)` (run in a fresh process),
    then of a second input shape (torch recompiles once, with the changed axis dynamic).

    With `after_other`, a trivial function is compiled first ("torch_first_s"): what any
    first `torch.compile` of a process costs, so that the layer's own share shows. With
    `dynamic`, `torch.compile(layer, dynamic=True)`: one graph for every size.
    """
    torch = _torch()
    from lfq.backends.torch_backend import LFQ

    row: dict = {"D": d, "compile": "dynamic=True" if dynamic else "default"}
    if after_other:
        start = time.perf_counter()
        torch.compile(lambda x: (x.sin() * 2 + 1).sum())(torch.randn(64, 16))
        row["torch_first_s"] = time.perf_counter() - start
    layer = LFQ(codebook_size=2**d, dim=d)
    compiled = torch.compile(layer, dynamic=True if dynamic else None)

    def step(shape, clock) -> float:
        x = torch.randn(*shape, requires_grad=True)
        start = clock()
        out = compiled(x)
        (out[0].sum() + out[2]).backward()
        return clock() - start

    seconds = [step(shape, time.perf_counter) for shape in ((2, 512, d), (3, 300, d))]
    # a step once compiled, at the first shape (median CPU time of 15)
    steps = [step((2, 512, d), cpu_clock) for _ in range(15)]
    return {**row, "first_s": seconds[0], "second_shape_s": seconds[1], "step_ms": 1e3 * sorted(steps)[7]}


def run_first_calls(d: int, timeout: float) -> list[dict]:
    """`first_call_case` twice on one fresh inductor cache: cold, then warm (a restarted run);
    then the same after a trivial compile, and that with `dynamic=True`, each on a fresh cache."""
    rows = []
    for after_other, dynamic in ((False, False), (True, False), (True, True)):
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="lfq-inductor-"))
        for cache in ("cold", "warm"):
            found, note = run_child("--_first", [d, after_other, dynamic], timeout, env=env)
            rows.append({"cache": cache, **(found if found is not None else {"D": d, "note": note})})
    return rows


# ----------------------------------------------------------------------------- inference


#: Allocator settings the inference runs under, each in its own process (they act at
#: start-up). The outputs of one call are 288 MiB of new memory: by default glibc maps
#: blocks that large afresh for every call and the kernel zeroes each new page, which
#: costs more than the copy itself; huge pages make that 512 times fewer faults, and a
#: heap that keeps freed blocks (no mmap) lets the next call's outputs reuse them.
ALLOCATORS = {
    "default": {},
    "huge pages": {"THP_MEM_ALLOC_ENABLE": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "heap reuse": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)},
}


def inference_case(n: int, d: int, repeat: int) -> list[dict]:
    """Quantize + indices GB/s (bytes of z read, codes and indices written)."""
    torch = _torch()
    import jax

    cfg = lfq.Config(codebook_dim=d)
    z = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    tb, jb = lfq.get("torch"), lfq.get("jax")
    zt, zj = torch.from_numpy(z), jax.device_put(z)

    def torch_fn(v):
        return tb.quantize(v, cfg), tb.codes_to_indices(v, cfg)

    def torch_into(v, codes, indices):
        # an encode loop's outputs in buffers it keeps: inductor writes them in place
        codes.copy_(tb.quantize(v, cfg))
        indices.copy_(tb.codes_to_indices(v, cfg))

    def jax_encode(v):
        # z donated: the codes reuse its memory. They are made from the indices
        # (indices_to_codes o codes_to_indices == quantize, exactly), so that z is
        # dead once the indices are read; quantize(z) beside codes_to_indices(z)
        # makes XLA copy the donated z first.
        indices = jb.codes_to_indices(v, cfg)
        return jb.indices_to_codes(indices, cfg, dtype="float32"), indices

    compiled = torch.compile(torch_fn, fullgraph=True)
    compiled_into = torch.compile(torch_into, fullgraph=True)
    jitted = jax.jit(lambda v: (jb.quantize(v, cfg), jb.codes_to_indices(v, cfg)))
    donating = jax.jit(jax_encode, donate_argnums=0)
    negate = jax.jit(lambda v: -v)
    negate_in_place = jax.jit(lambda v: -v, donate_argnums=0)
    dst = torch.empty_like(zt)
    codes_buf, indices_buf = torch.empty_like(zt), torch.empty((n, 1), dtype=torch.int64)
    donated = [jax.device_put(z), jax.device_put(z)]  # each call's z is the last call's codes (or -z)

    def jax_donated():
        codes, indices = jax.block_until_ready(donating(donated[0]))
        donated[0] = codes
        return codes, indices

    def negate_donated():
        donated[1] = jax.block_until_ready(negate_in_place(donated[1]))
        return donated[1]

    def torch_into_buffers():
        compiled_into(zt, codes_buf, indices_buf)
        return codes_buf, indices_buf

    fns = {
        "torch-eager": lambda: torch_fn(zt),
        "torch-compiled": lambda: compiled(zt),
        "jax-jit": lambda: jax.block_until_ready(jitted(zj)),
        "torch-compiled into buffers": torch_into_buffers,
        "jax-jit donated": jax_donated,
        "copy": lambda: dst.copy_(zt),
        # a copy into new memory, as the steps write their outputs: the kernel's page
        # faults on fresh memory can cost more than the copy itself
        "clone": lambda: zt.clone(),
        # JAX's own cheapest kernel of z's size (read z, write a new array): JAX's floor
        "jax -z": lambda: jax.block_until_ready(negate(zj)),
        "jax -z donated": negate_donated,
    }
    times = {k: [] for k in fns}
    moved = {}  # bytes read and written: z, and every output (JAX's indices are int32)
    with torch.no_grad():
        for k, fn in fns.items():
            outputs = fn()
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            moved[k] = z.nbytes + sum(o.nbytes for o in outputs)
        for _ in range(repeat):
            for k, fn in fns.items():
                start = cpu_clock()
                fn()
                times[k].append(cpu_clock() - start)
    copy_gbps = 2 * z.nbytes / min(times["copy"]) / 1e9
    clone_gbps = 2 * z.nbytes / min(times["clone"]) / 1e9
    rows = []
    for k in [k for k in fns if k != "copy"]:
        gbps = moved[k] / min(times[k]) / 1e9
        rows.append(
            {
                "variant": k,
                "N": n,
                "D": d,
                "gbps": gbps,
                "copy_gbps": copy_gbps,
                "of_copy": gbps / copy_gbps,
                "clone_gbps": clone_gbps,
                "of_clone": gbps / clone_gbps,
            }
        )
    return rows


def run_inference(n: int, d: int, repeat: int, timeout: float, allocators=tuple(ALLOCATORS)) -> list[dict]:
    """`inference_case` under each of `allocators` (names in `ALLOCATORS`), each in a fresh process."""
    rows = []
    for name in allocators:
        env = dict(os.environ, **ALLOCATORS[name])
        found, note = run_child("--_inference", [n, d, repeat], timeout, opener="[", env=env)
        rows += [{"allocator": name, **r} for r in (found if found is not None else [{"variant": "all", "note": note}])]
    return rows


# ----------------------------------------------------------------------------- report


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores (1 thread used)"


def versions() -> str:
    import importlib.metadata as md

    parts = []
    for name in ("torch", "jax", "tensorflow", "numpy"):
        try:
            parts.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            pass
    return ", ".join(parts)


def format_report(steps, floors, ops, memory, inference, first_calls=()) -> str:
    out = []
    out.append("| D | std | variant | ms | x JAX | x floor | first call s |")
    out.append("|---|---|---|---|---|---|---|")
    jax_ms = {(r["D"], r["std"]): r.get("ms") for r in steps if r["variant"] == "jax-jit"}
    seen = set()  # a variant's later stds at the same D reuse its compiled program: no first call
    for r in steps:
        first = "" if (r["D"], r["variant"]) in seen else f"{r.get('first_ms', 0) / 1e3:.2f}"
        seen.add((r["D"], r["variant"]))
        if "ms" not in r:
            out.append(f"| {r['D']} | {r['std']} | {r['variant']} | {r.get('note', '')} | | | |")
            continue
        base, floor = jax_ms.get((r["D"], r["std"])), floors[r["D"]]
        ratio = f"{r['ms'] / base:.2f}" if base else ""
        out.append(
            f"| {r['D']} | {r['std']} | {r['variant']} | {r['ms']:.2f} | {ratio} | {r['ms'] / floor:.1f} | {first} |"
        )
    out.append("")
    out.append("| D | GEMM floor ms (3 products) | aten ops per eager torch step |")
    out.append("|---|---|---|")
    for d in floors:
        out.append(f"| {d} | {floors[d]:.3f} | {ops.get(d, '')} |")
    if memory:
        out.append("")
        out.append("| variant | N | D | peak growth MiB | P_A+P_B+hist MiB | ratio |")
        out.append("|---|---|---|---|---|---|")
        for r in memory:
            if "peak_mib" not in r:
                out.append(f"| {r['variant']} | | | {r.get('note', '')[:80]} | | |")
            else:
                out.append(
                    f"| {r['variant']} | {r['N']} | {r['D']} | {r['peak_mib']:.0f} | {r['pab_mib']:.0f} "
                    f"| {r['x_pab']:.2f} |"
                )
    if inference:
        out.append("")
        out.append("| inference | allocator | N | D | GB/s | copy GB/s | of copy | clone GB/s | of clone |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in inference:
            if "gbps" not in r:
                out.append(f"| {r['variant']} | {r.get('allocator', '')} | {r.get('note', '')[:80]} | | | | | | |")
                continue
            out.append(
                f"| {r['variant']} | {r.get('allocator', '')} | {r['N']} | {r['D']} | {r['gbps']:.2f} "
                f"| {r['copy_gbps']:.2f} | {100 * r['of_copy']:.0f}% | {r['clone_gbps']:.2f} "
                f"| {100 * r['of_clone']:.0f}% |"
            )
    if first_calls:
        out.append("")
        out.append(
            "| first call of torch.compile(LFQ layer), forward + backward | D | inductor cache "
            "| torch's own first compile, s | layer, s | second shape, s | a step, ms |"
        )
        out.append("|---|---|---|---|---|---|---|")
        # the first column names the compile: default, or dynamic=True
        for r in first_calls:
            own = f"{r['torch_first_s']:.1f}" if "torch_first_s" in r else "(in the layer's)"
            if "first_s" in r:
                value = f"{own} | {r['first_s']:.1f} | {r['second_shape_s']:.1f} | {r['step_ms']:.2f}"
            else:
                value = r.get("note", "")[:80]
            out.append(f"| {r.get('compile', '')} | {r['D']} | {r['cache']} | {value} |")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", nargs="+", type=int, default=[10, 14, 18])
    parser.add_argument("--stds", nargs="+", type=float, default=[0.1, 1.0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--variants", nargs="+", default=list(STEP_VARIANTS), choices=STEP_VARIANTS)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--memory-tokens", type=int, default=2**18)
    parser.add_argument("--memory-dim", type=int, default=16)
    parser.add_argument("--memory-variants", nargs="+", default=list(MEMORY_VARIANTS), choices=MEMORY_VARIANTS)
    parser.add_argument("--inference-tokens", type=int, default=2**22)
    parser.add_argument("--allocators", nargs="+", default=list(ALLOCATORS), choices=list(ALLOCATORS))
    parser.add_argument("--skip", nargs="*", default=[], choices=["steps", "memory", "inference", "ops", "first-call"])
    parser.add_argument("--warm-cache", action="store_true", help="keep torch.compile's on-disk cache")
    parser.add_argument("--json", help="also write every row to this file")
    parser.add_argument("--first-call-dim", type=int, default=14)
    parser.add_argument("--_memory", help=argparse.SUPPRESS)
    parser.add_argument("--_first", help=argparse.SUPPRESS)
    parser.add_argument("--_inference", help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args._memory:
        print(json.dumps(memory_case(*json.loads(args._memory))))
        return 0
    if args._inference:
        print(json.dumps(inference_case(*json.loads(args._inference))))
        return 0
    if args._first:
        print(json.dumps(first_call_case(*json.loads(args._first))))
        return 0
    if not args.warm_cache:  # first calls as a new user meets them
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="lfq-inductor-")
    _torch()
    steps, floors, ops = [], {}, {}
    for d in [] if "steps" in args.skip else args.dims:
        floors[d] = gemm_floor_ms(d, args.tokens, args.repeat)
        if "ops" not in args.skip:
            ops[d] = count_torch_ops(np.zeros((args.tokens, d), np.float32) + 0.1, lfq.Config(codebook_dim=d))
        for std in args.stds:
            steps += time_steps(args.variants, d, args.tokens, std, args.repeat)
            print(format_report(steps[-len(args.variants) :], floors, {}, [], []), file=sys.stderr, flush=True)
    memory = (
        [] if "memory" in args.skip else run_memory(args.memory_tokens, args.memory_dim, 1200, args.memory_variants)
    )
    inference = []
    if "inference" not in args.skip:
        inference = run_inference(args.inference_tokens, 16, args.repeat, 1200, args.allocators)
    first_calls = [] if "first-call" in args.skip else run_first_calls(args.first_call_dim, 1200)
    print(f"{machine()}; {versions()}; {datetime.date.today()}")
    print(format_report(steps, floors, ops, memory, inference, first_calls))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "steps": steps,
                    "floors": floors,
                    "ops": ops,
                    "memory": memory,
                    "inference": inference,
                    "first_calls": first_calls,
                },
                f,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
