"""The JAX backend of lfq: `JaxBackend` (functional, `lfq.get("jax")`) and `LFQ`,
an init/apply module holding the optional projections as parameters.

See docs/jax.md for jit/grad/vmap, the training step, sharding and precision.
"""

from lfq.backends.jax_backend.backend import JaxBackend, positive, x64_enabled
from lfq.backends.jax_backend.module import LFQ, LFQResult, LossBreakdown

__all__ = ["JaxBackend", "LFQ", "LFQResult", "LossBreakdown", "positive", "x64_enabled"]
