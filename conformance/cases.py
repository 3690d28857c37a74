"""The conformance cases: a table of data, and the deterministic inputs each one describes.

A case is a `Config`, a token shape, a way of filling the input, a mask, a seed,
the dtypes of the default run and the tolerances that differ from the defaults
(each with its reason). Nothing here runs a backend: `lfq.conformance.runner`
turns a case into checks, `lfq.conformance.golden` into golden vectors.

Inputs are made in float64 by NumPy's PCG64 generator (the same numbers on every
platform), rounded once to the tested dtype; the oracle is the reference on
that rounded input cast back to float64, which is exact. So every backend and
the oracle see bit-identical inputs.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

import numpy as np

from lfq.config import Config
from lfq.validation import FLOAT_DTYPES, numpy_dtype

__all__ = [
    "CASES",
    "Case",
    "DEFAULT_TOLERANCES",
    "Tolerance",
    "edge_values",
    "get",
    "smallest_subnormal",
    "select",
]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Elementwise bound `|got - want| <= atol + rtol * |want|`, in float64.

    Gradients are compared after dividing both arrays by `max|want|`, so their
    `atol` reads as a fraction of the largest gradient entry.
    """

    rtol: float
    atol: float


#: Defaults per input dtype and kind of value ("loss": the scalar losses;
#: "grad": `vjp` results, normalized; "usage": code-usage metrics). docs/conformance.md
#: gives the measurements behind each number.
DEFAULT_TOLERANCES: Mapping[str, Mapping[str, Tolerance]] = types.MappingProxyType(
    {
        # float64: the reference's own rounding; a float64 backend differs from it by
        # summation order only (measured <= 1e-15 relative on the losses).
        "float64": {"loss": Tolerance(1e-11, 1e-13), "grad": Tolerance(1e-9, 1e-12), "usage": Tolerance(1e-12, 0.0)},
        # float32: honest float32 backends measured at <= 0.083 of these bounds (losses,
        # relative errors <= 3.2e-7) and <= 0.06 (gradients); rounding the batch-entropy
        # matmul inputs to bfloat16 (TF32-like reduced precision) errs by 2.9 to 300
        # times the bound on every float32 case of the default run.
        "float32": {"loss": Tolerance(3e-6, 3e-6), "grad": Tolerance(1e-4, 1e-4), "usage": Tolerance(1e-6, 0.0)},
        # float16 / bfloat16 outputs are float32 results rounded once to the input
        # dtype (at most half an ulp: 2**-11 resp. 2**-8 relative); the bounds allow one
        # ulp, gradients (normalized by their largest entry) two.
        "float16": {"loss": Tolerance(1e-3, 1e-5), "grad": Tolerance(2e-3, 2e-3), "usage": Tolerance(1e-6, 0.0)},
        "bfloat16": {"loss": Tolerance(8e-3, 1e-5), "grad": Tolerance(1.6e-2, 1.6e-2), "usage": Tolerance(1e-6, 0.0)},
    }
)

