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
    "quantize_groups",
    "scalar",
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


def transform_groups(x, cfg: Config, xp):
    """The features the losses see: soft clamp, then the spherical projection.

    Args:
        x: `[..., C, D]` grouped features in the compute dtype.

    Returns:
        `[..., C, D]`: `v*tanh(x/v)` when `soft_clamp=v`; then, when spherical,
        `u = s*x/||x||` per codebook group, with `u = 0` for a zero group. The norm
        is taken after dividing by the group's largest magnitude so that it
        neither overflows nor underflows in float16/float32.
    """
    if cfg.soft_clamp is not None:
        x = cfg.soft_clamp * xp.tanh(x / cfg.soft_clamp)
    if cfg.spherical:
        peak = xp.max(xp.abs(x), axis=-1, keepdims=True)
        nonzero = peak > 0
        y = x / xp.where(nonzero, peak, xp.ones_like(peak))
        norm = xp.sqrt(xp.sum(y * y, axis=-1, keepdims=True))
        x = xp.where(nonzero, y * (cfg.scale / xp.where(nonzero, norm, xp.ones_like(norm))),
                     xp.zeros_like(y))
    return x


def bit_weights(cfg: Config) -> list[int]:
    """Value of each feature's bit in a codebook index, as Python ints.

    MSB order: feature i is worth 2**(D-1-i); LSB order: 2**i.
    """
    d = cfg.codebook_dim
    if cfg.bit_order == "msb":
        return [2 ** (d - 1 - i) for i in range(d)]
    return [2 ** i for i in range(d)]
