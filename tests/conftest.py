"""Shared fixtures of the backend tests: which backend, mode and dtype a test runs on,
and the one comparison of a result with the reference.

* `target`: `(name, mode, backend)` for every registered backend and each of its
  modes (eager, compiled). A backend whose framework is not installed is skipped
  with the reason (the pip extra to install), not left out silently.
* `backend_run`: a `Run` for every backend x mode x input dtype. JAX computes in float64
  only in its 64-bit mode: its float64 runs switch the mode on for the test (and
  its other runs switch it off), so no test leaks the global setting. A dtype a
  backend does not declare is skipped.
* `assert_close`: the conformance suite's comparison (`lfq.conformance.compare.close`)
  with its tolerances (`lfq.conformance.cases.DEFAULT_TOLERANCES`, one per input
  dtype and kind of value, the reason of each written beside it there).

Parametrize a subset with `backend_runs(...)` / `targets(...)` and `indirect=True`:

    @pytest.mark.parametrize("backend_run", backend_runs(dtypes=["float32"]), indirect=True)

Frameworks are imported when a test first asks for their backend, never at
collection, and torch always before TensorFlow (their bundled libraries clash
the other way round).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pytest
from lfq.conformance import compare
from lfq.conformance.cases import DEFAULT_TOLERANCES, Tolerance

import lfq
from lfq import registry
from lfq.validation import FLOAT_DTYPES

#: Every registered backend, installed or not (a missing framework skips its tests).
BACKENDS = tuple(lfq.list_backends())


def modes_of(name: str) -> tuple[str, ...]:
    """A backend's modes without importing its framework (its class, for a registered one)."""
    info = registry.static_info(name)
    if info is not None:
        return info.modes
    return tuple(_load(name).modes)


def targets(backends: Iterable[str] = BACKENDS, modes: Iterable[str] | None = None) -> list:
    """Parameters `(name, mode)` of the `target` fixture (and `backend_run`'s)' backend x mode product."""
    return [
        pytest.param((name, mode), id=f"{name}-{mode}")
        for name in backends
        for mode in modes_of(name)
        if modes is None or mode in modes
    ]


def backend_runs(
    backends: Iterable[str] = BACKENDS, modes: Iterable[str] | None = None, dtypes: Iterable[str] = FLOAT_DTYPES
) -> list:
    """Parameters `(name, mode, dtype)` of the `backend_run` fixture: backends x their modes x dtypes."""
    dtypes = tuple(dtypes)
    return [
        pytest.param((*p.values[0], dtype), id=f"{p.id}-{dtype}") for p in targets(backends, modes) for dtype in dtypes
    ]


def _load(name: str):
    """`lfq.get(name)`, skipping the test when the framework is missing."""
    reason = registry.unavailable_reason(name)
    if reason is not None:
        pytest.skip(reason)
    if registry.framework(name) == "tensorflow" and "torch" not in sys.modules and importlib.util.find_spec("torch"):
        import torch  # noqa: F401  (before tensorflow, see the module docstring)
    return lfq.get(name)


def backend_in_mode(name: str, mode: str):
    """The backend registered as `name`, in `mode` ("eager" or "compiled")."""
    be = _load(name)
    return be.compiled() if mode == "compiled" else be


def precision_mode(name: str, dtype: str | None) -> contextlib.AbstractContextManager:
    """JAX's 64-bit mode on for float64 inputs and off otherwise; nothing for other backends."""
    if registry.framework(name) != "jax" or dtype is None:
        return contextlib.nullcontext()
    import jax

    return jax.enable_x64(dtype == "float64")


@dataclasses.dataclass(frozen=True)
class Run:
    """One backend in one mode, fed inputs of one dtype.

    Attributes:
        name: registry name ("numpy", "torch", "jax", "tensorflow").
        mode: "eager" or "compiled".
        dtype: input dtype name (`lfq.validation.FLOAT_DTYPES`).
        be: the backend object in that mode.
    """

    name: str
    mode: str
    dtype: str
    be: Any

    def put(self, array: np.ndarray | None) -> Any:
        """A NumPy array as the backend's array: floats in the run's dtype, others as they are."""
        if array is None:
            return None
        array = np.asarray(array)
        return self.be.asarray(array, self.dtype if array.dtype.kind == "f" else None)

    def get(self, native: Any) -> np.ndarray:
        """A backend array as NumPy."""
        return np.asarray(self.be.to_numpy(native))

    def input(self, z64: np.ndarray) -> np.ndarray:
        """`z64` rounded to the run's dtype, as float64: exactly the values the backend sees."""
        return np.asarray(z64).astype(lfq.validation.numpy_dtype(self.dtype)).astype(np.float64)


@pytest.fixture(params=targets())
def target(request) -> tuple[str, str, Any]:
    """`(name, mode, backend)`: every backend in each of its modes."""
    name, mode = request.param
    return name, mode, backend_in_mode(name, mode)


@pytest.fixture(params=backend_runs())
def backend_run(request) -> Iterator[Run]:
    """A `Run`: every backend x mode x input dtype (undeclared dtypes skipped)."""
    name, mode, dtype = request.param
    be = backend_in_mode(name, mode)
    with precision_mode(name, dtype):
        if dtype not in tuple(be.dtypes):
            pytest.skip(f"backend {name!r} does not take {dtype} inputs (its dtypes are {tuple(be.dtypes)})")
        yield Run(name, mode, dtype, be)


def make_inputs(
    cfg: lfq.Config, seed: int = 0, tokens: tuple = (3, 7), spread: float = 0.3, dtype: str = "float64"
) -> tuple[np.ndarray, np.ndarray]:
    """`(z, mask)`: z of `tokens` with the `C*D` features on `cfg.feature_axis`, N(0, spread**2)
    rounded to `dtype` (NumPy, bfloat16 via ml_dtypes); a boolean token mask with about
    70% valid tokens, the first always valid."""
    rng = np.random.default_rng(seed)
    z = np.moveaxis(rng.standard_normal((*tokens, cfg.num_features)) * spread, -1, cfg.feature_axis)
    mask = rng.random(tokens) > 0.3
    mask.flat[0] = True
    return z.astype(lfq.validation.numpy_dtype(dtype)), mask


def tolerance(dtype: str, kind: str = "loss") -> Tolerance:
    """The conformance suite's bound for `kind` ("loss", "grad", "usage") values of `dtype` inputs."""
    return DEFAULT_TOLERANCES[dtype][kind]


def assert_close(
    got: Any,
    want: Any,
    dtype: str,
    kind: str = "loss",
    *,
    what: str = "value",
    scale: float | None = None,
    tol: Tolerance | None = None,
) -> None:
    """`got` (NumPy, of `dtype`) agrees with the float64 oracle `want` as the conformance suite asks.

    The bound is `tolerance(dtype, kind)` (or `tol`, for a test that states its own
    reason): `|got - want| <= atol + rtol*|want|` elementwise; gradients ("grad") are
    compared after dividing both by `max|want|` (or by `scale`, the size of the terms
    a cancelling gradient is a sum of). The oracle's values past `dtype`'s range count
    as the infinities that rounding them gives, and NaN must match NaN.
    """
    outcome = compare.close(
        np.asarray(got),
        compare.past_range_as_inf(want, dtype),
        tol or tolerance(dtype, kind),
        dtype=dtype,
        normalize=kind == "grad",
        scale=scale,
        what=what,
    )
    assert outcome.passed, outcome.message
