"""The tiled batch entropy across a named axis (`lfq.distributed_tiled` with JAX collectives).

Past the tile threshold the replicas (shards of `jax.shard_map`, or a named
`jax.vmap` axis) exchange bit logits instead of code histograms:
`jax.lax.all_gather(..., tiled=True)` of the logits and weights, each shard's
block of the tile grid taken at `jax.lax.axis_index`, and `jax.lax.psum` of the
partial entropy sums. Autodiff does the rest: the transpose of `all_gather` is
`psum_scatter`, which sums the shards' partial gradients and leaves each shard
its own tokens' rows; `psum` transposes as it does for the histogram path, so
the gradient convention is the same (a shard's token gradient is its rows of
the single-device gradient under shard_map's default `check_vma=True`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lfq import distributed_tiled
from lfq.config import Config
from lfq.factorized import LossSums

__all__ = ["all_reduce_sums", "all_reduce_tiled"]


def all_reduce_sums(sums: LossSums, axis_name) -> LossSums:
    """Every field of `sums` summed over the mesh or vmap axis `axis_name`."""
    return jax.lax.psum(sums, axis_name)


def all_reduce_tiled(sums: LossSums, axis_name, cfg: Config, subcode_probs_fn, tiled_entropy_fn) -> LossSums:
    """`lfq.distributed_tiled.reduce_sums` over `axis_name` (see the module docstring)."""

    def share(x, size):
        start = jax.lax.axis_index(axis_name) * size
        return jax.lax.dynamic_slice_in_dim(x, start, size, axis=x.ndim - 1)

    collectives = distributed_tiled.Collectives(
        gather=lambda x: jax.lax.all_gather(x, axis_name, axis=0, tiled=True),
        psum=lambda x: jax.lax.psum(x, axis_name),
        share=share,
        replicas=int(jax.lax.axis_size(axis_name)),
        sum_rest=lambda rest: jax.lax.psum(rest, axis_name),
    )
    return distributed_tiled.reduce_sums(sums, cfg, jnp, collectives, subcode_probs_fn, tiled_entropy_fn)
