"""The GPU check, one command: conformance on CUDA, the torch and JAX tables, a profile.

    python benchmarks/gpu.py [--out DIR] [--dims 14 16 18] [--tokens 16384]

Made for a short lease on one GPU: every step has its own time limit, a failing
step is reported and the next one still runs, and each step's output is also
written to DIR (default: $OUT, else ./gpu-results) so that it survives a cut-off.
Prints the device, the conformance verdicts, and the benchmark tables (forward +
backward of the aux loss, float32; torch eager, compiled, the naive N x 2^D
baseline and vector-quantize-pytorch when installed; JAX at HIGHEST and DEFAULT
precision with compile time apart; the quantize+indices inference rows with the
measured device-to-device copy bandwidth), and the torch profile
(`profile_torch.py`: wall versus kernel time per step, launches, top kernels),
the tiled batch entropy rows (`bench_tiled.py`: D = 24..32, N = 4096 and 16384)
and the JAX one (`profile_jax.py`: the step split into matrix products,
sub-code probabilities and the rest, at both precisions).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def step(title: str, cmd: list[str], out_dir: str, name: str, timeout: float) -> int:
    print(f"\n=== {title} ===", flush=True)
    start = time.time()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        text = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        text += f"\n[timed out after {timeout:.0f} s]"
        code = 124
    with open(os.path.join(out_dir, f"{name}.log"), "w") as f:
        f.write(text)
    lines = [line for line in text.splitlines() if line.strip() and "Warning" not in line]
    print("\n".join(lines[-40:]))
    print(f"[{title}: exit {code}, {time.time() - start:.0f} s]", flush=True)
    return code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-results"))
    parser.add_argument("--dims", nargs="+", default=["14", "16", "18"])
    parser.add_argument("--tokens", default="16384")
    parser.add_argument("--skip-conformance", action="store_true")
    parser.add_argument(
        "--budget", type=float, default=540.0, help="seconds for all steps together (each step gets a fixed share)"
    )
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    py = sys.executable
    info = (
        "import torch, jax; print('torch', torch.__version__, torch.cuda.get_device_name(0)); "
        "print('jax', jax.__version__, jax.devices())"
    )
    failures = 0
    failures += step("device", [py, "-c", info], args.out, "device", 0.05 * args.budget) != 0
    if not args.skip_conformance:
        failures += (
            step(
                "conformance on CUDA (torch, jax)",
                [
                    py,
                    "-m",
                    "lfq.cli",
                    "conformance",
                    "--backend",
                    "torch",
                    "--backend",
                    "jax",
                    "--device",
                    "cuda",
                    "--json",
                    os.path.join(args.out, "conformance.json"),
                ],
                args.out,
                "conformance",
                0.18 * args.budget,
            )
            != 0
        )
    bench = [
        py,
        os.path.join(HERE, "run.py"),
        "--device",
        "cuda",
        "--in-process",
        "--repeat",
        "20",
        "--tokens",
        args.tokens,
        "--dims",
        *args.dims,
    ]
    failures += (
        step(
            "torch benchmark",
            bench + ["--backends", "torch", "--json", os.path.join(args.out, "bench_torch.json")],
            args.out,
            "bench_torch",
            0.20 * args.budget,
        )
        != 0
    )
    failures += (
        step(
            "jax benchmark",
            bench + ["--backends", "jax", "--json", os.path.join(args.out, "bench_jax.json")],
            args.out,
            "bench_jax",
            0.15 * args.budget,
        )
        != 0
    )
    failures += (
        step(
            "tiled batch entropy, torch (D = 24..32, N = 4096 and 16384)",
            [
                py,
                os.path.join(HERE, "bench_tiled.py"),
                "--device",
                "cuda",
                "--in-process",
                "--json",
                os.path.join(args.out, "bench_tiled.json"),
            ],
            args.out,
            "bench_tiled",
            0.15 * args.budget,
        )
        != 0
    )
    failures += (
        step(
            "torch profile",
            [
                py,
                os.path.join(HERE, "profile_torch.py"),
                "--device",
                "cuda",
                "--tokens",
                args.tokens,
                "--dims",
                *args.dims,
            ],
            args.out,
            "profile_torch",
            0.13 * args.budget,
        )
        != 0
    )
    failures += (
        step(
            "jax profile",
            [py, os.path.join(HERE, "profile_jax.py"), "--tokens", args.tokens, "--dims", *args.dims],
            args.out,
            "profile_jax",
            0.12 * args.budget,
        )
        != 0
    )
    print(f"\n{failures} step(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
