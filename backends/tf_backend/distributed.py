"""`tf.distribute` reductions of the loss sums: the histogram all-reduce, and the tiled
entropy (`lfq.distributed_tiled`) past the tile threshold.

Below the threshold: one batched `ReplicaContext.all_reduce(SUM)` of every field,
whose gradient is again an all-reduce SUM. Past it: `ReplicaContext.all_gather`
of the bit logits and weights (uneven replica batches allowed; its gradient
all-reduces the cotangents and keeps this replica's rows), each replica's block
of the tile grid taken at `replica_id_in_sync_group`, and an all-reduce of the
partial entropy sums. The gradient convention is the histogram path's: with each
replica's loss scaled by `1 / num_replicas_in_sync` (Keras does this), a
replica's gradient w.r.t. its inputs is its rows of the single-replica gradient.
"""

from __future__ import annotations

import tensorflow as tf
from lfq.backends.tf_backend import array_namespace

from lfq import distributed_tiled
from lfq.config import Config
from lfq.factorized import LossSums

__all__ = ["all_reduce_sums", "all_reduce_tiled"]


def all_reduce_sums(sums: LossSums, context) -> LossSums:
    """Every field of `sums` summed over the replicas, in one batched collective."""
    flat = [sums.sample_entropy, sums.token_count, sums.commitment, *sums.histograms]
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, flat)
    return LossSums(total[0], total[1], total[2], tuple(total[3:]))


def all_reduce_tiled(sums: LossSums, context, cfg: Config, subcode_probs_fn, tiled_entropy_fn) -> LossSums:
    """`lfq.distributed_tiled.reduce_sums` over the replicas of `context` (see the module docstring)."""

    def share(x, size):
        start = tf.cast(context.replica_id_in_sync_group, tf.int32) * size
        return tf.gather(x, start + tf.range(size), axis=-1)

    def gather(x):
        # The gathered batch size is unknown to the graph; the other axes keep their static sizes.
        return tf.ensure_shape(context.all_gather(x, axis=0), [None, *x.shape[1:]])

    collectives = distributed_tiled.Collectives(
        gather=gather,
        psum=lambda x: context.all_reduce(tf.distribute.ReduceOp.SUM, x),
        share=share,
        replicas=context.num_replicas_in_sync,
        sum_rest=lambda rest: all_reduce_sums(rest, context),
    )
    return distributed_tiled.reduce_sums(sums, cfg, array_namespace, collectives, subcode_probs_fn, tiled_entropy_fn)
