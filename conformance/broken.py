"""Deliberately broken backends: each must FAIL the suite, naming the check it breaks.

They are the suite's own test (tests/test_conformance_meta.py) and a catalogue
of the mistakes real LFQ implementations make. Each is a small change to an
honest backend:

* `NumPyArrayBackend` (honest): the shared `lfq.array_backend.ArrayBackend` over
  NumPy, so float32 input is computed in float32 like a framework backend (its
  gradients are the reference's, rounded: NumPy has no autodiff). It passes.
* wrappers of the reference backend ("numpy") that change one rule, and
  subclasses of `NumPyArrayBackend` that change one float32 detail.

`BROKEN` maps each broken backend to the checks that must fail.
"""

from __future__ import annotations

import array_api_compat.numpy as np_xp
import numpy as np
from lfq.backends.numpy_backend import NumPyBackend

from lfq import features, reference, validation
from lfq.array_backend import ArrayBackend
from lfq.config import Config
from lfq.validation import FLOAT_DTYPES, numpy_dtype

__all__ = ["BROKEN", "NumPyArrayBackend"]


class NumPyArrayBackend(ArrayBackend):
    """Honest: `ArrayBackend` on NumPy arrays, computing in float32 for float32 input."""

    name = "numpy-array"
    dtypes = FLOAT_DTYPES
    modes = ("eager",)

    def namespace(self, x):
        return np_xp

    def pass_gradient(self, value, carrier):
        return value  # NumPy has no autodiff: the value is all there is

    def indices_to_codes(self, indices, cfg: Config, dtype: str = "float32"):
        if dtype == "bfloat16":  # not an Array-API dtype of NumPy: round the exact codes once
            return super().indices_to_codes(indices, cfg, "float64").astype(numpy_dtype(dtype))
        return super().indices_to_codes(indices, cfg, dtype)

    def vjp(self, term, z, cfg, cotangent=None, mask=None):
        self._check(z, cfg)
        cot = None if cotangent is None else np.asarray(cotangent, dtype=np.float64)
        return reference.vjp(term, z.astype(np.float64), cfg, cot, mask).astype(z.dtype)

    def compiled(self):
        raise NotImplementedError("no compiled mode")

    def asarray(self, array, dtype=None):
        array = np.asarray(array)
        return array if dtype is None else array.astype(numpy_dtype(dtype))

    def to_numpy(self, array):
        return np.asarray(array)


class StraightThroughArithmetic(NumPyArrayBackend):
    """Broken: straight-through value computed as `x + (q - x)` in the input dtype (float32)."""

    name = "broken-st-arithmetic"

    def pass_gradient(self, value, carrier):
        return carrier + (value - carrier)


class ReducedPrecisionMatmul(NumPyArrayBackend):
    """Broken: the entropy matmuls round their float32 inputs to bfloat16 (TF32-like precision)."""

    name = "broken-reduced-precision"

    def matmul(self, a, b, cfg):
        bf16 = numpy_dtype("bfloat16")
        return np.matmul(a.astype(bf16).astype(a.dtype), b.astype(bf16).astype(b.dtype))


class FlushesSubnormals(NumPyArrayBackend):
    """Broken: the losses read subnormal inputs as 0 (what XLA's arithmetic does unless
    the backend rescales tiny groups; the codes still see the sign)."""

    name = "broken-flushes-subnormals"

    def _features(self, z, cfg, mask):
        xp, raw, _, weights = super()._features(z, cfg, mask)
        normal = np.finfo(raw.dtype).smallest_normal
        flushed = xp.where(xp.abs(raw) < normal, xp.zeros_like(raw), raw)
        return xp, raw, features.transform_groups(flushed, cfg, xp), weights


class _Wrapped:
    """The reference backend with one rule changed by a subclass."""

    name = "broken"
    dtypes = FLOAT_DTYPES
    modes = ("eager",)

    def __init__(self):
        self._ref = NumPyBackend()

    def __getattr__(self, attr):
        return getattr(self._ref, attr)

    def lfq(self, z, cfg, mask=None):
        out = self._ref.lfq(z, cfg, mask)
        return out._replace(codes=self.quantize(z, cfg), indices=self.codes_to_indices(z, cfg))

    def quantize(self, z, cfg):
        return self._ref.quantize(z, cfg)

    def codes_to_indices(self, z, cfg):
        return self._ref.codes_to_indices(z, cfg)


