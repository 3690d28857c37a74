"""The TensorFlow backend and its Keras 3 layer.

    import lfq
    be = lfq.get("tensorflow")          # TensorFlowBackend, eager
    fast = be.compiled()                # ops in tf.function(jit_compile=True)

    from lfq.backends.tf_backend import LFQLayer   # keras.layers.Layer

The Keras layer is imported on first access, so that `lfq.get("tensorflow")`
does not import Keras. See docs/tensorflow.md.
"""

from lfq.backends.tf_backend.backend import TensorFlowBackend
from lfq.backends.tf_backend.compiled import CompiledTensorFlowBackend

__all__ = ["CompiledTensorFlowBackend", "LFQLayer", "LFQLayerOutput", "LossBreakdown", "TensorFlowBackend"]

_LAYER_NAMES = ("LFQLayer", "LFQLayerOutput", "LossBreakdown")


def __getattr__(name):
    if name in _LAYER_NAMES:
        from lfq.backends.tf_backend import layer

        return getattr(layer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