_VALUE_KINDS = ("edges", "large", "extremes", "saturating", "nan_masked", "zero_groups", "tiny_groups")
#: Kinds that replace whole codebook groups of valid tokens rather than single features.
_GROUP_KINDS = ("zero_groups", "tiny_groups")
_MASKS = ("none", "all_true", "all_false", "ragged")
#: Check groups a case may skip (each skip carries its reason).
SKIPPABLE = ("losses", "grads", "st_grad")


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the table.

    Attributes:
        name: unique, stable identifier (used in reports and reproducers).
        config: keyword arguments of `lfq.Config`.
        tokens: token axes of z; z is `tokens + (C*D,)`, or with the feature
            axis inserted at `config["feature_axis"]` (channel-first layouts).
        values: special values mixed into the N(0, sigma**2) data, any of
            "edges" (signed zeros, subnormals, the values 1 ulp from 0, the
            smallest normals), "large" (+-1e8; +-500 in float16), "extremes"
            (+-max, +-inf, NaN), "saturating" (bit logits past float32's range at
            tau = 1e4, e.g. +-1e34 and +-max in float32), each twice at seeded places
            of valid tokens; "zero_groups" / "tiny_groups" (about a third of the
            valid tokens' codebook groups all zero / all subnormal: the spherical
            projection's corners), and "nan_masked" (NaN and inf filling the tokens
            the mask leaves out).
        sigma: standard deviation of the normal data.
        mask: "none", "all_true", "all_false" or "ragged" (per row of the first
            token axis, the first `length` tokens are valid; rows full, empty, partial).
        seed: seed of the input generator (the cotangent uses seed + 1).
        dtypes: dtypes of the default run; empty: the case runs only in the full
            run (which runs every case in every declared dtype).
        grads_in_default: whether the default run checks gradients on it (the
            full run always does); gradients cost most under JIT compilers.
        compiled: where the case runs in compiled mode too, in its default dtypes
            (when the backend has the mode): "default" (default and full runs),
            "full" (full run only) or "none". Compiling costs seconds per
            operation, config, shape and dtype, so few cases do.
        skip: check group (see `SKIPPABLE`) -> why it does not apply.
        tolerances: overrides of `DEFAULT_TOLERANCES`, each a dict with "dtype",
            "kind" ("loss" or "grad"), "rtol", "atol" and the "reason" (required).
        note: what the case exercises.
    """

    name: str
    config: Mapping
    tokens: tuple
    seed: int
    note: str
    values: tuple = ()
    sigma: float = 1.0
    mask: str = "none"
    dtypes: tuple = ()
    grads_in_default: bool = True
    compiled: str = "none"
    skip: Mapping = dataclasses.field(default_factory=dict)
    tolerances: tuple = ()

    def __post_init__(self):
        _ = self.cfg  # validates the config
        if not set(self.values) <= set(_VALUE_KINDS):
            raise ValueError(f"case {self.name}: values={self.values!r} are not all in {_VALUE_KINDS}")
        if self.compiled not in ("default", "full", "none"):
            raise ValueError(f"case {self.name}: compiled={self.compiled!r} is not 'default', 'full' or 'none'")
        if self.mask not in _MASKS:
            raise ValueError(f"case {self.name}: mask={self.mask!r} is not one of {_MASKS}")
        if self.mask == "ragged" and not self.tokens:
            raise ValueError(f"case {self.name}: a ragged mask needs a token axis")
        if "nan_masked" in self.values and self.mask not in ("ragged", "all_false"):
            raise ValueError(f"case {self.name}: nan_masked needs masked-out tokens")
        for group, reason in self.skip.items():
            if group not in SKIPPABLE or not reason:
                raise ValueError(f"case {self.name}: skip {group!r} needs a group in {SKIPPABLE} and a reason")
        for override in self.tolerances:
            missing = {"dtype", "kind", "rtol", "atol", "reason"} - set(override)
            if missing or not override["reason"] or override["dtype"] not in FLOAT_DTYPES:
                raise ValueError(
                    f"case {self.name}: tolerance override {override} needs dtype, kind, rtol, atol and a reason"
                )
        if not set(self.dtypes) <= set(FLOAT_DTYPES):
            raise ValueError(f"case {self.name}: dtypes {self.dtypes} not all in {FLOAT_DTYPES}")

    @property
    def cfg(self) -> Config:
        """The case's `lfq.Config`."""
        return Config(**self.config)

    @property
    def shape(self) -> tuple:
        """Shape of z: the token axes with the feature axis of size C*D inserted."""
        cfg = self.cfg
        axis = cfg.feature_axis % (len(self.tokens) + 1)
        return tuple(self.tokens[:axis]) + (cfg.num_features,) + tuple(self.tokens[axis:])

    def tolerance(self, dtype: str, kind: str) -> Tolerance:
        """The bound for `kind` values of a `dtype` run: the override if any, else the default."""
        for override in self.tolerances:
            if override["dtype"] == dtype and override["kind"] == kind:
                return Tolerance(override["rtol"], override["atol"])
        return DEFAULT_TOLERANCES[dtype][kind]

    def inputs(self, dtype: str):
        """`(z, mask)`: z a NumPy array of `dtype` (bfloat16 via ml_dtypes), mask bool or None."""
        rng = np.random.default_rng(self.seed)
        z64 = rng.standard_normal(self.shape) * self.sigma
        z = z64.astype(numpy_dtype(dtype))
        mask = _mask(self, rng)
        valid = np.ones(self.tokens, dtype=bool) if mask is None else mask
        features = np.moveaxis(z, self.cfg.feature_axis, -1)  # a view: edits land in z
        kept = features[valid]  # [valid tokens, C*D], a copy
        special = [
            edge_values(kind, dtype) for kind in self.values if kind != "nan_masked" and kind not in _GROUP_KINDS
        ]
        if special:
            edges = np.concatenate(special)
            # every value twice, at seeded places among the valid tokens' features
            where = rng.permutation(kept.size)[: min(kept.size, 2 * edges.size)]
            kept.reshape(-1)[where] = np.resize(edges, where.size)
            features[valid] = kept
        for kind in _GROUP_KINDS:
            if kind in self.values:
                # about a third of the valid tokens' groups: all zero, or all subnormal
                cfg = self.cfg
                kept = features[valid].reshape(-1, cfg.num_codebooks, cfg.codebook_dim)
                chosen = rng.random(kept.shape[:2]) < 1 / 3
                if kind == "zero_groups":
                    values = np.zeros(kept.shape)
                else:
                    tiny, normal = (float(v) for v in edge_values("edges", dtype)[[2, 6]])
                    steps = rng.integers(1, max(2, round(normal / tiny)), size=kept.shape)
                    values = tiny * steps * np.where(rng.random(kept.shape) < 0.5, -1.0, 1.0)
                kept[chosen] = values[chosen].astype(z.dtype)
                features[valid] = kept.reshape(-1, cfg.num_features)
        if "nan_masked" in self.values:
            features[~valid] = np.resize(edge_values("extremes", dtype), features[~valid].shape)
        return z, mask

    def cotangent(self, dtype: str) -> np.ndarray:
        """Upstream gradient for the straight-through codes: z's shape, `dtype`, seeded."""
        rng = np.random.default_rng(self.seed + 1)
        return rng.standard_normal(self.shape).astype(numpy_dtype(dtype))


