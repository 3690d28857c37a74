r"""The code histogram's gradient, one half of the bits at a time.

`lfq.factorized.code_histogram` is $H = P_A^\top \operatorname{diag}(w) P_B$ per
codebook ($P_A$ `[N, 2^|A|]`, $P_B$ `[N, 2^|B|]`, the sub-code probabilities of
the high and low bits of a group). With $G = \partial L / \partial H$:

$$\bar P_A = \operatorname{diag}(w) P_B G^\top,\qquad \bar P_B = \operatorname{diag}(w) P_A G,$$

and each reduces to the `[N, |A|]` (`[N, |B|]`) bit-logit gradient through
`lfq.factorized.subcode_probs_vjp`. Autodiff of the composition forms both
products before either reduction, and the reduction's weighted copy besides:
$P_A, P_B$ (the saved forward tables, together one unit $U$ of $N(2^{|A|} + 2^{|B|})$
entries), $\bar P_A$, $\bar P_B$ and a copy live at once, about $2.5\,U$.
`code_histogram_vjp` is the schedule that keeps the live set near $1.5\,U$:
$\bar P_A$ is formed, reduced to `[N, |A|]` and dropped before $\bar P_B$ is
formed. With in-place `mul` / `add` (eager torch) the reduction allocates no
table of its own; a compiler (XLA, inductor) reuses the buffer by itself.

The backends attach it as the gradient of "bit logits -> histogram"
(`ArrayBackend.code_histogram`): torch's autograd Function, TensorFlow's custom
gradient, JAX's custom VJP. Shared here, they differ only in mechanics.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from lfq import factorized

__all__ = ["code_histogram_vjp", "histogram_with_factors", "token_block_histogram", "token_block_rows"]

#: JAX and TensorFlow sum the histogram over blocks of tokens (`token_block_histogram`)
#: from this many bytes of `P_A` on. Without blocks XLA:CPU keeps 2 (TensorFlow) to 3.5
#: (JAX) tables of the size of `P_A + P_B` alive in a step's backward; with them, about
#: one block's. Below it the blocks' fixed cost shows: at N = 4096, D = 16 (4 MiB of
#: `P_A`) 1 MiB blocks made JAX's step 2.7 times as long.
BLOCKS_FROM_BYTES = 16 * 2**20
#: Bytes of `P_A` per block: a quarter of `P_A`, within these bounds (at 16 MiB per
#: block and above the recomputation costs JAX nothing measurable).
BLOCK_BYTES_RANGE = (4 * 2**20, 16 * 2**20)


def token_block_rows(n, codebooks: int, bits: int, itemsize: int) -> int | None:
    """Tokens per block of `token_block_histogram` for bit logits `[n, codebooks, bits]` of
    `itemsize` bytes (`P_A` holds `codebooks * 2**ceil(bits / 2)` entries per token), or
    None for one pass (below `BLOCKS_FROM_BYTES`, or N not static)."""
    row_bytes = codebooks * 2 ** ((bits + 1) // 2) * itemsize
    if not isinstance(n, int) or n * row_bytes < BLOCKS_FROM_BYTES:
        return None
    low, high = BLOCK_BYTES_RANGE
    return max(1, min(high, max(low, n * row_bytes // 4)) // row_bytes)


def histogram_with_factors(a, weights, xp, matmul: Callable, subcode_probs_fn: Callable | None = None):
    """`(histogram, probs_a, probs_b)`: `factorized.code_histogram` and the tables its gradient needs.

    Args:
        a: `[N, C, k]` bit logits of one group of k bits.
        weights: `[N]` token weights or None.
        matmul: the batched matrix product.
        subcode_probs_fn: `factorized.subcode_probs` of the backend (default the shared one).

    Returns:
        `[C, 2**|A|, 2**|B|]` histogram, `P_A * w` `[N, C, 2**|A|]`, `P_B` `[N, C, 2**|B|]`.
    """
    probs_a, probs_b = factorized.subcode_factors(a, weights, xp, subcode_probs_fn)
    hist = matmul(xp.permute_dims(probs_a, (1, 2, 0)), xp.permute_dims(probs_b, (1, 0, 2)))
    return hist, probs_a, probs_b


def code_histogram_vjp(
    a,
    probs_a,
    probs_b,
    cotangent,
    xp,
    matmul: Callable,
    mul: Callable = operator.mul,
    add: Callable = operator.add,
):
    """Gradient w.r.t. `a` of `<cotangent, code_histogram(a, weights)>`, one half at a time.

    Args:
        a: `[N, C, k]` bit logits; `probs_a` (`P_A * w`), `probs_b`: as
            `histogram_with_factors` returns them (the weights are inside `probs_a`).
        cotangent: `[C, 2**|A|, 2**|B|]`.
        matmul: the batched matrix product.
        mul, add: `subcode_probs_vjp`'s; in-place ones may write into the products
            formed here (never into the arguments).

    Returns:
        `[N, C, k]`. The weights need no separate factor: $\\bar P_B = P_A^w G$
        carries them, and so does $\\bar P_A \\odot P_A^w$ inside `subcode_probs_vjp`.
    """
    split = (a.shape[-1] + 1) // 2
    logits = xp.permute_dims(a, (1, 0, 2))  # [C, N, k]: the products' layout
    table_a = xp.permute_dims(probs_a, (1, 0, 2))  # [C, N, 2^|A|]
    table_b = xp.permute_dims(probs_b, (1, 0, 2))  # [C, N, 2^|B|]
    # The A half first, reduced to [C, N, |A|] before the B half's product exists.
    grad_a = factorized.subcode_probs_vjp(
        logits[..., :split], table_a, matmul(table_b, xp.permute_dims(cotangent, (0, 2, 1))), xp, mul, add
    )
    grad_b = factorized.subcode_probs_vjp(logits[..., split:], table_b, matmul(table_a, cotangent), xp, mul, add)
    return xp.permute_dims(xp.concat([grad_a, grad_b], axis=-1), (1, 0, 2))


def token_block_histogram(a, weights, rows: int, xp, histogram: Callable, scan: Callable):
    """`code_histogram` summed over blocks of `rows` tokens, for a framework that recomputes
    each block in the backward pass (its `scan` checkpoints the body).

    Peak memory is then that of one block's tables, whatever N: the forward keeps only
    the running `[C, 2**|A|, 2**|B|]` sum, the backward recomputes a block's `P_A`,
    `P_B` from its `[rows, C, k]` logits (as flash attention recomputes its tiles).

    Args:
        a: `[N, C, k]` bit logits, N > rows; weights: `[N]` or None.
        rows: tokens per block; the last block is padded with weight-0 tokens.
        histogram: `(a_block, weights_block) -> [C, 2**|A|, 2**|B|]`.
        scan: `jax.lax.scan`'s contract (`lfq.tiled.python_scan`).
    """
    n, c, k = a.shape
    blocks = -(-n // rows)
    pad = blocks * rows - n  # < rows < n
    w = xp.ones_like(a[:, 0, 0]) if weights is None else weights
    if pad:
        a = xp.concat([a, xp.zeros_like(a[:pad])], axis=0)
        w = xp.concat([w, xp.zeros_like(w[:pad])], axis=0)
    high = (k + 1) // 2

    def body(total, block):
        return total + histogram(*block), None

    init = xp.zeros((c, 2**high, 2 ** (k - high)), dtype=a.dtype)
    total, _ = scan(body, init, (xp.reshape(a, (blocks, rows, c, k)), xp.reshape(w, (blocks, rows))))
    return total
