"""The LFQ conformance suite: does a backend compute LFQ exactly as specified?

    >>> import lfq.conformance
    >>> report = lfq.conformance.run("numpy")      # or your own registered backend
    >>> report.ok
    True

It checks a backend only through the `lfq.LFQBackend` protocol, against the
NumPy reference (`lfq.reference`) on a table of cases (`lfq.conformance.cases`):
codes and indices bitwise, losses and gradients within per-dtype tolerances,
compiled against eager mode, the bad-input errors and the declared dtypes.
Entry points: `lfq conformance` (the CLI), `pytest --pyargs lfq.conformance
--lfq-backend NAME`, and `run` / `cross` here. docs/conformance.md explains each
check, the tolerances and the golden-vector format.
"""

from lfq.conformance.cases import CASES, DEFAULT_TOLERANCES, Case, Tolerance
from lfq.conformance.report import Report, Result
from lfq.conformance.runner import cross, run

__all__ = ["CASES", "Case", "DEFAULT_TOLERANCES", "Report", "Result", "Tolerance", "cross", "run"]
