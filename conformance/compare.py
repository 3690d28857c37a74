"""Comparisons of a backend's output with the oracle's: bitwise, exact, or within a tolerance.

Each returns an `Outcome` with the largest absolute and relative errors and, on a
failure, a message that says where and by how much (and the input value there,
when the output is elementwise in z).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from lfq.conformance.cases import Tolerance

from lfq.interface import LOSS_TERMS

__all__ = ["Outcome", "bits", "close", "exact_integers", "lfq_output", "past_range_as_inf"]

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


@dataclasses.dataclass
class Outcome:
    """Result of one comparison.

    Attributes:
        passed: whether the output conforms.
        max_abs: largest |got - want| (0 for exact matches, None when not comparable).
        max_rel: largest |got - want| / |want| over nonzero want.
        ratio: largest error / allowed error (> 1 fails); None for exact checks.
        message: why it failed (empty on success).
    """

    passed: bool
    max_abs: float | None = 0.0
    max_rel: float | None = 0.0
    ratio: float | None = None
    message: str = ""


def _spacing_at_zero(dtype: str | None) -> float:
    if dtype is None:
        return 0.0
    from lfq.conformance.cases import smallest_subnormal

    return smallest_subnormal(dtype)


def _shape_dtype(got: np.ndarray, want_shape, dtypes, what: str) -> str:
    if tuple(got.shape) != tuple(want_shape):
        return f"{what} has shape {tuple(got.shape)}, want {tuple(want_shape)}"
    if dtypes is not None and got.dtype.name not in dtypes:
        return f"{what} has dtype {got.dtype.name}, want {' or '.join(dtypes)}"
    return ""


def bits(got: np.ndarray, want: np.ndarray, dtype: str, z: np.ndarray | None = None, what: str = "codes") -> Outcome:
    """Bitwise equality of codes (`want` is float64, rounded once to `dtype` here)."""
    from lfq.validation import numpy_dtype

    got = np.asarray(got)
    problem = _shape_dtype(got, want.shape, (dtype,), what)
    if problem:
        return Outcome(False, None, None, None, problem)
    want_t = np.asarray(want).astype(numpy_dtype(dtype))
    uint = _UINT[got.dtype.itemsize]
    differ = got.view(uint) != want_t.view(uint)
    if not differ.any():
        return Outcome(True)
    g64, w64 = got.astype(np.float64), want_t.astype(np.float64)
    with np.errstate(invalid="ignore"):
        abs_err = np.abs(g64 - w64)
    first = np.argwhere(differ)[0]
    zz = None if z is None else np.asarray(z)
    detail = f"at index {tuple(int(i) for i in first)}: got {g64[tuple(first)]!r}, want {w64[tuple(first)]!r}"
    if zz is not None and zz.shape == got.shape:
        detail += f" (input z = {float(zz[tuple(first)])!r})"
    return Outcome(
        False,
        float(np.nanmax(abs_err)) if np.isfinite(abs_err).any() else float("nan"),
        None,
        None,
        f"{what}: {int(differ.sum())} of {differ.size} entries differ bitwise; first {detail}",
    )


def exact_integers(got: np.ndarray, want: np.ndarray, cfg, what: str = "indices") -> Outcome:
    """Exact equality of indices; dtype int64 (int32 allowed where D <= 31)."""
    got = np.asarray(got)
    allowed = ("int64",) if cfg.codebook_dim > 31 else ("int64", "int32")
    problem = _shape_dtype(got, want.shape, allowed, what)
    if problem:
        return Outcome(False, None, None, None, problem)
    differ = got.astype(np.int64) != want
    if not differ.any():
        return Outcome(True)
    first = tuple(int(i) for i in np.argwhere(differ)[0])
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    return Outcome(
        False,
        float(err.max()),
        None,
        None,
        f"{what}: {int(differ.sum())} of {differ.size} differ; first at index {first}: "
        f"got {int(got[first])}, want {int(want[first])}",
    )


def past_range_as_inf(want, dtype: str | None) -> np.ndarray:
    """The float64 oracle with values beyond `dtype`'s range replaced by the infinities
    that rounding them to `dtype` gives (outputs are float64 results rounded once to
    the input dtype, so a commitment loss of 1e68 is +inf in float32)."""
    want = np.asarray(want, dtype=np.float64)
    if dtype is None or dtype == "float64":
        return want
    from lfq.validation import numpy_dtype

    with np.errstate(over="ignore"):
        rounded = want.astype(numpy_dtype(dtype)).astype(np.float64)
    return np.where(np.isinf(rounded) & np.isfinite(want), rounded, want)


def close(
    got,
    want,
    tol: Tolerance,
    *,
    dtype: str | None = None,
    normalize: bool = False,
    scale: float | None = None,
    z: np.ndarray | None = None,
    what: str = "value",
) -> Outcome:
    """`|got - want| <= atol + rtol*|want| + tiny` elementwise in float64; NaN must match NaN.

    `tiny` is the smallest subnormal of `dtype`: an output rounded to `dtype` cannot
    be nearer than that spacing (it matters for float16 gradients, which underflow).

    Args:
        got: the backend's output (as NumPy).
        want: the oracle, float64.
        tol: the bound.
        dtype: the dtype name `got` must have (the precision rule), or None.
        normalize: divide both by `max|want|` first (gradients).
        scale: with `normalize`, divide by this instead of `max|want|`: the size of
            the terms `want` is a sum of, where they may cancel (to rounding noise).
        z: the input, to show the input value at the worst element.
        what: name of the output, for the message.
    """
    got = np.asarray(got)
    want = np.asarray(want, dtype=np.float64)
    problem = _shape_dtype(got, want.shape, None if dtype is None else (dtype,), what)
    if problem:
        return Outcome(False, None, None, None, problem)
    g = got.astype(np.float64)
    nan_g, nan_w = np.isnan(g), np.isnan(want)
    if (nan_g != nan_w).any():
        first = tuple(int(i) for i in np.argwhere(nan_g != nan_w)[0])
        return Outcome(
            False,
            float("nan"),
            float("nan"),
            float("inf"),
            f"{what}: NaN where the oracle has none or vice versa, first at index {first}: "
            f"got {g[first]!r}, want {want[first]!r}",
        )
    g, w = np.where(nan_g, 0.0, g), np.where(nan_w, 0.0, want)
    same_inf = np.isinf(g) & (g == w)  # equal infinities are equal
    g, w = np.where(same_inf, 0.0, g), np.where(same_inf, 0.0, w)
    unit = 1.0
    if normalize:
        peak = float(np.max(np.abs(w))) if w.size else 0.0
        peak = peak if scale is None else float(scale)
        unit = peak if peak > 0 else 1.0
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(g - w)
        allowed = tol.atol * unit + tol.rtol * np.abs(w) + _spacing_at_zero(dtype)
        ratio = np.where(err == 0, 0.0, err / np.where(allowed > 0, allowed, np.inf))
        ratio = np.where((err > 0) & (allowed == 0), np.inf, ratio)
        rel = np.where(w != 0, err / np.abs(np.where(w != 0, w, 1.0)), np.where(err > 0, np.inf, 0.0))
    if err.size == 0:
        return Outcome(True, 0.0, 0.0, 0.0)
    worst = np.unravel_index(int(np.argmax(np.where(np.isnan(ratio), np.inf, ratio))), err.shape)
    outcome = Outcome(bool(np.all(ratio <= 1.0)), float(np.nanmax(err)), float(np.nanmax(rel)), float(ratio[worst]))
    if not outcome.passed:
        bad = int(np.sum(~(ratio <= 1.0)))
        where = f"at index {tuple(int(i) for i in worst)}" if err.ndim else "(scalar)"
        outcome.message = (
            f"{what}: {bad} of {err.size} outside |got - want| <= {tol.atol:g}"
            f"{'*max|want|' if normalize else ''} + {tol.rtol:g}*|want|; worst {where}: "
            f"got {float(got.astype(np.float64)[worst])!r}, want {float(want[worst])!r} "
            f"({outcome.ratio:.3g} x the allowed error)"
        )
        if z is not None and np.shape(z) == got.shape and err.ndim:
            outcome.message += f" (input z = {float(np.asarray(z)[worst])!r})"
    return outcome


def lfq_output(got, want, cfg, dtype: str, tol: Tolerance, z: np.ndarray | None = None) -> list[Outcome]:
    """Every field of an `LFQOutput` against the oracle's: codes bitwise, indices exactly,
    the loss terms within `tol` (the oracle past the dtype's range as +-inf).

    Args:
        got: the backend's `LFQOutput`, its fields as NumPy arrays.
        want: the reference's `LFQOutput` on the same input, float64.
        z: the input, shown at the first differing code.
    """
    outcomes = [
        bits(got.codes, np.asarray(want.codes, np.float64), dtype, z=z, what="lfq.codes"),
        exact_integers(got.indices, np.asarray(want.indices), cfg, what="lfq.indices"),
    ]
    return outcomes + [
        close(getattr(got, term), past_range_as_inf(getattr(want, term), dtype), tol, dtype=dtype, what=f"lfq.{term}")
        for term in LOSS_TERMS
    ]
