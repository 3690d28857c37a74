"""`TensorFlowBackend`: LFQ on `tf.Tensor`, eager, in `tf.function` and under XLA.

The math is `lfq.array_backend.ArrayBackend`'s (shared by every backend); this
module supplies TensorFlow's hooks:

* the namespace: the small Array-API shim `array_namespace` over
  `tensorflow.experimental.numpy`;
* straight-through: a `tf.custom_gradient` whose value is the codes, bitwise,
  and whose gradient goes unchanged to the carrier `f(x)`;
* full-precision matrix products: with `precision="highest"` (the default) the
  code histogram's product is an XLA dot with operand precision HIGHEST, which
  never uses TF32 whatever `tf.config.experimental.enable_tensor_float_32_execution`
  says; a global switch would be wrong here, since TensorFlow reads it when a
  kernel runs (eager, graph) or when XLA compiles a function, not when our code
  is traced. `precision="default"` uses `tf.linalg.matmul` and the global setting;
* distributed data parallelism: `replica_context=` (a `tf.distribute.ReplicaContext`,
  or "auto") all-reduces the `LossSums`, so the losses are the global batch's;
* shapes unknown at trace time (Keras traces `model.fit` with an unknown batch
  size): the loss functions then flatten the tokens and count them with a mask.

`compiled()` returns `CompiledTensorFlowBackend`, the same operations traced once
per configuration into `tf.function(jit_compile=True)`.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, NamedTuple, final

import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla as tf2xla
from tensorflow.compiler.xla import xla_data_pb2

from lfq import validation
from lfq.array_backend import ArrayBackend
from lfq.config import Config
from lfq.factorized import LossSums
from lfq.interface import GRAD_TERMS, CodeUsage, LFQOutput
from lfq.backends.tf_backend import array_namespace

__all__ = ["CompiledTensorFlowBackend", "TensorFlowBackend"]

_HIGHEST = xla_data_pb2.PrecisionConfig(operand_precision=[xla_data_pb2.PrecisionConfig.HIGHEST] * 2)
_DISTRIBUTED_OPTIONS = ("replica_context",)


def _tensor(x, name: str):
    """`x` as a `tf.Tensor` (variables are read, NumPy arrays and lists converted)."""
    if isinstance(x, tf.Tensor):
        return x
    if tf.is_tensor(x):  # a variable: its value, through which gradients reach it
        return tf.convert_to_tensor(x)
    try:
        # Through NumPy, so that Python floats become float64 like NumPy's, not float32.
        return tf.convert_to_tensor(np.asarray(x))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} of type {type(x).__name__} is not a tensor and cannot be converted "
                        f"to one ({err}): pass a tf.Tensor or a NumPy array") from None


def _xla_dot(a, b, lhs_contracting: int, rhs_contracting: int):
    """Batched XLA dot at HIGHEST precision; all but the last two axes are batch axes.

    Contracting `a`'s axis `lhs_contracting` (-1 or -2) with `b`'s `rhs_contracting`
    directly, rather than transposing first, lets XLA pick the operand layouts.
    """
    rank = a.shape.rank
    batch = list(range(rank - 2))
    dims = xla_data_pb2.DotDimensionNumbers(
        lhs_contracting_dimensions=[lhs_contracting % rank], rhs_contracting_dimensions=[rhs_contracting % rank],
        lhs_batch_dimensions=batch, rhs_batch_dimensions=batch)
    return tf2xla.dot_general(a, b, dims, _HIGHEST)


# Full-precision products with their gradients, any order: `a @ b` ("nn"), `a @ b^T`
# ("nt") and `a^T @ b` ("tn"), each differentiated into the others. TensorFlow
# compiles XLA dots on demand outside `jit_compile` functions, but registers no
# gradient for them.

@tf.custom_gradient
def _dot_nn(a, b):
    return _xla_dot(a, b, -1, -2), lambda g: (_dot_nt(g, b), _dot_tn(a, g))


@tf.custom_gradient
def _dot_nt(a, b):
    return _xla_dot(a, b, -1, -1), lambda g: (_dot_nn(g, b), _dot_tn(g, a))


@tf.custom_gradient
def _dot_tn(a, b):
    return _xla_dot(a, b, -2, -2), lambda g: (_dot_nt(b, g), _dot_nn(a, g))


def matmul_highest(a, b):
    """Batched `a @ b` (`[..., M, K] @ [..., K, N]`) at full precision (float32: never TF32).

    Eager, in graphs and under XLA, differentiable to any order.
    """
    return _dot_nn(a, b)


@tf.custom_gradient
def _pass_gradient(value, carrier):
    # The value is the codes themselves (no arithmetic, so bitwise exact); the
    # upstream gradient goes unchanged to the carrier f(x) and none to the codes.
    def grad(upstream):
        return tf.zeros_like(value), upstream
    return tf.identity(value), grad


def _fully_defined(z) -> bool:
    return z.shape.is_fully_defined()


@final
class TensorFlowBackend(ArrayBackend):
    """LFQ on `tf.Tensor` (CPU or GPU), eager and inside `tf.function` / XLA.

    Attributes:
        name: "tensorflow" (alias "tf" in the registry).
        dtypes: float16, bfloat16 (computed in float32), float32, float64.
        modes: "eager" and "compiled" (`compiled()`).

    Distributed option of `lfq`, `entropy` and `commitment_loss`:
        replica_context: a `tf.distribute.ReplicaContext` (inside `strategy.run`)
            or "auto" (`tf.distribute.get_replica_context()`). The token sums are
            all-reduced (SUM) over its replicas, so every replica gets the losses
            of the global batch. Their gradient w.r.t. a replica's own inputs
            is the global loss's gradient times the number of replicas (the
            gradient of an all-reduce sum is an all-reduce sum): scale each
            replica's loss by `1 / num_replicas_in_sync`, as Keras does for
            `add_loss` and compiled losses, and the gradients that
            MirroredStrategy sums equal the single-replica gradients.
    """

    name = "tensorflow"
    dtypes = validation.FLOAT_DTYPES
    modes = ("eager", "compiled")

    def __init__(self):
        self._compiled = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ hooks

    def namespace(self, x):
        return array_namespace

    def pass_gradient(self, value, carrier):
        return _pass_gradient(value, carrier)

    def matmul(self, a, b, cfg: Config):
        """`a @ b`; full float32 for `precision="highest"`, TensorFlow's default otherwise.

        In a graph the product is formed as `(a^T)^T @ b`: `code_histogram` hands over
        `P_A` with its token axis moved last (`[C, 2**|A|, N]`), and contracting the
        transposed operand lets XLA cancel that transpose and read `P_A` where it was
        computed, which halves the histogram's forward + backward time under XLA:CPU.
        Eagerly nothing can cancel, so the product is taken as it comes.
        """
        if tf.executing_eagerly():
            return matmul_highest(a, b) if cfg.precision == "highest" else tf.linalg.matmul(a, b)
        a_t = tf.linalg.matrix_transpose(a)
        if cfg.precision == "highest":
            return _dot_tn(a_t, b)
        return tf.linalg.matmul(a_t, b, transpose_a=True)

    def constant(self, values, dtype, like):
        return tf.constant(values, dtype=dtype)

    def concrete_bounds(self, indices):
        """Eager tensors: `(min, max)`. Inside `tf.function` the values are unknown: None (no check)."""
        if not tf.executing_eagerly() or indices.shape.num_elements() == 0:
            return None
        return int(tf.reduce_min(indices)), int(tf.reduce_max(indices))

    def all_reduce(self, sums: LossSums, options: dict) -> LossSums:
        unknown = sorted(set(options) - set(_DISTRIBUTED_OPTIONS))
        if unknown:
            raise TypeError(
                f"backend 'tensorflow' got unknown keyword arguments {unknown}: its only distributed "
                "option is replica_context=tf.distribute.get_replica_context() (or 'auto')"
            )
        context = options.get("replica_context")
        if isinstance(context, str):
            if context != "auto":
                raise ValueError(f"replica_context={context!r} must be a tf.distribute.ReplicaContext, "
                                 "'auto' or None")
            context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return sums
        if not isinstance(context, tf.distribute.ReplicaContext):
            raise TypeError(f"replica_context={context!r} must be a tf.distribute.ReplicaContext, "
                            "as returned by tf.distribute.get_replica_context() inside strategy.run")
        flat = [sums.sample_entropy, sums.token_count, sums.commitment, *sums.histograms]
        # One batched collective; its gradient is again an all-reduce SUM (see the class docstring).
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, flat)
        return LossSums(total[0], total[1], total[2], tuple(total[3:]))

    # ------------------------------------------------------- entry points

    def quantize(self, z, cfg: Config):
        return super().quantize(_tensor(z, "z"), cfg)

    def codes_to_indices(self, z, cfg: Config):
        return super().codes_to_indices(_tensor(z, "z"), cfg)

    def indices_to_codes(self, indices, cfg: Config, dtype: str = "float32"):
        indices = _tensor(indices, "indices")
        validation.check_indices(indices.shape, indices.dtype, cfg)
        if dtype not in validation.FLOAT_DTYPES:
            raise ValueError(f"dtype={dtype!r} is not a float dtype name: use one of "
                             f"{', '.join(validation.FLOAT_DTYPES)}")
        # int64 bit weights fit every D <= 63, whatever integer type the indices come in.
        return super().indices_to_codes(tf.cast(indices, tf.int64), cfg, dtype)

    def straight_through(self, z, cfg: Config):
        z = _tensor(z, "z")
        if _fully_defined(z):
            return super().straight_through(z, cfg)
        flat, restore = self._flatten(z, None, cfg)
        return restore.codes(super().straight_through(flat.z, flat.cfg))

    def entropy(self, z, cfg: Config, mask=None, **options):
        return self._loss_call(super().entropy, z, cfg, mask, options)

    def commitment_loss(self, z, cfg: Config, mask=None, **options):
        return self._loss_call(super().commitment_loss, z, cfg, mask, options)

    def lfq(self, z, cfg: Config, mask=None, **options) -> LFQOutput:
        z = _tensor(z, "z")
        mask = None if mask is None else _tensor(mask, "mask")
        if _fully_defined(z):
            return super().lfq(z, cfg, mask, **options)
        flat, restore = self._flatten(z, mask, cfg)
        out = super().lfq(flat.z, flat.cfg, flat.mask, **options)
        return out._replace(codes=restore.codes(out.codes), indices=restore.indices(out.indices))

    def _loss_call(self, method, z, cfg, mask, options):
        z = _tensor(z, "z")
        mask = None if mask is None else _tensor(mask, "mask")
        if _fully_defined(z):
            return method(z, cfg, mask, **options)
        flat, _ = self._flatten(z, mask, cfg)
        return method(flat.z, flat.cfg, flat.mask, **options)

    def _flatten(self, z, mask, cfg: Config):
        """`z` with sizes unknown at trace time as `[N, C*D]` plus a `[N]` mask.

        The shared code counts tokens from the static shape when there is no mask;
        with an unknown N the count comes from an all-true mask instead.
        """
        if z.shape.rank is None:
            raise ValueError("z has unknown rank inside tf.function: give it an input_signature "
                             "with a known number of dimensions")
        validation.check_features(z.shape, z.dtype, cfg)
        rank = z.shape.rank
        axis = cfg.feature_axis % rank
        moved = z if axis == rank - 1 else tf.experimental.numpy.moveaxis(z, axis, -1)
        tokens = validation.token_shape(z.shape, cfg)
        if mask is None:
            mask = tf.ones(tf.shape(moved)[:-1], dtype=tf.bool)
        elif mask.dtype != tf.bool or not mask.shape.is_compatible_with(tokens):
            validation.check_mask(mask.shape, mask.dtype, z.shape, cfg)  # raises the standard message
        flat = _Flat(tf.reshape(moved, [-1, cfg.num_features]), tf.reshape(mask, [-1]),
                     cfg.replace(feature_axis=-1))
        return flat, _Restore(z, moved, axis, tokens, cfg)

    # ------------------------------------------------------- autodiff, modes

    def vjp(self, term: str, z, cfg: Config, cotangent=None, mask=None, **options):
        """Gradient of `term` w.r.t. `z` by `tf.GradientTape` (see `LFQBackend.vjp`).

        `options` are `lfq`'s distributed option (`replica_context`).
        """
        if term not in GRAD_TERMS:
            raise ValueError(f"term={term!r} is not one of {list(GRAD_TERMS)}")
        if term == "codes" and cotangent is None:
            raise ValueError("vjp('codes', ...) needs a cotangent of z's shape")
        z = _tensor(z, "z")
        mask = None if mask is None else _tensor(mask, "mask")
        with tf.GradientTape() as tape:
            tape.watch(z)
            if term == "codes":
                value = self.straight_through(z, cfg)
            else:
                value = getattr(self.lfq(z, cfg, mask, **options), term)
        if cotangent is not None:
            cotangent = _tensor(cotangent, "cotangent")
            if not cotangent.shape.is_compatible_with(value.shape):
                raise ValueError(f"cotangent has shape {tuple(cotangent.shape)}, expected "
                                 f"{tuple(value.shape)} (the shape of {term})")
            cotangent = tf.cast(cotangent, value.dtype)
        grad = tape.gradient(value, z, output_gradients=cotangent)
        return tf.zeros_like(z) if grad is None else grad

    def compiled(self) -> "CompiledTensorFlowBackend":
        with self._lock:
            if self._compiled is None:
                self._compiled = CompiledTensorFlowBackend(self)
            return self._compiled

    def asarray(self, array, dtype: str | None = None):
        """A NumPy array (or array-like) as a tensor; the dtype cast is NumPy's (ml_dtypes for bfloat16)."""
        array = np.asarray(array)
        if dtype is not None:
            array = array.astype(validation.numpy_dtype(dtype))
        return tf.constant(array)

    def to_numpy(self, array):
        return array.numpy() if hasattr(array, "numpy") else np.asarray(array)


