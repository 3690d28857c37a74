"""Shared benchmark machinery: timing, peak memory, one subprocess per case.

Every case runs in a fresh Python process so that its peak memory is its own:
on the CPU the peak is the growth of the process's maximum resident set over
its size just before the case (`getrusage`), on a GPU the framework's own
peak-allocation counter, reported by the case itself.

A backend's rows live in `benchmarks/bench_<backend>.py`, which defines:

* `cases(dims, tokens, device) -> list[dict]`: the cases to run, each a dict
  with at least "backend", "algorithm", "D", "N", "device" (JSON-serialisable).
* `run_case(case, repeat) -> dict`: runs one case in this process and returns
  {"ms": median step milliseconds, optionally "compile_ms", "peak_mib"
  (framework-measured, e.g. CUDA), "note"}.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def time_ms(step, repeat: int, warmup: int = 1, sync=None) -> float:
    """Median wall time of `step()` in milliseconds after `warmup` calls.

    `sync` (e.g. `torch.cuda.synchronize`) is called after each step so that
    asynchronous devices are timed to completion.
    """
    for _ in range(warmup):
        step()
        if sync:
            sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        if sync:
            sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_in_this_process(case: dict, repeat: int) -> dict:
    """Import the case's module, run it, and add the CPU peak-memory growth."""
    sys.path.insert(0, HERE)
    module = importlib.import_module(f"bench_{case['module']}")
    module.prepare(case)  # imports and input creation, outside the measured peak
    before = _rss_mib()
    result = module.run_case(case, repeat)
    result.setdefault("peak_mib", max(0.0, _maxrss_mib() - before))
    return result


def run_guarded(case: dict, repeat: int) -> dict:
    """`run_in_this_process`, with a failure (e.g. out of memory) reported as a note."""
    try:
        return run_in_this_process(case, repeat)
    except Exception as err:  # noqa: BLE001 - a benchmark row reports any failure
        return {"note": f"failed: {type(err).__name__}: {str(err)[:100]}"}


def run_isolated(case: dict, repeat: int, timeout_s: float) -> dict:
    """Run one case in a fresh interpreter; failures come back as a note."""
    cmd = [sys.executable, os.path.join(HERE, "run.py"), "--_case", json.dumps(case), "--repeat", str(repeat)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"note": f"timed out after {timeout_s:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"note": f"failed: {tail[:120]}"}
    return json.loads(lines[-1])


def format_table(rows: list[dict]) -> str:
    """A fixed-width table of the results."""
    cols = [
        ("backend", 10),
        ("algorithm", 22),
        ("device", 6),
        ("dtype", 8),
        ("D", 3),
        ("N", 6),
        ("ms", 10),
        ("compile_ms", 10),
        ("peak_mib", 9),
        ("note", 30),
    ]
    head = " ".join(f"{name:>{width}}" for name, width in cols)
    out = [head, "-" * len(head)]
    for row in rows:
        cells = []
        for name, width in cols:
            value = row.get(name, "")
            if isinstance(value, float):
                value = f"{value:.3f}" if value < 100 else f"{value:.1f}"
            cells.append(f"{str(value) if value is not None else '':>{width}}")
        out.append(" ".join(cells))
    return "\n".join(out)
