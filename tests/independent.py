"""An independent, deliberately naive implementation of docs/spec.md sections 2 to 4.

Written from the rules alone, token by token with Python loops and NumPy float64,
sharing no code with `lfq`: the reference is tested against it. Slow; for small
inputs only.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def _tokens(z, feature_axis):
    z = np.moveaxis(np.asarray(z, dtype=np.float64), feature_axis, -1)
    return z.reshape(-1, z.shape[-1]), z.shape[:-1]


def transform(vec, d, scale, spherical, soft_clamp):
    """Soft clamp then spherical projection of one token's features `[C*D]`."""
    vec = np.array(vec, dtype=np.float64)
    if soft_clamp is not None:
        vec = np.array([soft_clamp * math.tanh(v / soft_clamp) for v in vec])
    if spherical:
        out = []
        for k in range(len(vec) // d):
            group = vec[k * d : (k + 1) * d]
            norm = math.sqrt(sum(v * v for v in group))
            out.extend([scale * v / norm if norm > 0 else 0.0 for v in group])
        vec = np.array(out)
    return vec


def lfq_outputs(
    z,
    d,
    c,
    scale=1.0,
    spherical=False,
    tau=100.0,
    gamma=1.0,
    w_ent=0.1,
    w_commit=0.25,
    bit_order="msb",
    soft_clamp=None,
    mask=None,
    feature_axis=-1,
):
    """Codes, indices and the four losses by literal enumeration over all 2**d codes."""
    m = scale / math.sqrt(d) if spherical else scale
    raw, token_shape = _tokens(z, feature_axis)
    weights = np.ones(len(raw)) if mask is None else np.asarray(mask, dtype=bool).reshape(-1).astype(float)
    codes = np.where(raw > 0, m, -m)
    indices = np.zeros((len(raw), c), dtype=np.int64)
    for n, k, i in itertools.product(range(len(raw)), range(c), range(d)):
        if raw[n, k * d + i] > 0:
            indices[n, k] += 2 ** (d - 1 - i) if bit_order == "msb" else 2**i
    patterns = list(itertools.product((-m, m), repeat=d))  # MSB first: index order
    h_sample, commit, pbar = 0.0, 0.0, np.zeros((c, 2**d))
    valid = weights.sum()
    for n in range(len(raw)):
        if weights[n] == 0:
            continue
        x = transform(raw[n], d, scale, spherical, soft_clamp)
        commit += sum((x[j] - codes[n, j]) ** 2 for j in range(c * d))
        for k in range(c):
            logits = [2 * tau * sum(x[k * d + i] * code[i] for i in range(d)) for code in patterns]
            top = max(logits)
            ex = [math.exp(logit - top) for logit in logits]
            total = sum(ex)
            p = [e / total for e in ex]
            h_sample -= sum(pj * math.log(pj) for pj in p if pj > 0)
            pbar[k] += p
    denom = max(valid, 1.0)
    h_sample /= denom * c
    commit /= denom * c * d
    pbar /= denom
    h_batch = -sum(pj * math.log(pj) for pj in pbar.reshape(-1) if pj > 0) / c
    aux = w_ent * (h_sample - gamma * h_batch) + w_commit * commit
    codes_out = np.moveaxis(codes.reshape(token_shape + (c * d,)), -1, feature_axis)
    return {
        "codes": codes_out,
        "indices": indices.reshape(token_shape + (c,)),
        "per_sample_entropy": h_sample,
        "batch_entropy": h_batch,
        "commitment_loss": commit,
        "aux_loss": aux,
    }
