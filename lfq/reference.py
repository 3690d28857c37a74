r"""The NumPy reference: LFQ's specification in executable form.

Flat functions named after the interface, float64 inside, no framework imported.
Outputs come back in the input's dtype (losses as 0-d arrays); pass float64 input
to read the exact float64 values. Every backend is checked against these
functions. docs/spec.md states the same rules in prose, with the derivations.

Notation: `z` is `[..., C*D]` with the features on `cfg.feature_axis`; tokens are
all the other axes, flattened to N in the losses. `m` is the code magnitude
(`s`, or `s/sqrt(D)` when spherical), `x` the transformed features the losses
see (soft clamp, then spherical projection), and $a = 4\tau m x$ the bit logits.

Two entropy methods:

* `"literal"`: the definition. Enumerate the $2^D$ codes, softmax the logits
  $l_j = 2\tau\,x\cdot c_j$, average. Memory $N\,2^D$: for D up to about 16.
* `"factorized"` (default): the exact closed form of `lfq.factorized`, shared
  with every backend; tests prove it equal to the literal one to 1e-12.

Accuracy: both entropies are computed to a relative accuracy of about 1e-13
wherever they are normal float64 numbers, however close to 0; for the batch
entropy this takes the complement rule of `_distribution_entropy` (docs/spec.md,
section 4.2).
"""

from __future__ import annotations

import numpy as np

from lfq import factorized, features, tiled, validation
from lfq.config import Config
from lfq.interface import GRAD_TERMS, CodeUsage, LFQOutput

__all__ = [
    "all_codes",
    "batch_entropy_vjp",
    "code_usage",
    "codes_to_indices",
    "commitment_loss",
    "commitment_vjp",
    "entropy",
    "indices_to_codes",
    "lfq",
    "per_sample_entropy_vjp",
    "quantize",
    "straight_through",
    "straight_through_vjp",
    "vjp",
]

_LITERAL_MAX_BITS = 20


# --------------------------------------------------------------------------- helpers


def _check_z(z, cfg: Config) -> np.ndarray:
    validation.check_config(cfg)
    z = np.asarray(z)
    validation.check_features(z.shape, z.dtype, cfg)
    return z


def _weights(z: np.ndarray, cfg: Config, mask) -> np.ndarray | None:
    """`[N]` float64 0/1 token weights, or None when every token counts."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    validation.check_mask(mask.shape, mask.dtype, z.shape, cfg)
    return mask.reshape(-1).astype(np.float64)


def _grouped64(z: np.ndarray, cfg: Config) -> np.ndarray:
    """`[N, C, D]` float64 raw features."""
    g = features.group_features(z.astype(np.float64), cfg, np)
    return g.reshape(-1, cfg.num_codebooks, cfg.codebook_dim)


def _out(value, like: np.ndarray) -> np.ndarray:
    """A float64 result in the input's dtype (the precision rule): +-inf past its range."""
    with np.errstate(over="ignore"):
        return np.asarray(value, dtype=np.float64).astype(like.dtype)


def _transform_vjp(raw: np.ndarray, grad_x: np.ndarray, cfg: Config) -> np.ndarray:
    """Chain rule through `features.transform_groups` (`[N, C, D]` both)."""
    clamped = raw
    if cfg.soft_clamp is not None:
        # The forward's clamp (it returns tiny x unchanged, see `features.soft_clamp`);
        # t only gives its derivative 1 - t**2, which is 1 there to working precision.
        t = np.tanh(raw / cfg.soft_clamp)
        clamped = features.soft_clamp(raw, cfg.soft_clamp, np)
    g = grad_x
    if cfg.spherical:
        # The forward's max-scaled norm, ||x|| = peak * ||x / peak||: the plain sum of
        # squares underflows for tiny groups (D = 2, x = [3e-170, 4e-170]). Dividing by
        # the peak last keeps 0 for D = 1, where the projected gradient is exactly 0
        # and 1 / peak may overflow. A zero group's gradient is 0 (u = 0 there).
        peak = np.max(np.abs(clamped), axis=-1, keepdims=True)
        nonzero = peak > 0
        y = clamped / np.where(nonzero, peak, 1.0)
        norm = np.sqrt(np.sum(y * y, axis=-1, keepdims=True))
        n = y / np.where(nonzero, norm, 1.0)
        projected = cfg.scale / np.where(nonzero, norm, 1.0) * (g - n * np.sum(n * g, axis=-1, keepdims=True))
        with np.errstate(over="ignore"):  # a gradient past float64 is +-inf, its rounding
            g = np.where(nonzero, projected / np.where(nonzero, peak, 1.0), 0.0)
    if cfg.soft_clamp is not None:
        g = g * (1.0 - t * t)
    return g


