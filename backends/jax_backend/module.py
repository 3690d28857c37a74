"""`LFQ`: the quantizer as a plain JAX module, an `init`/`apply` pair.

The module is a frozen (hashable) dataclass holding only options; the learned
parameters, the optional `project_in` (`dim -> C*D`) and `project_out` (`C*D -> dim`)
linear maps, live in a params pytree returned by `init`. `apply(params, x, ...)`
is a pure function, so it composes with `jax.jit`, `jax.grad`, `jax.vmap` and
`jax.shard_map` and with any optimizer written over pytrees. No dependency
beyond JAX: we chose this over Flax NNX so that the backend needs no extra
package, and a Flax or Equinox user can wrap `apply` in one line.

Arguments follow the layer API shared with the torch module and the Keras layer
(names from vector-quantize-pytorch's LFQ where they mean the same); the
module builds one `lfq.Config` and calls the JAX backend's functional `lfq`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from lfq.backends.jax_backend.backend import _precision

import lfq
from lfq import validation
from lfq.config import Config
from lfq.layer_options import LAYER_ARGUMENTS, declare_fields, document, mask_layout, resolve, schedule_options

__all__ = ["LFQ", "LFQResult", "LossBreakdown"]


class LossBreakdown(NamedTuple):
    """The unweighted loss terms, scalars (zeros when no loss was computed)."""

    per_sample_entropy: Any
    batch_entropy: Any
    commitment: Any


class LFQResult(NamedTuple):
    """Output of `LFQ.apply`.

    Attributes:
        quantized: the codes (straight-through), in the input's layout and
            feature size (`dim` when projections exist).
        indices: int `[tokens..., C]`, or `[tokens...]` when the codebook axis is
            not kept (the default for C == 1).
        aux_loss: scalar weighted entropy + commitment loss; 0 when not computed.
    """

    quantized: Any
    indices: Any
    aux_loss: Any


_NAMES = tuple(argument.name for argument in LAYER_ARGUMENTS)


@document(LAYER_ARGUMENTS)
@dataclasses.dataclass(frozen=True, kw_only=True)
class LFQ:
    """Lookup-free quantizer with optional input/output projections.

    Its arguments (keywords only) are those of every framework's layer,
    declared once in `lfq.layer_options.LAYER_ARGUMENTS`.

    Args:

    Example:
        >>> quantizer = LFQ(dim=16, codebook_size=256)
        >>> params = quantizer.init(jax.random.key(0))
        >>> out = quantizer.apply(params, jnp.ones((2, 8, 16)))
        >>> out.quantized.shape, out.indices.shape
        ((2, 8, 16), (2, 8))
    """

    declare_fields(locals())  # the fields: lfq.layer_options.LAYER_ARGUMENTS, in its order

    def __post_init__(self) -> None:
        options = resolve({name: getattr(self, name) for name in _NAMES})
        object.__setattr__(self, "_options", options)

    # -------------------------------------------------------------- properties

    @property
    def config(self) -> Config:
        """The `lfq.Config` the module runs (feature axis last: the module moves axes itself)."""
        return self._options.config

    @property
    def input_dim(self) -> int:
        """Feature size of the input and of `quantized`: `dim`, or `C*D`."""
        return self._options.dim

    @property
    def uses_projections(self) -> bool:
        """Whether `project_in`/`project_out` exist (has_projections resolved)."""
        return self._options.has_projections

    def _keeps_codebook_axis(self) -> bool:
        return self._options.keep_num_codebooks_dim

    def _is_channel_first(self, ndim: int) -> bool:
        return self._options.is_channel_first(ndim)

    # ----------------------------------------------------------------- methods

    def init(self, key, dtype=jnp.float32) -> dict:
        """Parameters: `{}` without projections, else `project_in`/`project_out` dicts.

        Each projection is `{"kernel": [fan_in, fan_out], "bias": [fan_out]}` (no bias
        when `projection_has_bias=False`), drawn uniformly from +-1/sqrt(fan_in)
        (PyTorch's `nn.Linear` default, so the three frameworks start alike).
        """
        if not self.uses_projections:
            return {}
        key_in, key_out = jax.random.split(key)
        cd = self.config.num_features
        return {
            "project_in": self._dense_init(key_in, self.input_dim, cd, dtype),
            "project_out": self._dense_init(key_out, cd, self.input_dim, dtype),
        }

    def _dense_init(self, key, fan_in: int, fan_out: int, dtype) -> dict:
        bound = 1.0 / math.sqrt(fan_in)
        key_w, key_b = jax.random.split(key)
        params = {"kernel": jax.random.uniform(key_w, (fan_in, fan_out), dtype, -bound, bound)}
        if self.projection_has_bias:
            params["bias"] = jax.random.uniform(key_b, (fan_out,), dtype, -bound, bound)
        return params

    def _dense(self, params: dict, name: str, x):
        if not isinstance(params, dict) or name not in params:
            raise ValueError(
                f"params has no {name!r}: this module uses projections "
                f"(dim={self.input_dim} != C*D or has_projections=True); "
                "create the params with LFQ.init(key)"
            )
        layer = params[name]
        if callable(layer):  # a framework's layer, e.g. the nnx.Linear / nn.Dense of flax_modules
            return layer(x)
        y = jnp.matmul(x, layer["kernel"], precision=_precision(self.config))
        return y + layer["bias"] if "bias" in layer else y

    def apply(
        self,
        params: dict,
        x,
        mask=None,
        *,
        train: bool = True,
        compute_loss: bool | None = None,
        return_loss_breakdown: bool | None = None,
        axis_name=None,
        inv_temperature=None,
        entropy_loss_weight=None,
        commitment_loss_weight=None,
        diversity_gamma=None,
    ):
        """Quantize `x` and (when training) compute the aux loss.

        Args:
            params: from `init` (`{}` when there are no projections).
            x: `[b, ..., dim]` channel-last or `[b, dim, ...]` channel-first features.
            mask: optional boolean, per token (`[b, n]`, `[b, h, w]`: x's shape
                without the feature axis), per token flattened (`[b, h*w]`) or per
                sample (`[b]`); False tokens are quantized but count in no loss.
            train: compute the loss (in eval, `train=False`, aux_loss is 0).
            compute_loss: overrides `train` for the loss (True: losses in eval too).
            return_loss_breakdown: also return a `LossBreakdown` (default: the
                constructor's value).
            axis_name: mesh axis to make the losses global over (inside
                `jax.shard_map`); see docs/jax.md for the gradient semantics.
            inv_temperature: this call's tau (a float or a 0-d array, traced
                under jit: an annealing schedule does not retrace); None = the module's.
            entropy_loss_weight: this call's entropy weight (as `inv_temperature`).
            commitment_loss_weight: this call's commitment weight (as `inv_temperature`).
            diversity_gamma: this call's gamma (as `inv_temperature`).

        Returns:
            `LFQResult(quantized, indices, aux_loss)`, or `(LFQResult, LossBreakdown)`
            when `return_loss_breakdown`.
        """
        backend = lfq.get("jax")
        backend.check_array(x, "x")  # jax.Array or NumPy, like the backend (docs/spec.md, "Bad input")
        if mask is not None:
            backend.check_array(mask, "mask")
        x = x if isinstance(x, jax.Array) else jnp.asarray(x)
        channel_first = self._is_channel_first(x.ndim)
        if x.ndim < (2 if channel_first else 1):
            raise ValueError(
                f"x has shape {tuple(x.shape)}: expected [batch, ..., {self.input_dim}] "
                f"(or [batch, {self.input_dim}, ...] channel-first)"
            )
        if channel_first:
            x = jnp.moveaxis(x, 1, -1)
        if x.shape[-1] != self.input_dim:
            where = "axis 1 (channel-first)" if channel_first else "the last axis"
            raise ValueError(
                f"x: expected {self.input_dim} features on {where}, got shape {tuple(x.shape)} "
                f"(after moving features last): pass dim={x.shape[-1]} to LFQ, or set channel_first"
            )
        if validation.dtype_name(x.dtype) not in validation.FLOAT_DTYPES:
            raise TypeError(
                f"x has dtype {validation.dtype_name(x.dtype)}; LFQ quantizes real "
                f"floating-point features ({', '.join(validation.FLOAT_DTYPES)}): cast it first"
            )
        cfg = self.config
        if mask is not None:
            tokens = tuple(x.shape[:-1])
            mask = (
                mask
                if tuple(mask.shape) == tokens
                else jnp.broadcast_to(jnp.reshape(mask, mask_layout(mask.shape, tokens)), tokens)
            )
        z = self._dense(params, "project_in", x) if self.uses_projections else x
        compute = train if compute_loss is None else compute_loss
        if compute:
            options = {} if axis_name is None else {"axis_name": axis_name}
            options.update(
                schedule_options(
                    inv_temperature=inv_temperature,
                    entropy_loss_weight=entropy_loss_weight,
                    commitment_loss_weight=commitment_loss_weight,
                    diversity_gamma=diversity_gamma,
                )
            )
            out = backend.lfq(z, cfg, mask, **options)
            codes, indices, aux = out.codes, out.indices, out.aux_loss
            breakdown = LossBreakdown(out.per_sample_entropy, out.batch_entropy, out.commitment_loss)
        else:
            if mask is not None:
                validation.check_mask(mask.shape, mask.dtype, z.shape, cfg)
            codes, indices = backend.straight_through(z, cfg), backend.codes_to_indices(z, cfg)
            aux = jnp.zeros((), z.dtype)
            breakdown = LossBreakdown(aux, aux, aux)
        quantized = self._dense(params, "project_out", codes) if self.uses_projections else codes
        if channel_first:
            quantized = jnp.moveaxis(quantized, -1, 1)
        if not self._keeps_codebook_axis():
            indices = indices[..., 0]
        result = LFQResult(quantized, indices, aux)
        wants_breakdown = self.return_loss_breakdown if return_loss_breakdown is None else return_loss_breakdown
        return (result, breakdown) if wants_breakdown else result

    def indices_to_codes(self, params: dict, indices, project_out: bool = True, dtype: str = "float32"):
        """Codes of `indices` in the input layout.

        Args:
            params: from `init`.
            indices: int `[b, ...]` as returned by `apply` (with the codebook axis
                `[b, ..., C]` when it is kept).
            project_out: map the codes back to `dim` features when projections exist.
            dtype: dtype name of the codes.

        Returns:
            `[b, ..., dim]` (or `[b, ..., C*D]` without projection), channel-first `[b, dim, ...]`
            when the module is channel-first (auto: when the result has ndim >= 4).
        """
        backend = lfq.get("jax")
        backend.check_array(indices, "indices")
        if not self._keeps_codebook_axis():
            indices = indices[..., None]
        codes = backend.indices_to_codes(indices, self.config, dtype)
        if project_out and self.uses_projections:
            codes = self._dense(params, "project_out", codes)
        if self._is_channel_first(codes.ndim):
            codes = jnp.moveaxis(codes, -1, 1)
        return codes
