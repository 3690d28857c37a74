"""`CompiledTensorFlowBackend`: every operation of `TensorFlowBackend` under XLA."""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, final

import tensorflow as tf
from lfq.backends.tf_backend.ops import as_tensor

from lfq import validation
from lfq.config import Config
from lfq.factorized import SCHEDULE_FIELDS
from lfq.interface import GRAD_TERMS, CodeUsage, LFQOutput

if TYPE_CHECKING:  # the eager backend imports this module
    from lfq.backends.tf_backend.backend import TensorFlowBackend

__all__ = ["CompiledTensorFlowBackend"]


@final
class CompiledTensorFlowBackend:
    """`TensorFlowBackend.compiled()`: every operation in `tf.function(jit_compile=True)`.

    The configuration (and the other non-array arguments) is captured in the
    traced function, one `tf.function` per configuration, reused across calls;
    TensorFlow retraces it per input shape and dtype. Inputs are validated before
    tracing, and index ranges are checked on the eager inputs, so errors are the
    eager backend's. Distributed options are refused: inside `strategy.run` use
    the eager backend in your own (jit-compiled) `tf.function`. The per-call
    schedule options (`inv_temperature=`, the weights) are a `[4]` float64 input
    of the traced function, not part of its configuration: an annealed
    temperature does not retrace.
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
        validation.check_config(cfg)  # before cfg keys a traced function
        z = as_tensor(z, "z")
        validation.check_features(z.shape, z.dtype, cfg)  # every float dtype is supported
        if mask is not None:
            mask = as_tensor(mask, "mask")
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
        validation.check_config(cfg)
        indices = as_tensor(indices, "indices")
        validation.check_indices(indices.shape, indices.dtype, cfg)
        bounds = self._eager.concrete_bounds(indices)
        if bounds is not None:
            validation.check_index_range(*bounds, cfg)
        dtype = validation.check_codes_dtype(dtype)
        return self._run(
            ("indices_to_codes", cfg, dtype), lambda i: self._eager.indices_to_codes(i, cfg, dtype), indices
        )

    def straight_through(self, z, cfg: Config):
        z, _ = self._z(z, cfg)
        return self._run(("straight_through", cfg), lambda z: self._eager.straight_through(z, cfg), z)

    def _schedule(self, cfg: Config, options):
        """`(program config, [4] float64 schedule tensor)` (`validation.program_schedule`)."""
        validation.check_config(cfg)  # a dict or None fails here, with the usual message
        cfg, values, options = validation.program_schedule(cfg, options)
        self._no_options(options)
        # tf.constant for floats: tf.cast would make a float32 tensor of a Python float first
        scalars = tf.stack(
            [
                tf.constant(v, tf.float64) if isinstance(v, float) else tf.cast(v, tf.float64)
                for v in (values[name] for name in SCHEDULE_FIELDS)
            ]
        )
        return cfg, scalars

    def _losses(self, op, z, cfg, mask, options):
        if op != "commitment_loss":  # the commitment loss needs no batch entropy: any D
            validation.check_exact_batch_entropy(cfg)
        cfg, scalars = self._schedule(cfg, options)
        z, mask = self._z(z, cfg, mask)
        method = getattr(self._eager, op)
        if mask is None:
            return self._run((op, cfg, False), lambda z, s: method(z, cfg, **_unstack(s)), z, scalars)
        return self._run((op, cfg, True), lambda z, s, m: method(z, cfg, m, **_unstack(s)), z, scalars, mask)

    def entropy(self, z, cfg: Config, mask=None, **options):
        return self._losses("entropy", z, cfg, mask, options)

    def commitment_loss(self, z, cfg: Config, mask=None, **options):
        return self._losses("commitment_loss", z, cfg, mask, options)

    def lfq(self, z, cfg: Config, mask=None, **options) -> LFQOutput:
        return self._losses("lfq", z, cfg, mask, options)

    def vjp(self, term: str, z, cfg: Config, cotangent=None, mask=None, **options):
        if term not in GRAD_TERMS:
            raise ValueError(f"term={term!r} is not one of {list(GRAD_TERMS)}")
        if term == "codes" and cotangent is None:
            raise ValueError("vjp('codes', ...) needs a cotangent of z's shape")
        if term not in ("codes", "commitment_loss"):  # those two need no batch entropy: any D
            validation.check_exact_batch_entropy(cfg)
        cfg, scalars = self._schedule(cfg, options)
        z, mask = self._z(z, cfg, mask)
        arrays = [z, scalars]
        if cotangent is not None:
            cotangent = as_tensor(cotangent, "cotangent", numbers=True)
            expected = z.shape if term == "codes" else ()
            validation.check_cotangent(cotangent.shape, expected, term)
            arrays.append(cotangent)
        if mask is not None:
            arrays.append(mask)
        has_cot, has_mask = cotangent is not None, mask is not None

        def body(z, s, *rest):
            cot = rest[0] if has_cot else None
            m = rest[-1] if has_mask else None
            return self._eager.vjp(term, z, cfg, cot, m, **_unstack(s))  # commitment alone for its term: any D

        return self._run(("vjp", cfg, term, has_cot, has_mask), body, *arrays)

    def compiled(self) -> CompiledTensorFlowBackend:
        return self

    def code_usage(self, indices, cfg: Config, mask=None) -> CodeUsage:
        return self._eager.code_usage(indices, cfg, mask)

    def asarray(self, array, dtype: str | None = None, device=None):
        return self._eager.asarray(array, dtype, device)

    def to_numpy(self, array):
        return self._eager.to_numpy(array)


def _unstack(scalars) -> dict:
    """The `[4]` schedule tensor as the eager backend's schedule options."""
    return dict(zip(SCHEDULE_FIELDS, tf.unstack(scalars)))
