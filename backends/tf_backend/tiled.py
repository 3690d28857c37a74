"""The tiled exact batch entropy (`lfq.tiled`) in TensorFlow: `tf.custom_gradient` over `tf.while_loop`.

The forward pass is `lfq.tiled.entropy_sum` and the gradient
`lfq.tiled.entropy_sum_vjp` (each tile recomputed), both looping with
`tf.while_loop` (a Python loop eagerly, a `While` op in a graph, an XLA while loop
under `jit_compile`): the tile count never unrolls into the program, and nothing
of size `2**k` outlives a tile. The running sums are float64.
"""

from __future__ import annotations

import tensorflow as tf
from lfq.backends.tf_backend import array_namespace, ops

from lfq import tiled

__all__ = ["scan", "tiled_entropy"]


def scan(body, init, xs):
    """`jax.lax.scan`'s contract with `tf.while_loop`: `(final carry, stacked ys)`.

    xs are read one tile at a time (`tf.gather` on the leading axis, static length);
    the ys (of xs's dtype) go to a `tf.TensorArray`.
    """
    count = xs.shape[0]
    outputs = tf.TensorArray(xs.dtype, size=count)

    def step(i, carry, outputs):
        carry, y = body(carry, tf.gather(xs, i))
        return i + 1, carry, outputs.write(i, y)

    _, carry, outputs = tf.while_loop(
        lambda i, *_: i < count, step, (tf.constant(0), init, outputs), parallel_iterations=1
    )
    return carry, outputs.stack()


def tiled_entropy(probs_a, probs_b, count, rows: int, highest: bool):
    """`lfq.tiled.entropy_sum` of `[N, C, R]` and `[N, C, S]` sub-code probabilities: a 0-d
    tensor of probs_a's dtype, whose gradient recomputes the tiles (`entropy_sum_vjp`)."""
    matmul = ops.matmul_highest if highest else tf.linalg.matmul

    @tf.custom_gradient
    def run(probs_a, probs_b, count):
        value = tiled.entropy_sum(probs_a, probs_b, count, rows, array_namespace, matmul, scan, tf.float64)

        def grad(cotangent):
            d_a, d_b = tiled.entropy_sum_vjp(
                probs_a, probs_b, count, cotangent, rows, array_namespace, matmul, scan, tf.float64
            )
            return d_a, d_b, tf.zeros_like(count)

        return value, grad

    return run(probs_a, probs_b, count)
