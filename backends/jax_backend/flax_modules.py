"""The quantizer as Flax modules: `LFQ` (Flax NNX) and `LinenLFQ` (Flax Linen).

Both take the layer arguments shared with the plain JAX module, the torch module
and the Keras layer (declared once in `lfq.layer_options.LAYER_ARGUMENTS`), hold
the optional projections as Flax layers (`project_in`: dim -> C*D and
`project_out`: C*D -> dim, an `nnx.Linear` / `nn.Dense` each, created when
dim != C*D or `has_projections=True`), and run the plain module
`lfq.backends.jax_backend.module.LFQ` (its `apply`, hence the JAX backend's
functional `lfq`): layouts, masks, losses and the returned
`LFQResult(quantized, indices, aux_loss)` (and `LossBreakdown`) are the plain
module's, bit for bit for equal parameters.

* `LFQ`, an `nnx.Module`: parameters live on the object
  (`model.project_in.kernel`); `model.eval()` / `model.train()` switch the
  losses off and on (the attribute `deterministic`, as for `nnx.Dropout`),
  and `nnx.jit`, `nnx.grad`, `nnx.Optimizer`, `nnx.split`/`nnx.merge` and
  `nnx.state` work as for any NNX layer.
* `LinenLFQ`, an `nn.Module`: `variables = model.init(key, x)` and
  `model.apply(variables, x, train=...)`; `variables["params"]` has the
  structure of the plain module's params (`{"project_in": {"kernel", "bias"},
  "project_out": {...}}`, `{}` without projections), so the two accept each
  other's parameters.

Flax is imported by this module only (`import lfq` and
`import lfq.backends.jax_backend` do not import it); install it with
`pip install 'lfq[flax]'`. docs/jax.md, section "Flax", says which to pick.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

try:
    from flax import linen as nn
    from flax import nnx
except ImportError as err:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "lfq.backends.jax_backend.flax_modules needs Flax (the LFQ nnx.Module and linen.Module): "
        "install it with pip install 'lfq[flax]' (or pip install flax). The plain init/apply "
        f"module lfq.backends.jax_backend.LFQ needs only JAX. ({err})"
    ) from err

from lfq.backends.jax_backend import module as _module
from lfq.backends.jax_backend.backend import _precision

from lfq.config import Config
from lfq.layer_options import LAYER_ARGUMENTS, LayerArgument, bind, declare_fields, document, signature

__all__ = ["LFQ", "LinenLFQ", "NNX_ARGUMENTS"]

_PlainLFQ = _module.LFQ


def _uniform(fan_in: int):
    """Uniform in +-1/sqrt(fan_in) for kernel and bias: the plain module's (and PyTorch's) default."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _projection_shapes(quantizer: _PlainLFQ) -> tuple[int, int]:
    return quantizer.input_dim, quantizer.config.num_features


class _PlainDelegate:
    """What both Flax modules read from the plain module they run (`self.jax_module`)."""

    @property
    def config(self) -> Config:
        """The `lfq.Config` the module runs (feature axis last)."""
        return self.jax_module.config

    @property
    def input_dim(self) -> int:
        """Feature size of the input and of `quantized`: `dim`, or C*D."""
        return self.jax_module.input_dim

    @property
    def uses_projections(self) -> bool:
        """Whether `project_in`/`project_out` exist."""
        return self.jax_module.uses_projections


_PARAM_DTYPE = LayerArgument("param_dtype", jnp.float32, "dtype of the projection parameters.", "Any")