class _Flat(NamedTuple):
    """Flattened inputs of `TensorFlowBackend._flatten`: `[N, C*D]`, `[N]` and the config."""

    z: Any
    mask: Any
    cfg: Config


class _Restore:
    """Puts flattened outputs back into the input's layout (dynamic shapes)."""

    def __init__(self, z, moved, axis, tokens, cfg):
        self._z, self._moved, self._axis, self._tokens, self._cfg = z, moved, axis, tokens, cfg

    def codes(self, codes):
        codes = tf.reshape(codes, tf.shape(self._moved))
        if self._axis != self._z.shape.rank - 1:
            codes = tf.experimental.numpy.moveaxis(codes, -1, self._axis)
        codes.set_shape(self._z.shape)
        return codes

    def indices(self, indices):
        c = self._cfg.num_codebooks
        indices = tf.reshape(indices, tf.concat([tf.shape(self._moved)[:-1], [c]], axis=0))
        indices.set_shape(self._tokens + (c,))
        return indices


@final
class CompiledTensorFlowBackend:
    """`TensorFlowBackend.compiled()`: every operation in `tf.function(jit_compile=True)`.

    The configuration (and the other non-array arguments) is captured in the
    traced function, one `tf.function` per configuration, reused across calls;
    TensorFlow retraces it per input shape and dtype. Inputs are validated before
    tracing, and index ranges are checked on the eager inputs, so errors are the
    eager backend's. Distributed options are refused: inside `strategy.run` use
    the eager backend in your own (jit-compiled) `tf.function`.
    """

    name = "tensorflow"
    dtypes = validation.FLOAT_DTYPES
    modes = ("eager", "compiled")

    def __init__(self, eager: TensorFlowBackend):
        self._eager = eager
        self._functions: dict = {}
        self._lock = threading.Lock()

    def _run(self, key, body, *arrays):
        with self._lock:
            function = self._functions.get(key)
            if function is None:
                # functools.partial: TensorFlow's retracing warning counts traces per code
                # object, and the bodies of different configurations share one.
                function = tf.function(functools.partial(body), jit_compile=True, autograph=False)
                self._functions[key] = function
        return function(*arrays)

    def _z(self, z, cfg: Config, mask=None):
        z = _tensor(z, "z")
        validation.check_features(z.shape, z.dtype, cfg)  # every float dtype is supported
        if mask is not None:
            mask = _tensor(mask, "mask")
            validation.check_mask(mask.shape, mask.dtype, z.shape, cfg)
        return z, mask

    @staticmethod
    def _no_options(options):
        if options:
            raise TypeError(
                f"the compiled TensorFlow backend takes no distributed options (got {sorted(options)}): "
                "inside strategy.run call the eager backend lfq.get('tensorflow') with "
                "replica_context=..., in your own tf.function(jit_compile=True)"
            )

    def quantize(self, z, cfg: Config):
        z, _ = self._z(z, cfg)
        return self._run(("quantize", cfg), lambda z: self._eager.quantize(z, cfg), z)

    def codes_to_indices(self, z, cfg: Config):
        z, _ = self._z(z, cfg)
        return self._run(("codes_to_indices", cfg), lambda z: self._eager.codes_to_indices(z, cfg), z)

    def indices_to_codes(self, indices, cfg: Config, dtype: str = "float32"):
        indices = _tensor(indices, "indices")
        validation.check_indices(indices.shape, indices.dtype, cfg)
        bounds = self._eager.concrete_bounds(indices)
        if bounds is not None:
            validation.check_index_range(*bounds, cfg)
        if dtype not in validation.FLOAT_DTYPES:
            raise ValueError(f"dtype={dtype!r} is not a float dtype name: use one of "
                             f"{', '.join(validation.FLOAT_DTYPES)}")
        return self._run(("indices_to_codes", cfg, dtype),
                         lambda i: self._eager.indices_to_codes(i, cfg, dtype), indices)

    def straight_through(self, z, cfg: Config):
        z, _ = self._z(z, cfg)
        return self._run(("straight_through", cfg), lambda z: self._eager.straight_through(z, cfg), z)

    def _losses(self, op, z, cfg, mask, options):
        self._no_options(options)
        validation.check_exact_batch_entropy(cfg)
        z, mask = self._z(z, cfg, mask)
        method = getattr(self._eager, op)
        if mask is None:
            return self._run((op, cfg, False), lambda z: method(z, cfg), z)
        return self._run((op, cfg, True), lambda z, m: method(z, cfg, m), z, mask)

    def entropy(self, z, cfg: Config, mask=None, **options):
        return self._losses("entropy", z, cfg, mask, options)

    def commitment_loss(self, z, cfg: Config, mask=None, **options):
        return self._losses("commitment_loss", z, cfg, mask, options)

    def lfq(self, z, cfg: Config, mask=None, **options) -> LFQOutput:
        return self._losses("lfq", z, cfg, mask, options)

    def vjp(self, term: str, z, cfg: Config, cotangent=None, mask=None, **options):
        self._no_options(options)
        if term not in GRAD_TERMS:
            raise ValueError(f"term={term!r} is not one of {list(GRAD_TERMS)}")
        if term == "codes" and cotangent is None:
            raise ValueError("vjp('codes', ...) needs a cotangent of z's shape")
        if term != "codes":
            validation.check_exact_batch_entropy(cfg)
        z, mask = self._z(z, cfg, mask)
        arrays = [z]
        if cotangent is not None:
            cotangent = _tensor(cotangent, "cotangent")
            expected = z.shape if term == "codes" else ()
            if tuple(cotangent.shape) != tuple(expected):
                raise ValueError(f"cotangent has shape {tuple(cotangent.shape)}, expected "
                                 f"{tuple(expected)} (the shape of {term})")
            arrays.append(cotangent)
        if mask is not None:
            arrays.append(mask)
        has_cot, has_mask = cotangent is not None, mask is not None

        def body(z, *rest):
            cot = rest[0] if has_cot else None
            m = rest[-1] if has_mask else None
            return self._eager.vjp(term, z, cfg, cot, m)

        return self._run(("vjp", cfg, term, has_cot, has_mask), body, *arrays)

    def compiled(self) -> "CompiledTensorFlowBackend":
        return self

    def code_usage(self, indices, cfg: Config, mask=None) -> CodeUsage:
        return self._eager.code_usage(indices, cfg, mask)

    def asarray(self, array, dtype: str | None = None):
        return self._eager.asarray(array, dtype)

    def to_numpy(self, array):
        return self._eager.to_numpy(array)
