"""lfq: lookup-free quantization as one exact specification with several backends.

    >>> import numpy as np, lfq
    >>> cfg = lfq.Config(codebook_dim=4)
    >>> be = lfq.get()                       # the NumPy reference
    >>> be.codes_to_indices(np.array([[0.5, -1.0, 0.0, 2.0]]), cfg)
    array([[9]])

`import lfq` imports no framework: backends load on `lfq.get(name)`.
"""

from lfq import reference
from lfq.config import Config
from lfq.interface import GRAD_TERMS, LOSS_TERMS, CodeUsage, LFQBackend, LFQOutput
from lfq.registry import BackendUnavailable, get, is_available, list_backends, register

__version__ = "0.1.0"
#: Version of the specification (docs/spec.md); golden vectors carry it.
SPEC_VERSION = "1.0"

__all__ = [
    "BackendUnavailable",
    "CodeUsage",
    "Config",
    "GRAD_TERMS",
    "LFQBackend",
    "LFQOutput",
    "LOSS_TERMS",
    "SPEC_VERSION",
    "get",
    "is_available",
    "list_backends",
    "reference",
    "register",
]