#: The Flax NNX module's own arguments (beside `lfq.layer_options.LAYER_ARGUMENTS`).
NNX_ARGUMENTS = (
    _PARAM_DTYPE,
    LayerArgument(
        "deterministic",
        False,
        "True = inference, no loss computed (`aux_loss` is 0); `model.eval()` sets it, `model.train()` "
        "clears it. The call argument `train` overrides it.",
        "bool",
    ),
    LayerArgument(
        "rngs",
        None,
        "`nnx.Rngs` (or an int seed) for the projections; needed only when the module has projections. "
        "Kernel and bias are drawn uniformly from +-1/sqrt(fan_in), as in the plain module and PyTorch.",
        "nnx.Rngs | int | None",
    ),
)
_NNX_SIGNATURE = signature(LAYER_ARGUMENTS, NNX_ARGUMENTS, self_=True)
_NAMES = tuple(argument.name for argument in LAYER_ARGUMENTS)


@document(LAYER_ARGUMENTS, NNX_ARGUMENTS)
class LFQ(_PlainDelegate, nnx.Module):
    """Lookup-free quantizer as a Flax NNX module, with optional input/output projections.

    Its arguments (keywords only) are those of every framework's layer, declared
    once in `lfq.layer_options.LAYER_ARGUMENTS`, then its own.

    Args:

    Attributes:
        project_in, project_out: `nnx.Linear` layers, or None without projections.
        jax_module: the plain `lfq.backends.jax_backend.LFQ` (options only) this
            module runs.

    Call: `model(x, mask=None, *, train=None, compute_loss=None,
    return_loss_breakdown=None, axis_name=None, inv_temperature=None, ...)`, the
    arguments of the plain module's `apply` (`train=None`: `not model.deterministic`).

    Example:
        >>> from flax import nnx
        >>> model = LFQ(dim=16, codebook_size=256, rngs=nnx.Rngs(0))
        >>> out = model(jnp.ones((2, 8, 16)))
        >>> out.quantized.shape, out.indices.shape
        ((2, 8, 16), (2, 8))
    """

    def __init__(self, **arguments):
        values, _ = bind(_NNX_SIGNATURE, arguments, "LFQ")
        quantizer = _PlainLFQ(**{name: values[name] for name in _NAMES})
        self.jax_module = quantizer
        self.deterministic = values["deterministic"]
        if not quantizer.uses_projections:
            self.project_in = self.project_out = None
            return
        rngs = values["rngs"]
        if rngs is None:
            raise ValueError(
                f"LFQ(dim={quantizer.input_dim}, ...) has projections (dim != C*D = "
                f"{quantizer.config.num_features}, or has_projections=True): pass rngs=nnx.Rngs(0) "
                "(any seed) to initialize project_in and project_out"
            )
        if isinstance(rngs, int) and not isinstance(rngs, bool):
            rngs = nnx.Rngs(rngs)
        dim, features = _projection_shapes(quantizer)
        options = dict(
            use_bias=quantizer.projection_has_bias,
            param_dtype=values["param_dtype"],
            precision=_precision(quantizer.config),
            rngs=rngs,
        )
        self.project_in = nnx.Linear(dim, features, kernel_init=_uniform(dim), bias_init=_uniform(dim), **options)
        self.project_out = nnx.Linear(
            features, dim, kernel_init=_uniform(features), bias_init=_uniform(features), **options
        )

    __init__.__signature__ = _NNX_SIGNATURE

    def _projections(self) -> dict:
        if self.project_in is None:
            return {}
        return {"project_in": self.project_in, "project_out": self.project_out}

    def __call__(
        self,
        x,
        mask=None,
        *,
        train: bool | None = None,
        compute_loss: bool | None = None,
        return_loss_breakdown: bool | None = None,
        axis_name=None,
        **schedule,
    ):
        """Quantize `x`; the arguments and result of the plain module's `apply` (without `params`).

        Returns:
            `LFQResult(quantized, indices, aux_loss)`, or `(LFQResult, LossBreakdown)`
            when `return_loss_breakdown`.
        """
        train = not self.deterministic if train is None else train
        return self.jax_module.apply(
            self._projections(),
            x,
            mask,
            train=train,
            compute_loss=compute_loss,
            return_loss_breakdown=return_loss_breakdown,
            axis_name=axis_name,
            **schedule,
        )

    def indices_to_codes(self, indices, project_out: bool = True, dtype: str = "float32"):
        """Codes of `indices` in the input layout (see the plain module's `indices_to_codes`)."""
        return self.jax_module.indices_to_codes(self._projections(), indices, project_out, dtype)


