"""Feature handling shared by every backend, written once against an array namespace.

Each function takes `xp`, an Array-API namespace (NumPy itself, a namespace from
`array_api_compat.array_namespace`, `jax.numpy`, or the small TensorFlow shim in
`lfq.backends`), and uses only functions that all of them provide. Nothing here
depends on dtype: callers cast to their compute dtype first.

Shapes: `z` is `[..., C*D]` after the feature axis was moved last; grouped
features are `[..., C, D]`.
"""

from __future__ import annotations

from lfq.config import Config

__all__ = [
    "bit_weights",
    "group_features",
    "index_chunks",
    "indices_from_bits",
    "quantize_groups",
    "rescale_tiny_groups",
    "scalar",
    "soft_clamp",
    "SOFT_CLAMP_LINEAR",
    "transform_groups",
    "ungroup_features",
]


def group_features(z, cfg: Config, xp):
    """Move the feature axis last and split it: `[..., C*D]` -> `[..., C, D]`."""
    if cfg.feature_axis not in (-1, z.ndim - 1):
        z = xp.moveaxis(z, cfg.feature_axis, -1)
    return xp.reshape(z, tuple(z.shape[:-1]) + (cfg.num_codebooks, cfg.codebook_dim))


def ungroup_features(x, cfg: Config, xp):
    """Inverse of `group_features`: `[..., C, D]` -> features on `cfg.feature_axis`."""
    x = xp.reshape(x, tuple(x.shape[:-2]) + (cfg.num_features,))
    if cfg.feature_axis not in (-1, x.ndim - 1):
        x = xp.moveaxis(x, -1, cfg.feature_axis)
    return x


def scalar(value, like, xp, device=None):
    """`value` as a 0-d array of `like`'s dtype, on `device`.

    Backends pass the device of their inputs (`ArrayBackend.device_of`): a constant
    made without one lands on the host, and on a GPU a host tensor inside the
    computation is what CUDA graphs and NCCL refuse. `full` rather than
    `asarray`: torch's `asarray` of a Python number on a GPU copies it from host
    memory, which blocks the host until the GPU's queue drains; `full` is a fill
    on the device.
    """
    return xp.full((), value, dtype=like.dtype, device=device)


def quantize_groups(z, cfg: Config, xp, positive=None, device=None):
    """Codes `+m if z > 0 else -m`, same shape and dtype as `z`.

    The decision uses the sign of the raw input: the soft clamp (odd, increasing)
    and the spherical projection (a positive factor) never change a sign, and
    deciding before them keeps subnormal inputs exact in every dtype. `+0.0`,
    `-0.0` and NaN compare false, so they give `-m`.

    Args:
        positive: elementwise `z > 0` test (default the comparison itself); XLA
            backends pass a bit-pattern test because XLA flushes subnormals to 0.
        device: where the constants `+-m` are made (see `scalar`).
    """
    m = scalar(cfg.code_magnitude, z, xp, device)
    return xp.where(z > 0 if positive is None else positive(z), m, -m)


#: Below `SOFT_CLAMP_LINEAR * min(v, 1)` in magnitude the soft clamp returns its input.
SOFT_CLAMP_LINEAR = 2.0**-30


def soft_clamp(x, value: float, xp):
    r"""The soft clamp $v \tanh(x / v)$ of `Config.soft_clamp` (elementwise, any shape).

    Rule at the small end: where $|x| < 2^{-30} \min(v, 1)$ the result is $x$
    itself. There $v\tanh(x/v) = x\,(1 - \delta)$ with $0 \le \delta < (x/v)^2/3 < 2^{-61}$,
    so $x$ is the correctly rounded value in float32 and float64 alike (and the
    derivative $1 - \tanh^2(x/v)$ is 1 to working precision). Evaluating the
    formula there instead would flush subnormal inputs: $x / v$ underflows to 0
    (float32 $x = 1.4\cdot 10^{-45}$, $v = 3$), which turned a spherical group
    of subnormal features into a zero group. The $\min(v, 1)$ keeps the threshold
    representable (and the rule true) for any $v$.
    """
    linear = xp.abs(x) < SOFT_CLAMP_LINEAR * min(value, 1.0)
    return xp.where(linear, x, value * xp.tanh(x / value))


def transform_groups(x, cfg: Config, xp, stop_gradient=None, rescale_tiny=None):
    r"""The features the losses see: soft clamp, then the spherical projection.

    Args:
        x: `[..., C, D]` grouped features in the compute dtype.
        stop_gradient: the framework's stop-gradient (default: none, for NumPy).
            The projection is homogeneous of degree 0, $u(c\,x) = u(x)$ for any
            $c > 0$, so dividing by the group's largest magnitude treated as a
            constant changes neither the value nor the gradient; differentiating
            through it would give $0 \cdot \infty$ at zero groups and
            $x / \mathrm{peak}^2$ overflows for tiny ones.
        rescale_tiny: for backends whose arithmetic flushes subnormal inputs to
            zero (XLA, TensorFlow): `rescale_tiny_groups` bound to the
            framework's bitcast, so that tiny groups are projected exactly.

    Returns:
        `[..., C, D]`: `v*tanh(x/v)` when `soft_clamp=v`; then, when spherical,
        `u = s*x/||x||` per codebook group, with `u = 0` (and gradient 0) for a
        zero group. The norm is taken after dividing by the group's largest
        magnitude so that it neither overflows nor underflows.
    """
    tiny = None
    if cfg.spherical and rescale_tiny is not None:
        # Before the soft clamp, which would flush them too. A tiny group (|x| < 2**-102
        # in float32) is left unclamped: v*tanh(x/v) = x there to a relative
        # (x/v)**2/3 < 2**-204/v**2, far below any float's resolution.
        x, tiny = rescale_tiny(x)
    if cfg.soft_clamp is not None:
        clamped = soft_clamp(x, cfg.soft_clamp, xp)
        x = clamped if tiny is None else xp.where(tiny, x, clamped)
    if cfg.spherical:
        peak = xp.max(xp.abs(x), axis=-1, keepdims=True)
        nonzero = peak > 0
        divisor = xp.where(nonzero, peak, xp.ones_like(peak))
        y = x / (divisor if stop_gradient is None else stop_gradient(divisor))
        # A zero group's squared norm is replaced by 1 before the square root, whose
        # derivative at 0 is infinite: so its gradient is 0, not 0 * inf = NaN.
        square = xp.sum(y * y, axis=-1, keepdims=True)
        norm = xp.sqrt(xp.where(nonzero, square, xp.ones_like(square)))
        x = xp.where(nonzero, y * (cfg.scale / norm), xp.zeros_like(y))
    return x


