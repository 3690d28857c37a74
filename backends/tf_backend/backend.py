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

`compiled()` returns `CompiledTensorFlowBackend` (`compiled.py`), the same
operations as compiled programs (`lfq.program`) in `tf.function(jit_compile=True)`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
from lfq.backends.tf_backend import array_namespace, distributed, ops

from lfq import histogram_grad, validation
from lfq.array_backend import ArrayBackend
from lfq.config import Config
from lfq.interface import GRAD_TERMS, LFQOutput

__all__ = ["TensorFlowBackend"]

_DISTRIBUTED_OPTIONS = ("replica_context",)


def _fully_defined(z) -> bool:
    return z.shape.is_fully_defined()


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

    # ------------------------------------------------------------------ hooks

    def namespace(self, x):
        return array_namespace

    flushes_subnormals = True  # CPU kernels run denormals-are-zero, XLA flushes

    def pass_gradient(self, value, carrier):
        return ops.pass_gradient(value, carrier)

    def stop_gradient(self, x):
        return tf.stop_gradient(x)

    def bitcast(self, x, dtype):
        return tf.bitcast(x, dtype)

    def positive(self, x):
        return ops.positive(x)

    def subcode_probs(self, a, cfg: Config):
        return ops.subcode_probs(a)

    def code_histogram(self, a, weights, cfg: Config):
        """From `histogram_grad.BLOCKS_FROM_BYTES` of `P_A` on (static N), the histogram over
        blocks of tokens, recomputed in the gradient (`ops.block_histogram`): XLA:CPU keeps
        about two tables of `P_A + P_B`'s size alive in a step's backward, blocks bound them."""
        n, c, k = a.shape
        rows = histogram_grad.token_block_rows(n, c, k, a.dtype.size)
        if rows is None:
            return super().code_histogram(a, weights, cfg)

        def histogram(a_block, w_block):
            return super(TensorFlowBackend, self).code_histogram(a_block, w_block, cfg)

        return ops.block_histogram(a, weights, rows, histogram)

    def tiled_entropy(self, probs_a, probs_b, count, rows: int, cfg: Config):
        from lfq.backends.tf_backend.tiled import tiled_entropy  # custom gradient over tf.while_loop

        return tiled_entropy(probs_a, probs_b, count, rows, cfg.precision == "highest")

    def matmul(self, a, b, cfg: Config):
        """`a @ b`; full float32 for `precision="highest"`, TensorFlow's default otherwise.

        In a graph the product is formed as `(a^T)^T @ b`: `code_histogram` hands over
        `P_A` with its token axis moved last (`[C, 2**|A|, N]`), and contracting the
        transposed operand lets XLA cancel that transpose and read `P_A` where it was
        computed, which halves the histogram's forward + backward time under XLA:CPU.
        Eagerly nothing can cancel, so the product is taken as it comes.
        """
        if tf.executing_eagerly():
            return ops.matmul_highest(a, b) if cfg.precision == "highest" else tf.linalg.matmul(a, b)
        a_t = tf.linalg.matrix_transpose(a)
        if cfg.precision == "highest":
            return ops.dot_tn(a_t, b)
        return tf.linalg.matmul(a_t, b, transpose_a=True)

    def device_of(self, x):
        return None  # TensorFlow places constants where the ops that use them run

    def check_array(self, x, name: str) -> None:
        """tf.Tensor, tf.Variable or numpy.ndarray; anything else is refused (`ops.as_tensor`)."""
        ops.as_tensor(x, name)

    def concrete_bounds(self, indices):
        """Eager tensors: `(min, max)`. Inside `tf.function` the values are unknown: None (no check)."""
        if not tf.executing_eagerly() or indices.shape.num_elements() == 0:
            return None
        return int(tf.reduce_min(indices)), int(tf.reduce_max(indices))

    def check_options(self, options: dict) -> None:
        unknown = sorted(set(options) - set(_DISTRIBUTED_OPTIONS))
        if unknown:
            raise TypeError(
                f"backend 'tensorflow' got unknown keyword arguments {unknown}: its only distributed "
                "option is replica_context=tf.distribute.get_replica_context() (or 'auto')"
            )

    def replica_group(self, options: dict):
        """The replica context of `options["replica_context"]` ("auto": the current one);
        None outside `strategy.run` or with one replica."""
        context = options.get("replica_context")
        if isinstance(context, str):
            if context != "auto":
                raise ValueError(f"replica_context={context!r} must be a tf.distribute.ReplicaContext, 'auto' or None")
            context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return None
        if not isinstance(context, tf.distribute.ReplicaContext):
            raise TypeError(
                f"replica_context={context!r} must be a tf.distribute.ReplicaContext, "
                "as returned by tf.distribute.get_replica_context() inside strategy.run"
            )
        return context

    def collectives(self):
        return distributed

    # ------------------------------------------------------- entry points

    def quantize(self, z, cfg: Config):
        return super().quantize(ops.as_tensor(z, "z"), cfg)

    def codes_to_indices(self, z, cfg: Config):
        return super().codes_to_indices(ops.as_tensor(z, "z"), cfg)

    def indices_to_codes(self, indices, cfg: Config, dtype: str = "float32"):
        indices = ops.as_tensor(indices, "indices")
        validation.check_indices(indices.shape, indices.dtype, cfg)
        dtype = validation.check_codes_dtype(dtype)
        # int64 bit weights fit every D <= 63, whatever integer type the indices come in.
        return super().indices_to_codes(tf.cast(indices, tf.int64), cfg, dtype)

    def straight_through(self, z, cfg: Config):
        z = ops.as_tensor(z, "z")
        if _fully_defined(z):
            return super().straight_through(z, cfg)
        flat, restore = self._flatten(z, None, cfg)
        return restore.codes(super().straight_through(flat.z, flat.cfg))

    def entropy(self, z, cfg: Config, mask=None, **options):
        return self._loss_call(super().entropy, z, cfg, mask, options)

    def commitment_loss(self, z, cfg: Config, mask=None, **options):
        return self._loss_call(super().commitment_loss, z, cfg, mask, options)

    def lfq(self, z, cfg: Config, mask=None, **options) -> LFQOutput:
        z = ops.as_tensor(z, "z")
        mask = None if mask is None else ops.as_tensor(mask, "mask")
        if _fully_defined(z):
            return super().lfq(z, cfg, mask, **options)
        flat, restore = self._flatten(z, mask, cfg)
        out = super().lfq(flat.z, flat.cfg, flat.mask, **options)
        return out._replace(codes=restore.codes(out.codes), indices=restore.indices(out.indices))

    def _loss_call(self, method, z, cfg, mask, options):
        z = ops.as_tensor(z, "z")
        mask = None if mask is None else ops.as_tensor(mask, "mask")
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
            raise ValueError(
                "z has unknown rank inside tf.function: give it an input_signature with a known number of dimensions"
            )
        validation.check_features(z.shape, z.dtype, cfg)
        rank = z.shape.rank
        axis = cfg.feature_axis % rank
        moved = z if axis == rank - 1 else tf.experimental.numpy.moveaxis(z, axis, -1)
        tokens = validation.token_shape(z.shape, cfg)
        if mask is None:
            mask = tf.ones(tf.shape(moved)[:-1], dtype=tf.bool)
        elif mask.dtype != tf.bool or not mask.shape.is_compatible_with(tokens):
            validation.check_mask(mask.shape, mask.dtype, z.shape, cfg)  # raises the standard message
        flat = _Flat(tf.reshape(moved, [-1, cfg.num_features]), tf.reshape(mask, [-1]), cfg.replace(feature_axis=-1))
        return flat, _Restore(z, moved, axis, tokens, cfg)

    # ------------------------------------------------------- autodiff, modes

    def gradient(self, fn, z, cotangent):
        with tf.GradientTape() as tape:
            tape.watch(z)
            value = fn(z)
        cotangent = None if cotangent is None else tf.cast(cotangent, value.dtype)
        grad = tape.gradient(value, z, output_gradients=cotangent)
        return tf.zeros_like(z) if grad is None else grad

    def vjp(self, term: str, z, cfg: Config, cotangent=None, mask=None, **options):
        """Gradient of `term` w.r.t. `z` by `tf.GradientTape` (see `LFQBackend.vjp`).

        `options` are the schedule values and `lfq`'s distributed option (`replica_context`).
        """
        z = ops.as_tensor(z, "z")
        mask = None if mask is None else ops.as_tensor(mask, "mask")
        cotangent = None if cotangent is None else ops.as_tensor(cotangent, "cotangent", numbers=True)
        if term not in GRAD_TERMS or _fully_defined(z):
            return super().vjp(term, z, cfg, cotangent, mask, **options)
        # Sizes unknown at trace time (Keras): the public operations flatten the tokens.
        if term == "codes" and cotangent is None:
            raise ValueError("vjp('codes', ...) needs a cotangent of z's shape")
        validation.check_features(z.shape, z.dtype, cfg)  # before the tape watches an integer z

        def value(z):
            if term == "codes":
                return self.straight_through(z, cfg)
            if term == "commitment_loss":  # without the batch entropy: any D, and less work
                return self.commitment_loss(z, cfg, mask, **options)
            return getattr(self.lfq(z, cfg, mask, **options), term)

        return self.gradient(value, z, cotangent)

    def compiled(self):
        """This backend's `CompiledTensorFlowBackend`: every operation under XLA (`compiled.py`)."""
        from lfq.backends.tf_backend.compiled import CompiledTensorFlowBackend

        # setdefault: one instance even when threads race to make it
        return self.__dict__.setdefault("_compiled", CompiledTensorFlowBackend())

    def asarray(self, array, dtype: str | None = None, device=None):
        """A NumPy array (or array-like) as a tensor.

        Args:
            array: anything `np.asarray` takes.
            dtype: dtype name; the cast is NumPy's (ml_dtypes for bfloat16), so it
                rounds once, to nearest even.
            device: None (TensorFlow's default placement), "cpu", "gpu"/"cuda"
                (optionally ":index"), or a TensorFlow device name such as "/GPU:1".
        """
        array = np.asarray(array)
        if dtype is not None:
            array = array.astype(validation.numpy_dtype(dtype))
        if device is None:
            return tf.constant(array)
        with tf.device(ops.device_name(device)):
            return tf.identity(tf.constant(array))

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
