"""The tiled exact batch entropy at large D: time, peak memory and time over the floor.

    python benchmarks/bench_tiled.py [--backend torch|jax] [--device cpu|cuda]
        [--rows D:N,N ...] [--repeat R] [--json FILE]

Each row times one float32 forward + backward of the aux loss (`lfq(...)`, then its
gradient w.r.t. z) with one codebook of D bits and N tokens, `max_exact_bits=32`, so
that past 2**24 histogram entries the batch entropy runs in tiles (`lfq.tiled`).
Every row runs in a fresh process, so its peak memory is its own: on the CPU the
growth of the resident set's high-water mark over the warm-up's (inputs, BLAS and
the compile excluded), on CUDA `max_memory_allocated` over what was allocated before.

The floor: the algorithm does `6 N 2**D` flops of matrix products a step (forward
`[rows, N] @ [N, S]` per tile, backward two more products of that size), so a step
cannot beat `6 N 2**D / rate`, with `rate` the GEMM rate of one tile's product
measured in the same process (the same shapes the algorithm runs). "over_floor" is
the step time over that floor: what the logarithms, the element-wise passes and the
loop add.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

#: Default rows per device: D -> token counts (CPU rows kept to what a 2-core machine affords).
DEFAULT_ROWS = {
    "cpu": ["20:64,256,1024", "22:64,256,1024", "24:64,256,1024", "26:64,256", "28:64", "30:64"],
    "cuda": ["24:4096,16384", "26:4096,16384", "28:4096,16384", "30:4096,16384", "32:4096,16384"],
}


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median_ms(step, repeat: int, sync) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _torch_row(d: int, n: int, device: str, repeat: int, tile) -> dict:
    import torch

    import lfq
    from lfq import tiled

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    cfg = lfq.Config(codebook_dim=d, max_exact_bits=32, entropy_tile=tile)
    rows = tiled.tile_rows(cfg, 2 ** ((d + 1) // 2), 2 ** (d // 2)) if tiled.uses_tiles(cfg, d) else None
    be = lfq.get("torch")
    z = (torch.randn(n, d, device=device, generator=torch.Generator(device).manual_seed(0)) * 0.05).requires_grad_()
    torch.matmul(torch.rand(64, 64, device=device), torch.rand(64, 64, device=device))  # BLAS set up

    def step():
        out = be.lfq(z, cfg)
        (grad,) = torch.autograd.grad(out.aux_loss, z)
        return grad

    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _maxrss_mib()
    step()  # warm-up, inside the peak (it is one more step of the same size)
    sync()
    ms = _median_ms(step, repeat, sync)
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = max(0.0, _maxrss_mib() - base)
    # The floor's rate: one tile's product (the whole histogram's when untiled), after the peak.
    left = torch.rand(1, rows or 2 ** ((d + 1) // 2), n, device=device)
    right = torch.rand(1, n, 2 ** (d // 2), device=device)
    gemm_ms = _median_ms(lambda: torch.matmul(left, right), 5, sync)
    gemm_rate = 2 * left.shape[1] * n * right.shape[-1] / (gemm_ms / 1e3)
    return {"ms": ms, "gemm_gflops": gemm_rate / 1e9, "peak_mib": peak, "tile_rows": rows}


def _jax_row(d: int, n: int, device: str, repeat: int, tile) -> dict:
    import jax
    import jax.numpy as jnp

    import lfq
    from lfq import tiled

    cfg = lfq.Config(codebook_dim=d, max_exact_bits=32, entropy_tile=tile)
    rows = tiled.tile_rows(cfg, 2 ** ((d + 1) // 2), 2 ** (d // 2)) if tiled.uses_tiles(cfg, d) else None
    key = jax.random.PRNGKey(0)
    be = lfq.get("jax")
    z = jax.random.normal(key, (n, d)) * 0.05
    grad = jax.jit(jax.grad(lambda z: be.lfq(z, cfg).aux_loss))
    base = _maxrss_mib()
    start = time.perf_counter()
    grad(z).block_until_ready()
    compile_ms = (time.perf_counter() - start) * 1e3
    ms = _median_ms(lambda: grad(z).block_until_ready(), repeat, lambda: None)
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use", 0) / 2**20 if device == "cuda" else max(0.0, _maxrss_mib() - base)
    left = jax.random.uniform(key, (1, rows or 2 ** ((d + 1) // 2), n))
    right = jax.random.uniform(key, (1, n, 2 ** (d // 2)))
    product = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
    product(left, right).block_until_ready()
    gemm_ms = _median_ms(lambda: product(left, right).block_until_ready(), 5, lambda: None)
    gemm_rate = 2 * left.shape[1] * n * right.shape[-1] / (gemm_ms / 1e3)
    return {"ms": ms, "compile_ms": compile_ms, "gemm_gflops": gemm_rate / 1e9, "peak_mib": peak, "tile_rows": rows}


def run_row(backend: str, d: int, n: int, device: str, repeat: int, tile=None) -> dict:
    row = (_torch_row if backend == "torch" else _jax_row)(d, n, device, repeat, tile)
    floor_ms = 6 * n * 2**d / (row["gemm_gflops"] * 1e9) * 1e3
    row.update(backend=backend, device=device, D=d, N=n, floor_ms=floor_ms, over_floor=row["ms"] / floor_ms)
    return row


def _isolated(cmd, d: int, n: int, timeout: float, env) -> dict:
    """One row in a fresh process (its CPU peak memory its own); failures as a note."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"D": d, "N": n, "note": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"D": d, "N": n, "note": proc.stderr.strip()[-200:]}


