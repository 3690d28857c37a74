"""`Config`: every option of LFQ in one frozen, validated dataclass.

A `Config` is pure data (no arrays, no framework) so that the same object drives
every backend. It is validated when it is built: a wrong option fails here, with
a message naming the field, the value and the fix, not later inside a framework.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["Config", "MAX_INDEX_BITS", "parse_batch_entropy"]

#: Largest codebook_dim whose indices fit a signed 64-bit integer without wrapping.
MAX_INDEX_BITS = 63

_ACTIVATIONS = ("identity", "tanh")
_BIT_ORDERS = ("msb", "lsb")
_PRECISIONS = ("highest", "default")
_GROUPS_RE = re.compile(r"^groups:(\d+)$")


def parse_batch_entropy(mode: str) -> int:
    """Number of bit groups for `Config.batch_entropy`: 1 for "exact", G for "groups:G".

    Raises:
        ValueError: `mode` is neither "exact" nor "groups:G" with an integer G >= 1.
    """
    if mode == "exact":
        return 1
    match = _GROUPS_RE.match(mode) if isinstance(mode, str) else None
    if match is None or int(match.group(1)) < 1:
        raise ValueError(
            f"batch_entropy={mode!r} is not understood: use 'exact' (the default) or "
            "'groups:G' with an integer G >= 1 (an explicitly chosen upper-bound approximation)"
        )
    return int(match.group(1))


@dataclasses.dataclass(frozen=True)
class Config:
    """Options of lookup-free quantization. See docs/spec.md for every rule.

    Attributes:
        codebook_dim: D, bits per codebook; each codebook has `2**D` codes.
        num_codebooks: C; the feature axis has `C*D` entries, codebook k owns
            features `k*D .. k*D+D-1`.
        scale: s, the code magnitude: codes are `+-s` per feature
            (`+-s/sqrt(D)` when `spherical`).
        spherical: BSQ variant: each codebook group is projected to the sphere of
            radius s first, `u = s*z/||z||` (`u = 0` when `||z|| = 0`).
        inv_temperature: tau in the logits `l_j = 2*tau*(z . c_j)`.
        diversity_gamma: gamma in the entropy loss `H_sample - gamma*H_batch`.
        entropy_weight: weight of the entropy loss in the aux loss.
        commitment_weight: weight of the commitment loss in the aux loss.
        bit_order: "msb" (first feature of a codebook is the top bit of its index)
            or "lsb" (first feature is bit 0; the Open-MAGVIT2 / MaskBit order).
        soft_clamp: v; when set, `z <- v*tanh(z/v)` before everything else.
        activation: f of the straight-through estimator: the codes' gradient
            w.r.t. the (clamped / normalized) features is `f'(x) * upstream`.
        batch_entropy: "exact" (default) or "groups:G", the explicitly chosen
            approximation that sums the exact batch entropies of G groups of
            consecutive bits (an upper bound of the exact value).
        max_exact_bits: the largest number of bits for which the exact batch
            entropy is computed (its code histogram has `2**bits` entries).
            Up to 40; past 24 the cost is about `6 * N * 2**bits` flops a
            training step (N tokens), computed in tiles (`entropy_tile`).
        entropy_tile: the number of code-histogram entries (all codebooks
            together) computed at once by the exact batch entropy, which then
            never stores the whole `[C, 2**bits]` histogram: each tile is made,
            its entropy added to a float64 running sum, and dropped, and the
            backward pass recomputes it (`lfq.tiled`). Rounded down to whole rows
            of `num_codebooks * 2**floor(bits/2)` entries, at least one row.
            None (default): tiles of `2**22` entries, used only where the histogram
            has more than `2**24` entries; any value forces tiles. Same result
            either way, to float rounding.
        feature_axis: the axis of z that holds the `C*D` features.
        precision: "highest" (default: full float32 matrix products, no TF32 /
            bf16 passes) or "default" (the framework's faster default precision;
            error documented in docs/spec.md). The reference is always float64.
    """

    codebook_dim: int
    num_codebooks: int = 1
    scale: float = 1.0
    spherical: bool = False
    inv_temperature: float = 100.0
    diversity_gamma: float = 1.0
    entropy_weight: float = 0.1
    commitment_weight: float = 0.25
    bit_order: str = "msb"
    soft_clamp: float | None = None
    activation: str = "identity"
    batch_entropy: str = "exact"
    max_exact_bits: int = 24
    entropy_tile: int | None = None
    feature_axis: int = -1
    precision: str = "highest"

    def __post_init__(self) -> None:
        _check_int(
            "codebook_dim",
            self.codebook_dim,
            1,
            MAX_INDEX_BITS,
            "indices are int64, so D <= 63; use more codebooks (num_codebooks) for more bits",
        )
        _check_int("num_codebooks", self.num_codebooks, 1, None, "use num_codebooks >= 1")
        _check_positive("scale", self.scale)
        _check_positive("inv_temperature", self.inv_temperature)
        for name in ("diversity_gamma", "entropy_weight", "commitment_weight"):
            _check_finite(name, getattr(self, name))
        if not isinstance(self.spherical, bool):
            raise TypeError(f"spherical={self.spherical!r} must be a bool (True or False)")
        _check_choice("bit_order", self.bit_order, _BIT_ORDERS)
        _check_choice("activation", self.activation, _ACTIVATIONS)
        _check_choice("precision", self.precision, _PRECISIONS)
        if self.soft_clamp is not None:
            _check_positive("soft_clamp", self.soft_clamp, fix="pass a positive value v, or None for no clamp")
        groups = parse_batch_entropy(self.batch_entropy)
        if groups > self.codebook_dim:
            raise ValueError(
                f"batch_entropy={self.batch_entropy!r} asks for {groups} groups of bits but "
                f"codebook_dim={self.codebook_dim}: use at most {self.codebook_dim} groups"
            )
        _check_int(
            "max_exact_bits",
            self.max_exact_bits,
            1,
            40,
            "the exact batch entropy holds 2**bits probabilities per codebook",
        )
        if self.entropy_tile is not None:
            _check_int(
                "entropy_tile",
                self.entropy_tile,
                1,
                None,
                "the number of histogram entries per tile (e.g. 2**22), or None for the automatic choice",
            )
        _check_int("feature_axis", self.feature_axis, None, None, "pass an integer axis such as -1")

    @classmethod
    def from_codebook_size(cls, codebook_size: int, **kwargs: Any) -> Config:
        """Build a Config from the number of codes per codebook, `2**codebook_dim`.

        Raises:
            ValueError: `codebook_size` is not a power of two >= 2.
        """
        if (
            isinstance(codebook_size, bool)
            or not isinstance(codebook_size, int)
            or codebook_size < 2
            or codebook_size & (codebook_size - 1)
        ):
            lower = (
                2 ** max(1, int(math.log2(codebook_size)))
                if isinstance(codebook_size, (int, float)) and codebook_size >= 2
                else 2
            )
            raise ValueError(
                f"codebook_size={codebook_size!r} must be a power of two >= 2 (LFQ codes are "
                f"all sign patterns of D bits): use for example {lower} or {2 * lower}"
            )
        return cls(codebook_dim=codebook_size.bit_length() - 1, **kwargs)

    @property
    def codebook_size(self) -> int:
        """`2**codebook_dim`, the number of codes of each codebook."""
        return 2**self.codebook_dim

    @property
    def num_features(self) -> int:
        """`C*D`, the required size of the feature axis."""
        return self.codebook_dim * self.num_codebooks

    @property
    def code_magnitude(self) -> float:
        """m, the absolute value of every code entry: s, or s/sqrt(D) when spherical."""
        return self.scale / math.sqrt(self.codebook_dim) if self.spherical else self.scale

    @property
    def entropy_groups(self) -> int:
        """G of `batch_entropy` ("exact" is one group holding all D bits)."""
        return parse_batch_entropy(self.batch_entropy)

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _check_int(name: str, value: object, low: int | None, high: int | None, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} must be an int: {fix}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}={value} must be {bounds}: {fix}")


def _check_finite(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number")


def _check_positive(name: str, value: float, fix: str = "pass a finite number > 0") -> None:
    _check_finite(name, value)
    if value <= 0:
        raise ValueError(f"{name}={value!r} must be > 0: {fix}")


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")
