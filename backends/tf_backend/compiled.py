"""`CompiledTensorFlowBackend`: every operation of `TensorFlowBackend` under XLA."""

from __future__ import annotations

import tensorflow as tf
from lfq.backends.tf_backend.backend import TensorFlowBackend

__all__ = ["CompiledTensorFlowBackend"]


class CompiledTensorFlowBackend(TensorFlowBackend):
    """`TensorFlowBackend.compiled()`: every operation in `tf.function(jit_compile=True)`.

    The operations are compiled programs (`lfq.program`): one `tf.function` per
    (operation, configuration, dtype, mask presence), reused across calls;
    TensorFlow retraces it per input shape. Inputs are validated before tracing,
    and index ranges are checked on the eager inputs, so errors are the eager
    backend's. The per-call schedule options (`inv_temperature=`, the weights) are
    a `[4]` float64 input of the traced function, not part of its configuration:
    an annealed temperature does not retrace. Distributed options are refused:
    inside `strategy.run` use the eager backend in your own (jit-compiled)
    `tf.function`. Gradients (`vjp`, or a `tf.GradientTape` around a call) are
    the compiled functions' own.
    """

    compiles = True

    def check_options(self, options: dict) -> None:
        if options:
            raise TypeError(
                f"the compiled TensorFlow backend takes no distributed options (got {sorted(options)}): "
                "inside strategy.run call the eager backend lfq.get('tensorflow') with "
                "replica_context=..., in your own tf.function(jit_compile=True)"
            )

    def compile_program(self, fn, signature):
        return tf.function(fn, jit_compile=True, autograph=False)

    def pack_schedule(self, values: tuple, like):
        # tf.constant for floats: tf.cast would make a float32 tensor of a Python float first
        return tf.stack(
            [tf.constant(v, tf.float64) if isinstance(v, float) else tf.cast(v, tf.float64) for v in values]
        )

    def compiled(self) -> CompiledTensorFlowBackend:
        return self
