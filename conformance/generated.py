"""Generated differential checks: random inputs of the hard classes, any backend against the reference.

The table in `lfq.conformance.cases` holds fixed inputs; this module draws new
ones. A `Draw` names a configuration, a token shape, a dtype, a mask kind, the
classes of special values mixed in, and a seed; `inputs` turns it into arrays
(NumPy's PCG64, the same on every platform) and `check` runs one backend on them
and compares with `lfq.reference` on the same, exactly representable, input:

* codes bitwise and indices exactly, as everywhere in the suite;
* every loss of `lfq` within the dtype's default tolerance
  (`cases.DEFAULT_TOLERANCES`);
* the gradient of the aux loss (`vjp`), normalized by its largest entry.

The value classes are those where an implementation in float32 goes wrong
without failing loudly: saturating bit logits ($4\\tau m x$ past float32's range),
subnormal features (which XLA reads as 0), whole groups of zeros or of subnormals
(spherical projection and its gradient), huge features with a zero loss weight
(0 * inf), NaN and inf in masked-out tokens (which must reach nothing), empty
batches, and all-false masks. Cold temperatures (tau << 1, where float32
gradients cancel to 1e-3 of their size) are left to the table, whose cases carry
measured tolerance overrides.

`tests/test_differential.py` draws `Draw`s with hypothesis for every installed
backend and mode; any backend can be checked the same way:

    from lfq.conformance import generated
    problems = generated.check(Target(my_backend), generated.Draw(...))
"""

from __future__ import annotations

import dataclasses

import numpy as np
from lfq.conformance import compare
from lfq.conformance.cases import DEFAULT_TOLERANCES, edge_values, smallest_subnormal

from lfq import reference
from lfq.config import Config
from lfq.validation import numpy_dtype

__all__ = ["CLASSES", "COMPILED_CONFIGS", "Draw", "MASKS", "check", "inputs", "token_pool"]

#: Classes of special values a draw may mix into its normal data.
CLASSES = ("zeros", "subnormal", "saturating", "huge", "zero_groups", "tiny_groups", "nan_masked")
MASKS = ("none", "all_true", "all_false", "random")

#: A few configurations for compiled modes, which compile once per configuration:
#: together they cover spherical + soft clamp + tanh, zero loss weights, lsb order
#: and a hot temperature.
COMPILED_CONFIGS = (
    dict(codebook_dim=6, num_codebooks=2),
    dict(codebook_dim=4, num_codebooks=2, spherical=True, soft_clamp=2.0, activation="tanh", inv_temperature=10.0),
    dict(codebook_dim=5, commitment_weight=0.0, inv_temperature=1e4, bit_order="lsb"),
)


def token_pool(seed: int, size: int = 2) -> tuple:
    """The token shapes of one run: a shape of rank 2, an empty batch of the same rank, then
    shapes of rank 1, 0 and 3 (as many as `size` asks for), sides 1 to 5 drawn from `seed`.

    A compiling backend (a compiled mode, JAX's eager mode) compiles a program per
    shape, so shapes drawn afresh for every example would cost it a compile each
    and, in a run of fixed length, leave it a handful of draws where eager NumPy
    gets thousands. Drawing the shapes of a run from this pool bounds its compiles
    (configurations x pool x dtypes x mask or not) and gives every backend and mode
    the same number of draws; a new seed gives the next run other shapes. The
    empty batch has the rank of the first shape, so that a backend compiled with a
    dynamic token count (compiled torch) serves both with one program.
    """
    rng = np.random.default_rng(seed)
    first = tuple(int(n) for n in rng.integers(1, 6, size=2))
    shapes = [first, (0, first[1])]
    for rank in (1, 0, 3)[: max(0, size - 2)]:
        shapes.append(tuple(int(n) for n in rng.integers(1, 6, size=rank)))
    return tuple(shapes[:size])


@dataclasses.dataclass(frozen=True)
class Draw:
    """One generated input.

    Attributes:
        config: keyword arguments of `lfq.Config`.
        tokens: token axes (z is `tokens + (C*D,)`, feature axis last).
        dtype: input dtype name.
        mask: one of `MASKS` ("random": each token valid with probability 1/2).
        classes: subset of `CLASSES` mixed into N(0, sigma^2) data, sigma = 1/(tau m)
            so that the bit logits are of order 1.
        seed: seed of the arrays.
    """

    config: dict
    tokens: tuple
    dtype: str
    mask: str
    classes: tuple
    seed: int

    @property
    def cfg(self) -> Config:
        return Config(**self.config)


def _special(kind: str, dtype: str, cfg: Config, rng, size: int) -> np.ndarray:
    """`size` float64 values of class `kind`, exactly representable in `dtype`, random signs."""
    tiny = smallest_subnormal(dtype)
    normal = float(edge_values("edges", dtype)[6])  # the smallest normal number
    if kind == "zeros":
        values = np.zeros(size)
    elif kind in ("subnormal", "tiny_groups"):
        # subnormal multiples of the spacing at 0, from the smallest to the largest
        values = tiny * rng.integers(1, max(2, round(normal / tiny)), size=size).astype(np.float64)
    elif kind == "saturating":
        # bit logits 4 tau m x of 1e2 .. past float32's range (|x| up to 1e34)
        scale = 4.0 * cfg.inv_temperature * cfg.code_magnitude
        big = min(float(np.finfo(np.float32).max) / 8, float(_finfo_max(dtype)) / 8)
        values = np.exp(rng.uniform(np.log(100.0 / scale), np.log(big), size=size))
    elif kind == "huge":
        values = np.full(size, min(1e30, float(_finfo_max(dtype)) / 4))
    else:
        raise ValueError(kind)
    signs = np.where(rng.random(size) < 0.5, -1.0, 1.0)
    return (signs * values).astype(numpy_dtype(dtype)).astype(np.float64)