def _release(backend: str, device: str) -> None:
    if backend == "torch" and device == "cuda":
        import torch

        torch.cuda.empty_cache()


def _parse_rows(specs):
    out = []
    for spec in specs:
        d, _, tokens = spec.partition(":")
        out += [(int(d), int(n)) for n in tokens.split(",")]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="torch", choices=["torch", "jax"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rows", nargs="+", help="D:N[,N...] (default: the device's DEFAULT_ROWS)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--tile", type=int, help="Config.entropy_tile (default None: tiles only past 2**24 entries)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per row")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every row in this process (on CUDA the peak is the framework's counter, reset per row)",
    )
    parser.add_argument("--_row", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._row:  # one row, in this (fresh) process
        d, n = map(int, args._row.split(":"))
        print(json.dumps(run_row(args.backend, d, n, args.device, args.repeat, args.tile)), flush=True)
        return 0
    print(
        f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.backend} on {args.device}",
        flush=True,
    )
    head = (
        f"{'D':>3} {'N':>6} {'ms':>10} {'floor_ms':>10} {'over_floor':>10} {'GEMM GF/s':>10} {'peak_mib':>9} "
        f"{'rows':>6}"
    )
    print(head + "\n" + "-" * len(head), flush=True)
    results = []
    for d, n in _parse_rows(args.rows or DEFAULT_ROWS[args.device]):
        cmd = [
            sys.executable,
            __file__,
            "--backend",
            args.backend,
            "--device",
            args.device,
            "--repeat",
            str(args.repeat),
            "--_row",
            f"{d}:{n}",
        ]
        if args.tile:
            cmd += ["--tile", str(args.tile)]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        if args.in_process:
            try:
                row = run_row(args.backend, d, n, args.device, args.repeat, args.tile)
            except Exception as err:  # noqa: BLE001 - a row reports any failure (e.g. out of memory)
                row = {"D": d, "N": n, "note": f"failed: {type(err).__name__}: {str(err)[:120]}"}
            _release(args.backend, args.device)
        else:
            row = _isolated(cmd, d, n, args.timeout, env)
        results.append(row)
        if "ms" in row:
            print(
                f"{d:>3} {n:>6} {row['ms']:>10.1f} {row['floor_ms']:>10.1f} {row['over_floor']:>10.2f} "
                f"{row['gemm_gflops']:>10.1f} {row['peak_mib']:>9.1f} {str(row['tile_rows'] or '-'):>6}",
                flush=True,
            )
        else:
            print(f"{d:>3} {n:>6} {row['note']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
