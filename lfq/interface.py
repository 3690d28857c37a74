"""The one interface every backend implements, declared once.

Arrays in and out are the backend's native arrays (NumPy arrays for the
reference, `torch.Tensor`, `jax.Array`, `tf.Tensor`). Shapes use `[..., C*D]`
for features on `cfg.feature_axis` (last by default) and `[..., C]` for indices.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike

from lfq.config import Config

__all__ = ["Array", "CodeUsage", "LFQBackend", "LFQOutput", "LOSS_TERMS", "GRAD_TERMS"]

#: A backend's native array (`np.ndarray`, `torch.Tensor`, `jax.Array`, `tf.Tensor`):
#: typed as Any so that one annotation serves every framework without importing it.
Array = Any

#: Scalar loss terms that `LFQBackend.vjp` differentiates.
LOSS_TERMS: tuple[str, ...] = ("per_sample_entropy", "batch_entropy", "commitment_loss", "aux_loss")
#: Every term `vjp` accepts: the loss terms and the straight-through codes.
GRAD_TERMS: tuple[str, ...] = LOSS_TERMS + ("codes",)


class LFQOutput(NamedTuple):
    """Result of `LFQBackend.lfq`.

    Attributes:
        codes: `[..., C*D]`, same shape and dtype as z; value exactly the codes,
            gradient by the straight-through rule.
        indices: `[..., C]` int64 (int32 where the framework has no int64).
        aux_loss: scalar, `entropy_weight*(H_sample - gamma*H_batch) + commitment_weight*L_commit`.
        per_sample_entropy: scalar H_sample (nats).
        batch_entropy: scalar H_batch (nats).
        commitment_loss: scalar L_commit.
    """

    codes: Array
    indices: Array
    aux_loss: Array
    per_sample_entropy: Array
    batch_entropy: Array
    commitment_loss: Array


class CodeUsage(NamedTuple):
    """Code-usage metrics of a batch of indices, one entry per codebook.

    Attributes:
        fraction_used: `[C]`, distinct codes seen / `2**D`.
        perplexity: `[C]`, exp of the entropy (nats) of the index histogram:
            between 1 (one code) and `2**D` (uniform use).
    """

    fraction_used: Array
    perplexity: Array


@runtime_checkable
class LFQBackend(Protocol):
    """Lookup-free quantization on one framework's arrays.

    Attributes:
        name: registry name ("numpy", "torch", "jax", "tensorflow", ...).
        dtypes: input dtypes the backend supports, by name (see
            `lfq.validation.FLOAT_DTYPES`); others are refused.
        modes: execution modes the backend offers: "eager" and, where the
            framework compiles, "compiled".

    The built-in backends' `entropy`, `commitment_loss`, `lfq` and `vjp` also take
    the per-call schedule options `inv_temperature=`, `diversity_gamma=`,
    `entropy_weight=` and `commitment_weight=` (a number, or a 0-d array of the
    backend), which mean `cfg.replace(...)` with those values
    (`lfq.factorized.Schedule`); compiled modes take them as run-time inputs, so
    an annealing schedule does not recompile. A third-party backend may omit them.
    """

    name: str
    dtypes: tuple[str, ...]
    modes: tuple[str, ...]

    def quantize(self, z: Array, cfg: Config) -> Array:
        """Codes `+-m` of `z` (`[..., C*D]` -> same shape and dtype)."""

    def codes_to_indices(self, z: Array, cfg: Config) -> Array:
        """Integer index of every codebook: `[..., C*D]` -> `[..., C]`."""

    def indices_to_codes(self, indices: Array, cfg: Config, dtype: str = "float32") -> Array:
        """Codes from indices: `[..., C]` -> `[..., C*D]` of `dtype`."""

    def entropy(self, z: Array, cfg: Config, mask: Array | None = None) -> tuple[Array, Array]:
        """`(per_sample_entropy, batch_entropy)`, scalars."""

    def commitment_loss(self, z: Array, cfg: Config, mask: Array | None = None) -> Array:
        """Scalar mean of `(x - stopgrad(q))**2` over the valid tokens' features."""

    def lfq(self, z: Array, cfg: Config, mask: Array | None = None) -> LFQOutput:
        """Everything at once; see `LFQOutput`."""

    def code_usage(self, indices: Array, cfg: Config, mask: Array | None = None) -> CodeUsage:
        """Fraction of codes used and perplexity of the index histogram."""

    def vjp(
        self, term: str, z: Array, cfg: Config, cotangent: Array | float | None = None, mask: Array | None = None
    ) -> Array:
        """Gradient of `term` (one of `GRAD_TERMS`) w.r.t. z, by the backend's autodiff.

        For a scalar loss term `cotangent` defaults to 1; for "codes" it is
        required and has z's shape.
        """

    def compiled(self) -> LFQBackend:
        """The same backend with every operation compiled by its framework
        (`torch.compile`, `jax.jit`, `tf.function(jit_compile=True)`); only when
        "compiled" is in `modes`."""

    def asarray(self, array: ArrayLike, dtype: str | None = None, device: Any = None) -> Array:
        """A NumPy array as this backend's native array (of dtype name `dtype`), on
        `device` ("cpu", "cuda", "cuda:1", or the framework's own device object;
        None: the framework's default device)."""

    def to_numpy(self, array: Array) -> np.ndarray:
        """A native array as a NumPy array (bfloat16 via ml_dtypes)."""
