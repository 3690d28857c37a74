r"""The exact batch entropy tile by tile: the code histogram is made, used and dropped in pieces.

The exact batch entropy of one group of k bits needs only the sub-code
probabilities `P_A` (`[N, C, R]`, $R = 2^{\lceil k/2 \rceil}$, the high bits) and
`P_B` (`[N, C, S]`, $S = 2^{\lfloor k/2 \rfloor}$), the mask weights already
multiplied into `P_A`, and the token count W:

$$H = -\sum_{c}\sum_{i,j} \bar p_{cij} \log \bar p_{cij},\qquad
  \bar p_c = P_{A,c}^\top P_{B,c} / W.$$

`entropy_sum` computes H (summed over the C codebooks) over tiles of whole rows of
$\bar p$: a tile holds `rows` rows of every codebook (`[C, rows, S]`), its
$-\sum \bar p \log \bar p$ is added to a running sum, and it is dropped.
`entropy_sum_vjp` recomputes each tile for the backward pass (as flash attention
does): $G = -(\log \bar p + 1)/W$, $dP_A \mathrel{+}= P_B G^\top$,
$dP_B \mathrel{+}= P_A G$. The sub-code VJP (`lfq.factorized.subcode_probs_vjp`)
then takes the gradient to the bit logits, as in the untiled path. Memory is
$O(N (R + S) C)$ plus a few tiles, forward and backward; the time about
$6 N 2^k C$ flops (forward 2, backward 4) plus a few passes over each tile.

API (stable; the distributed variant builds on it):

* `Factors(probs_a, probs_b)`: a bit group whose histogram is not stored
  (an entry of `lfq.factorized.LossSums.histograms`).
* `uses_tiles(cfg, bits) -> bool`: whether a group of `bits` bits is tiled.
* `tile_rows(cfg, rows, cols) -> int`: rows of $\bar p$ per tile.
* `entropy_sum(probs_a, probs_b, count, rows, xp, matmul=None, scan=None,
  accumulate=None, tile_range=None)`: the forward value, a 0-d array of the
  inputs' dtype; `tile_range=(start, stop)` sums only those tiles (a replica's share).
* `entropy_sum_vjp(probs_a, probs_b, count, cotangent, rows, xp, matmul=None,
  scan=None, accumulate=None, tile_range=None)`: `(d_probs_a, d_probs_b)`, the
  gradient of `cotangent * entropy_sum(...)` (of the share, with `tile_range`).
* `python_scan(body, init, xs)`: the loop of eager frameworks, with the contract
  of `jax.lax.scan` (`body(carry, x) -> (carry, y)`, xs iterated along their
  first axis). Frameworks with a compiler pass a loop the compiler keeps a loop
  (`jax.lax.scan`, a `tf.while_loop`; torch runs the Python loop inside a custom op).
* The pieces: `tiles(probs_a, rows)` (`[T, C, rows, N]`), `untile`,
  `scaled_b(probs_b, count)` (`P_B^T / W`), `tile_entropy(tile, right)`,
  `tile_vjp(tile, right, cotangent)`.

Accuracy. The tiled value differs from the untiled one only in the order of the
final summation: each tile's terms are summed as the untiled histogram's are
(`lfq.factorized.distribution_entropy`, a tree of 32-term sums), and the tiles'
sums are accumulated in `accumulate` (float64 by default) with Neumaier's
compensation, whose error is at most $2u_{acc}$ relative ($u_{acc}$ the unit
roundoff of `accumulate`) whatever the number of tiles T. So, with u the unit
roundoff of the compute dtype and $m = C\,\mathrm{rows}\,S$ the terms of a tile,
to first order
$$|H_{\mathrm{tiled}} - H| \le u\Big[(N + 2)\sum |\bar p \log \bar p + \bar p|
  + 32 \lceil \log_{32} m \rceil H\Big] + 2 u_{acc} H,$$
the untiled path's bound with m in place of $C 2^k$ (the first term is the matrix
product's rounding of $\bar p$, the second the tile's summation). $dP_B$ is a sum
over the T tiles, accumulated in `accumulate` as well (compensated when that is the
compute dtype), so it too keeps the untiled error.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from lfq.config import Config
from lfq.validation import dtype_name

__all__ = [
    "DEFAULT_TILE",
    "TILE_THRESHOLD",
    "Factors",
    "GroupEntropy",
    "entropy_sum",
    "entropy_sum_vjp",
    "python_scan",
    "release_heap",
    "scaled_b",
    "tile_entropy",
    "tile_rows",
    "tile_vjp",
    "tiles",
    "untile",
    "uses_tiles",
]

#: A group is tiled automatically when its histogram, all codebooks together, has more entries.
TILE_THRESHOLD = 2**24
#: Entries of a tile (all codebooks together) when `Config.entropy_tile` is None: 16 MiB in float32.
DEFAULT_TILE = 2**22


class Factors(NamedTuple):
    """A bit group's sub-code probabilities, standing for its (unstored) code histogram.

    Attributes:
        probs_a: `[N, C, 2**ceil(k/2)]`, the high bits' probabilities times the token weights.
        probs_b: `[N, C, 2**floor(k/2)]`, the low bits' probabilities.
        logits: `[N, C, k]`, the group's bit logits, and weights: `[N]` the token
            weights (None: all 1), from which `lfq.distributed_tiled` rebuilds the
            factors over every replica's tokens.
    """

    probs_a: Any
    probs_b: Any
    logits: Any = None
    weights: Any = None


class GroupEntropy(NamedTuple):
    """A bit group's batch entropy, summed over codebooks, already computed (0-d): what a
    distributed reduction (`lfq.distributed_tiled`) leaves in place of its `Factors`."""

    value: Any


def uses_tiles(cfg: Config, bits: int) -> bool:
    """Whether the batch entropy of a group of `bits` bits is computed in tiles.

    Tiled when `cfg.entropy_tile` is set, or when the histogram of all codebooks,
    `num_codebooks * 2**bits` entries, is larger than `TILE_THRESHOLD` (2**24).
    """
    return cfg.entropy_tile is not None or cfg.num_codebooks * 2**bits > TILE_THRESHOLD


def tile_rows(cfg: Config, rows: int, cols: int) -> int:
    """Rows of $\\bar p$ per tile: `entropy_tile` entries (default `DEFAULT_TILE`) over the
    `num_codebooks * cols` entries of a row, at least 1 and at most `rows`."""
    entries = DEFAULT_TILE if cfg.entropy_tile is None else cfg.entropy_tile
    return max(1, min(rows, entries // (cfg.num_codebooks * cols)))


def python_scan(body: Callable, init, xs):
    """`jax.lax.scan`'s contract as a Python loop: `(final carry, ys as a list)`.

    After each tile the C heap's free pages go back to the system (`release_heap`):
    glibc keeps freed blocks under 32 MiB in its heap, and the interleaving of a
    tile's temporaries with small allocations otherwise grows it by megabytes per
    tile (measured: a D = 30 torch step peaked at 0.9-4 GiB instead of 0.3 GiB).
    """
    carry, ys = init, []
    for i in range(xs.shape[0]):
        carry, y = body(carry, xs[i])
        ys.append(y)
        release_heap()
    return carry, ys


_TRIM: list = []


def release_heap() -> None:
    """Return the C heap's free pages to the system: glibc's `malloc_trim(0)` (a few
    microseconds), a no-op where the C library has no such function."""
    if not _TRIM:
        try:
            _TRIM.append(ctypes.CDLL(None).malloc_trim)
        except (OSError, AttributeError):
            _TRIM.append(None)
    if _TRIM[0] is not None:
        _TRIM[0](0)


def tiles(probs_a, rows: int, xp):
    """`probs_a` `[N, C, R]` as `[T, C, rows, N]` tiles, T = ceil(R / rows).

    The last tile is padded with zero rows: they give $\\bar p = 0$, which adds 0
    to the entropy and gets gradient 0, so tile sizes need not divide R.
    """
    n, c, r = probs_a.shape
    rows_first = xp.permute_dims(probs_a, (1, 2, 0))  # [C, R, N]
    count = -(-r // rows)
    pad = count * rows - r
    if pad:  # pad < rows <= R: zeros shaped like a slice (works for an unknown N)
        rows_first = xp.concat([rows_first, xp.zeros_like(rows_first[:, :pad, :])], axis=1)
    return xp.permute_dims(xp.reshape(rows_first, (c, count, rows, -1)), (1, 0, 2, 3))


def untile(tiled, r: int, xp):
    """Inverse of `tiles`: `[T, C, rows, N]` -> `[N, C, R]` (the padding dropped)."""
    count, c, rows = tiled.shape[:3]
    flat = xp.reshape(xp.permute_dims(tiled, (1, 0, 2, 3)), (c, count * rows, -1))
    return xp.permute_dims(flat[:, :r, :], (2, 0, 1))


def scaled_b(probs_b, count, xp):
    """`P_B^T / W`, `[C, N, S]`: the right factor of every tile ($\\bar p$ = tile @ it).

    W is the token count, 1 where it is 0 (no valid token: P_A is 0, every
    $\\bar p$ is 0 and the entropy 0).
    """
    return xp.permute_dims(probs_b, (1, 0, 2)) / _denominator(count, probs_b, xp)


def _denominator(count, like, xp):
    """W in `like`'s dtype, 1 where it is 0."""
    return xp.astype(xp.where(count > 0, count, xp.ones_like(count)), like.dtype)


