r"""The factorized exact entropy: one algorithm, written once against an array namespace.

Every code has the same norm, so the softmax over the $2^D$ codes factorizes into
$D$ independent bits (docs/spec.md derives it):

$$p(c \mid x) = \prod_{i=1}^{D} \sigma(a_i b_i), \qquad a_i = 4\,\tau\,m\,x_i,\quad b_i = \pm 1.$$

* The per-sample entropy is a sum of Bernoulli entropies, $O(N D)$.
* The batch entropy needs the mean distribution $\bar p = \frac1N\sum_n p_n$, a
  mixture that does not factorize. Splitting the bits into a high half A and a low
  half B, $p_n(j_A, j_B) = P_A[n, j_A]\,P_B[n, j_B]$, so
  $\sum_n w_n p_n = P_A^\top \operatorname{diag}(w) P_B$: one matrix product per
  codebook, $O(N 2^{D/2} + 2^D)$ memory instead of $O(N 2^D)$. Past
  `lfq.tiled.TILE_THRESHOLD` entries (or with `Config.entropy_tile`) the product
  is not stored: `loss_sums` keeps the group's factors (`lfq.tiled.Factors`) and
  `losses_from_sums` computes its entropy tile by tile (`lfq.tiled`).

The functions take `xp` (an Array-API namespace) and `matmul` (so that a backend
can ask for full float32 precision or a distributed-aware product). They compute
in the dtype of their inputs; the NumPy reference calls them in float64 and is
tested against the literal enumeration over all codes.

Distributed data parallelism: `loss_sums` returns token sums, `losses_from_sums`
turns (possibly all-reduced) sums into the losses. Between the two a backend sums
the `LossSums` fields over replicas; the result is then exactly the computation
over the concatenated global batch.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from lfq import features, tiled
from lfq.config import Config
from lfq.schedule import _NO_SCHEDULE, SCHEDULE_FIELDS, Schedule, _like
from lfq.subnormal import flush_subnormal

__all__ = [
    "LossSums",
    "SCHEDULE_FIELDS",
    "Schedule",
    "aux_loss",
    "bernoulli_entropy",
    "bit_groups",
    "bit_logits",
    "bit_sums",
    "bit_log_probs",
    "code_histogram",
    "distribution_entropy",
    "flush_subnormal",
    "loss_sums",
    "losses_from_sums",
    "subcode_bits",
    "subcode_factors",
    "subcode_probs",
    "subcode_probs_vjp",
    "sigmoid_pairs",
    "sigmoid",
    "sum_replicas",
]


class LossSums(NamedTuple):
    """Token sums from which the losses follow; summing them over replicas is exact.

    Attributes:
        sample_entropy: scalar, sum over valid tokens, codebooks and bits of the
            Bernoulli entropies.
        token_count: scalar, number of valid tokens.
        commitment: scalar, sum over valid tokens and features of `(x - q)**2`.
        histograms: one entry per bit group: an array `[C, 2**|A|, 2**|B|]`,
            the token-summed code probabilities (row index: high bits A, column:
            B), or, for a group past the tile threshold (`lfq.tiled.uses_tiles`),
            its `lfq.tiled.Factors` `(P_A * w, P_B)`, from which
            `losses_from_sums` computes the entropy tile by tile.
    """

    sample_entropy: Any
    token_count: Any
    commitment: Any
    histograms: tuple

    def map(self, fn) -> LossSums:
        """Apply `fn` to every array, e.g. a framework's all-reduce."""
        return LossSums(
            fn(self.sample_entropy), fn(self.token_count), fn(self.commitment), tuple(fn(h) for h in self.histograms)
        )


def sum_replicas(parts) -> LossSums:
    """Field-wise sum of several replicas' `LossSums`: what an all-reduce(SUM) computes."""
    first, *rest = parts
    total = list(first)
    for part in rest:
        total[:3] = [a + b for a, b in zip(total[:3], part[:3])]
        total[3] = tuple(a + b for a, b in zip(total[3], part.histograms))
    return LossSums(*total)


