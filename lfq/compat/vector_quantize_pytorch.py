"""vector-quantize-pytorch's LFQ layers, computed by lfq: change one import.

    from vector_quantize_pytorch import LFQ, ResidualLFQ, GroupedResidualLFQ
    # becomes
    from lfq.compat.vector_quantize_pytorch import LFQ, ResidualLFQ, GroupedResidualLFQ

These are the torch backend's own layers (`lfq.backends.torch_backend`), whose
interface is a superset of vector-quantize-pytorch's; docs/migration.md lists
every argument, return field, attribute and mask shape, and the results that
differ on purpose.
"""

from lfq.backends.torch_backend.module import LFQ, LossBreakdown, Return
from lfq.backends.torch_backend.residual import GroupedResidualLFQ, ResidualLFQ

__all__ = ["GroupedResidualLFQ", "LFQ", "LossBreakdown", "ResidualLFQ", "Return"]