def _mask(case: Case, rng) -> np.ndarray | None:
    tokens = tuple(case.tokens)
    if case.mask == "none":
        return None
    if case.mask == "all_true":
        return np.ones(tokens, dtype=bool)
    if case.mask == "all_false":
        return np.zeros(tokens, dtype=bool)
    rows, per_row = tokens[0], int(np.prod(tokens[1:], dtype=np.int64))
    # Padding-style lengths: one row full, one empty (when there are 3+ rows), the rest partial.
    lengths = rng.integers(1, per_row, size=rows, endpoint=False) if per_row > 1 else np.ones(rows, int)
    lengths[0] = per_row
    if rows >= 3:
        lengths[-1] = 0
    mask = np.arange(per_row)[None, :] < lengths[:, None]
    return mask.reshape(tokens)


def _finfo(dtype: str):
    np_dtype = numpy_dtype(dtype)
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.finfo(np_dtype)
    return np.finfo(np_dtype)


def smallest_subnormal(dtype: str) -> float:
    """The spacing of `dtype` at zero (its smallest positive subnormal)."""
    return float(_finfo(dtype).smallest_subnormal)


def edge_values(kind: str, dtype: str) -> np.ndarray:
    """The special values of `kind` ("edges", "extremes", "large") in `dtype`."""
    np_dtype = numpy_dtype(dtype)
    info = _finfo(dtype)
    tiny, normal = float(info.smallest_subnormal), float(info.smallest_normal)
    if kind == "edges":
        values = [0.0, -0.0, tiny, -tiny, normal - tiny, -(normal - tiny), normal, -normal]
    elif kind == "extremes":
        values = [float(info.max), -float(info.max), np.inf, -np.inf, np.nan, 0.0, -0.0]
    elif kind == "saturating":
        # bit logits 4*tau*m*x past float32's range at tau = 1e4 (float16 inputs are
        # computed in float32, where their largest values do not overflow)
        top = float(info.max)
        big = 6e4 if dtype == "float16" else (1e38 if dtype == "bfloat16" else 1e34)
        values = [big, -big, top, -top]
    elif kind == "large":
        # float16: 500 keeps the commitment loss (a mean of squares) inside float16's range
        big = 500.0 if dtype == "float16" else 1e8
        values = [big, -big, big + 0.5 * big**0.5, -big / 3.0]
    else:
        raise ValueError(f"kind={kind!r} must be 'edges', 'extremes', 'saturating' or 'large'")
    return np.array(values, dtype=np.float64).astype(np_dtype)


_UNSPECIFIED = "the losses of NaN/inf inputs, and their gradients, are not specified (codes and indices are)"