#: (mantissa bits, exponent bias) of the compute dtypes, by item size.
_FLOAT_LAYOUT = {4: (23, 127), 8: (52, 1023)}


def rescale_tiny_groups(x, xp, bitcast, carry):
    r"""Groups whose every feature is tiny, times $2^{S}$ exactly, decided on bit patterns.

    XLA and TensorFlow's CPU kernels read subnormal inputs as 0 (denormals are
    zero), so a group of subnormal features would project to 0 instead of onto
    the sphere. A group is *tiny* when every feature has a biased exponent of at
    most $S$ (the mantissa bits + 1: 24 in float32, 53 in float64, i.e.
    $|x| < 2^{-102}$ resp. $2^{-969}$); its features are multiplied by $2^S$ by
    integer arithmetic on their bit patterns (exponent + S for normal numbers,
    the mantissa as an integer times $2^{2-\mathrm{bias}}$ for subnormal ones),
    which is exact and leaves no subnormal in the group. Other groups pass
    unchanged. The spherical projection is scale invariant, so the result is
    the projection of the unscaled group, and the gradient is carried by
    `x * 2**S` (a normal factor, so no flushing there either).

    Args:
        x: `[..., D]` float32 or float64 groups.
        bitcast: `bitcast(array, dtype)` reinterpreting bits (same item size).
        carry: `carry(value, carrier)`: `value` with the gradient of `carrier`
            (the backend's straight-through primitive).

    Returns:
        `(groups, tiny)`: the rescaled groups `[..., D]` and which were tiny, `[..., 1]`.
    """
    itemsize = 4 if x.dtype == xp.float32 else 8
    mantissa, bias = _FLOAT_LAYOUT[itemsize]
    shift = mantissa + 1
    itype = xp.int32 if itemsize == 4 else xp.int64
    bits = bitcast(x, itype)
    magnitude = xp.bitwise_and(bits, xp.asarray(2 ** (8 * itemsize - 1) - 1, dtype=itype))
    tiny = xp.max(magnitude, axis=-1, keepdims=True) < (shift + 1) * 2**mantissa
    normal_up = bitcast(bits + shift * 2**mantissa, x.dtype)
    sub_up = xp.astype(magnitude, x.dtype) * float(2.0 ** (2 - bias))
    sub_up = xp.where(bits < 0, -sub_up, sub_up)
    value = xp.where(magnitude < 2**mantissa, sub_up, normal_up)
    return carry(xp.where(tiny, value, x), xp.where(tiny, x * float(2.0**shift), x)), tiny


def bit_weights(cfg: Config) -> list[int]:
    """Value of each feature's bit in a codebook index, as Python ints.

    MSB order: feature i is worth `2**(D-1-i)`; LSB order: `2**i`.
    """
    d = cfg.codebook_dim
    if cfg.bit_order == "msb":
        return [2 ** (d - 1 - i) for i in range(d)]
    return [2**i for i in range(d)]


#: float32 holds every integer below `2**24` exactly, so a float32 sum of distinct powers
#: of two below `2**24` is exact in any order of summation: at most this many bits per sum.
FLOAT32_EXACT_BITS = 24


def index_chunks(cfg: Config) -> list[tuple[int, int, int]]:
    """`(start, stop, shift)` for each run of at most 24 consecutive features of a codebook.

    Within a run, feature `i` is worth `bit_weights(cfg)[i] >> shift`, below `2**24`; the
    run's index bits are its float32 sum shifted left by `shift`.
    """
    weights = bit_weights(cfg)
    chunks = []
    for start in range(0, cfg.codebook_dim, FLOAT32_EXACT_BITS):
        stop = min(start + FLOAT32_EXACT_BITS, cfg.codebook_dim)
        chunks.append((start, stop, min(weights[start:stop]).bit_length() - 1))
    return chunks


def indices_from_bits(bits, cfg: Config, xp, dtype, constant):
    """Codebook indices from bits summed in float32: bool `[..., C, D]` -> `dtype` `[..., C]`.

    Equal to the integer sum `sum_i bits_i * bit_weights(cfg)[i]` (the reference's rule),
    for any D: each run of `index_chunks` is an exact float32 sum, cast to `dtype` and
    shifted into place. Why float: CPU kernels (ATen, inductor) vectorize float reductions
    but not integer ones; an int64 sum over 16 bits ran 10 times slower.

    Args:
        constant: `constant(values, dtype)`: a small constant array on the bits' device.
    """
    weights = bit_weights(cfg)
    flags = xp.astype(bits, xp.float32)
    index = None
    for start, stop, shift in index_chunks(cfg):
        run = constant([w >> shift for w in weights[start:stop]], xp.float32)
        part = xp.astype(xp.sum(flags[..., start:stop] * run, axis=-1), dtype)
        if shift:
            part = part * constant(2**shift, dtype)
        index = part if index is None else index + part
    return index
