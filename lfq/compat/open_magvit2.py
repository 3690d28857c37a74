"""Open-MAGVIT2 / SEED-Voken's `LFQ` (torch): `from lfq.compat.open_magvit2 import LFQ`.

The layer lives in `lfq.backends.torch_backend.open_magvit2`; docs/open-magvit2.md
has the migration table and the results that differ on purpose.
"""

from lfq.backends.torch_backend.open_magvit2 import LFQ, LossBreakdown

__all__ = ["LFQ", "LossBreakdown"]