def _ungroup_grad(grad: np.ndarray, z: np.ndarray, cfg: Config) -> np.ndarray:
    """`[N, C, D]` gradient back to z's layout and dtype."""
    tokens = validation.token_shape(z.shape, cfg)
    grad = grad.reshape(tokens + (cfg.num_codebooks, cfg.codebook_dim))
    return _out(features.ungroup_features(grad, cfg, np), z)


# --------------------------------------------------------------- quantize and index


def quantize(z, cfg: Config) -> np.ndarray:
    """Codes of `z`: `[..., C*D]` -> same shape and dtype.

    Rule: `q_i = +m if z_i > 0 else -m`, m = s (or s/sqrt(D) when spherical).
    `+0.0`, `-0.0` and NaN give `-m`: the comparison `z > 0` is false for them.
    The decision is made on the raw input (the soft clamp and the spherical
    projection preserve signs).
    """
    z = _check_z(z, cfg)
    return np.where(z > 0, z.dtype.type(cfg.code_magnitude), z.dtype.type(-cfg.code_magnitude))


def straight_through(z, cfg: Config) -> np.ndarray:
    """Straight-through codes: value exactly `quantize(z, cfg)` (bitwise).

    The gradient rule is `straight_through_vjp`. The value is *not* computed as
    `f(x) + (q - f(x))`, which is off by rounding for large |x| and in bf16.
    """
    return quantize(z, cfg)


def codes_to_indices(z, cfg: Config) -> np.ndarray:
    """Index of every codebook: `[..., C*D]` -> int64 `[..., C]`.

    Rule: `idx = sum_i [z_i > 0] * 2**(D-1-i)` per codebook with
    `bit_order="msb"` (the codebook's first feature is the top bit), or
    `* 2**i` with `"lsb"`. Ties and NaN give bit 0. Never negative: D <= 63.
    """
    z = _check_z(z, cfg)
    bits = features.group_features(z, cfg, np) > 0
    weights = np.array(features.bit_weights(cfg), dtype=np.int64)
    return np.sum(bits.astype(np.int64) * weights, axis=-1)


def indices_to_codes(indices, cfg: Config, dtype: str = "float32") -> np.ndarray:
    """Codes from indices: int `[..., C]` -> `[..., C*D]` of `dtype` (features on feature_axis).

    Exact inverse of `codes_to_indices` composed with `quantize`.

    Raises:
        ValueError: an index outside `[0, 2**D)`; a `dtype` that is not one of
            `validation.FLOAT_DTYPES` (by name, or a NumPy dtype of that name).
    """
    validation.check_config(cfg)
    out_dtype = validation.numpy_dtype(validation.check_codes_dtype(dtype))
    indices = np.asarray(indices)
    validation.check_indices(indices.shape, indices.dtype, cfg)
    if indices.size:
        validation.check_index_range(int(indices.min()), int(indices.max()), cfg)
    weights = np.array(features.bit_weights(cfg), dtype=np.uint64)
    bits = (indices.astype(np.uint64)[..., None] & weights) != 0
    m = out_dtype.type(cfg.code_magnitude)
    return features.ungroup_features(np.where(bits, m, -m), cfg, np)


# ------------------------------------------------------------------------ entropies


