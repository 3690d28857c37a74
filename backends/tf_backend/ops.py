"""TensorFlow operations behind `TensorFlowBackend`'s hooks.

* `matmul_highest`: batched products as XLA dots with operand precision HIGHEST
  (full float32, never TF32), differentiable to any order;
* `subcode_probs`: `lfq.factorized.subcode_probs` with its analytic gradient;
* `block_histogram`: the code histogram over blocks of tokens, each block
  recomputed in the gradient (large tables);
* `positive`: `x > 0` on the bit pattern (subnormal-safe);
* `pass_gradient`: the straight-through value/gradient split;
* `as_tensor`, `device_name`: input conversion and device strings.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from lfq.backends.tf_backend import array_namespace
from tensorflow.compiler.tf2xla.python import xla as tf2xla
from tensorflow.compiler.xla import xla_data_pb2

from lfq import factorized, validation

__all__ = [
    "as_tensor",
    "block_histogram",
    "device_name",
    "dot_tn",
    "matmul_highest",
    "pass_gradient",
    "positive",
    "subcode_probs",
]

_HIGHEST = xla_data_pb2.PrecisionConfig(operand_precision=[xla_data_pb2.PrecisionConfig.HIGHEST] * 2)


#: What the TensorFlow backend takes as an array argument (the rule of docs/spec.md, "Bad input").
ACCEPTS = "tf.Tensor, tf.Variable or numpy.ndarray"


def as_tensor(x, name: str, numbers: bool = False):
    """`x` as a `tf.Tensor`: tensors as they are, variables read, NumPy arrays converted.

    Anything else (a Python list or tuple, another framework's tensor) is refused
    with `lfq.validation.foreign_array_error`'s message, as in every backend;
    `numbers=True` also takes a Python number (a scalar `vjp` cotangent).
    """
    if isinstance(x, tf.Tensor):
        return x
    if tf.is_tensor(x):  # a variable: its value, through which gradients reach it
        return tf.convert_to_tensor(x)
    if isinstance(x, np.ndarray) or (numbers and isinstance(x, (int, float, np.number)) and not isinstance(x, bool)):
        # Through NumPy, so that Python floats become float64 like NumPy's, not float32.
        return tf.convert_to_tensor(np.asarray(x))
    raise validation.foreign_array_error(x, name, "tensorflow", ACCEPTS, "tf.convert_to_tensor(...)")


def _xla_dot(a, b, lhs_contracting: int, rhs_contracting: int):
    """Batched XLA dot at HIGHEST precision; all but the last two axes are batch axes.

    Contracting `a`'s axis `lhs_contracting` (-1 or -2) with `b`'s `rhs_contracting`
    directly, rather than transposing first, lets XLA pick the operand layouts.
    """
    rank = a.shape.rank
    batch = list(range(rank - 2))
    dims = xla_data_pb2.DotDimensionNumbers(
        lhs_contracting_dimensions=[lhs_contracting % rank],
        rhs_contracting_dimensions=[rhs_contracting % rank],
        lhs_batch_dimensions=batch,
        rhs_batch_dimensions=batch,
    )
    return tf2xla.dot_general(a, b, dims, _HIGHEST)


# Full-precision products with their gradients, any order: `a @ b` ("nn"), `a @ b^T`
# ("nt") and `a^T @ b` ("tn"), each differentiated into the others. TensorFlow
# compiles XLA dots on demand outside `jit_compile` functions, but registers no
# gradient for them.


@tf.custom_gradient
def _dot_nn(a, b):
    return _xla_dot(a, b, -1, -2), lambda g: (_dot_nt(g, b), dot_tn(a, g))


@tf.custom_gradient
def _dot_nt(a, b):
    return _xla_dot(a, b, -1, -1), lambda g: (_dot_nn(g, b), dot_tn(g, a))


@tf.custom_gradient
def dot_tn(a, b):
    return _xla_dot(a, b, -2, -2), lambda g: (_dot_nt(b, g), _dot_nn(a, g))


def matmul_highest(a, b):
    """Batched `a @ b` (`[..., M, K] @ [..., K, N]`) at full precision (float32: never TF32).

    Eager, in graphs and under XLA, differentiable to any order.
    """
    return _dot_nn(a, b)


def subcode_probs(a):
    """`factorized.subcode_probs(a)` whose gradient is the analytic `factorized.subcode_probs_vjp`.

    Autodiff through the product loop costs one strided pass per bit; the analytic
    rule is one pass of sums over the codes. The gradient function uses the forward's tensors,
    which the tape recorded, so higher-order gradients stay exact.
    """

    @tf.custom_gradient
    def probs_with_vjp(a):
        probs = factorized.subcode_probs(a, array_namespace)

        def grad(cotangent):
            return factorized.subcode_probs_vjp(a, probs, cotangent, _ROW_SUMS, bit_sums_fn=_bit_sums)

        return probs, grad

    return probs_with_vjp(a)


def _bit_sums(w, k: int):
    """`factorized.bit_sums` as one product with the constant `[2^k, k]` bit matrix.

    XLA compiles the halving tree's k strided passes poorly: with them a compiled
    TensorFlow step took 1.3-1.4 times JAX's at D = 18, with the product (what JAX's
    transposed JVP computes) the same time. torch's kernels prefer the tree.
    """
    bits = tf.constant(factorized.subcode_bits(k), dtype=w.dtype)
    on = matmul_highest(tf.reshape(w, (-1, 2**k)), bits)
    return tf.reshape(on, tf.concat([tf.shape(w)[:-1], [k]], 0)), tf.reduce_sum(w, axis=-1, keepdims=True)


class _RowSums:
    """`array_namespace` whose `sum` stays in the input's dtype, for the gradients' sums
    over one row's codes (`factorized.bit_sums`: at most `2**(k-1)` terms each).

    `array_namespace.sum` accumulates float32 in float64 inside a graph (for the
    entropy's sum over all codes); XLA:CPU then materializes each half-table of
    `bit_sums` as a float64 copy (twice the table's bytes) before reducing it
    (peak of a compiled step at N = 2**17, D = 16: 4.3 -> 3.4 units of `P_A + P_B`).
    (`lfq.histogram_grad.code_histogram_vjp` as the whole histogram's custom gradient
    gave 3.0 but doubled the compiled step's time at N = 4096, D = 14: not used.)
    """

    def __getattr__(self, name):
        return getattr(array_namespace, name)

    @staticmethod
    def sum(x, axis=None, keepdims=False):  # noqa: A003 - Array-API name
        return tf.reduce_sum(x, axis=axis, keepdims=keepdims)


_ROW_SUMS = _RowSums()


def block_histogram(a, weights, rows: int, histogram):
    """`histogram(a, weights)` (the code histogram) summed over blocks of `rows` tokens in
    a `tf.while_loop`; the gradient loops over the blocks again, recomputing each block's
    histogram under a tape and differentiating it (the backend's own gradient rules).

    Nothing of the size of all N tokens' `P_A` is formed, forward or backward. For large
    tables only (`TensorFlowBackend.code_histogram`): first derivatives.

    Args:
        a: `[N, C, k]` bit logits with a static N > rows; weights: `[N]` or None.
        rows: tokens per block (the last block padded with weight-0 tokens).
        histogram: `(a_block, weights_block) -> [C, 2**|A|, 2**|B|]`.
    """
    n, c, k = a.shape
    blocks = -(-n // rows)
    pad = blocks * rows - n
    w = tf.ones_like(a[:, 0, 0]) if weights is None else weights
    w_blocks = tf.reshape(tf.concat([w, tf.zeros_like(w[:pad])], axis=0), (blocks, rows))
    high = (k + 1) // 2

    @tf.custom_gradient
    def run(a_blocks):
        def add(i, total):
            return i + 1, total + histogram(tf.gather(a_blocks, i), tf.gather(w_blocks, i))

        init = tf.zeros((c, 2**high, 2 ** (k - high)), a.dtype)
        _, total = tf.while_loop(lambda i, _: i < blocks, add, (tf.constant(0), init), parallel_iterations=1)

        def grad(cotangent):
            def step(i, grads):
                block = tf.gather(a_blocks, i)
                with tf.GradientTape() as tape:
                    tape.watch(block)
                    hist = histogram(block, tf.gather(w_blocks, i))
                return i + 1, grads.write(i, tape.gradient(hist, block, output_gradients=cotangent))

            grads = tf.TensorArray(a.dtype, size=blocks)
            _, grads = tf.while_loop(lambda i, _: i < blocks, step, (tf.constant(0), grads), parallel_iterations=1)
            return grads.stack()

        return total, grad

    padded = tf.concat([a, tf.zeros_like(a[:pad])], axis=0)
    return run(tf.reshape(padded, (blocks, rows, c, k)))


_INT_OF_SIZE = {2: tf.int16, 4: tf.int32, 8: tf.int64}


def positive(x):
    """`x > 0` decided on the bit pattern, so that positive subnormals count as positive.

    TensorFlow's CPU kernels run with denormals-are-zero and XLA flushes subnormal
    inputs, so `x > 0` is False for a positive subnormal, against the spec. As
    signed integers, exactly the floats in (0, +inf] have a bit pattern in
    (0, bits(+inf)]: +0.0 is 0, negative values and -0.0 are negative, NaNs lie above +inf.
    """
    itype = _INT_OF_SIZE[x.dtype.size]
    bits = tf.bitcast(x, itype)
    return (bits > 0) & (bits <= tf.bitcast(tf.constant(np.inf, x.dtype), itype))


@tf.custom_gradient
def pass_gradient(value, carrier):
    # The value is the codes themselves (no arithmetic, so bitwise exact); the
    # upstream gradient goes unchanged to the carrier f(x) and none to the codes.
    def grad(upstream):
        return tf.zeros_like(value), upstream

    return tf.identity(value), grad


def device_name(device) -> str:
    """A TensorFlow device name from "cpu", "gpu", "cuda", "cuda:1" or a TensorFlow name.

    Raises:
        ValueError: a device of a type TensorFlow does not have here (TensorFlow
            would otherwise place the tensor elsewhere silently).
    """
    if not isinstance(device, str):
        raise TypeError(f"device={device!r} must be a string such as 'cpu', 'cuda:0' or '/GPU:0'")
    kind, _, index = device.lower().lstrip("/").partition(":")
    kind = {"cuda": "gpu"}.get(kind, kind)
    if kind not in ("cpu", "gpu"):
        return device  # a full TensorFlow device name ("/job:.../device:GPU:0"), used as given
    found = tf.config.list_logical_devices(kind.upper())
    if not index.isdigit() and index:
        raise ValueError(f"device={device!r}: the index after ':' must be an integer")
    if int(index or 0) >= len(found):
        raise ValueError(
            f"device={device!r}: TensorFlow sees {len(found)} {kind.upper()} device(s) here ({[d.name for d in found]})"
        )
    return f"/{kind.upper()}:{int(index or 0)}"