#: The table. `sigma` near 1/(tau*m) keeps the bit logits a = 4*tau*m*x of order 1..10:
#: some bits saturated, some not, which is where the entropies carry information.
#: The default run (cases with `dtypes`) is sized for JIT-compiled backends, which
#: compile anew for every shape: some cases share the shape [4, 16, 16] on purpose.
CASES: tuple[Case, ...] = (
    # ---- the default run
    Case(
        "single-token-d1",
        dict(codebook_dim=1),
        (),
        seed=1,
        sigma=0.01,
        dtypes=("float32",),
        note="1-D single token [C*D], D = 1 (the B half of the split is empty)",
    ),
    Case(
        "ragged-d8-c2",
        dict(codebook_dim=8, num_codebooks=2),
        (4, 16),
        seed=3,
        sigma=0.01,
        mask="ragged",
        dtypes=("float32",),
        compiled="default",
        note="[B, T, C*D] sequences with padding: full, partial and empty rows",
    ),
    Case(
        "mask-all-false",
        dict(codebook_dim=8, num_codebooks=2),
        (4, 16),
        seed=17,
        sigma=0.01,
        mask="all_false",
        dtypes=("float32",),
        grads_in_default=False,
        note="no valid token: every loss and loss gradient is 0, not NaN",
    ),
    Case(
        "edges-large-nan-masked",
        dict(codebook_dim=8, num_codebooks=2),
        (4, 16),
        seed=18,
        sigma=0.01,
        values=("edges", "large", "nan_masked"),
        mask="ragged",
        dtypes=("float32", "bfloat16"),
        compiled="full",
        note="+-0.0 give -s; subnormals, 1 ulp from 0 and the smallest normals keep their sign; "
        "|z| = 1e8 keeps the straight-through value exactly the code; NaN and inf in "
        "masked-out tokens reach no loss and no gradient",
    ),
    Case(
        "extremes-nan",
        dict(codebook_dim=8, num_codebooks=2),
        (4, 16),
        seed=19,
        sigma=0.01,
        values=("extremes",),
        dtypes=("float32", "float16"),
        skip={"losses": _UNSPECIFIED, "grads": _UNSPECIFIED},
        note="+-max, +-inf and NaN in valid tokens: codes and indices (NaN gives -s, bit 0)",
    ),
    Case(
        "image-d10",
        dict(codebook_dim=10),
        (2, 4, 4),
        seed=4,
        sigma=0.01,
        dtypes=("bfloat16",),
        grads_in_default=False,
        note="image [B, H, W, C*D] in bfloat16 (math in float32, outputs in bfloat16)",
    ),
    Case(
        "video-d6-c3",
        dict(codebook_dim=6, num_codebooks=3),
        (2, 2, 3, 3),
        seed=5,
        sigma=0.01,
        mask="ragged",
        dtypes=("float16",),
        grads_in_default=False,
        note="video [B, T, H, W, C*D] in float16, ragged mask",
    ),
    Case(
        "channel-first-d5-c2",
        dict(codebook_dim=5, num_codebooks=2, feature_axis=1),
        (2, 3, 3),
        seed=6,
        sigma=0.01,
        mask="all_true",
        dtypes=("float64",),
        compiled="full",
        note="channel-first [B, C*D, H, W] in float64, all-true mask",
    ),
    Case(
        "lsb-d12-c4",
        dict(codebook_dim=12, num_codebooks=4, bit_order="lsb"),
        (24,),
        seed=8,
        sigma=0.01,
        mask="ragged",
        dtypes=("float32",),
        grads_in_default=False,
        note="bit_order='lsb', four codebooks",
    ),
    Case(
        "d16",
        dict(codebook_dim=16),
        (32,),
        seed=7,
        sigma=0.01,
        dtypes=("float32",),
        grads_in_default=False,
        note="largest D of the default run: a 2**16 code histogram",
    ),
    Case(
        "tau-1e3",
        dict(codebook_dim=8, num_codebooks=2, inv_temperature=1e3),
        (4, 16),
        seed=11,
        sigma=1e-3,
        dtypes=("float32",),
        note="hot logits at the scale where bits are half saturated",
    ),
    Case(
        "spherical-clamp-tanh",
        dict(
            codebook_dim=8,
            num_codebooks=2,
            spherical=True,
            soft_clamp=1.0,
            scale=0.5,
            inv_temperature=8.0,
            diversity_gamma=2.0,
            entropy_weight=0.3,
            commitment_weight=0.7,
            activation="tanh",
        ),
        (4, 16),
        seed=16,
        dtypes=("float32",),
        compiled="full",
        note="spherical after soft clamp, tanh straight-through, scale, gamma and both weights off their defaults",
    ),
    Case(
        "saturating-no-commitment",
        dict(codebook_dim=6, num_codebooks=2, inv_temperature=1e4, commitment_weight=0.0),
        (4, 16),
        seed=40,
        sigma=1e-4,
        values=("saturating",),
        mask="ragged",
        dtypes=("float32", "bfloat16"),
        compiled="full",
        note="bit logits 4*tau*m*z past float32's range give the saturated limits (entropy 0, not NaN); "
        "the commitment loss overflows to inf and, its weight being 0, stays out of the aux loss",
    ),
    Case(
        "spherical-zero-tiny-groups",
        dict(codebook_dim=3, num_codebooks=3, spherical=True, inv_temperature=2.0),
        (4, 8),
        seed=41,
        values=("zero_groups", "tiny_groups"),
        mask="ragged",
        dtypes=("float32", "float64"),
        compiled="full",
        note="whole groups of zeros (u = 0, gradient 0) and of subnormals (projected exactly, also where "
        "the arithmetic flushes subnormals; gradients past the dtype's range are inf)",
    ),
    Case(
        "spherical-d1-subnormal",
        dict(codebook_dim=1, num_codebooks=4, spherical=True, soft_clamp=0.5),
        (16,),
        seed=42,
        values=("tiny_groups", "zero_groups"),
        dtypes=("float32", "float64"),
        note="D = 1 spherical groups, subnormal or zero, under a soft clamp: u = +-s, 0 and gradient 0",
    ),
    # ---- the full run adds these (and runs every case in every declared dtype, with gradients)
    Case("tokens-d4", dict(codebook_dim=4), (32,), seed=2, sigma=0.01, note="[N, C*D], defaults"),
    Case("d13-odd-split", dict(codebook_dim=13), (40,), seed=9, sigma=0.01, note="odd D: halves of 7 and 6 bits"),
    Case(
        "tau-1e-2",
        dict(codebook_dim=7, inv_temperature=1e-2),
        (32,),
        seed=10,
        note="cold logits: nearly uniform code distributions, entropies near D log 2",
        tolerances=(
            {
                "dtype": "float32",
                "kind": "grad",
                "rtol": 1e-4,
                "atol": 1e-3,
                "reason": "cold logits: the two sums of dH_batch/da cancel to 1/490 of their size "
                "(measured), so float32 rounding of each (6e-8) is 3e-5 of the result; "
                "PyTorch and TensorFlow measured 5.6e-5 and 7.9e-5 of max|grad|",
            },
        ),
    ),
    Case(
        "tau-1e3-saturated",
        dict(codebook_dim=6, inv_temperature=1e3),
        (32,),
        seed=12,
        sigma=0.01,
        note="mostly saturated bits: tiny entropies need full relative accuracy",
    ),
    Case(
        "scale-gamma-weights",
        dict(
            codebook_dim=9, num_codebooks=2, scale=2.5, diversity_gamma=0.5, entropy_weight=0.3, commitment_weight=0.7
        ),
        (24,),
        seed=13,
        sigma=0.004,
        note="scale, gamma and both loss weights off their defaults",
    ),
    Case(
        "spherical-d8-c2",
        dict(codebook_dim=8, num_codebooks=2, spherical=True, inv_temperature=4.0),
        (24,),
        seed=14,
        note="BSQ: codes +-s/sqrt(D), features on the sphere",
    ),
    Case(
        "soft-clamp-tanh",
        dict(codebook_dim=5, soft_clamp=0.05, activation="tanh"),
        (4, 6),
        seed=15,
        sigma=0.05,
        mask="ragged",
        note="soft clamp active, tanh straight-through activation",
    ),
    Case(
        "edges-d4-c2",
        dict(codebook_dim=4, num_codebooks=2),
        (16,),
        seed=20,
        sigma=0.01,
        values=("edges",),
        note="signed zeros and subnormals, no mask",
    ),
    Case(
        "large-d6", dict(codebook_dim=6), (16,), seed=21, sigma=0.01, values=("large",), note="|z| = 1e8 without a mask"
    ),
    Case(
        "nan-masked-all-false",
        dict(codebook_dim=3, num_codebooks=2),
        (6,),
        seed=22,
        sigma=0.01,
        values=("nan_masked",),
        mask="all_false",
        note="every token masked out and NaN",
    ),
    Case(
        "many-tokens-d2-c4",
        dict(codebook_dim=2, num_codebooks=4),
        (512,),
        seed=23,
        sigma=0.01,
        note="many tokens: accumulation accuracy of the sums",
    ),
    Case(
        "groups-d12",
        dict(codebook_dim=12, batch_entropy="groups:3"),
        (32,),
        seed=24,
        sigma=0.01,
        note="batch_entropy='groups:3': the explicitly chosen upper bound",
    ),
    Case("d2-c1", dict(codebook_dim=2), (64,), seed=30, sigma=0.01, note="D sweep"),
    Case(
        "d3-c3-ragged",
        dict(codebook_dim=3, num_codebooks=3),
        (8, 8),
        seed=31,
        sigma=0.01,
        mask="ragged",
        note="D sweep, ragged",
    ),
    Case(
        "d11-c2-image-lsb",
        dict(codebook_dim=11, num_codebooks=2, bit_order="lsb"),
        (2, 3, 4),
        seed=32,
        sigma=0.01,
        note="D sweep, image, lsb",
    ),
    Case("d14-c1", dict(codebook_dim=14), (48,), seed=33, sigma=0.01, note="D sweep"),
    Case("d15-c2", dict(codebook_dim=15, num_codebooks=2), (24,), seed=34, sigma=0.01, note="D sweep, odd split"),
    Case(
        "tau-1e-1-spherical",
        dict(codebook_dim=10, spherical=True, inv_temperature=0.1),
        (32,),
        seed=35,
        note="cold spherical",
        tolerances=(
            {
                "dtype": "float32",
                "kind": "grad",
                "rtol": 1e-4,
                "atol": 2e-2,
                "reason": "the per-sample entropy gradient is nearly radial and the projection onto "
                "the sphere cancels it to 1/1700 of its size (measured): PyTorch and "
                "TensorFlow err by 4e-3 of max|grad| in float32",
            },
            {
                "dtype": "float64",
                "kind": "grad",
                "rtol": 1e-9,
                "atol": 1e-10,
                "reason": "the same cancellation (1/1700) in float64: 1e-11 of max|grad| measured",
            },
        ),
    ),
    Case(
        "video-channel-first",
        dict(codebook_dim=4, num_codebooks=4, feature_axis=1),
        (2, 2, 3, 3),
        seed=36,
        sigma=0.01,
        mask="ragged",
        note="video channel-first [B, C*D, T, H, W]",
    ),
    Case(
        "tau-1e2-sigma1",
        dict(codebook_dim=8),
        (64,),
        seed=37,
        note="typical encoder outputs at the default temperature: nearly all bits saturated",
    ),
    Case(
        "tiled-d13-c2-ragged",
        # 3 rows of 2 * 2**6 entries a tile: 3 does not divide the 2**7 rows of the grid
        dict(codebook_dim=13, num_codebooks=2, entropy_tile=3 * 2 * 2**6),
        (4, 10),
        seed=38,
        sigma=0.01,
        mask="ragged",
        dtypes=("float32",),
        note="the tiled batch entropy (entropy_tile): tiles of whole rows, the last one partial, "
        "computed and differentiated tile by tile (as past 2**24 histogram entries)",
    ),
)


def get(name: str) -> Case:
    """The case called `name`."""
    for case in CASES:
        if case.name == name:
            return case
    raise ValueError(f"unknown conformance case {name!r}: known cases are {', '.join(c.name for c in CASES)}")


def select(full: bool = False, names=None) -> list[Case]:
    """The cases of a run: those with default dtypes, or with `full` every case; `names` picks."""
    chosen = [c for c in CASES if full or c.dtypes]
    if names:
        wanted = set(names)
        unknown = wanted - {c.name for c in CASES}
        if unknown:
            raise ValueError(f"unknown conformance case(s) {sorted(unknown)}: see lfq.conformance.cases.CASES")
        chosen = [c for c in CASES if c.name in wanted]
    return chosen


def _check_unique():
    names = [c.name for c in CASES]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"duplicate case names {sorted(duplicates)}")


_check_unique()