class TieRuleFlipped(_Wrapped):
    """Broken: `z >= 0` decides the bit, so +0.0 and -0.0 give +s."""

    name = "broken-tie-rule"

    def quantize(self, z, cfg):
        z = np.asarray(z)
        validation.check_features(z.shape, z.dtype, cfg)
        m = z.dtype.type(cfg.code_magnitude)
        return np.where(z >= 0, m, -m)

    def codes_to_indices(self, z, cfg):
        z = np.asarray(z)
        validation.check_features(z.shape, z.dtype, cfg)
        bits = features.group_features(z, cfg, np) >= 0
        return np.sum(bits.astype(np.int64) * np.array(features.bit_weights(cfg), dtype=np.int64), axis=-1)


class LsbAsMsb(_Wrapped):
    """Broken: always LSB-first indices (Open-MAGVIT2 order), also when MSB is asked for."""

    name = "broken-lsb-as-msb"

    def codes_to_indices(self, z, cfg):
        return self._ref.codes_to_indices(z, cfg.replace(bit_order="lsb"))

    def indices_to_codes(self, indices, cfg, dtype="float32"):
        return self._ref.indices_to_codes(indices, cfg.replace(bit_order="lsb"), dtype)


class AuxWithoutBatchEntropy(_Wrapped):
    """Broken: the aux loss forgets the `- gamma * H_batch` term."""

    name = "broken-aux-no-batch-entropy"

    def lfq(self, z, cfg, mask=None):
        out = super().lfq(z, cfg, mask)
        aux = cfg.entropy_weight * out.per_sample_entropy + cfg.commitment_weight * out.commitment_loss
        return out._replace(aux_loss=np.asarray(aux, dtype=out.aux_loss.dtype))

    def vjp(self, term, z, cfg, cotangent=None, mask=None):
        if term != "aux_loss":
            return self._ref.vjp(term, z, cfg, cotangent, mask)
        return cfg.entropy_weight * self._ref.vjp(
            "per_sample_entropy", z, cfg, cotangent, mask
        ) + cfg.commitment_weight * self._ref.vjp("commitment_loss", z, cfg, cotangent, mask)


class ZeroWeightTimesInf(_Wrapped):
    """Broken: the aux loss multiplies every term by its weight, so a zero weight times an
    infinite commitment loss (float32 |z| = 1e34) is NaN."""

    name = "broken-zero-weight-times-inf"

    def lfq(self, z, cfg, mask=None):
        out = super().lfq(z, cfg, mask)
        with np.errstate(invalid="ignore"):
            aux = (
                cfg.entropy_weight * (out.per_sample_entropy - cfg.diversity_gamma * out.batch_entropy)
                + out.commitment_loss.dtype.type(cfg.commitment_weight) * out.commitment_loss
            )
        return out._replace(aux_loss=np.asarray(aux, dtype=out.aux_loss.dtype))


class UnclippedLogits(_Wrapped):
    """Broken: the per-sample entropy from bit logits 4*tau*m*x formed in float32 without
    a bound, so that they overflow to inf and the entropy is inf * 0 = NaN."""

    name = "broken-unclipped-logits"

    def _per_sample(self, z, cfg, mask):
        z = np.asarray(z)
        work = np.float64 if z.dtype == np.float64 else np.float32
        x = features.transform_groups(features.group_features(z.astype(work), cfg, np), cfg, np)
        x = x.reshape(-1, cfg.num_codebooks, cfg.codebook_dim)
        with np.errstate(all="ignore"):
            t = np.abs(x * work(4.0 * cfg.inv_temperature * cfg.code_magnitude))
            soft = np.log1p(np.exp(-t))
            per_token = np.sum(soft + t * np.exp(-t - soft), axis=(1, 2))
        w = np.ones(x.shape[0]) if mask is None else np.asarray(mask).reshape(-1).astype(np.float64)
        total = np.sum(np.where(w > 0, per_token, 0.0))
        return np.asarray(total / (max(w.sum(), 1.0) * cfg.num_codebooks)).astype(z.dtype)

    def entropy(self, z, cfg, mask=None):
        return self._per_sample(z, cfg, mask), self._ref.entropy(z, cfg, mask)[1]

    def lfq(self, z, cfg, mask=None):
        return super().lfq(z, cfg, mask)._replace(per_sample_entropy=self._per_sample(z, cfg, mask))


