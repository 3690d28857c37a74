"""The Array-API functions lfq's shared math uses, over TensorFlow.

TensorFlow has no Array-API namespace in array-api-compat, and
`tensorflow.experimental.numpy` (tnp) follows NumPy rather than the Array API:
it lacks `permute_dims`, `concat` and `astype`, takes NumPy dtypes, and promotes
Python scalars to float64. This module is the small shim in between: exactly
the names that `lfq.features`, `lfq.factorized` and `lfq.array_backend` call,
with TensorFlow dtypes and no silent promotion; any other name raises an
AttributeError that says where to add it.

Every function works on eager tensors, inside `tf.function` and under XLA.
`reshape` also accepts target shapes with unknown (None) sizes, which the
shared code builds from `x.shape` when a dimension is unknown at trace time
(Keras traces with an unknown batch size).
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow.experimental.numpy as tnp

__all__ = [
    "abs",
    "asarray",
    "astype",
    "bitwise_and",
    "bool",
    "clip",
    "concat",
    "exp",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "full",
    "int32",
    "int64",
    "log",
    "log1p",
    "matmul",
    "max",
    "min",
    "moveaxis",
    "ones_like",
    "permute_dims",
    "reshape",
    "sqrt",
    "stack",
    "sum",
    "tanh",
    "unstack",
    "where",
    "zeros_like",
]

# dtypes are TensorFlow's, so that `xp.astype(x, xp.float32)` is a tf.cast
bool = tf.bool  # noqa: A001 - Array-API name
float16, bfloat16, float32, float64 = tf.float16, tf.bfloat16, tf.float32, tf.float64
int32, int64 = tf.int32, tf.int64

# Element-wise functions are TensorFlow's own: tnp's versions compute the same but
# run NumPy-style dtype promotion in Python first (5-25 us per eager call, which
# adds up over the few hundred ops of one loss). tnp supplies `moveaxis`.
abs = tf.math.abs  # noqa: A001 - Array-API name
exp, log, log1p, sqrt, tanh = tf.math.exp, tf.math.log, tf.math.log1p, tf.math.sqrt, tf.math.tanh
ones_like, zeros_like = tf.ones_like, tf.zeros_like
bitwise_and = tf.bitwise.bitwise_and
clip = tf.clip_by_value
moveaxis = tnp.moveaxis


def asarray(obj, dtype=None, device=None):
    """`obj` as a tensor of `dtype` (a Python float becomes `dtype` directly, never float64 first).

    `device` is accepted for Array-API compatibility and ignored: TensorFlow
    places constants where the ops that use them run.
    """
    del device
    if tf.is_tensor(obj):
        return obj if dtype is None or obj.dtype == dtype else tf.cast(obj, dtype)
    return tf.constant(obj, dtype=dtype)


def full(shape, fill_value, dtype=None, device=None):
    """`tf.constant(fill_value, dtype, shape)`; `device` is ignored as in `asarray`."""
    del device
    return tf.constant(fill_value, dtype=dtype, shape=shape)


def astype(x, dtype, copy=True):
    """`tf.cast`, skipped when `x` already has `dtype` (tensors are immutable: no copy is needed)."""
    del copy
    return x if x.dtype == dtype else tf.cast(x, dtype)


def where(condition, x1, x2):
    """Element-wise select with broadcasting; `x1` and `x2` must share a dtype (no promotion)."""
    return tf.where(condition, x1, x2)


def stack(arrays, axis=0):
    return tf.stack(list(arrays), axis=axis)


def unstack(x, axis=0):
    return tuple(tf.unstack(x, axis=axis))


def concat(arrays, axis=0):
    return tf.concat(list(arrays), axis=axis)


def permute_dims(x, axes):
    return tf.transpose(x, perm=list(axes))


def matmul(x1, x2):
    return tf.linalg.matmul(x1, x2)


def _axes(axis):
    return list(axis) if isinstance(axis, tuple) else axis


def sum(x, axis=None, dtype=None, keepdims=False):  # noqa: A001 - Array-API name
    """Array-API `sum`: `dtype` casts before summing (tf.reduce_sum has no dtype argument).

    Inside a graph, float32 sums accumulate in float64. TensorFlow's XLA emits a
    float32 reduction as one sequential loop (reshaping into stages does not help:
    it merges them back), which summed the 2**16 equal terms of a uniform code
    histogram's entropy 1e-5 off; the eager kernels sum in a tree (1e-7). The cast
    fuses into the reduction, so the cost is the wider accumulator only.
    """
    x = astype(x, dtype) if dtype is not None else x
    if x.dtype == tf.float32 and not tf.executing_eagerly():
        return tf.cast(tf.reduce_sum(tf.cast(x, tf.float64), axis=_axes(axis), keepdims=keepdims), tf.float32)
    return tf.reduce_sum(x, axis=_axes(axis), keepdims=keepdims)


def max(x, axis=None, keepdims=False):  # noqa: A001 - Array-API name
    return tf.reduce_max(x, axis=_axes(axis), keepdims=keepdims)


def min(x, axis=None, keepdims=False):  # noqa: A001 - Array-API name
    return tf.reduce_min(x, axis=_axes(axis), keepdims=keepdims)


def reshape(x, shape):
    """`tf.reshape` that also takes None for sizes unknown at trace time.

    One None becomes -1. Several are allowed only where they keep `x`'s own
    unknown leading sizes in place (`[..., C*D] -> [..., C, D]` and back, the
    only such reshapes in the shared code); they are read from `tf.shape(x)`.

    Raises:
        ValueError: several None sizes that do not line up with unknown sizes of `x`.
    """
    shape = tuple(shape)
    unknown = [i for i, size in enumerate(shape) if size is None]
    if not unknown:
        return tf.reshape(x, shape)
    if len(unknown) == 1 and -1 not in shape:
        return tf.reshape(x, [-1 if size is None else size for size in shape])
    if any(i >= x.shape.rank or x.shape[i] is not None for i in unknown):
        raise ValueError(
            f"cannot reshape a tensor of shape {x.shape} to {shape} with several sizes unknown at "
            "trace time: give tf.function an input_signature with fewer unknown dimensions"
        )
    dynamic = tf.shape(x)
    return tf.reshape(x, tf.stack([dynamic[i] if size is None else size for i, size in enumerate(shape)]))


def __getattr__(name):
    raise AttributeError(
        f"the TensorFlow array namespace has no {name!r}: lfq's shared math calls a function the "
        "shim lfq.backends.tf_backend.array_namespace does not provide yet; add it there"
    )