def _log_p(tile, right, xp, matmul):
    """$\\log \\bar p$ of a tile, with $\\bar p$ raised to the dtype's smallest normal.

    The raise replaces the untiled path's `0 log 0 = 0` (`where`) at one pass
    instead of three: $\\bar p \\log \\bar p$ is then 0 at $\\bar p = 0$, and below
    the smallest normal (~1e-38 in float32) a term is under 1e-36, far below the
    rounding of H; where $\\bar p = 0$ the gradient weight G is finite and is
    multiplied by probabilities whose product underflowed (so it adds 0).
    Returns `(p, log p)`.
    """
    p = matmul(tile, right)
    tiny = float(np.finfo(dtype_name(p.dtype)).tiny)
    return p, xp.log(xp.clip(p, tiny, 2.0))


def _tree_sum(terms, xp):
    """Sum of all entries of `terms` in stages of 32 (a few ulps whatever order a compiler
    reduces in; see `lfq.factorized.distribution_entropy`)."""
    n = 1
    for size in terms.shape:
        n *= size
    terms = xp.reshape(terms, (n,))
    while n > 32 and n % 32 == 0:
        terms = xp.sum(xp.reshape(terms, (n // 32, 32)), axis=-1)
        n //= 32
    return xp.sum(terms)


def tile_entropy(tile, right, xp, matmul):
    """$-\\sum \\bar p \\log \\bar p$ of one tile, over its codebooks: a 0-d array.

    Args:
        tile: `[C, rows, N]` rows of P_A (token axis last, `tiles`).
        right: `[C, N, S]`, `scaled_b(probs_b, count)`.
    """
    p, log_p = _log_p(tile, right, xp, matmul)
    return -_tree_sum(p * log_p, xp)


def tile_vjp(tile, right, cotangent, xp, matmul):
    """`(dP_A tile [C, rows, N], W * dP_B part [C, N, S])` of one tile, for `cotangent * H`.

    With $G = -(\\log \\bar p + 1)$ times the cotangent: dP_A = G @ right^T exactly
    (right holds the 1/W), and dP_B = (sum over tiles of tile^T @ G) / W, the
    division left to the caller (once, after the sum).
    """
    _, log_p = _log_p(tile, right, xp, matmul)
    g = (log_p + 1.0) * (-cotangent)
    d_tile = matmul(g, xp.permute_dims(right, (0, 2, 1)))  # [C, rows, S] @ [C, S, N]
    part = matmul(xp.permute_dims(tile, (0, 2, 1)), g)  # [C, N, rows] @ [C, rows, S]
    return d_tile, part


def _add(state, value, xp, compensated: bool):
    """`(sum, compensation)` plus `value`: Neumaier's compensated sum, or a plain one."""
    total, comp = state
    value = xp.astype(value, total.dtype)
    if not compensated:
        return total + value, comp
    new = total + value
    big = xp.abs(total) >= xp.abs(value)
    comp = comp + xp.where(big, (total - new) + value, (value - new) + total)
    return new, comp


def _share(all_tiles, tile_range):
    return all_tiles if tile_range is None else all_tiles[tile_range[0] : tile_range[1]]


def entropy_sum(probs_a, probs_b, count, rows: int, xp, matmul=None, scan=None, accumulate=None, tile_range=None):
    """The batch entropy of a group, summed over codebooks, in tiles of `rows` rows.

    Args:
        probs_a: `[N, C, R]` high-bit sub-code probabilities times the token weights.
        probs_b: `[N, C, S]` low-bit sub-code probabilities.
        count: 0-d, the token count W (the weights' sum).
        rows: rows per tile (`tile_rows`).
        xp: array namespace.
        matmul: batched product `[C, M, K] @ [C, K, P]` (default `xp.matmul`).
        scan: the loop, `jax.lax.scan`'s contract (default `python_scan`).
        accumulate: dtype of the running sum across tiles (default float64),
            compensated (Neumaier).
        tile_range: `(start, stop)`: only tiles start..stop-1 of the
            `ceil(R / rows)` (a replica's share; their sums add up to H).

    Returns:
        0-d array of probs_a's dtype: $-\\sum_{c,i,j} \\bar p \\log \\bar p$.
    """
    matmul = xp.matmul if matmul is None else matmul
    scan = python_scan if scan is None else scan
    accumulate = xp.float64 if accumulate is None else accumulate
    right = scaled_b(probs_b, count, xp)
    zero = xp.zeros_like(count, dtype=accumulate)

    def body(state, tile):
        value = tile_entropy(tile, right, xp, matmul)
        return _add(state, value, xp, True), value

    (total, comp), _ = scan(body, (zero, zero), _share(tiles(probs_a, rows, xp), tile_range))
    return xp.astype(total + comp, probs_a.dtype)


def entropy_sum_vjp(
    probs_a, probs_b, count, cotangent, rows: int, xp, matmul=None, scan=None, accumulate=None, tile_range=None
):
    """`(d_probs_a [N, C, R], d_probs_b [N, C, S])`: the gradient of `cotangent * entropy_sum(...)`.

    Each tile is recomputed (nothing of size `2**k` is kept from the forward pass).
    Arguments as `entropy_sum`'s; `cotangent` is a 0-d array or a number. With
    `tile_range`, the gradient of that share's sum (d_probs_a is 0 outside its rows).
    """
    matmul = xp.matmul if matmul is None else matmul
    scan = python_scan if scan is None else scan
    accumulate = xp.float64 if accumulate is None else accumulate
    compensated = accumulate == probs_a.dtype
    right = scaled_b(probs_b, count, xp)
    zero = xp.zeros_like(right, dtype=accumulate)
    # The compensation term only where it is used (a float64 one would double the sum's memory).
    comp = zero if compensated else xp.zeros_like(count, dtype=accumulate)

    def body(state, tile):
        d_tile, part = tile_vjp(tile, right, cotangent, xp, matmul)
        return _add(state, part, xp, compensated), d_tile

    all_tiles = tiles(probs_a, rows, xp)
    (total, comp), d_tiles = scan(body, (zero, comp), _share(all_tiles, tile_range))
    if isinstance(d_tiles, list):
        d_tiles = xp.stack(d_tiles)
    if tile_range is not None:  # zeros for the other tiles
        start, stop = tile_range
        before, after = all_tiles[:start], all_tiles[stop:]
        d_tiles = xp.concat([xp.zeros_like(before), d_tiles, xp.zeros_like(after)], axis=0)
    d_b = xp.astype(total + comp if compensated else total, probs_a.dtype) / _denominator(count, probs_a, xp)
    return untile(d_tiles, probs_a.shape[-1], xp), xp.permute_dims(d_b, (1, 0, 2))
