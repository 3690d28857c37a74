"""The per-call training schedule: config fields that may change from one call to the next.

`Schedule` overrides the config's values of `SCHEDULE_FIELDS` for one call (an
annealed temperature, a ramped weight); `lfq.factorized` reads every such value
through it. Re-exported by `lfq.factorized`.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

from lfq.config import Config

__all__ = ["SCHEDULE_FIELDS", "Schedule"]


#: Config fields that a training schedule may change per call (see `Schedule`).
SCHEDULE_FIELDS = ("inv_temperature", "diversity_gamma", "entropy_weight", "commitment_weight")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Per-call values of `SCHEDULE_FIELDS`, overriding the config's; None keeps the config's.

    A value is a Python number or a 0-d array of the backend (a traced value
    under a compiler, so that an annealed temperature does not recompile). A
    weight given as an array counts as zero exactly when the config's weight is
    zero: whether a term enters the aux loss is decided when the program is
    built (see `lfq.factorized.aux_loss`), only its weight is a run-time value.
    """

    inv_temperature: Any = None
    diversity_gamma: Any = None
    entropy_weight: Any = None
    commitment_weight: Any = None

    def value(self, name: str, cfg: Config):
        """The value of field `name`: this schedule's, else the config's."""
        value = getattr(self, name)
        return getattr(cfg, name) if value is None else value

    def is_zero(self, name: str, cfg: Config) -> bool:
        """Whether `name` is zero, known without reading a run-time array."""
        value = self.value(name, cfg)
        return value == 0 if _is_number(value) else getattr(cfg, name) == 0


_NO_SCHEDULE = Schedule()


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real)


def _like(value, like, xp):
    """A Python number unchanged; an array cast to `like`'s dtype (no promotion of `like`)."""
    return value if _is_number(value) else xp.astype(value, like.dtype)