def all_codes(cfg: Config) -> np.ndarray:
    """Every code of one codebook, `[2**D, D]` float64, row j = code of index j (MSB first)."""
    return np.where(factorized.subcode_bits(cfg.codebook_dim) == 1, cfg.code_magnitude, -cfg.code_magnitude)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis, exact for saturated rows.

    `lse = l_max + log1p(sum over the other codes of exp(l - l_max))`; the top
    code is left out of the sum so that log1p keeps its tiny remainder.
    """
    top = np.argmax(logits, axis=-1)[..., None]
    peak = np.take_along_axis(logits, top, axis=-1)
    rest = np.exp(logits - peak)
    np.put_along_axis(rest, top, 0.0, axis=-1)
    # (l - l_max) first: adding log1p(tiny) to a large l_max would round it away.
    return (logits - peak) - np.log1p(np.sum(rest, axis=-1, keepdims=True))


def _distribution_entropy(p: np.ndarray) -> np.ndarray:
    r"""$-\sum_j p_j \log p_j$ over the last axis, to full relative accuracy (`[..., K]` -> `[...]`).

    The rule of the reference: an entropy is computed to a relative accuracy of
    about `1e-13` wherever it is a normal float64 number, however close to 0. The
    plain sum loses it when $\bar p$ sits on one code: $\bar p_{top} = 1 - \epsilon$
    is stored with an absolute error of $2^{-53}$, which $-\log \bar p_{top} \approx \epsilon$
    turns into a relative error of $2^{-53}/\epsilon$ (an entropy of `7.7e-172` was
    off by 2.5e-3). So the top code's term is $-\bar p_{top} \log(1 - \epsilon)$
    with $\epsilon = \sum_{j \ne top} \bar p_j$ (which equals $1 - \bar p_{top}$
    because $\bar p$ sums to 1) through `log1p`, where $\bar p_{top} \ge 1/2$; the
    other terms are sums of positive products, accurate as they are. A zero row
    (no valid token) gives 0.
    """
    top = np.argmax(p, axis=-1)[..., None]
    p_top = np.take_along_axis(p, top, axis=-1)[..., 0]
    rest = p.copy()
    np.put_along_axis(rest, top, 0.0, axis=-1)
    safe = np.where(rest > 0, rest, 1.0)
    others = -np.sum(rest * np.log(safe), axis=-1)
    eps = np.sum(rest, axis=-1)
    log_top = np.where(p_top >= 0.5, np.log1p(-np.minimum(eps, 0.5)), np.log(np.where(p_top > 0, p_top, 1.0)))
    return others - p_top * log_top


def _batch_entropy(sums: factorized.LossSums, cfg: Config) -> np.ndarray:
    """The batch entropy from the factorized token sums, by `_distribution_entropy` (float64).

    A group past the tile threshold (`lfq.tiled.Factors`: no stored histogram) is
    summed tile by tile (`lfq.tiled.entropy_sum`), with `-p log p` per entry: the
    top code's `log1p` form needs the whole distribution, which tiles never hold.
    """
    count = float(sums.token_count)
    batch = 0.0
    for hist in sums.histograms:
        if isinstance(hist, tiled.Factors):
            rows = tiled.tile_rows(cfg, hist.probs_a.shape[-1], hist.probs_b.shape[-1])
            batch += float(tiled.entropy_sum(hist.probs_a, hist.probs_b, np.float64(max(count, 1.0)), rows, np))
            continue
        pbar = hist.reshape(cfg.num_codebooks, -1) / max(count, 1.0)
        batch += np.sum(_distribution_entropy(pbar))
    return np.float64(batch / cfg.num_codebooks)


def _losses(sums: factorized.LossSums, cfg: Config):
    """`(per_sample, batch, commitment, aux)`: `factorized.losses_from_sums` with the accurate batch entropy."""
    per_sample, _, commit, _ = factorized.losses_from_sums(sums, cfg, np)
    batch = _batch_entropy(sums, cfg) if sums.histograms else np.float64(0.0)
    return per_sample, batch, commit, factorized.aux_loss(per_sample, batch, commit, cfg, np)


def _entropy_literal(x: np.ndarray, w: np.ndarray | None, cfg: Config, wide=np.longdouble):
    """The definition, by enumeration: `x` `[N, C, D]` transformed, float64.

    `wide` is the dtype of the enumeration: extended precision (80-bit on x86-64)
    keeps the oracle's own rounding in the logits far below the 1e-12 at which it
    is compared: at tau = 1e4 a float64 logit error of 1e-11 would show in the
    tiny entropies of saturated bits.
    """
    d = cfg.codebook_dim
    if d > _LITERAL_MAX_BITS:
        raise ValueError(
            f"method='literal' enumerates 2**{d} codes per token; it is the definition for "
            f"small codebooks (codebook_dim <= {_LITERAL_MAX_BITS}): use method='factorized'"
        )
    logits = wide(2.0 * cfg.inv_temperature) * (x.astype(wide) @ all_codes(cfg).astype(wide).T)
    log_p = _log_softmax(logits)
    p = np.exp(log_p)
    weights = (np.ones(x.shape[0]) if w is None else w).astype(wide)
    count = weights.sum()
    denom = count if count > 0 else wide(1.0)
    plogp = np.where(p > 0, p * log_p, 0.0)
    per_sample = -np.sum(weights[:, None] * plogp.sum(-1)) / (denom * cfg.num_codebooks)
    pbar = np.einsum("n,ncj->cj", weights, p) / denom  # [C, 2^D]
    pbar = pbar.reshape((cfg.num_codebooks,) + (2,) * d)
    batch = 0.0
    for lo, hi in factorized.bit_groups(cfg):
        other = tuple(1 + i for i in range(d) if not lo <= i < hi)
        marginal = pbar.sum(axis=other).reshape(cfg.num_codebooks, -1)
        batch += np.sum(_distribution_entropy(marginal)) / cfg.num_codebooks
    return np.float64(per_sample), np.float64(batch)


def _loss_sums(z: np.ndarray, cfg: Config, mask, with_histograms: bool = True):
    """Transformed features, weights and the factorized `LossSums`, all float64.

    Without `with_histograms` (the commitment loss) there is no batch entropy, so
    `max_exact_bits` does not apply: any D <= 63.
    """
    if with_histograms:
        validation.check_exact_batch_entropy(cfg)
    raw = _grouped64(z, cfg)
    w = _weights(z, cfg, mask)
    if w is not None:
        # Masked-out tokens count nowhere: zero them so a NaN there reaches no gradient.
        raw = np.where(w[:, None, None] > 0, raw, 0.0)
    x = features.transform_groups(raw, cfg, np)
    codes = np.where(raw > 0, cfg.code_magnitude, -cfg.code_magnitude)
    with np.errstate(over="ignore", under="ignore"):
        sums = factorized.loss_sums(x, codes, w, cfg, np, with_histograms=with_histograms)
    return raw, x, codes, w, sums


def entropy(z, cfg: Config, mask=None, method: str = "factorized", literal_dtype=np.longdouble):
    r"""`(per_sample_entropy, batch_entropy)` of `z`, in nats, input dtype.

    Rules: $p(j\mid x) = \mathrm{softmax}_j(2\tau\,x\cdot c_j)$ over the $2^D$ codes of
    each codebook. `per_sample_entropy` is the mean over valid tokens and
    codebooks of $-\sum_j p\log p$; `batch_entropy` the mean over codebooks of
    $-\sum_j \bar p\log\bar p$ with $\bar p$ the mean of p over valid tokens.
    $0\log 0 = 0$, no eps clamp. With `batch_entropy="groups:G"` the batch term
    is the sum of the exact entropies of the G bit groups' marginals (an upper
    bound). A mask with no valid token gives 0 for both.

    Args:
        z: `[..., C*D]` features.
        cfg: configuration.
        mask: optional boolean `z.shape` without the feature axis; False tokens
            count in no loss.
        method: "factorized" (default, exact for any D within max_exact_bits) or
            "literal" (the definition by enumeration; D <= 20).
        literal_dtype: dtype of the literal enumeration: extended precision by
            default (an oracle); `np.float64` to time the naive algorithm.
    """
    z = _check_z(z, cfg)
    if method == "literal":
        validation.check_exact_batch_entropy(cfg)
        x = features.transform_groups(_grouped64(z, cfg), cfg, np)
        w = _weights(z, cfg, mask)
        with np.errstate(under="ignore"):
            per_sample, batch = _entropy_literal(x, w, cfg, literal_dtype)
    elif method == "factorized":
        sums = _loss_sums(z, cfg, mask)[-1]
        per_sample, batch, _, _ = _losses(sums, cfg)
    else:
        raise ValueError(f"method={method!r} must be 'factorized' or 'literal'")
    return _out(per_sample, z), _out(batch, z)


def commitment_loss(z, cfg: Config, mask=None) -> np.ndarray:
    """Mean over valid tokens' elements of `(x - q)**2` (q a constant), input dtype.

    x is the transformed input (soft clamp, spherical projection) and q its code.
    """
    z = _check_z(z, cfg)
    raw = _grouped64(z, cfg)
    w = np.ones(raw.shape[0]) if mask is None else _weights(z, cfg, mask)
    x = features.transform_groups(raw, cfg, np)
    q = np.where(raw > 0, cfg.code_magnitude, -cfg.code_magnitude)
    per_token = np.sum((x - q) ** 2, axis=(1, 2))
    total = np.sum(np.where(w > 0, per_token, 0.0))
    return _out(total / (max(w.sum(), 1.0) * cfg.num_features), z)


def lfq(z, cfg: Config, mask=None) -> LFQOutput:
    """Quantize and compute every loss term; see `LFQOutput`."""
    z = _check_z(z, cfg)
    sums = _loss_sums(z, cfg, mask)[-1]
    per_sample, batch, commit, aux = _losses(sums, cfg)
    return LFQOutput(
        codes=straight_through(z, cfg),
        indices=codes_to_indices(z, cfg),
        aux_loss=_out(aux, z),
        per_sample_entropy=_out(per_sample, z),
        batch_entropy=_out(batch, z),
        commitment_loss=_out(commit, z),
    )


def code_usage(indices, cfg: Config, mask=None) -> CodeUsage:
    """Fraction of codes used and perplexity of the index histogram, per codebook.

    Args:
        indices: int `[..., C]`.
        mask: optional boolean `[...]`; only True tokens are counted.

    Returns:
        `CodeUsage` of float64 `[C]` arrays. With no counted token: 0 used and
        perplexity 1. Uses a sort, not a `2**D` histogram, so any D works.

    Raises:
        ValueError: an index outside `[0, 2**D)` (masked-out tokens included:
            an out-of-range index is a bug upstream wherever it sits).
    """
    validation.check_config(cfg)
    indices = np.asarray(indices)
    validation.check_indices(indices.shape, indices.dtype, cfg)
    if indices.size:
        validation.check_index_range(int(indices.min()), int(indices.max()), cfg)
    flat = indices.reshape(-1, cfg.num_codebooks)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != indices.shape[:-1]:
            raise ValueError(
                f"mask has shape {mask.shape} and dtype {mask.dtype}; expected bool "
                f"{indices.shape[:-1]} (indices.shape without the codebook axis)"
            )
        flat = flat[mask.reshape(-1)]
    used, perplexity = np.zeros(cfg.num_codebooks), np.ones(cfg.num_codebooks)
    for k in range(cfg.num_codebooks):
        _, counts = np.unique(flat[:, k], return_counts=True)
        if counts.size:
            p = counts / counts.sum()
            used[k] = counts.size / cfg.codebook_size
            perplexity[k] = np.exp(-np.sum(p * np.log(p)))
    return CodeUsage(used, perplexity)


# ------------------------------------------------------------------------ gradients


def _per_token_scale(w, n: int, cfg: Config, count: float) -> np.ndarray:
    """`[N, 1, 1]` weight of each token in a mean over valid tokens and codebooks."""
    weights = np.ones(n) if w is None else w
    return (weights / (max(count, 1.0) * cfg.num_codebooks))[:, None, None]


def per_sample_entropy_vjp(z, cfg: Config, mask=None) -> np.ndarray:
    r"""Gradient of the per-sample entropy w.r.t. z.

    $\frac{d}{da} H_b(\sigma(a)) = -a\,\sigma(a)\,\sigma(-a)$, times
    $da/dx = 4\tau m$, averaged like the loss, then through the transforms.
    """
    z = _check_z(z, cfg)
    raw, x, _, w, sums = _loss_sums(z, cfg, mask)
    a = factorized.bit_logits(x, cfg, np)
    log_pos, log_neg = factorized.bit_log_probs(a, np)
    grad_a = -a * np.exp(log_pos + log_neg) * _per_token_scale(w, x.shape[0], cfg, float(sums.token_count))
    return _ungroup_grad(_transform_vjp(raw, grad_a * 4.0 * cfg.inv_temperature * cfg.code_magnitude, cfg), z, cfg)


def batch_entropy_vjp(z, cfg: Config, mask=None) -> np.ndarray:
    r"""Gradient of the batch entropy w.r.t. z, exactly and in O(N 2^D) time.

    With $G_j = -\log\bar p_j$ (the $-1$ of $d(-p\log p)/dp$ cancels because
    $\sum_j p_{nj} = 1$) and $dp_{nj}/da_{ni} = p_{nj}([b_{ji}=1] - \sigma(a_{ni}))$:
    $\partial H/\partial a_{ni} = \frac{w_n}{W C}\big(\sum_j G_j p_{nj}[b_{ji}=1] - \sigma(a_{ni})\sum_j G_j p_{nj}\big)$.
    The sums over j use the A/B split: $Q = P_A G$ for the bits of B,
    $R = P_B G^\top$ for the bits of A.
    """
    z = _check_z(z, cfg)
    raw, x, _, w, sums = _loss_sums(z, cfg, mask)
    count = float(sums.token_count)
    a = factorized.bit_logits(x, cfg, np)
    grad_a = np.zeros_like(a)
    grad_tiled = np.zeros_like(a)  # groups past the tile threshold, already averaged
    with np.errstate(over="ignore", under="ignore"):
        for (lo, hi), hist in zip(factorized.bit_groups(cfg), sums.histograms):
            if isinstance(hist, tiled.Factors):
                grad_tiled[..., lo:hi] = _tiled_group_vjp(a[..., lo:hi], hist, w, sums.token_count, cfg)
                continue
            pbar = hist / max(count, 1.0)  # [C, 2^A, 2^B]
            g = -np.log(np.where(pbar > 0, pbar, 1.0))
            split = (hi - lo + 1) // 2
            pa = factorized.subcode_probs(a[..., lo : lo + split], np)  # [N, C, 2^A]
            pb = factorized.subcode_probs(a[..., lo + split : hi], np)  # [N, C, 2^B]
            q = np.einsum("nca,cab->ncb", pa, g)
            r = np.einsum("ncb,cab->nca", pb, g)
            total = np.sum(q * pb, axis=-1, keepdims=True)  # sum_j G_j p_nj
            bits_a, bits_b = factorized.subcode_bits(split), factorized.subcode_bits(hi - lo - split)
            # Flushed like every product operand (factorized.flush_subnormal): NumPy's
            # float64 products slow down on subnormal inputs too.
            weighted = [factorized.flush_subnormal(v, np, nonnegative=True) for v in (r * pa, q * pb)]
            on = np.concatenate([weighted[0] @ bits_a, weighted[1] @ bits_b], axis=-1)
            p_pos = np.exp(factorized.bit_log_probs(a[..., lo:hi], np)[0])
            grad_a[..., lo:hi] = on - total * p_pos
    grad_a = grad_a * _per_token_scale(w, x.shape[0], cfg, count) + grad_tiled
    return _ungroup_grad(_transform_vjp(raw, grad_a * 4.0 * cfg.inv_temperature * cfg.code_magnitude, cfg), z, cfg)


def _tiled_group_vjp(a, factors, w, count, cfg: Config) -> np.ndarray:
    """`[N, C, k]` gradient of one tiled group's entropy (over C) w.r.t. its bit logits `a`.

    `lfq.tiled.entropy_sum_vjp` gives the gradients w.r.t. `P_A * w` and `P_B` (each
    tile recomputed, no `2**k` array kept); the chain rule through the weights and
    `lfq.factorized.subcode_probs_vjp` takes them to `a`.
    """
    split = (a.shape[-1] + 1) // 2
    rows = tiled.tile_rows(cfg, factors.probs_a.shape[-1], factors.probs_b.shape[-1])
    d_pa, d_pb = tiled.entropy_sum_vjp(factors.probs_a, factors.probs_b, count, 1.0 / cfg.num_codebooks, rows, np)
    if w is not None:
        d_pa = d_pa * w[:, None, None]
    parts = []
    for half, cotangent in ((a[..., :split], d_pa), (a[..., split:], d_pb)):
        probs = factorized.subcode_probs(half, np)
        parts.append(factorized.subcode_probs_vjp(half, probs, cotangent, np))
    return np.concatenate(parts, axis=-1)


def commitment_vjp(z, cfg: Config, mask=None) -> np.ndarray:
    """Gradient of the commitment loss w.r.t. z: `2 (x - q) / (W C D)` per valid element."""
    z = _check_z(z, cfg)
    raw, x, codes, w, sums = _loss_sums(z, cfg, mask, with_histograms=False)
    grad_x = 2.0 * (x - codes) * _per_token_scale(w, x.shape[0], cfg, float(sums.token_count)) / cfg.codebook_dim
    return _ungroup_grad(_transform_vjp(raw, grad_x, cfg), z, cfg)


def straight_through_vjp(z, cfg: Config, cotangent) -> np.ndarray:
    """Gradient of the straight-through codes: `f'(x) * cotangent`, through the transforms.

    f is `cfg.activation`: identity (`f' = 1`) or tanh (`f' = 1 - tanh(x)**2`).
    """
    z = _check_z(z, cfg)
    raw = _grouped64(z, cfg)
    cot = features.group_features(np.asarray(cotangent, dtype=np.float64), cfg, np).reshape(raw.shape)
    if cfg.activation == "tanh":
        x = features.transform_groups(raw, cfg, np)
        cot = cot * (1.0 - np.tanh(x) ** 2)
    return _ungroup_grad(_transform_vjp(raw, cot, cfg), z, cfg)


def vjp(term: str, z, cfg: Config, cotangent=None, mask=None) -> np.ndarray:
    """Analytic gradient of `term` (one of `lfq.interface.GRAD_TERMS`) w.r.t. z.

    A scalar term's gradient is multiplied by `cotangent` (default 1: a number
    or a 0-d array); "codes" needs a cotangent of z's shape. Another shape is a
    ValueError naming the expected one.
    """
    if term not in GRAD_TERMS:
        raise ValueError(f"term={term!r} is not one of {list(GRAD_TERMS)}")
    z = _check_z(z, cfg)
    if term == "codes":
        if cotangent is None:
            raise ValueError("vjp('codes', ...) needs a cotangent of z's shape")
        validation.check_cotangent(np.shape(cotangent), z.shape, term)
        return straight_through_vjp(z, cfg, cotangent)
    if cotangent is not None:
        validation.check_cotangent(np.shape(cotangent), (), term)
    scale = 1.0 if cotangent is None else float(np.asarray(cotangent, dtype=np.float64))
    z_in, z = z, z.astype(np.float64)  # every term in float64, rounded once at the end
    if term == "per_sample_entropy":
        g = per_sample_entropy_vjp(z, cfg, mask)
    elif term == "batch_entropy":
        g = batch_entropy_vjp(z, cfg, mask)
    elif term == "commitment_loss":
        g = commitment_vjp(z, cfg, mask)
    else:
        # The aux loss is linear in its terms: the same rule, zero-weight terms left out.
        def term_vjp(vjp_fn, needed):
            return vjp_fn(z, cfg, mask) if needed else np.zeros(z.shape)

        g = factorized.aux_loss(
            term_vjp(per_sample_entropy_vjp, cfg.entropy_weight != 0),
            term_vjp(batch_entropy_vjp, cfg.entropy_weight * cfg.diversity_gamma != 0),
            term_vjp(commitment_vjp, cfg.commitment_weight != 0),
            cfg,
            np,
        )
    return _out(scale * g, z_in)
