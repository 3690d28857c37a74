"""The tiled exact batch entropy (`lfq.tiled`) in JAX: `jax.custom_vjp` over `jax.lax.scan`.

The forward pass is `lfq.tiled.entropy_sum` and the backward pass
`lfq.tiled.entropy_sum_vjp` (each tile recomputed), both with `jax.lax.scan` as
the loop: XLA keeps it a `while` loop whatever the number of tiles, so neither
the compile time nor the memory grows with the grid (nothing of size `2**k`
outlives a tile, in the forward or the backward pass). The running sums are
float64 with 64-bit mode, else float32 with Neumaier's compensation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lfq import tiled

__all__ = ["tiled_entropy"]


def _accumulate():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _matmul(precision):
    return functools.partial(jnp.matmul, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _tiled_entropy(probs_a, probs_b, count, rows: int, precision):
    return tiled.entropy_sum(
        probs_a, probs_b, count, rows, jnp, _matmul(precision), jax.lax.scan, accumulate=_accumulate()
    )


def _forward(probs_a, probs_b, count, rows, precision):
    return _tiled_entropy(probs_a, probs_b, count, rows, precision), (probs_a, probs_b, count)


def _backward(rows, precision, residuals, cotangent):
    probs_a, probs_b, count = residuals
    d_a, d_b = tiled.entropy_sum_vjp(
        probs_a, probs_b, count, cotangent, rows, jnp, _matmul(precision), jax.lax.scan, accumulate=_accumulate()
    )
    return d_a, d_b, jnp.zeros_like(count)


_tiled_entropy.defvjp(_forward, _backward)

#: `lfq.tiled.entropy_sum` of `[N, C, R]` and `[N, C, S]` sub-code probabilities: a 0-d
#: array of probs_a's dtype, with the recomputing gradient. `rows` and `precision` (of
#: the matrix products, a `jax.lax.Precision`) are static. Jitted so that eager calls
#: reuse one compiled loop per shape (a bare `lax.scan` of a new closure recompiles on
#: every eager call); under an enclosing `jax.jit` it is inlined.
tiled_entropy = jax.jit(_tiled_entropy, static_argnums=(3, 4))
