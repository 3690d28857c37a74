"""`ArrayBackend`: the interface implemented once over an array namespace.

The framework adapters (torch, jax, tensorflow) subclass it and supply only what
differs between frameworks: the namespace, how a value carries another array's
gradient (straight-through), matrix-product precision, the index dtype, the
distributed reduction, autodiff (`vjp`) and compilation. Everything else (the
order of operations, masking, the precision rule, the error checks) is here, so
the three adapters cannot drift apart.

Nothing here imports a framework.
"""

from __future__ import annotations

import numpy as np

from lfq import factorized, features, tiled, validation
from lfq.config import Config
from lfq.interface import CodeUsage, LFQOutput

__all__ = ["ArrayBackend"]

_HALF = ("float16", "bfloat16")


class ArrayBackend:
    """Shared implementation of `lfq.interface.LFQBackend` on Array-API arrays.

    Subclasses set `name`, `dtypes`, `modes` and implement the hooks marked
    "hook" below. Arrays are the framework's own; the hooks receive them too.
    """

    name = "array"
    dtypes = validation.FLOAT_DTYPES
    modes = ("eager",)
    #: Whether the framework's arithmetic reads subnormal inputs as 0 (XLA and
    #: TensorFlow's CPU kernels do); such backends implement `bitcast`, and the
    #: spherical projection rescales tiny groups exactly on their bit patterns.
    flushes_subnormals = False

    # ------------------------------------------------------------------ hooks

    def namespace(self, x):
        """Hook: the Array-API namespace for `x`."""
        raise NotImplementedError

    def pass_gradient(self, value, carrier):
        """Hook: an array equal to `value` (bitwise) whose gradient flows to `carrier` unchanged.

        Both have the same shape and dtype; `value` itself gets no gradient.
        """
        raise NotImplementedError

    def positive(self, x):
        """Hook: elementwise `x > 0`. XLA backends override it with a bit-pattern test,
        because XLA flushes subnormal inputs to zero before comparing."""
        return x > 0

    def stop_gradient(self, x):
        """Hook: `x` as a constant for autodiff (NumPy has no autodiff: `x` itself)."""
        return x

    def bitcast(self, x, dtype):
        """Hook: `x`'s bits reinterpreted as `dtype` (same item size); needed where
        `flushes_subnormals` is set."""
        raise NotImplementedError

    def subcode_probs(self, a, cfg: Config):
        """Hook: `factorized.subcode_probs(a)`; backends attach the analytic gradient
        `factorized.subcode_probs_vjp` here (autodiff through the product loop is slow)."""
        return factorized.subcode_probs(a, self.namespace(a))

    def matmul(self, a, b, cfg: Config):
        """Hook: batched matrix product for the code histograms (full float32 by default)."""
        return self.namespace(a).matmul(a, b)

    def tiled_entropy(self, probs_a, probs_b, count, rows: int, cfg: Config):
        """Hook: `lfq.tiled.entropy_sum` (a group's batch entropy in tiles of `rows` rows).

        Default: a Python loop over the tiles, differentiated (if at all) by the
        framework's autodiff; framework backends give it a loop their compiler keeps
        and the recomputing gradient `lfq.tiled.entropy_sum_vjp`.
        """
        xp = self.namespace(probs_a)
        return tiled.entropy_sum(probs_a, probs_b, count, rows, xp, lambda a, b: self.matmul(a, b, cfg))

    def index_dtype(self, xp, cfg: Config):
        """Hook: the integer dtype of indices (int64 unless the framework lacks it)."""
        return xp.int64

    def constant(self, values, dtype, like):
        """Hook: a small constant array (a number or a list) for use with `like`."""
        return self.namespace(like).asarray(values, dtype=dtype, device=self.device_of(like))

    def device_of(self, x):
        """Hook: the device to make constants for `x` on (Array-API `x.device`), or None
        to leave placement to the framework (JAX: a sharded array's device is a sharding,
        which a 0-d constant cannot take, and XLA places constants itself)."""
        return getattr(x, "device", None)

    def check_array(self, x, name: str) -> None:
        """Hook: refuse an array argument of a type this backend does not take.

        Default: anything with a `shape` and a `dtype` (so Python lists and scalars
        are refused); framework backends name their native types. The message is
        `lfq.validation.foreign_array_error`'s, the rule docs/spec.md's "Bad input".
        """
        validation.check_array(x, name, self.name)

    def concrete_bounds(self, indices):
        """Hook: `(min, max)` of `indices` as Python ints, or None when they are traced."""
        xp = self.namespace(indices)
        if indices.size == 0:
            return None
        return int(xp.min(indices)), int(xp.max(indices))

    def all_reduce(self, sums: factorized.LossSums, options: dict, cfg: Config | None = None) -> factorized.LossSums:
        """Hook: sum `sums` over data-parallel replicas (identity without options).

        `options` are the keyword arguments the caller gave to `lfq`/`entropy`/
        `commitment_loss` beyond `mask` (for example an axis name or process group).
        Tiled groups (`lfq.tiled.Factors`) become `lfq.tiled.GroupEntropy` through
        `lfq.distributed_tiled.reduce_sums`, which needs `cfg`.
        """
        if options:
            raise TypeError(f"backend {self.name!r} takes no distributed options, got {sorted(options)}")
        return sums

    # ------------------------------------------------------------ conversions

    def compute_dtype(self, xp, dtype):
        """float32 for half inputs, else the input dtype (the precision rule)."""
        return xp.float32 if validation.dtype_name(dtype) in _HALF else dtype

    # --------------------------------------------------------------- interface

    def _check(self, z, cfg: Config):
        validation.check_config(cfg)
        self.check_array(z, "z")
        validation.check_features(z.shape, z.dtype, cfg)
        if validation.dtype_name(z.dtype) not in self.dtypes:
            raise TypeError(
                f"z has dtype {validation.dtype_name(z.dtype)}, which backend {self.name!r} does not "
                f"support: use one of {', '.join(self.dtypes)}"
            )
        return self.namespace(z)

    def quantize(self, z, cfg: Config):
        xp = self._check(z, cfg)
        return features.quantize_groups(z, cfg, xp, self.positive, self.device_of(z))

    def codes_to_indices(self, z, cfg: Config):
        xp = self._check(z, cfg)
        dtype = self.index_dtype(xp, cfg)
        bits = xp.astype(self.positive(features.group_features(z, cfg, xp)), dtype)
        return xp.sum(bits * self.constant(features.bit_weights(cfg), dtype, z), axis=-1, dtype=dtype)

    def indices_to_codes(self, indices, cfg: Config, dtype: str = "float32"):
        validation.check_config(cfg)
        self.check_array(indices, "indices")
        dtype = validation.check_codes_dtype(dtype)
        validation.check_indices(indices.shape, indices.dtype, cfg)
        bounds = self.concrete_bounds(indices)
        if bounds is not None:
            validation.check_index_range(*bounds, cfg)
        xp = self.namespace(indices)
        weights = self.constant(features.bit_weights(cfg), indices.dtype, indices)
        bits = xp.bitwise_and(indices[..., None], weights) != 0
        out = getattr(xp, dtype)
        m = cfg.code_magnitude
        codes = xp.where(bits, self.constant(m, out, indices), self.constant(-m, out, indices))
        return features.ungroup_features(codes, cfg, xp)

    def _features(self, z, cfg: Config, mask):
        """Compute-dtype `[N, C, D]` raw and transformed features and `[N]` weights."""
        xp = self._check(z, cfg)
        work = self.compute_dtype(xp, z.dtype)
        raw = xp.astype(features.group_features(z, cfg, xp), work, copy=False)
        raw = xp.reshape(raw, (-1, cfg.num_codebooks, cfg.codebook_dim))
        weights = None
        if mask is not None:
            self.check_array(mask, "mask")
            validation.check_mask(mask.shape, mask.dtype, z.shape, cfg)
            weights = xp.astype(xp.reshape(mask, (-1,)), work)
            # Masked-out tokens count nowhere: zero them before any arithmetic.
            raw = xp.where(weights[:, None, None] > 0, raw, xp.zeros_like(raw))
        rescale = None
        if self.flushes_subnormals:

            def rescale(groups):
                return features.rescale_tiny_groups(groups, xp, self.bitcast, self.pass_gradient)

        return xp, raw, features.transform_groups(raw, cfg, xp, self.stop_gradient, rescale), weights

    def _losses(self, z, cfg: Config, mask, options, batch_entropy: bool = True):
        """`(xp, x, [per_sample, batch, commitment, aux])` in z's dtype; without
        `batch_entropy` the batch term (and so aux) is left out, which any D allows."""
        if batch_entropy:
            validation.check_exact_batch_entropy(cfg)
        schedule, options = validation.split_schedule(options)
        xp, raw, x, weights = self._features(z, cfg, mask)
        device = self.device_of(z)
        codes = features.quantize_groups(raw, cfg, xp, self.positive, device)
        sums = factorized.loss_sums(
            x,
            codes,
            weights,
            cfg,
            xp,
            lambda a, b: self.matmul(a, b, cfg),
            lambda a: self.subcode_probs(a, cfg),
            with_histograms=batch_entropy,
            device=device,
            schedule=schedule,
        )
        losses = factorized.losses_from_sums(
            self.all_reduce(sums, options, cfg),
            cfg,
            xp,
            schedule,
            lambda pa, pb, count, rows: self.tiled_entropy(pa, pb, count, rows, cfg),
        )
        return xp, x, [xp.astype(v, z.dtype, copy=False) for v in losses]

    def straight_through(self, z, cfg: Config):
        """Codes of `z` with value exactly `quantize(z)` and gradient `f'(x) * upstream`."""
        xp, raw, x, _ = self._features(z, cfg, None)
        return self._straight_through(xp, z, x, cfg)

    def _straight_through(self, xp, z, x, cfg: Config):
        fx = xp.tanh(x) if cfg.activation == "tanh" else x
        tokens = validation.token_shape(z.shape, cfg)
        carrier = features.ungroup_features(xp.reshape(fx, tokens + tuple(fx.shape[-2:])), cfg, xp)
        codes = features.quantize_groups(z, cfg, xp, self.positive, self.device_of(z))
        return self.pass_gradient(codes, xp.astype(carrier, z.dtype, copy=False))

    def entropy(self, z, cfg: Config, mask=None, **options):
        _, _, (per_sample, batch, _, _) = self._losses(z, cfg, mask, options)
        return per_sample, batch

    def commitment_loss(self, z, cfg: Config, mask=None, **options):
        return self._losses(z, cfg, mask, options, batch_entropy=False)[2][2]

    def lfq(self, z, cfg: Config, mask=None, **options) -> LFQOutput:
        xp, x, (per_sample, batch, commit, aux) = self._losses(z, cfg, mask, options)
        if mask is None:
            codes = self._straight_through(xp, z, x, cfg)
        else:  # x has masked tokens zeroed; the codes' gradient ignores the mask
            codes = self.straight_through(z, cfg)
        return LFQOutput(codes, self.codes_to_indices(z, cfg), aux, per_sample, batch, commit)

    def code_usage(self, indices, cfg: Config, mask=None) -> CodeUsage:
        """Metrics on the host (a sort of the indices), as NumPy float64 `[C]` arrays."""
        from lfq import reference

        validation.check_config(cfg)
        self.check_array(indices, "indices")
        if mask is not None:
            self.check_array(mask, "mask")
        mask = None if mask is None else self.to_numpy(mask)
        return reference.code_usage(self.to_numpy(indices), cfg, mask)

    def to_numpy(self, array):
        return np.asarray(array)