class _LiteralEntropy(_Wrapped):
    """Entropies by enumerating the 2**D codes (float64), with a hook for the log."""

    def _log(self, p):
        raise NotImplementedError

    def _entropies(self, z, cfg, mask):
        z = np.asarray(z)
        validation.check_features(z.shape, z.dtype, cfg)
        validation.check_exact_batch_entropy(cfg)
        if mask is not None:
            mask = np.asarray(mask)
            validation.check_mask(mask.shape, mask.dtype, z.shape, cfg)
        x = features.transform_groups(
            features.group_features(z.astype(np.float64), cfg, np).reshape(-1, cfg.num_codebooks, cfg.codebook_dim),
            cfg,
            np,
        )
        logits = 2.0 * cfg.inv_temperature * (x @ reference.all_codes(cfg).T)  # [N, C, 2^D]
        logits -= logits.max(axis=-1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=-1, keepdims=True)
        w = np.ones(x.shape[0]) if mask is None else np.asarray(mask).reshape(-1).astype(np.float64)
        count = max(w.sum(), 1.0)
        per_token = -np.sum(p * self._log(p), axis=-1)  # [N, C]
        per_sample = np.sum(w[:, None] * per_token) / (count * cfg.num_codebooks)
        pbar = np.einsum("n,ncj->cj", w, p) / count
        batch = -np.sum(pbar * self._log(pbar)) / cfg.num_codebooks
        return per_sample, batch, per_token, w

    def entropy(self, z, cfg, mask=None):
        per_sample, batch = self._entropies(z, cfg, mask)[:2]
        dtype = np.asarray(z).dtype
        return np.asarray(per_sample).astype(dtype), np.asarray(batch).astype(dtype)

    def lfq(self, z, cfg, mask=None):
        out = super().lfq(z, cfg, mask)
        per_sample, batch = (np.float64(v) for v in self.entropy(z.astype(np.float64), cfg, mask))
        aux = cfg.entropy_weight * (per_sample - cfg.diversity_gamma * batch) + cfg.commitment_weight * np.float64(
            out.commitment_loss
        )
        dtype = np.asarray(z).dtype
        return out._replace(
            per_sample_entropy=np.asarray(per_sample).astype(dtype),
            batch_entropy=np.asarray(batch).astype(dtype),
            aux_loss=np.asarray(aux).astype(dtype),
        )


class EpsClampEntropy(_LiteralEntropy):
    """Broken: `-sum p log(max(p, 1e-5))`, the eps clamp of common implementations."""

    name = "broken-eps-clamp"

    def _log(self, p):
        return np.log(np.maximum(p, 1e-5))


class MaskedBatchAsPerToken(_LiteralEntropy):
    """Broken: with a mask, the batch entropy is the mean of per-token entropies.

    (The token mask of the most used implementation does this: it makes the
    batch entropy equal the per-sample one.)
    """

    name = "broken-masked-batch-entropy"

    def _log(self, p):
        return np.log(np.where(p > 0, p, 1.0))

    def _entropies(self, z, cfg, mask):
        per_sample, batch, per_token, w = super()._entropies(z, cfg, mask)
        if mask is not None:
            batch = np.sum(w[:, None] * per_token) / (max(w.sum(), 1.0) * cfg.num_codebooks)
        return per_sample, batch, per_token, w


#: Each broken backend class -> the checks that must fail for it.
BROKEN = {
    TieRuleFlipped: ("quantize", "codes_to_indices", "lfq.codes", "lfq.indices"),
    LsbAsMsb: ("codes_to_indices", "indices_to_codes", "lfq.indices"),
    AuxWithoutBatchEntropy: ("lfq.aux_loss", "vjp.aux_loss"),
    EpsClampEntropy: ("entropy.per_sample_entropy", "entropy.batch_entropy", "lfq.aux_loss"),
    MaskedBatchAsPerToken: ("entropy.batch_entropy", "lfq.batch_entropy"),
    StraightThroughArithmetic: ("lfq.codes",),
    ReducedPrecisionMatmul: ("entropy.batch_entropy", "lfq.batch_entropy"),
    FlushesSubnormals: ("entropy.per_sample_entropy", "commitment_loss"),
    ZeroWeightTimesInf: ("lfq.aux_loss",),
    UnclippedLogits: ("entropy.per_sample_entropy", "lfq.per_sample_entropy"),
}
