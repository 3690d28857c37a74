r"""The tiled batch entropy across data-parallel replicas, without moving $2^D$ numbers.

Below the tile threshold the replicas all-reduce their code histograms
(`4 C 2^D` bytes in float32: 64 MiB at D = 24, 16 GiB at D = 32). Past it, the
histogram is never stored (`lfq.tiled`), and neither is it communicated:

1. the replicas all-gather the bit logits of every tiled group and the token
   weights (`N_global x C x (k + 1)` numbers), in replica order;
2. each replica builds the factor $P_B$ of the global batch and its block of
   $P_A$, and computes its share of the tile grid: a block of
   `ceil(2^ceil(k/2) / R)` consecutive rows of $\bar p = P_A^T P_B / W$ (zero
   rows pad the last blocks; they add 0). With R a power of two the block of
   $P_A$ is made directly (`_share_factors`), so no replica holds all of it;
3. the share's partial entropy sums are all-reduced (one scalar per group);
4. backward: the gradient of a replica's share w.r.t. the gathered logits is
   linear in the cotangent, so the replicas' partial gradients add up to the
   whole one; the all-gather's transpose, a reduce-scatter, sums them and hands
   each replica the rows of its own tokens.

Values equal the single-process computation over the concatenated batch. The
gradient follows each framework's data-parallel convention exactly as the
histogram all-reduce does, because the collectives are differentiated the same
way (the scalar all-reduce as the histogram's, the all-gather's transpose a
reduce-scatter). Work per replica falls as 1/R: each computes `1/R` of the
`6 N 2^k` flops of the tiles (forward and backward), plus the factors
($N 2^{k/2}$, replicated).

The framework adapters supply the collectives (`Collectives`); everything else
is here, once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from lfq import tiled
from lfq.config import Config
from lfq.factorized import LossSums, subcode_factors

__all__ = ["Collectives", "block_size", "has_tiled_groups", "reduce_sums"]


def has_tiled_groups(sums: LossSums) -> bool:
    """Whether some bit group of `sums` is past the tile threshold (an `lfq.tiled.Factors`)."""
    return any(isinstance(h, tiled.Factors) for h in sums.histograms)


class Collectives(NamedTuple):
    """What a framework provides for the distributed tiled entropy.

    Attributes:
        gather: `x [n, ...] -> [n_global, ...]`, every replica's rows concatenated in
            replica order; differentiable, its transpose a reduce-scatter (sum of
            the replicas' cotangents, this replica's rows). Frameworks that need
            equal sizes pad with rows whose weight column is 0 (masked tokens).
        psum: 0-d -> 0-d, the sum over replicas, differentiated as the framework's
            histogram all-reduce is.
        share: `(x [..., M], size) -> [..., size]`, this replica's block of `size`
            consecutive columns (replica r: columns `r*size .. r*size+size-1`).
        replicas: the number of replicas R (a Python int).
        sum_rest: `LossSums -> LossSums`, the histogram all-reduce of the fields
            that are arrays (scalars and untiled histograms).
    """

    gather: Callable
    psum: Callable
    share: Callable
    replicas: int
    sum_rest: Callable


def block_size(rows: int, replicas: int) -> int:
    """Rows of $\\bar p$ per replica: `ceil(rows / replicas)` (the last blocks zero-padded)."""
    return -(-rows // replicas)


def _share_factors(a, weights, xp, collectives: Collectives, subcode_probs_fn: Callable):
    """`(this replica's block of P_A * w, P_B)` of one group's gathered logits `a` `[N, C, k]`.

    With R a power of two not above $2^{|A|}$, block r is the set of A's sub-codes
    whose top log2(R) bits spell r (the index is MSB first), so it is made
    directly: the probability of that prefix times the sub-code probabilities of
    the remaining bits. P_A of the global batch is never whole on one replica.
    Otherwise P_A is made, zero-padded to R equal blocks, and sliced.
    """
    replicas = collectives.replicas
    split = (a.shape[-1] + 1) // 2  # A = the high ceil(k/2) bits, as `subcode_factors`
    prefix = replicas.bit_length() - 1
    if replicas & (replicas - 1) or prefix > split:
        probs_a, probs_b = subcode_factors(a, weights, xp, subcode_probs_fn)
        rows = probs_a.shape[-1]
        size = block_size(rows, replicas)
        pad = size * replicas - rows  # < replicas: zero rows of pbar, adding 0
        if pad:
            probs_a = xp.concat([probs_a, *([xp.zeros_like(probs_a[..., :1])] * pad)], axis=-1)
        return collectives.share(probs_a, size), probs_b
    probs_b = subcode_probs_fn(a[..., split:])
    mine = weights[:, None, None] * xp.ones_like(a[..., :1])
    if prefix:
        mine = mine * collectives.share(subcode_probs_fn(a[..., :prefix]), 1)  # P(prefix = r)
    if split > prefix:
        mine = mine * subcode_probs_fn(a[..., prefix:split])
    return mine, probs_b


def reduce_sums(
    sums: LossSums,
    cfg: Config,
    xp,
    collectives: Collectives,
    subcode_probs_fn: Callable,
    tiled_entropy_fn: Callable,
) -> LossSums:
    """`sums` of this replica -> the global batch's, tiled groups as `lfq.tiled.GroupEntropy`.

    Args:
        sums: this replica's `LossSums`; its `lfq.tiled.Factors` entries carry the
            group's bit logits `[n, C, k]` and weights `[n]` (or None).
        cfg: configuration.
        xp: array namespace.
        collectives: the framework's collectives.
        subcode_probs_fn: `a [..., b] -> [..., 2**b]` (the backend's `subcode_probs`,
            with its analytic gradient).
        tiled_entropy_fn: `(probs_a, probs_b, count, rows) -> 0-d` (the backend's
            `tiled_entropy`, with its recomputing gradient).

    Returns:
        `LossSums` identical on every replica: scalars and untiled histograms summed,
        each tiled group's entropy (summed over codebooks) as a `GroupEntropy`.
    """
    groups = [i for i, h in enumerate(sums.histograms) if isinstance(h, tiled.Factors)]
    rest = collectives.sum_rest(
        sums._replace(histograms=tuple(h for h in sums.histograms if not isinstance(h, tiled.Factors)))
    )
    if not groups:
        return rest
    factors = [sums.histograms[i] for i in groups]
    logits = [f.logits for f in factors]
    first = logits[0]
    weights = factors[0].weights
    weights = xp.ones_like(first[:, 0, 0]) if weights is None else xp.astype(weights, first.dtype)
    # One collective: the groups' logits and the weights as a last column (one per codebook).
    column = weights[:, None, None] * xp.ones_like(first[..., :1])
    gathered = collectives.gather(xp.concat([*logits, column], axis=-1))
    weights_global = gathered[:, 0, -1]
    count = xp.sum(weights_global)
    values, start = [], 0
    for f in logits:
        k = f.shape[-1]
        group = gathered[..., start : start + k]
        start += k
        mine, probs_b = _share_factors(group, weights_global, xp, collectives, subcode_probs_fn)
        rows = tiled.tile_rows(cfg, mine.shape[-1], probs_b.shape[-1])
        values.append(collectives.psum(tiled_entropy_fn(mine, probs_b, count, rows)))
    histograms = list(rest.histograms)
    for i, value in zip(groups, values):
        histograms.insert(i, tiled.GroupEntropy(value))
    return rest._replace(histograms=tuple(histograms))
