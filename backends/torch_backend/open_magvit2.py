"""Open-MAGVIT2 / SEED-Voken's `LFQ` interface, computed by lfq's torch backend.

`from src.Open_MAGVIT2.modules.vqvae.lookup_free_quantize import LFQ` becomes
`from lfq.compat.open_magvit2 import LFQ`: the constructor arguments, the call
`quantizer(x, inv_temperature=100., return_loss_breakdown=False, mask=None,
return_loss=True)`, its return structure `(quantized, entropy_aux_loss, indices)`
(with `LossBreakdown(per_sample_entropy, codebook_entropy, commitment,
avg_probs)` when asked), the LSB-first flattened indices, the token-factorized
`(indices_pre, indices_post)`, `get_codebook_entry(indices, bhwc, order)`,
`indices_to_bits`, `bits_to_indices`, `decode`, and the attribute and buffer
names are theirs (SEED-Voken commit b9a17ea, identical to TencentARC/Open-MAGVIT2
3c58097). Every value is computed by `TorchBackend` with an `lfq.Config`
(`bit_order="lsb"`, `feature_axis=1`): this file only maps their weights onto
the config, reshapes, and picks the outputs. docs/open-magvit2.md lists where the
results differ on purpose (exact entropies without eps, a mask that reaches every
loss term, a `inv_temperature` that is honoured, codes that are bitwise the codes).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from lfq import validation
from lfq.config import Config
from lfq.layer_options import arguments, document

from . import distributed as _dist
from .backend import TorchBackend

__all__ = ["LFQ", "LossBreakdown"]


def _their_layout(z):
    """`z` (`[b, c, ...]`, any strides) in Open-MAGVIT2's memory layout: features last in
    memory (a contiguous `[b, ..., c]` viewed channel-first; `channels_last` for images).

    Their layer moves the features last, packs the tokens into a new tensor, and moves the
    features back as a view; so do their `get_codebook_entry` codes. Giving a decoder the
    same layout makes its output bitwise theirs (a convolution's summation order follows
    the memory layout), and `decode(get_codebook_entry(indices))` bitwise `decode(quantized)`.
    """
    last = z.movedim(1, -1)
    # A new tensor, as their pack makes: canonical strides, size-1 axes included.
    return torch.empty(last.shape, dtype=z.dtype, device=z.device).copy_(last).movedim(-1, 1)


class LossBreakdown(NamedTuple):
    """Second element of `LFQ.forward(..., return_loss_breakdown=True)`, their field names.

    Attributes:
        per_sample_entropy: H_sample (nats), 0 unless training with `return_loss=True`.
        codebook_entropy: H_batch (nats), same condition.
        commitment: mean squared distance of the features to their codes, 0 unless training.
        avg_probs: always 0 (a placeholder in theirs too).
    """

    per_sample_entropy: torch.Tensor
    codebook_entropy: torch.Tensor
    commitment: torch.Tensor
    avg_probs: torch.Tensor


@document(arguments("batch_entropy", "max_exact_bits", "precision"), last=True)
class LFQ(nn.Module):
    """Lookup-free quantizer with Open-MAGVIT2's interface; exact entropies by lfq.

    Its arguments are Open-MAGVIT2's, then three of lfq's (declared, as every
    layer's, in `lfq.layer_options.LAYER_ARGUMENTS`).

    Args:
        dim: input features (axis 1 of the input); must be
            `num_codebooks * log2(codebook_size)` (theirs has no projections either).
        codebook_size: 2**D codes per codebook (default `2**(dim // num_codebooks)`).
        num_codebooks: C; codebook k owns features k*D .. k*D+D-1 of axis 1.
        sample_minimization_weight: weight of H_sample in `entropy_aux_loss`.
        batch_maximization_weight: weight of -H_batch in `entropy_aux_loss`.
            Both are read at every call, so a schedule may change them.
        token_factorization: return the indices as `(indices_pre, indices_post)`,
            the LSB-first indices of the first `factorized_bits[0]` and of the last
            `factorized_bits[1]` bits of each codebook. The losses are unchanged
            (the entropy is over all 2**D codes, as in theirs).
        factorized_bits: `[bits_pre, bits_post]`, summing to D.
        distributed: batch entropy over the data-parallel group (global batch).
            None (default): on when torch.distributed runs more than one process
            in `process_group`; False gives theirs, a per-process batch entropy.
        process_group: the group for `distributed` (default: the world).

    Call: `layer(x, inv_temperature=100., return_loss_breakdown=False, mask=None,
    return_loss=True)` with `x` channel-first, `[b, dim]`, `[b, dim, n]`,
    `[b, dim, h, w]` or `[b, dim, t, h, w]`. Returns `(quantized, entropy_aux_loss,
    indices)`, or `((quantized, entropy_aux_loss, indices), LossBreakdown)`:

    * `quantized`: x's shape and dtype, exactly +-1, straight-through gradient,
      in their memory layout (features last in memory: `channels_last` for
      images), as `get_codebook_entry` returns codes;
    * `entropy_aux_loss`: `sample_minimization_weight * H_sample -
      batch_maximization_weight * H_batch` when training with `return_loss`, else 0
      (the commitment loss is only in the breakdown, as in theirs);
    * `indices`: int64, flattened over `[b, *spatial, C]`, LSB first (feature
      k*D + i of codebook k is bit i); a pair of such tensors with
      `token_factorization`.

    `mask` (bool, `[b, n]` with n the flattened spatial size, or `[b, *spatial]`):
    False tokens are quantized and indexed but count in no loss term.
    `inv_temperature` is tau in the logits 2*tau*x.c (theirs ignores it and uses 100).
    Half inputs are computed in float32; the losses are float32.
    """

    def __init__(
        self,
        *,
        dim=None,
        codebook_size=None,
        num_codebooks=1,
        sample_minimization_weight=1.0,
        batch_maximization_weight=1.0,
        token_factorization=False,
        factorized_bits=(9, 9),
        batch_entropy="exact",
        max_exact_bits=24,
        precision="highest",
        distributed=None,
        process_group=None,
    ):
        super().__init__()
        if dim is None and codebook_size is None:
            raise ValueError("either dim or codebook_size must be specified for LFQ")
        if isinstance(num_codebooks, bool) or not isinstance(num_codebooks, int) or num_codebooks < 1:
            raise ValueError(f"num_codebooks={num_codebooks!r} must be an int >= 1")
        if codebook_size is None:
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < num_codebooks or dim % num_codebooks:
                raise ValueError(
                    f"dim={dim!r} must be a multiple of num_codebooks={num_codebooks} "
                    "when codebook_size is not given (codebook_size = 2**(dim // num_codebooks))"
                )
            codebook_size = 2 ** (dim // num_codebooks)
        # Config.from_codebook_size refuses a size that is not a power of two, naming the fix.
        base = Config.from_codebook_size(
            codebook_size,
            num_codebooks=num_codebooks,
            bit_order="lsb",
            feature_axis=1,
            commitment_weight=0.0,
            batch_entropy=batch_entropy,
            max_exact_bits=max_exact_bits,
            precision=precision,
        )
        codebook_dims = base.num_features
        dim = codebook_dims if dim is None else dim
        if dim != codebook_dims:
            raise ValueError(
                f"dim={dim} but codebook_size={codebook_size} (D={base.codebook_dim} bits) x num_codebooks="
                f"{num_codebooks} needs {codebook_dims} features: this layer, like Open-MAGVIT2's, has no "
                f"projections; pass dim={codebook_dims} or project the features with your own layer"
            )
        if distributed is not None and not isinstance(distributed, bool):
            raise TypeError(f"distributed={distributed!r} must be None (auto), True or False")
        for name, value in (
            ("sample_minimization_weight", sample_minimization_weight),
            ("batch_maximization_weight", batch_maximization_weight),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}={value!r} must be a finite number")

        self.codebook_size = codebook_size
        self.codebook_dim = base.codebook_dim
        self.dim = dim
        self.num_codebooks = num_codebooks
        self.has_projections = False
        self.sample_minimization_weight = sample_minimization_weight
        self.batch_maximization_weight = batch_maximization_weight
        self.token_factorization = bool(token_factorization)
        self.factorized_bits = list(factorized_bits)
        self.distributed = distributed
        self.process_group = process_group
        self.backend = TorchBackend()
        self._base = base
        self._codes_configs: dict = {}

        # Their buffers, under their names and not saved (persistent=False), so that
        # state_dict() is theirs (empty) and their checkpoints load with strict=True.
        # The bit weights are kept for code that reads them; lfq computes with its own.
        if not self.token_factorization:
            self.register_buffer("mask", 2 ** torch.arange(self.codebook_dim), persistent=False)
        else:
            bits = self.factorized_bits
            if (
                len(bits) != 2
                or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in bits)
                or sum(bits) != self.codebook_dim
            ):
                raise ValueError(
                    f"factorized_bits={factorized_bits!r} must be two ints >= 1 summing to "
                    f"codebook_dim={self.codebook_dim} (e.g. [{self.codebook_dim // 2}, "
                    f"{self.codebook_dim - self.codebook_dim // 2}])"
                )
            self.register_buffer("pre_mask", 2 ** torch.arange(bits[0]), persistent=False)
            self.register_buffer("post_mask", 2 ** torch.arange(bits[1]), persistent=False)
            self._part_configs = tuple(base.replace(codebook_dim=b, batch_entropy="exact") for b in bits)
        # Follows .to() / .half(): the device and dtype of decoded codes and of the zero losses.
        self.register_buffer("zero", torch.tensor(0.0), persistent=False)

    # ------------------------------------------------------------ attributes

    @property
    def dtype(self) -> torch.dtype:
        """The layer's float dtype (float32 unless converted): that of decoded codes."""
        return self.zero.dtype

    @property
    def codebook(self) -> torch.Tensor:
        """`[codebook_size, D]` codes +-1, row j the code of index j (LSB first).

        Built on demand (theirs keeps it as a non-saved buffer); 2**D rows.
        """
        all_codes = torch.arange(self.codebook_size, device=self.zero.device)
        return self.backend.indices_to_codes(
            all_codes[:, None], self._codes_config(self.codebook_dim, 1), validation.dtype_name(self.dtype)
        )

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_size={self.codebook_size}, num_codebooks={self.num_codebooks}, "
            f"token_factorization={self.token_factorization}, distributed={self.distributed}"
        )

    def loss_config(self, inv_temperature: float = 100.0) -> Config:
        """The `lfq.Config` this layer runs with (LSB first, features on axis 1).

        `entropy_weight = sample_minimization_weight` and `diversity_gamma =
        batch_maximization_weight / sample_minimization_weight`, so that the
        backend's `aux_loss` is their `entropy_aux_loss`; `commitment_weight = 0`
        (theirs returns the commitment loss apart). With
        `sample_minimization_weight = 0` the config has `entropy_weight = 0` and
        the layer forms `-batch_maximization_weight * H_batch` itself.
        """
        return self._base.replace(**self._schedule(float(inv_temperature)))

    def _schedule(self, inv_temperature) -> dict:
        """The per-call schedule options of the backend (`lfq.factorized.Schedule`): the
        temperature and the weights are run-time values, never a new compiled program."""
        smw, bmw = float(self.sample_minimization_weight), float(self.batch_maximization_weight)
        weight, gamma = (smw, bmw / smw) if smw != 0 else (0.0, 0.0)
        return {"inv_temperature": inv_temperature, "entropy_weight": weight, "diversity_gamma": gamma}

    def _codes_config(self, bits: int, num_codebooks: int) -> Config:
        """Config of `bits`-bit LSB-first codes with the features last (index conversions)."""
        key = (bits, num_codebooks)
        cfg = self._codes_configs.get(key)
        if cfg is None:
            cfg = self._codes_configs[key] = Config(codebook_dim=bits, num_codebooks=num_codebooks, bit_order="lsb")
        return cfg

    def _distributed_options(self) -> dict:
        return _dist.layer_options(self.distributed, self.process_group)

    # --------------------------------------------------------------- forward

    def forward(self, x, inv_temperature=100.0, return_loss_breakdown=False, mask=None, return_loss=True):
        """Quantize channel-first `x`; see the class docstring for the return value."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim < 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; expected [b, dim={self.dim}, ...] (channel-first: "
                "[b, c, h, w] images, [b, c, t, h, w] video)"
            )
        cfg, schedule = self._base, self._schedule(inv_temperature)
        half = x.dtype in (torch.float16, torch.bfloat16)
        work = x.float() if half else x  # the backend computes half in float32: ask for float32 losses
        token_mask = self._token_mask(mask, work, cfg)
        zero = work.new_zeros(())
        per_sample = codebook_entropy = entropy_aux_loss = commitment = zero
        indices = None
        if self.training and return_loss:
            out = self.backend.lfq(work, cfg, token_mask, **schedule, **self._distributed_options())
            codes, indices = out.codes, out.indices
            per_sample, codebook_entropy, commitment = out.per_sample_entropy, out.batch_entropy, out.commitment_loss
            entropy_aux_loss = self._entropy_aux_loss(out, schedule)
        else:
            codes = self.backend.straight_through(work, cfg)
            if self.training:  # theirs: the commitment loss whenever training
                commitment = self.backend.commitment_loss(work, cfg, token_mask, **self._distributed_options())
        if self.token_factorization:
            indices = self._factorized_indices(work)
        else:
            if indices is None:
                indices = self.backend.codes_to_indices(work, cfg)
            indices = indices.flatten()
        quantized = _their_layout(codes.to(x.dtype) if half else codes)
        ret = (quantized, entropy_aux_loss, indices)
        if not return_loss_breakdown:
            return ret
        return ret, LossBreakdown(per_sample, codebook_entropy, commitment, zero)

    def _entropy_aux_loss(self, out, schedule: dict):
        if schedule["entropy_weight"] != 0:
            return out.aux_loss  # smw * (H_sample - (bmw / smw) * H_batch), from the backend
        bmw = float(self.batch_maximization_weight)
        return -bmw * out.batch_entropy if bmw != 0 else out.aux_loss  # (aux_loss is +0 here)

    def _token_mask(self, mask, z, cfg: Config):
        """`mask` as `[b, *spatial]` (theirs is `[b, n]`, n the flattened spatial size)."""
        if mask is None:
            return None
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        tokens = (z.shape[0],) + tuple(z.shape[2:])
        if tuple(mask.shape) == (z.shape[0], math.prod(z.shape[2:])) and tuple(mask.shape) != tokens:
            mask = mask.reshape(tokens)
        validation.check_mask(mask.shape, mask.dtype, z.shape, cfg)
        return mask

    def _factorized_indices(self, z):
        """`(indices_pre, indices_post)`: each codebook's first / last factorized bits, LSB first."""
        z = z.detach()
        b, spatial = z.shape[0], tuple(z.shape[2:])
        groups = z.reshape((b, self.num_codebooks, self.codebook_dim) + spatial)
        split = self.factorized_bits[0]
        parts = (groups[:, :, :split], groups[:, :, split:])
        return tuple(
            self.backend.codes_to_indices(part.reshape((b, -1) + spatial), cfg).flatten()
            for part, cfg in zip(parts, self._part_configs)
        )

    # --------------------------------------------------------- index helpers

    def get_codebook_entry(self, x, bhwc=None, order=None, *, shape=None):
        """Codes `[b, c, h, w]` of the indices `x` (`[b, h*w]`, or any shape with b*h*w*(c/bits) entries).

        Args:
            x: int indices, LSB first. With num_codebooks > 1 the codebook axis is
                last (`[b, h*w, C]` or flattened), as `forward` returns them.
            bhwc: `(b, h, w, c)`, c the features of the output: D * num_codebooks,
                or, with `token_factorization`, the bits of the factor `order`.
            order: "pre" or "post", which factor `x` indexes (only with
                `token_factorization`; ignored otherwise, as in theirs).
            shape: another name for `bhwc` (their older transformer passes `shape=`).

        Returns:
            `[b, c, h, w]` codes +-1 in the layer's dtype (float32 unless converted),
            in the memory layout of `forward`'s `quantized` (`channels_last`).

        Raises:
            ValueError: an index outside [0, 2**bits), x's size not b*h*w*(c/bits),
                or a missing or unknown `order` with `token_factorization`.
        """
        bhwc = shape if bhwc is None else bhwc
        if bhwc is None:
            raise TypeError("get_codebook_entry needs bhwc=(b, h, w, c), the shape of the codes channel-last")
        b, h, w, c = (int(v) for v in bhwc)
        if self.token_factorization:
            if order not in ("pre", "post"):
                raise ValueError(
                    f"order={order!r}: with token_factorization=True pass order='pre' or "
                    "'post', the factor the indices belong to"
                )
            bits = self.factorized_bits[0 if order == "pre" else 1]
        else:
            bits = self.codebook_dim
        if c < bits or c % bits:
            raise ValueError(f"bhwc={tuple(bhwc)}: c={c} must be a multiple of the {bits} bits per code")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of indices, got {type(x).__name__}")
        if x.numel() != b * h * w * (c // bits):
            raise ValueError(
                f"x has {x.numel()} indices ({tuple(x.shape)}); bhwc={tuple(bhwc)} needs "
                f"b*h*w*(c/{bits}) = {b * h * w * (c // bits)}"
            )
        indices = x.reshape(b, h, w, c // bits)
        codes = self.backend.indices_to_codes(
            indices, self._codes_config(bits, c // bits), validation.dtype_name(self.dtype)
        )
        return _their_layout(codes.movedim(-1, 1))

    def indices_to_bits(self, x):
        """Bool bits `[..., D]` of int indices `x` `[...]`, LSB first (bit i is 2**i)."""
        codes = self.backend.indices_to_codes(x.unsqueeze(-1), self._codes_config(self.codebook_dim, 1))
        return codes > 0

    def bits_to_indices(self, bits):
        """Int64 indices `[...]` of bits `[..., D]` (bool, 0/1, or +-1 codes), LSB first."""
        if not isinstance(bits, torch.Tensor):
            raise TypeError(f"bits must be a torch.Tensor, got {type(bits).__name__}")
        if bits.ndim == 0 or bits.shape[-1] != self.codebook_dim:
            raise ValueError(
                f"bits has shape {tuple(bits.shape)}; the last axis must hold the codebook_dim={self.codebook_dim} bits"
            )
        if not bits.is_floating_point():
            bits = bits.to(torch.float32)
        return self.backend.codes_to_indices(bits, self._codes_config(self.codebook_dim, 1))[..., 0]

    def decode(self, x):
        """Codes `[..., NC*D]` (layer dtype) of int indices `x` `[..., NC]`, NC codebook heads."""
        if not isinstance(x, torch.Tensor) or x.ndim == 0:
            raise ValueError("x must be a tensor of indices [..., NC] (NC codebook heads on the last axis)")
        return self.backend.indices_to_codes(
            x, self._codes_config(self.codebook_dim, x.shape[-1]), validation.dtype_name(self.dtype)
        )