def bit_groups(cfg: Config) -> list[tuple[int, int]]:
    """Bit ranges `[start, stop)` whose batch entropies are summed.

    "exact" is one group of all D bits; "groups:G" splits the D bits into G runs
    of consecutive bits, sizes as equal as possible with the larger ones first.
    """
    groups = cfg.entropy_groups
    # // and %, not divmod: Dynamo cannot trace divmod of symbolic ints (dynamic=True).
    base, extra = cfg.codebook_dim // groups, cfg.codebook_dim % groups
    bounds, start = [], 0
    for g in range(groups):
        stop = start + base + (1 if g < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


#: Bound of the bit logits: every function of `a` here is saturated far below it
#: (exp(-2**64) is 0 in any float), and 4*tau*m*x below it does not overflow.
LOGIT_LIMIT = 2.0**64
_LOGIT_LIMIT_HEX = LOGIT_LIMIT.hex()


def bit_logits(x, cfg: Config, xp, schedule: Schedule = _NO_SCHEDULE):
    r"""Bit logits $a = 4\tau m x$ of transformed features `x`, clipped to $\pm 2^{64}$.

    The product is formed first and clipped at the constant $\pm 2^{64}$: where it
    overflows (float32 $|x| = 10^{34}$ at $\tau = 10^4$) it is $\pm\infty$ and clips to
    the limit ($4\tau m$ is finite and positive: `Config` checks both), so saturated
    bits and infinite features give their limits (entropy 0, probabilities 0 and 1,
    gradient 0) instead of $\infty - \infty$. It changes no value: every loss is
    constant in $a$ beyond $|a| \approx 750$. A bound that does not depend on the
    config is also a constant of every trace: under `torch.compile(dynamic=True)` the
    config's floats are symbolic, and a clip at a symbolic bound broke the graph.

    $\tau$ is `schedule`'s when it gives one (a number or a 0-d array).
    """
    scale = _like(4.0 * schedule.value("inv_temperature", cfg) * cfg.code_magnitude, x, xp)
    # From a string: torch.compile(dynamic=True) makes a float read from a global a
    # graph input (symbolic), a literal built in the function stays a constant.
    limit = float.fromhex(_LOGIT_LIMIT_HEX)
    return xp.clip(x * scale, -limit, limit)


def bit_log_probs(a, xp):
    r"""`(log p(bit=+1), log p(bit=-1))` for bit logits `a`: $-\mathrm{softplus}(\mp a)$.

    Written with $|a|$ so that nothing overflows and autodiff gives finite
    gradients everywhere: $\mathrm{softplus}(\pm a) = \frac{|a| \pm a}{2} + \log(1 + e^{-|a|})$.
    """
    t = xp.abs(a)
    soft = xp.log1p(xp.exp(-t))
    return -((t - a) * 0.5 + soft), -((t + a) * 0.5 + soft)


def bernoulli_entropy(a, xp):
    r"""$H_b(\sigma(a))$ in nats: $\mathrm{softplus}(-|a|) + |a|\,\sigma(-|a|)$.

    Both terms are non-negative, so saturated bits keep full relative accuracy
    (the textbook $\mathrm{softplus}(a) - a\sigma(a)$ cancels catastrophically).
    """
    t = xp.abs(a)
    soft = xp.log1p(xp.exp(-t))
    return soft + t * xp.exp(-t - soft)


def sigmoid_pairs(a, xp):
    """`[..., k, 2]`: per bit of `a` (`[..., k]` logits), `(p(bit = 0), p(bit = 1))` = `(sigmoid(-a), sigmoid(a))`."""
    return sigmoid(xp.stack([-a, a], axis=-1), xp)


def subcode_probs(a, xp, in_place: bool = True, pairs=None):
    """Probabilities of every sign pattern of the bits of `a`, MSB first.

    Args:
        a: `[..., k]` bit logits.
        in_place: flush the table in place where the namespace can
            (`flush_subnormal`'s `overwrite`); torch passes False under
            `torch.compile`, whose functionalization would copy the table instead.
        pairs: `sigmoid_pairs(a, xp)` when the caller has it (computed here otherwise).

    Returns:
        `[..., 2**k]`: entry j is `prod_i p(bit i = bit i of j)`, bit 0 of `a`
        being the most significant bit of j; "1" means positive. Entries below the
        dtype's smallest normal number are exactly 0 (`flush_subnormal`).
    """
    if a.shape[-1] == 0:  # the empty half of D = 1: one pattern of probability 1, on a's device
        return xp.ones_like(xp.sum(a, axis=-1, keepdims=True))
    # [..., k, 2]: per bit, (p(-), p(+)) = the factor for a 0 bit, then a 1 bit.
    pairs = sigmoid_pairs(a, xp) if pairs is None else pairs
    return flush_subnormal(_outer_tree(pairs, 0, a.shape[-1], xp), xp, nonnegative=True, overwrite=in_place)


def sigmoid(x, xp):
    r"""$\sigma(x)$ to a few ulps relative wherever it is a normal number, with finite derivatives.

    With $e = e^{-|x|} \le 1$: $\sigma(x) = 1/(1+e)$ for $x \ge 0$ and $e/(1+e)$ below.
    No intermediate exceeds 1, so forward-mode autodiff (a tangent times $e^{|x|}$ in
    the one-exp form $1/(1+e^{-x})$) cannot overflow into $\infty \cdot 0 = $ NaN at
    saturated bits; below about $-87$ (float32) the value is subnormal or 0 and
    `flush_subnormal` makes it 0 where it matters.
    """
    e = xp.exp(-xp.abs(x))
    positive = 1.0 / (1.0 + e)
    return xp.where(x >= 0, positive, e * positive)


def _outer_tree(pairs, lo: int, hi: int, xp):
    """`[..., 2**(hi-lo)]` probabilities of bits lo..hi-1: the outer product of the two halves' tables.

    Splitting in halves (not one bit at a time) makes the last, largest product
    `[.., 2^h, 1] * [.., 1, 2^(k-h)]` with a contiguous inner run of `2^(k-h)`
    values, which vectorizes (eager and compiled); one bit at a time it is an
    inner run of 2, or in a compiler's fused kernel one gather per bit per entry.
    The number of multiplications is the same (k - 1 outer products).
    """
    if hi - lo == 1:
        return pairs[..., lo, :]
    mid = (lo + hi + 1) // 2
    high, low = _outer_tree(pairs, lo, mid, xp), _outer_tree(pairs, mid, hi, xp)
    step = high[..., :, None] * low[..., None, :]
    return xp.reshape(step, tuple(step.shape[:-2]) + (high.shape[-1] * low.shape[-1],))


def subcode_bits(k: int):
    """`[2**k, k]` NumPy int matrix: row j holds the bits of j, MSB first (1 = positive)."""
    return (np.arange(2**k)[:, None] >> np.arange(k - 1, -1, -1)) & 1


def subcode_probs_vjp(
    a,
    probs,
    cotangent,
    xp,
    mul: Callable = operator.mul,
    add: Callable = operator.add,
    bit_sums_fn: Callable | None = None,
    positive=None,
):
    r"""Gradient of `subcode_probs` w.r.t. `a`, in O(2^k) work per row and no matrix product.

    $p_j = \prod_i \sigma(\pm a_i)$, so $\partial p_j / \partial a_i = p_j\,(\mathrm{bit}_i(j) - \sigma(a_i))$
    and $\bar a_i = \sum_j \bar p_j p_j \mathrm{bit}_i(j) - \sigma(a_i) \sum_j \bar p_j p_j$.
    Autodiff through the product tree instead costs one strided pass per bit.

    Args:
        a: `[..., k]` bit logits; probs: `subcode_probs(a)`, `[..., 2**k]`.
        cotangent: `[..., 2**k]` upstream gradient.
        mul, add: the products and sums over `[..., 2**j]` tables; a backend whose
            caller hands over `cotangent` as a temporary passes in-place operations
            (writing into their first argument), so that no table of the size of
            `probs` is allocated (`lfq.histogram_grad`).
        bit_sums_fn: `bit_sums(w, k)` computed another way (default `bit_sums`).
        positive: `sigmoid(a)` when the caller saved it (computed here otherwise).

    The sums over the codes with bit i set are `bit_sums` by default, not a
    `[M, 2^k] @ [2^k, k]` product, whose k columns are too few for a GEMM in torch's
    kernels (2 to 6 times slower on a CPU); under XLA it is the other way round, and
    the TensorFlow backend passes that product as `bit_sums_fn`.
    """
    # No flush here: with `bit_sums` subnormal entries of the product reach only
    # additions, and flushing would cost a copy of the [.., 2^k] table (the TensorFlow
    # product runs where the framework itself treats subnormal inputs as 0).
    weighted = mul(cotangent, probs)
    positive = sigmoid(a, xp) if positive is None else positive
    if bit_sums_fn is None:
        on, total = bit_sums(weighted, a.shape[-1], xp, add)
    else:
        on, total = bit_sums_fn(weighted, a.shape[-1])
    return on - positive * total


def bit_sums(w, k: int, xp, add: Callable = operator.add):
    """`(on, total)`: `on[..., i]` sums `w[..., j]` over the codes j whose bit i (MSB first)
    is 1, `total[..., 0]` over all j. `w` is `[..., 2**k]`, `on` `[..., k]`, `total` `[..., 1]`.

    A halving tree: bit 0 splits the codes into the halves `j < 2^(k-1)` and
    `j >= 2^(k-1)`; the upper half's sum is `on[..., 0]`, and adding the halves
    marginalizes bit 0 out for the remaining bits. 2^k additions per row in all.
    `add` may write into its first argument (the lower half of `w`).
    """
    lead = tuple(w.shape[:-1])
    outs = []
    for i in range(k):
        halves = xp.reshape(w, lead + (2, 2 ** (k - 1 - i)))
        outs.append(xp.sum(halves[..., 1, :], axis=-1))
        w = add(halves[..., 0, :], halves[..., 1, :])
    on = xp.stack(outs, axis=-1) if outs else xp.zeros_like(w[..., :0])
    return on, w


def subcode_factors(a, weights, xp, subcode_probs_fn: Callable | None = None):
    """`(P_A * w, P_B)` of one group of k bits: `[N, C, 2**ceil(k/2)]`, `[N, C, 2**floor(k/2)]`.

    The high bits A (the first ceil(k/2) of the group) index P_A; `weights` (`[N]`
    or None) multiply P_A. Arguments as `code_histogram`'s.
    """
    probs_of = (lambda bits: subcode_probs(bits, xp)) if subcode_probs_fn is None else subcode_probs_fn
    split = (a.shape[-1] + 1) // 2
    # Two calls, also for equal halves: stacking the halves into one call saves a few
    # kernel launches, but its backward concatenates full-size gradients (peak memory)
    # and its unstack has no vmap rule in torch.func.
    probs_a = probs_of(a[..., :split])  # [N, C, 2^|A|]
    probs_b = probs_of(a[..., split:])  # [N, C, 2^|B|]
    if weights is not None:
        probs_a = probs_a * weights[:, None, None]
    return probs_a, probs_b


def code_histogram(a, weights, xp, matmul: Callable | None = None, subcode_probs_fn: Callable | None = None):
    r"""Token-summed code probabilities of every codebook, without an N x 2^D tensor.

    Args:
        a: `[N, C, k]` bit logits of one group of k bits.
        weights: `[N]` token weights (0/1 from the mask) or None.
        xp: array namespace.
        matmul: matrix product to use (default `xp.matmul`).
        subcode_probs_fn: `subcode_probs` with a backend's own gradient rule
            (default: this module's function, differentiated by autodiff).

    Returns:
        `[C, 2**ceil(k/2), 2**floor(k/2)]`: $\sum_n w_n P_A[n]^\top P_B[n]$; flattened
        row-major it is indexed by the k-bit code, MSB first.
    """
    matmul = xp.matmul if matmul is None else matmul
    probs_a, probs_b = subcode_factors(a, weights, xp, subcode_probs_fn)
    return matmul(xp.permute_dims(probs_a, (1, 2, 0)), xp.permute_dims(probs_b, (1, 0, 2)))


def distribution_entropy(p, xp):
    """`-sum p log p` over the last two axes, with `0 log 0 = 0` (no eps clamp).

    The sum over the `2**D` terms runs as a tree of sums of at most 32 terms each,
    so its rounding error stays at a few ulps whatever order a compiler reduces
    in: inductor's CPU sum of all `2**20` terms in one reduction (serial runs of
    4096 per vector lane) lost 1e-4 relative at D = 20 in float32; staged, it
    agrees with eager's cascade sum (1e-7).
    """
    positive = p > 0
    log_p = xp.log(xp.where(positive, p, xp.ones_like(p)))
    terms = p * log_p
    block = 32
    lead = tuple(terms.shape[:-2])
    n = terms.shape[-2] * terms.shape[-1]
    terms = xp.reshape(terms, lead + (n,))
    while n > block and n % block == 0:
        terms = xp.sum(xp.reshape(terms, lead + (n // block, block)), axis=-1)
        n //= block
    return -xp.sum(terms, axis=-1)


def loss_sums(
    x,
    codes,
    weights,
    cfg: Config,
    xp,
    matmul: Callable | None = None,
    subcode_probs_fn: Callable | None = None,
    with_histograms: bool = True,
    device=None,
    schedule: Schedule = _NO_SCHEDULE,
    histogram_fn: Callable | None = None,
) -> LossSums:
    """Token sums of every loss term, for one replica's tokens.

    Args:
        x: `[N, C, D]` transformed features (`lfq.features.transform_groups`).
        codes: `[N, C, D]` the codes `+-m` (treated as constants).
        weights: `[N]` 0/1 token weights from the mask, or None for all tokens.
        cfg: the configuration.
        xp: array namespace.
        matmul: matrix product for the code histograms.
        subcode_probs_fn: see `code_histogram`.
        with_histograms: False skips the code histograms (`histograms == ()`):
            enough for the per-sample entropy and commitment terms, at any D.
        device: where the token count is made without a mask (`features.scalar`).
        schedule: per-call values of the config's schedule fields (`Schedule`).
        histogram_fn: `(a, weights) -> code_histogram(a, weights, ...)` with a
            backend's gradient rule (`lfq.histogram_grad`); default `code_histogram`.

    Returns:
        `LossSums`. Masked-out tokens are zeroed before any arithmetic, so a NaN or
        inf in them reaches neither a loss nor a gradient.
    """
    if weights is not None:
        valid = weights[:, None, None] > 0
        x = xp.where(valid, x, xp.zeros_like(x))
    a = bit_logits(x, cfg, xp, schedule)
    per_bit = bernoulli_entropy(a, xp)
    # d * d, not d ** 2: autodiff then forms upstream * d (finite) rather than 2 * d,
    # which overflows for |x| near the dtype's largest value.
    diff = x - codes
    sq_err = diff * diff
    if weights is None:
        count = _token_count(x, xp, device)
    else:
        per_bit = per_bit * weights[:, None, None]
        sq_err = sq_err * weights[:, None, None]
        count = xp.sum(weights)
    hists = []
    for lo, hi in bit_groups(cfg) if with_histograms else ():
        if tiled.uses_tiles(cfg, hi - lo):  # past the threshold: no histogram is stored
            probs_a, probs_b = subcode_factors(a[..., lo:hi], weights, xp, subcode_probs_fn)
            hists.append(tiled.Factors(probs_a, probs_b, a[..., lo:hi], weights))
        else:
            group = a[..., lo:hi]
            if histogram_fn is None:
                hists.append(code_histogram(group, weights, xp, matmul, subcode_probs_fn))
            else:
                hists.append(histogram_fn(group, weights))
    return LossSums(xp.sum(per_bit), count, xp.sum(sq_err), tuple(hists))


def _token_count(x, xp, device):
    """`x.shape[0]` as a 0-d array of x's dtype on `device`.

    A static size is an exact constant; a size known only at run time (a
    TensorFlow graph's `None` batch) is counted, which is exact below `2**24`
    tokens in float32.
    """
    n = x.shape[0]
    if isinstance(n, int):
        return features.scalar(float(n), x, xp, device)
    return xp.sum(xp.ones_like(x[:, 0, 0]))


def losses_from_sums(
    sums: LossSums,
    cfg: Config,
    xp,
    schedule: Schedule = _NO_SCHEDULE,
    tiled_entropy: Callable | None = None,
):
    """`(per_sample_entropy, batch_entropy, commitment_loss, aux_loss)` from token sums.

    Means are over valid tokens; with no valid token every loss is 0 (not NaN).

    Args:
        tiled_entropy: `(probs_a, probs_b, count, rows) -> 0-d` for the groups held
            as `lfq.tiled.Factors`: `lfq.tiled.entropy_sum` with a backend's loop and
            gradient (`ArrayBackend.tiled_entropy`); default the plain Python loop.
    """
    if tiled_entropy is None:

        def tiled_entropy(probs_a, probs_b, count, rows):
            return tiled.entropy_sum(probs_a, probs_b, count, rows, xp)

    count = sums.token_count
    denom = xp.where(count > 0, count, xp.ones_like(count))
    c, d = cfg.num_codebooks, cfg.codebook_dim
    per_sample = sums.sample_entropy / (denom * c)
    commitment = sums.commitment / (denom * (c * d))
    batch = xp.zeros_like(per_sample)  # stays 0 without histograms (see `loss_sums`)
    for hist in sums.histograms:
        if isinstance(hist, tiled.Factors):
            rows = tiled.tile_rows(cfg, hist.probs_a.shape[-1], hist.probs_b.shape[-1])
            batch = batch + tiled_entropy(hist.probs_a, hist.probs_b, count, rows)
        elif isinstance(hist, tiled.GroupEntropy):  # computed across replicas
            batch = batch + hist.value
        else:
            batch = batch + xp.sum(distribution_entropy(hist / denom, xp))
    batch = batch / c
    return per_sample, batch, commitment, aux_loss(per_sample, batch, commitment, cfg, xp, schedule)


def aux_loss(
    per_sample,
    batch,
    commitment,
    cfg: Config,
    xp,
    schedule: Schedule = _NO_SCHEDULE,
    softplus_offset: float | None = None,
):
    r"""$w_e (H_s - \gamma H_b) + w_c L_c$, leaving out every term whose weight is 0.

    A zero weight switches its term off: $0 \cdot \infty$ would be NaN (float32
    commitment of $|z| = 10^{30}$), and autodiff would still reach the term.
    Weights and $\gamma$ are `schedule`'s where it gives them.

    Args:
        softplus_offset: when set, the entropy term is
            $\mathrm{softplus}(H_s - \gamma H_b + \text{offset})$ (positive), the
            experimental variant of vector-quantize-pytorch
            (`experimental_softplus_entropy_loss`, `entropy_loss_offset`).
    """
    terms = []
    if not schedule.is_zero("entropy_weight", cfg):
        entropy = per_sample
        if not schedule.is_zero("diversity_gamma", cfg):
            entropy = per_sample - _like(schedule.value("diversity_gamma", cfg), per_sample, xp) * batch
        if softplus_offset is not None:
            t = entropy + softplus_offset  # softplus(t) = max(t, 0) + log1p(exp(-|t|)), no overflow
            entropy = (t + xp.abs(t)) * 0.5 + xp.log1p(xp.exp(-xp.abs(t)))
        terms.append(_like(schedule.value("entropy_weight", cfg), per_sample, xp) * entropy)
    if not schedule.is_zero("commitment_weight", cfg):
        terms.append(_like(schedule.value("commitment_weight", cfg), commitment, xp) * commitment)
    if not terms:
        # 0 * the bounded entropy (finite for every non-NaN input): a 0 that stays
        # connected to z, so that autodiff of aux gives zeros rather than an error.
        return per_sample * 0.0
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]
