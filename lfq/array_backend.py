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

import contextlib

import numpy as np

from lfq import distributed_tiled, factorized, features, program, tiled, validation
from lfq.config import Config
from lfq.interface import GRAD_TERMS, LOSS_TERMS, CodeUsage, LFQOutput

__all__ = ["ArrayBackend"]

_HALF = ("float16", "bfloat16")
_NO_SCHEDULE = factorized.Schedule()


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
    #: Sum the index bits in exact float32 runs (`features.indices_from_bits`) rather than
    #: in the index dtype: for frameworks whose kernels vectorize float reductions only.
    float_index_sums = False

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

    def code_histogram(self, a, weights, cfg: Config):
        """Hook: `factorized.code_histogram` of one bit group; backends attach the
        half-at-a-time gradient `lfq.histogram_grad.code_histogram_vjp` (peak memory)."""
        xp = self.namespace(a)
        return factorized.code_histogram(
            a, weights, xp, lambda p, q: self.matmul(p, q, cfg), lambda b: self.subcode_probs(b, cfg)
        )

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

    def replica_group(self, options: dict):
        """Hook: the replicas to sum the losses over, from the caller's distributed
        `options` (a process group, an axis name, a replica context), or None for
        none (a single process). Default: no distributed options, no replicas."""
        if options:
            raise TypeError(f"backend {self.name!r} takes no distributed options, got {sorted(options)}")
        return None

    def collectives(self):
        """Hook: the framework's collectives, an object (a module) with
        `all_reduce_sums(sums, group)` (every field summed over the replicas) and
        `all_reduce_tiled(sums, group, cfg, subcode_probs_fn, tiled_entropy_fn)`
        (`lfq.distributed_tiled.reduce_sums` with the framework's all-gather)."""
        raise NotImplementedError(f"backend {self.name!r} has no collectives")

    def all_reduce(self, sums: factorized.LossSums, options: dict, cfg: Config | None = None) -> factorized.LossSums:
        """Sum `sums` over the data-parallel replicas of `options` (identity without).

        `options` are the keyword arguments the caller gave to `lfq`/`entropy`/
        `commitment_loss` beyond `mask` (for example an axis name or process group).
        Below the tile threshold every field is summed (the histograms too); past it,
        tiled groups (`lfq.tiled.Factors`) become `lfq.tiled.GroupEntropy` through
        `lfq.distributed_tiled.reduce_sums` (nothing of size `2**D` moves), which needs `cfg`.
        """
        group = self.replica_group(options)
        if group is None:
            return sums
        collectives = self.collectives()
        if cfg is not None and distributed_tiled.has_tiled_groups(sums):
            return collectives.all_reduce_tiled(
                sums,
                group,
                cfg,
                lambda a: self.subcode_probs(a, cfg),
                lambda pa, pb, count, rows: self.tiled_entropy(pa, pb, count, rows, cfg),
            )
        return collectives.all_reduce_sums(sums, group)

    def check_options(self, options: dict) -> None:
        """Hook: refuse distributed options this backend does not take (before any
        computation or tracing; `all_reduce` then receives only checked options)."""
        if options:
            raise TypeError(f"backend {self.name!r} takes no distributed options, got {sorted(options)}")

    def check_placement(self, x, z, name: str) -> None:
        """Hook: refuse an array argument `x` that cannot be used with `z` (torch: another device)."""

    def unsupported_dtype(self, dtype: str) -> TypeError:
        """Hook: the error for input dtype `dtype` (a name) that is not in `dtypes`."""
        return TypeError(
            f"z has dtype {dtype}, which backend {self.name!r} does not support: use one of {', '.join(self.dtypes)}"
        )

    def compute_context(self, x):
        """Hook: the context every computation on `x` runs in (torch: autocast switched off)."""
        return contextlib.nullcontext()

    def gradient(self, fn, z, cotangent):
        """Hook: the framework's reverse-mode autodiff, `cotangent^T d fn(z) / dz` in z's dtype.

        `cotangent` is None for 1 (a scalar `fn`), else an array or number of `fn(z)`'s
        shape; a `z` that `fn` does not depend on gets zeros.
        """
        raise NotImplementedError(f"backend {self.name!r} has no autodiff")

    # -------------------------------------------------- compiled programs (hooks)

    #: Whether operations run through compiled programs (`lfq.program`); a backend's
    #: compiled mode sets it (JAX's eager mode too: XLA compiles every primitive anyway).
    compiles = False
    #: Whether programs see tokens flattened to `[N, C*D]` (torch: one program, N dynamic,
    #: for every shape); frameworks that compile per shape anyway keep the layout.
    flat_programs = False
    #: Flat batches of fewer tokens are padded with masked-out zeros (torch specializes N < 2).
    min_program_tokens = 0
    #: Whether `vjp` runs as a program of its own (autodiff inside the compiled function);
    #: otherwise the gradient is taken outside, through the forward programs' backward.
    vjp_programs = True

    def compile_program(self, fn, signature):
        """Hook: `fn` (a function of the program's arrays) compiled by the framework.

        `signature` is the program's `lfq.program.Signature`; `fn` has a code object
        of its own, named after it (`lfq.program.named`).
        """
        raise NotImplementedError(f"backend {self.name!r} has no compiled mode")

    def pack_schedule(self, values: tuple, like):
        """Hook: the four schedule values (Python floats or 0-d arrays) as a run-time input
        of a program, indexable by 0..3 inside it (default: the tuple itself)."""
        return values

    def program_rows(self, n: int, options: dict) -> int:
        """Hook: how many token rows a flat program sees for a batch of `n` tokens (the
        pad rows are masked-out zeros): at least `min_program_tokens`. torch: with
        `distributed=True`, the group's largest batch, so that the tiled entropy's
        all-gather inside the program needs no data-dependent size."""
        return max(n, self.min_program_tokens)

    def program_key(self, x) -> tuple:
        """Hook: what besides the signature's fields selects a program for input `x`
        (torch: the device, and whether a gradient is recorded)."""
        return ()

    @property
    def programs(self) -> program.ProgramCache:
        """This backend object's compiled programs (dropped when it is pickled or copied)."""
        cache = self.__dict__.get("_programs")
        if cache is None:
            cache = self.__dict__["_programs"] = program.ProgramCache()
        return cache

    # ------------------------------------------------------------ conversions

    def compute_dtype(self, xp, dtype):
        """float32 for half inputs, else the input dtype (the precision rule)."""
        return xp.float32 if validation.dtype_name(dtype) in _HALF else dtype

    # ------------------------------------------------------------ input checks

    def _check(self, z, cfg: Config):
        """Check features `z` (config, array type, shape, dtype); returns the namespace."""
        validation.check_config(cfg)
        self.check_array(z, "z")
        validation.check_features(z.shape, z.dtype, cfg)
        if validation.dtype_name(z.dtype) not in self.dtypes:
            raise self.unsupported_dtype(validation.dtype_name(z.dtype))
        return self.namespace(z)

    def _check_losses(self, z, cfg: Config, mask, options: dict, batch_entropy: bool = True):
        """Every check of a loss operation, made once before any computation or tracing."""
        self._check(z, cfg)
        if mask is not None:
            self.check_array(mask, "mask")
            self.check_placement(mask, z, "mask")
            validation.check_mask(mask.shape, mask.dtype, z.shape, cfg)
        if batch_entropy:  # the commitment loss alone needs no batch entropy: any D
            validation.check_exact_batch_entropy(cfg)
        self.check_options(options)

    def _split(self, cfg: Config, options: dict):
        """`(Schedule, distributed options)` of a call's keyword options: split once, here."""
        validation.check_config(cfg)
        return validation.split_schedule(options)

    # --------------------------------------------------------------- interface

    def _execute(
        self, op: str, cfg: Config, x, mask=None, schedule=_NO_SCHEDULE, options=None, extra=(), cotangent=None
    ):
        """Run checked operation `op`: through the compiled programs, or eagerly."""
        if self.compiles:
            return program.run(self, op, cfg, x, mask, schedule, options or {}, extra, cotangent)
        with self.compute_context(x):
            return self.evaluate(op, cfg, x, mask, schedule, options or {}, extra, cotangent)

    def quantize(self, z, cfg: Config):
        self._check(z, cfg)
        return self._execute("quantize", cfg, z)

    def codes_to_indices(self, z, cfg: Config):
        self._check(z, cfg)
        return self._execute("codes_to_indices", cfg, z)

    def indices_to_codes(self, indices, cfg: Config, dtype: str = "float32"):
        validation.check_config(cfg)
        self.check_array(indices, "indices")
        dtype = validation.check_codes_dtype(dtype)
        validation.check_indices(indices.shape, indices.dtype, cfg)
        bounds = self.concrete_bounds(indices)
        if bounds is not None:
            validation.check_index_range(*bounds, cfg)
        return self._execute("indices_to_codes", cfg, indices, extra=(dtype,))

    def straight_through(self, z, cfg: Config):
        """Codes of `z` with value exactly `quantize(z)` and gradient `f'(x) * upstream`."""
        self._check(z, cfg)
        return self._execute("straight_through", cfg, z)

    def transformed_features(self, z, cfg: Config):
        """Compute-dtype `[N, C, D]` transformed features of `z` (soft clamp / sphere
        applied, no mask): what the straight-through gradient differentiates."""
        self._check(z, cfg)
        return self._features(z, cfg, None)[2]

    def entropy(self, z, cfg: Config, mask=None, **options):
        schedule, options = self._split(cfg, options)
        self._check_losses(z, cfg, mask, options)
        return self._execute("entropy", cfg, z, mask, schedule, options)

    def commitment_loss(self, z, cfg: Config, mask=None, **options):
        schedule, options = self._split(cfg, options)
        self._check_losses(z, cfg, mask, options, batch_entropy=False)
        return self._execute("commitment_loss", cfg, z, mask, schedule, options)

    def lfq(self, z, cfg: Config, mask=None, **options) -> LFQOutput:
        schedule, options = self._split(cfg, options)
        self._check_losses(z, cfg, mask, options)
        return self._execute("lfq", cfg, z, mask, schedule, options)

    def _term(self, term: str, z, cfg: Config, mask, schedule, options: dict):
        """The value of `term` (one of `GRAD_TERMS`) on checked inputs, computed with only
        what it needs, so that autodiff differentiates that alone (the commitment loss: any D)."""
        if term == "codes":
            return self._execute("straight_through", cfg, z)
        if term == "commitment_loss":
            return self._execute("commitment_loss", cfg, z, mask, schedule, options)
        return self._execute("losses", cfg, z, mask, schedule, options)[LOSS_TERMS.index(term)]

    def vjp(self, term: str, z, cfg: Config, cotangent=None, mask=None, **options):
        """Gradient of `term` (one of `lfq.interface.GRAD_TERMS`) w.r.t. `z`, in z's dtype,
        by the backend's autodiff (`gradient`) of that term alone (the commitment loss:
        any D). A loss term's cotangent is a scalar (default 1); "codes" needs one of z's shape.
        """
        if term not in GRAD_TERMS:
            raise ValueError(f"term={term!r} is not one of {list(GRAD_TERMS)}")
        schedule, options = self._split(cfg, options)
        self.check_array(z, "z")
        if term == "codes" and cotangent is None:
            raise ValueError("vjp('codes', ...) needs a cotangent of z's shape (the upstream gradient)")
        if cotangent is not None:
            shape = cotangent.shape if hasattr(cotangent, "shape") else np.shape(cotangent)
            validation.check_cotangent(tuple(shape), z.shape if term == "codes" else (), term)
        if term == "codes":
            self._check(z, cfg)
        else:
            self._check_losses(z, cfg, mask, options, batch_entropy=term != "commitment_loss")
        if self.compiles and not self.vjp_programs:  # autodiff outside, through the programs' own backward
            return self.gradient(lambda z_: self._term(term, z_, cfg, mask, schedule, options), z, cotangent)
        return self._execute("vjp", cfg, z, mask, schedule, options, (term,), cotangent)

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

    # ------------------------------------------------- the computation (checked inputs)

    def evaluate(
        self, op: str, cfg: Config, x, mask=None, schedule=_NO_SCHEDULE, options=None, extra=(), cotangent=None
    ):
        """Operation `op` on checked inputs, in the framework's own operations: the eager
        computation, and the body that a compiled program traces (`lfq.program`).

        Args:
            op: "quantize", "codes_to_indices", "straight_through", "indices_to_codes"
                (`extra = (dtype,)`), "entropy", "commitment_loss", "lfq" or "losses"
                (`(per_sample, batch, commitment, aux, indices)`: lfq without its codes),
                or "vjp" (`extra = (term,)`: the gradient of that term alone).
            schedule: the call's `lfq.factorized.Schedule`; options: its distributed options.
            cotangent: the upstream gradient of "vjp" (None: 1).
        """
        options = options or {}
        if op in ("quantize", "codes_to_indices", "straight_through", "indices_to_codes"):
            return getattr(self, "_" + op)(x, cfg, *extra)
        if op == "vjp":
            (term,) = extra
            if term == "codes":
                return self.gradient(lambda z: self._straight_through(z, cfg), x, cotangent)
            batch_entropy, position = term != "commitment_loss", LOSS_TERMS.index(term)
            return self.gradient(
                lambda z: self._losses(z, cfg, mask, schedule, options, batch_entropy)[2][position], x, cotangent
            )
        batch_entropy = op != "commitment_loss"
        xp, features_x, losses = self._losses(x, cfg, mask, schedule, options, batch_entropy)
        if op == "commitment_loss":
            return losses[2]
        if op == "entropy":
            return losses[0], losses[1]
        if op == "losses":
            return (*losses, self._codes_to_indices(x, cfg))
        if mask is None:  # op == "lfq"
            codes = self._carry(xp, x, features_x, cfg)
        else:  # features_x has masked tokens zeroed; the codes' gradient ignores the mask
            codes = self._straight_through(x, cfg)
        per_sample, batch, commit, aux = losses
        return LFQOutput(codes, self._codes_to_indices(x, cfg), aux, per_sample, batch, commit)

    def _quantize(self, z, cfg: Config):
        return features.quantize_groups(z, cfg, self.namespace(z), self.positive, self.device_of(z))

    def _codes_to_indices(self, z, cfg: Config):
        xp = self.namespace(z)
        dtype = self.index_dtype(xp, cfg)
        bits = self.positive(features.group_features(z, cfg, xp))
        if self.float_index_sums:
            return features.indices_from_bits(bits, cfg, xp, dtype, lambda v, t: self.constant(v, t, z))
        weights = self.constant(features.bit_weights(cfg), dtype, z)
        return xp.sum(xp.astype(bits, dtype) * weights, axis=-1, dtype=dtype)

    def _indices_to_codes(self, indices, cfg: Config, dtype: str = "float32"):
        xp = self.namespace(indices)
        weights = self.constant(features.bit_weights(cfg), indices.dtype, indices)
        bits = xp.bitwise_and(indices[..., None], weights) != 0
        out = getattr(xp, dtype)
        m = cfg.code_magnitude
        codes = xp.where(bits, self.constant(m, out, indices), self.constant(-m, out, indices))
        return features.ungroup_features(codes, cfg, xp)

    def _straight_through(self, z, cfg: Config):
        xp, _, x, _ = self._features(z, cfg, None)
        return self._carry(xp, z, x, cfg)

    def _features(self, z, cfg: Config, mask):
        """Compute-dtype `[N, C, D]` raw and transformed features and `[N]` weights (checked inputs)."""
        xp = self.namespace(z)
        work = self.compute_dtype(xp, z.dtype)
        raw = xp.astype(features.group_features(z, cfg, xp), work, copy=False)
        raw = xp.reshape(raw, (-1, cfg.num_codebooks, cfg.codebook_dim))
        weights = None
        if mask is not None:
            weights = xp.astype(xp.reshape(mask, (-1,)), work)
            # Masked-out tokens count nowhere: zero them before any arithmetic.
            raw = xp.where(weights[:, None, None] > 0, raw, xp.zeros_like(raw))
        rescale = None
        if self.flushes_subnormals:

            def rescale(groups):
                return features.rescale_tiny_groups(groups, xp, self.bitcast, self.pass_gradient)

        return xp, raw, features.transform_groups(raw, cfg, xp, self.stop_gradient, rescale), weights

    def _losses(self, z, cfg: Config, mask, schedule, options: dict, batch_entropy: bool = True):
        """`(xp, x, [per_sample, batch, commitment, aux])` in z's dtype; without
        `batch_entropy` the batch term (and so aux) is left out, which any D allows."""
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
            histogram_fn=lambda a, w: self.code_histogram(a, w, cfg),
        )
        sums = self.all_reduce(sums, options, cfg)
        losses = factorized.losses_from_sums(
            sums,
            cfg,
            xp,
            schedule,
            lambda pa, pb, count, rows: self.tiled_entropy(pa, pb, count, rows, cfg),
        )
        # No valid token: every loss +0.0. XLA folds `0 + x` into `x`, which turns the
        # batch entropy's `-sum(0)` into -0.0 in a compiled program.
        some = sums.token_count > 0
        return xp, x, [xp.astype(xp.where(some, v, xp.zeros_like(v)), z.dtype, copy=False) for v in losses]

    def _carry(self, xp, z, x, cfg: Config):
        """The straight-through codes of `z` given its transformed features `x`."""
        fx = xp.tanh(x) if cfg.activation == "tanh" else x
        tokens = validation.token_shape(z.shape, cfg)
        carrier = features.ungroup_features(xp.reshape(fx, tokens + tuple(fx.shape[-2:])), cfg, xp)
        codes = features.quantize_groups(z, cfg, xp, self.positive, self.device_of(z))
        return self.pass_gradient(codes, xp.astype(carrier, z.dtype, copy=False))
