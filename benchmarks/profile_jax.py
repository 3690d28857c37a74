"""Where a jitted JAX LFQ training step spends its time: the matrix products or the rest?

    python benchmarks/profile_jax.py [--dims 14 16 18] [--tokens 16384]

For each D and precision ("highest", "default") it times, jitted and
synchronised, on the default JAX device:

* step: forward + backward of the aux loss (`jax.value_and_grad`), as the
  benchmark does;
* gemms: the step's three matrix products alone, at their shapes and precision:
  $P_A^\\top P_B$ (`[2^A, N] @ [N, 2^B]`) and its two gradients
  (`[N, 2^B] @ [2^B, 2^A]`, `[N, 2^A] @ [2^A, 2^B]`), with their rate in TFLOP/s;
* subcodes: forward + backward of the two halves' sub-code probabilities
  (`[N, D/2] -> [N, 2^(D/2)]`), the largest non-matrix work, one call per half
  (the step itself makes one call for both when they are equal: close, not
  identical);
* rest: step - gemms - subcodes (elementwise work, reductions, launch gaps).

If the step misses its target, this says which part to attack; with a GPU the
numbers go into benchmarks/RESULTS.md with the card's name.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from harness import time_ms

import lfq

PRECISIONS = {"highest": jax.lax.Precision.HIGHEST, "default": jax.lax.Precision.DEFAULT}


def _median_ms(fn, *args) -> float:
    """Median ms of the jitted `fn(*args)`, synchronised; the first call (compile) untimed."""
    return time_ms(lambda: jax.block_until_ready(fn(*args)), repeat=20)


def profile_case(d: int, tokens: int, precision: str) -> dict:
    be = lfq.get("jax")
    cfg = lfq.Config(codebook_dim=d, precision=precision)
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.standard_normal((tokens, d)).astype(np.float32) * 0.1)
    step = jax.jit(jax.value_and_grad(lambda z: be.lfq(z, cfg).aux_loss))

    bits_a, bits_b = (d + 1) // 2, d // 2
    pa = jnp.asarray(rng.random((tokens, 2**bits_a), dtype=np.float32))
    pb = jnp.asarray(rng.random((tokens, 2**bits_b), dtype=np.float32))
    g = jnp.asarray(rng.random((2**bits_a, 2**bits_b), dtype=np.float32))
    dot = PRECISIONS[precision]

    @jax.jit
    def gemms(pa, pb, g):
        hist = jnp.matmul(pa.T, pb, precision=dot)
        grad_a = jnp.matmul(pb, g.T, precision=dot)
        grad_b = jnp.matmul(pa, g, precision=dot)
        return hist, grad_a, grad_b

    halves = (z[:, :bits_a] * 4.0, z[:, bits_a:] * 4.0)

    @jax.jit
    def subcodes(a, b):
        def total(a, b):
            return jnp.sum(be.subcode_probs(a, cfg)) + jnp.sum(be.subcode_probs(b, cfg))

        return jax.value_and_grad(total, argnums=(0, 1))(a, b)

    step_ms, gemm_ms, sub_ms = _median_ms(step, z), _median_ms(gemms, pa, pb, g), _median_ms(subcodes, *halves)
    flops = 3 * 2 * tokens * 2**d
    return {
        "D": d,
        "N": tokens,
        "precision": precision,
        "step_ms": step_ms,
        "gemm_ms": gemm_ms,
        "tflops": flops / (gemm_ms * 1e9),
        "subcode_ms": sub_ms,
        "rest_ms": step_ms - gemm_ms - sub_ms,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", nargs="+", type=int, default=[14, 16, 18])
    parser.add_argument("--tokens", type=int, default=16384)
    args = parser.parse_args(argv)
    print(f"device: {jax.devices()[0].device_kind}")
    print(
        f"{'D':>3} {'N':>6} {'precision':>9} {'step ms':>8} {'gemms ms':>8} {'TFLOP/s':>8} "
        f"{'subcodes':>8} {'rest ms':>8}"
    )
    for d in args.dims:
        for precision in PRECISIONS:
            r = profile_case(d, args.tokens, precision)
            print(
                f"{r['D']:>3} {r['N']:>6} {r['precision']:>9} {r['step_ms']:>8.3f} {r['gemm_ms']:>8.3f} "
                f"{r['tflops']:>8.2f} {r['subcode_ms']:>8.3f} {r['rest_ms']:>8.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