def _finfo_max(dtype: str) -> float:
    return float(edge_values("extremes", dtype)[0])


def inputs(draw: Draw):
    """`(z, mask)` of a draw: z float64 values exactly representable in `draw.dtype`."""
    cfg = draw.cfg
    rng = np.random.default_rng(draw.seed)
    c, d = cfg.num_codebooks, cfg.codebook_dim
    sigma = 1.0 / (cfg.inv_temperature * cfg.code_magnitude)
    z = rng.standard_normal(tuple(draw.tokens) + (c, d)) * sigma
    flat = z.reshape(-1, c, d)  # a view
    n = flat.shape[0]
    for kind in draw.classes:
        if kind == "nan_masked" or n == 0:
            continue
        if kind in ("zero_groups", "tiny_groups"):
            groups = rng.random((n, c)) < 0.3
            values = (
                np.zeros((n, c, d))
                if kind == "zero_groups"
                else _special(kind, draw.dtype, cfg, rng, n * c * d).reshape(n, c, d)
            )
            flat[groups] = values[groups]
        else:
            where = rng.random(flat.shape) < 0.15
            flat[where] = _special(kind, draw.dtype, cfg, rng, int(where.sum()))
    if draw.mask == "none":
        mask = None
    elif draw.mask == "random":
        mask = rng.random(tuple(draw.tokens)) < 0.5
    else:
        mask = np.full(tuple(draw.tokens), draw.mask == "all_true")
    if "nan_masked" in draw.classes and mask is not None:
        out = ~mask.reshape(-1)
        flat[out] = np.resize(np.array([np.nan, np.inf, -np.inf]), flat[out].shape)
    z = z.reshape(tuple(draw.tokens) + (c * d,)).astype(numpy_dtype(draw.dtype)).astype(np.float64)
    return z, mask


def _gradient_scale(z, cfg: Config, mask) -> float:
    r"""The size against which the aux gradient's rounding error is measured.

    The aux gradient is a weighted sum of three terms' gradients, which can cancel
    exactly (one token: $H_\text{sample} = H_\text{batch}$), and the batch-entropy
    gradient is itself a difference of two sums of size $\frac{4\tau m}{WC} G$ with
    $G = -\log \bar p \le \log(W 2^D)$, which cancel for saturated bits. A float32
    backend errs by its rounding of those building blocks, so the scale is the
    largest of the terms' gradients and of that entropy unit, times the spherical
    projection's chain factor $s / \lVert z \rVert$ at the smallest nonzero group.
    """
    terms = [
        cfg.entropy_weight * reference.vjp("per_sample_entropy", z, cfg, mask=mask),
        cfg.entropy_weight * cfg.diversity_gamma * reference.vjp("batch_entropy", z, cfg, mask=mask),
        cfg.commitment_weight * reference.vjp("commitment_loss", z, cfg, mask=mask),
    ]
    scale = max(float(np.max(np.abs(g), initial=0.0)) for g in terms)
    groups = z.reshape(-1, cfg.num_codebooks, cfg.codebook_dim)
    if mask is not None:
        groups = groups[np.asarray(mask).reshape(-1)]
    valid = max(groups.shape[0], 1)
    unit = (
        cfg.entropy_weight
        * max(1.0, cfg.diversity_gamma)
        * 4.0
        * cfg.inv_temperature
        * cfg.code_magnitude
        * (np.log(valid) + cfg.codebook_dim * np.log(2.0) + 1.0)
        / (valid * cfg.num_codebooks)
    )
    if cfg.spherical:
        peak = np.max(np.abs(groups), axis=-1, initial=0.0)
        norms = peak * np.sqrt(np.sum((groups / np.where(peak > 0, peak, 1.0)[..., None]) ** 2, axis=-1))
        unit *= cfg.scale / float(np.min(norms[norms > 0])) if np.any(norms > 0) else 1.0
    return max(scale, unit)


def check(target, draw: Draw, grads: bool = True) -> list[str]:
    """Run `target` (a `lfq.conformance.target.Target`) on `draw`; the problems found (none: conforms)."""
    cfg, dtype = draw.cfg, draw.dtype
    z, mask = inputs(draw)
    with np.errstate(all="ignore"):
        want = reference.lfq(z, cfg, mask)
        want_grad = reference.vjp("aux_loss", z, cfg, mask=mask) if grads else None
        grad_scale = _gradient_scale(z, cfg, mask) if grads else None
        # Outputs are float64 results rounded once to the input dtype: past its range, +-inf.
        want_grad = None if want_grad is None else compare.past_range_as_inf(want_grad, dtype)
    zz = target.put(z, dtype)
    mm = None if mask is None else target.put(mask)
    problems = []
    try:
        got = target.backend.lfq(zz, cfg, mm)
    except Exception as err:  # a crash is a finding, reported like a wrong number
        return [f"lfq raised {type(err).__name__}: {err}"]
    tolerances = DEFAULT_TOLERANCES[dtype]
    outcomes = compare.lfq_output(
        got._replace(**{f: target.get(v) for f, v in got._asdict().items()}), want, cfg, dtype, tolerances["loss"], z
    )
    if grads:
        try:
            grad = target.get(target.backend.vjp("aux_loss", zz, cfg, None, mm))
        except Exception as err:
            return [f"vjp raised {type(err).__name__}: {err}"]
        outcomes.append(
            compare.close(
                grad,
                want_grad,
                tolerances["grad"],
                dtype=dtype,
                normalize=True,
                scale=grad_scale if np.isfinite(grad_scale) else None,
                z=z,
                what="vjp.aux_loss",
            )
        )
    problems += [o.message for o in outcomes if not o.passed]
    return problems