# nnx.Module's metaclass wraps construction in (*args, **kwargs): name the arguments for help().
LFQ.__signature__ = signature(LAYER_ARGUMENTS, NNX_ARGUMENTS)


@document(LAYER_ARGUMENTS, (_PARAM_DTYPE,))
class LinenLFQ(_PlainDelegate, nn.Module, kw_only=True):
    """Lookup-free quantizer as a Flax Linen module, with optional input/output projections.

    Its arguments (attributes) are those of every framework's layer, declared
    once in `lfq.layer_options.LAYER_ARGUMENTS`, then `param_dtype`; they are
    checked when the module is constructed. The projections are `nn.Dense`
    submodules `project_in` and `project_out`, drawn uniformly from
    +-1/sqrt(fan_in), as in the plain module and PyTorch.

    Args:

    Call: `model.apply(variables, x, mask=None, train=True, compute_loss=None,
    return_loss_breakdown=None, axis_name=None, inv_temperature=None, ...)`, the
    arguments of the plain module's `apply`; `variables = model.init(key, x)`.
    Codes from indices: `model.apply(variables, indices, method=LinenLFQ.indices_to_codes)`.

    Example:
        >>> model = LinenLFQ(dim=16, codebook_size=256)
        >>> variables = model.init(jax.random.key(0), jnp.ones((2, 8, 16)))
        >>> out = model.apply(variables, jnp.ones((2, 8, 16)))
        >>> out.quantized.shape, out.indices.shape
        ((2, 8, 16), (2, 8))
    """

    declare_fields(locals())  # the fields: lfq.layer_options.LAYER_ARGUMENTS, in its order
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        self.jax_module  # noqa: B018 - validate the arguments at construction, as the other layers do
        super().__post_init__()

    @property
    def jax_module(self) -> _PlainLFQ:
        """The plain `lfq.backends.jax_backend.LFQ` (options only) this module runs."""
        return _PlainLFQ(**{name: getattr(self, name) for name in _NAMES})

    def setup(self) -> None:
        quantizer = self.jax_module
        if quantizer.uses_projections:
            dim, features = _projection_shapes(quantizer)
            options = dict(
                use_bias=self.projection_has_bias, param_dtype=self.param_dtype, precision=_precision(quantizer.config)
            )
            self.project_in = nn.Dense(features, kernel_init=_uniform(dim), bias_init=_uniform(dim), **options)
            self.project_out = nn.Dense(dim, kernel_init=_uniform(features), bias_init=_uniform(features), **options)

    def _projections(self) -> dict:
        if not self.uses_projections:
            return {}
        return {"project_in": self.project_in, "project_out": self.project_out}

    def __call__(
        self,
        x,
        mask=None,
        train: bool = True,
        compute_loss: bool | None = None,
        return_loss_breakdown: bool | None = None,
        axis_name=None,
        **schedule,
    ):
        """Quantize `x`; the arguments and result of the plain module's `apply` (without `params`),
        including the per-call schedule (`inv_temperature=`, `entropy_loss_weight=`, ...)."""
        return self.jax_module.apply(
            self._projections(),
            x,
            mask,
            train=train,
            compute_loss=compute_loss,
            return_loss_breakdown=return_loss_breakdown,
            axis_name=axis_name,
            **schedule,
        )

    def indices_to_codes(self, indices, project_out: bool = True, dtype: str = "float32"):
        """Codes of `indices` in the input layout (see the plain module's `indices_to_codes`).

        Without projections this needs no parameters: `model.apply({}, indices, method=...)`.
        """
        return self.jax_module.indices_to_codes(self._projections(), indices, project_out, dtype)
