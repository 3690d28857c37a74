"""The "numpy" backend: the reference itself behind the common interface.

It is the default backend and the oracle of the conformance suite: every
operation is the float64 function of `lfq.reference`, and `vjp` returns the
reference's analytic gradients (NumPy has no autodiff).
"""

from __future__ import annotations

import importlib.util
from typing import final

import numpy as np

from lfq import reference, validation
from lfq.config import Config
from lfq.interface import CodeUsage, LFQOutput
from lfq.validation import FLOAT_DTYPES, numpy_dtype

#: bfloat16 NumPy arrays come from ml_dtypes (installed with JAX or the `lfq[jax]` extra);
#: without it the backend cannot hold bfloat16 and does not declare it.
HAS_BFLOAT16 = importlib.util.find_spec("ml_dtypes") is not None


def _scheduled(cfg: Config, options: dict) -> Config:
    """`cfg` with this call's schedule values (`inv_temperature=`, `entropy_weight=`, ...):
    the reference's meaning of the per-call schedule options of the other backends."""
    schedule, rest = validation.split_schedule(options)
    if rest:
        raise TypeError(f"the numpy backend takes no options besides the schedule, got {sorted(rest)}")
    values = {name: float(value) for name, value in vars(schedule).items() if value is not None}
    return cfg.replace(**values) if values else cfg


@final
class NumPyBackend:
    """LFQ on NumPy arrays, by the reference functions (float64 inside).

    Array arguments (z, mask, indices) must be `numpy.ndarray`s: a Python list or
    another framework's tensor is refused (`lfq.validation.check_array`), like in
    every backend. `lfq.reference` itself takes anything `np.asarray` takes.

    `dtypes` holds bfloat16 only where ml_dtypes is installed (NumPy has no
    bfloat16 of its own).
    """

    name = "numpy"
    dtypes = FLOAT_DTYPES if HAS_BFLOAT16 else tuple(d for d in FLOAT_DTYPES if d != "bfloat16")
    modes = ("eager",)

    def _arrays(self, cfg, **arrays) -> None:
        validation.check_config(cfg)
        for name, array in arrays.items():
            if array is not None:
                validation.check_array(array, name, self.name, np.ndarray, "numpy.ndarray", "np.asarray(...)")

    def quantize(self, z, cfg: Config):
        self._arrays(cfg, z=z)
        return reference.quantize(z, cfg)

    def codes_to_indices(self, z, cfg: Config):
        self._arrays(cfg, z=z)
        return reference.codes_to_indices(z, cfg)

    def indices_to_codes(self, indices, cfg: Config, dtype: str = "float32"):
        self._arrays(cfg, indices=indices)
        return reference.indices_to_codes(indices, cfg, dtype)

    def entropy(self, z, cfg: Config, mask=None, **schedule):
        self._arrays(cfg, z=z, mask=mask)
        return reference.entropy(z, _scheduled(cfg, schedule), mask)

    def commitment_loss(self, z, cfg: Config, mask=None, **schedule):
        self._arrays(cfg, z=z, mask=mask)
        return reference.commitment_loss(z, _scheduled(cfg, schedule), mask)

    def lfq(self, z, cfg: Config, mask=None, **schedule) -> LFQOutput:
        self._arrays(cfg, z=z, mask=mask)
        return reference.lfq(z, _scheduled(cfg, schedule), mask)

    def code_usage(self, indices, cfg: Config, mask=None) -> CodeUsage:
        self._arrays(cfg, indices=indices, mask=mask)
        return reference.code_usage(indices, cfg, mask)

    def vjp(self, term: str, z, cfg: Config, cotangent=None, mask=None, **schedule):
        self._arrays(cfg, z=z, mask=mask)
        return reference.vjp(term, z, _scheduled(cfg, schedule), cotangent, mask)

    def compiled(self):
        raise NotImplementedError("the numpy backend has no compiled mode (modes == ('eager',))")

    def asarray(self, array, dtype: str | None = None, device=None):
        if device not in (None, "cpu"):
            raise ValueError(f"device={device!r}: NumPy arrays live on the host; use device=None or 'cpu'")
        array = np.asarray(array)
        return array if dtype is None else array.astype(numpy_dtype(dtype))

    def to_numpy(self, array):
        return np.asarray(array)
