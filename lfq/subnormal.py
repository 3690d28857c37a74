"""Subnormal numbers flushed to exact 0 on the values (re-exported by `lfq.factorized`).

The sub-code probability tables are the operands of the histogram's matrix
products; a CPU product with subnormal inputs can run 100 times slower, so the
shared math flushes them (`flush_subnormal`) instead of setting a process-wide mode.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SMALLEST_NORMAL", "flush_subnormal"]


#: Smallest positive normal float32 and float64 (`finfo(dtype).smallest_normal`).
SMALLEST_NORMAL = {"float32": float(np.finfo(np.float32).tiny), "float64": float(np.finfo(np.float64).tiny)}
#: Largest subnormal float32 and float64, as hex strings (`float.fromhex` at the call: see
#: `flush_subnormal`): `hardshrink(x, this)` zeros exactly the subnormals.
_LARGEST_SUBNORMAL_HEX = {
    name: float(np.nextafter(np.asarray(tiny, dtype), dtype(0))).hex()
    for (name, tiny), dtype in zip(SMALLEST_NORMAL.items(), (np.float32, np.float64))
}


def flush_subnormal(x, xp, nonnegative: bool = False, overwrite: bool = False):
    r"""`x` with its entries of magnitude below the dtype's smallest normal number replaced by exact 0.

    `nonnegative` (x known to be >= 0) saves the `abs`. NaN stays NaN. For the
    operands of the matrix products (the sub-code probabilities, and the reference's
    cotangent-weighted copies): a CPU matrix product with subnormal inputs runs
    up to 100 times slower where the hardware takes a microcode assist per subnormal
    (10% of the float32 entries of $P_A$ are subnormal at input std 0.1); flushing
    them here keeps every backend fast without changing a process-wide floating-point
    mode (`torch.set_flush_denormal`). No loss changes at float precision:
    docs/spec.md ("Subnormal probabilities") bounds the effect. float32 is assumed
    for every dtype but float64 (half inputs are computed in float32).

    `overwrite` (with `nonnegative`: x is a temporary the caller gives up) flushes
    in place where the namespace can (torch's `threshold_`, NumPy's `putmask`): no
    second table of x's size, and torch's pass is about 10 times faster than the copy.
    """
    name = "float64" if x.dtype == xp.float64 else "float32"
    if overwrite and nonnegative:
        threshold_ = getattr(xp, "threshold_", None)
        if threshold_ is not None:  # torch: x <= largest subnormal -> 0 (NaN stays)
            return threshold_(x, float.fromhex(_LARGEST_SUBNORMAL_HEX[name]), 0.0)
        putmask = getattr(xp, "putmask", None)
        if putmask is not None:  # NumPy
            putmask(x, x < SMALLEST_NORMAL[name], 0.0)
            return x
    hardshrink = getattr(xp, "hardshrink", None)
    if hardshrink is not None:
        # torch: one vectorized kernel; its CPU `where` (plus the compare and the
        # zeros) costs about 10 times as much, which is most of an eager step's flush.
        # The threshold as a hex literal: `torch.compile(dynamic=True)` makes a Python float
        # read from a global a graph input, which an autograd.Function's forward (the
        # sub-code tables') cannot take in (a Dynamo error); a float built from a string
        # is a constant of the trace.
        return hardshrink(x, float.fromhex(_LARGEST_SUBNORMAL_HEX[name]))
    tiny = SMALLEST_NORMAL[name]
    return xp.where((x if nonnegative else xp.abs(x)) < tiny, xp.zeros_like(x), x)
