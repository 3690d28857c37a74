"""`LFQ`: the lookup-free quantization layer as a `torch.nn.Module`.

Argument names follow vector-quantize-pytorch's `LFQ` where they mean the same
(docs/torch.md has the migration table). The layer builds one `lfq.Config` and
calls the torch backend's functional `lfq(...)`: no math is re-implemented here.

Layouts: sequences `[b, n, dim]` are channel-last; images `[b, dim, h, w]` and
video `[b, dim, t, h, w]` (ndim >= 4) are channel-first unless `channel_first`
says otherwise. Indices are `[b, n]` / `[b, h, w]` for one codebook and gain a
trailing codebook axis `[..., C]` when num_codebooks > 1 (or
`keep_num_codebooks_dim=True`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from lfq import validation
from lfq.layer_options import layer_options

from . import distributed as _dist
from .backend import TorchBackend

__all__ = ["LFQ", "LossBreakdown", "Return"]


class Return(NamedTuple):
    """Output of `LFQ.forward`.

    Attributes:
        quantized: the input's shape and layout; straight-through codes
            (projected out to `dim` when the layer has projections).
        indices: `[...tokens]` or `[...tokens, C]` int64.
        aux_loss: scalar, entropy_loss_weight * (H_sample - gamma H_batch)
            + commitment_loss_weight * commitment; 0 in eval mode unless
            `compute_loss=True`.
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    aux_loss: torch.Tensor


class LossBreakdown(NamedTuple):
    """The terms of the aux loss (scalars, nats for the entropies)."""

    per_sample_entropy: torch.Tensor
    batch_entropy: torch.Tensor
    commitment: torch.Tensor


_ACTIVATION_MODULES = {nn.Identity: "identity", nn.Tanh: "tanh"}


def _activation_name(value) -> str:
    for cls, name in _ACTIVATION_MODULES.items():
        if type(value) is cls:  # vector-quantize-pytorch passes modules
            return name
    return value  # a string; Config validates it


class LFQ(nn.Module):
    """Lookup-free quantization layer (MAGVIT-v2), exact entropy, torch backend.

    Its arguments are those of every framework's layer, documented once in
    `lfq.layer_options.layer_options` (`straight_through_activation` also takes
    `nn.Identity()` / `nn.Tanh()`).

    Args:
        projection_has_bias: bias of the projections.
        return_loss_breakdown: default of the call argument of the same name.
        distributed: sum the losses over the data-parallel group (global batch
            entropy, DDP-exact gradients). None (default) = on when
            torch.distributed is initialized with more than one process in
            `process_group`; True/False forces it.
        process_group: the group for `distributed` (default: the world).

    Call: `layer(x, mask=None, return_loss_breakdown=None, compute_loss=None)`
    returns `Return(quantized, indices, aux_loss)`, or `(Return, LossBreakdown)`
    when the breakdown is asked for. `mask` is boolean, x's shape without the
    feature axis (`[b, n]`, `[b, h, w]`); False tokens count in no loss.
    `compute_loss` defaults to `self.training`.
    """

    def __init__(self, *, dim=None, codebook_size=None, codebook_dim=None, num_codebooks=1,
                 entropy_loss_weight=0.1, commitment_loss_weight=0.25, diversity_gamma=1.0,
                 inv_temperature=100.0, spherical=False, codebook_scale=1.0,
                 soft_clamp_input_value=None, straight_through_activation="identity",
                 bit_order="msb", batch_entropy="exact", max_exact_bits=24, precision="highest",
                 channel_first=None, keep_num_codebooks_dim=None, has_projections=None,
                 projection_has_bias=True, return_loss_breakdown=False, distributed=None,
                 process_group=None):
        super().__init__()
        opts = layer_options(
            dim=dim, codebook_size=codebook_size, codebook_dim=codebook_dim, num_codebooks=num_codebooks,
            entropy_loss_weight=entropy_loss_weight, commitment_loss_weight=commitment_loss_weight,
            diversity_gamma=diversity_gamma, inv_temperature=inv_temperature, spherical=spherical,
            codebook_scale=codebook_scale, soft_clamp_input_value=soft_clamp_input_value,
            straight_through_activation=_activation_name(straight_through_activation), bit_order=bit_order,
            batch_entropy=batch_entropy, max_exact_bits=max_exact_bits, precision=precision,
            channel_first=channel_first, keep_num_codebooks_dim=keep_num_codebooks_dim,
            has_projections=has_projections)
        self.cfg, self.dim, self.has_projections = opts.config, opts.dim, opts.has_projections
        features = self.cfg.num_features
        if self.has_projections:
            self.project_in = nn.Linear(self.dim, features, bias=projection_has_bias)
            self.project_out = nn.Linear(features, self.dim, bias=projection_has_bias)
        else:
            self.project_in = self.project_out = nn.Identity()
        if distributed is not None and not isinstance(distributed, bool):
            raise TypeError(f"distributed={distributed!r} must be None (auto), True or False")
        self.options = opts
        self.keep_num_codebooks_dim = opts.keep_num_codebooks_dim
        self.channel_first = channel_first
        self.return_loss_breakdown = return_loss_breakdown
        self.distributed = distributed
        self.process_group = process_group
        self.backend = TorchBackend()
        # Empty, not saved: follows .to()/.double() so that indices_to_codes returns
        # the layer's dtype also when it has no parameters.
        self.register_buffer("_codes_like", torch.empty(0), persistent=False)

    @property
    def codebook_dim(self) -> int:
        return self.cfg.codebook_dim

    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    @property
    def num_codebooks(self) -> int:
        return self.cfg.num_codebooks

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, codebook_dim={self.codebook_dim}, num_codebooks={self.num_codebooks}, "
                f"channel_first={self.channel_first}, distributed={self.distributed}")

    def _distributed_options(self) -> dict:
        enabled = self.distributed
        if enabled is None:
            enabled = _dist.world_size(self.process_group) > 1
        return {"distributed": True, "process_group": self.process_group} if enabled else {}

    def forward(self, x, mask=None, return_loss_breakdown=None, compute_loss=None):
        """Quantize `x`; see the class docstring for shapes and the return value."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        channel_first = self.options.is_channel_first(x.ndim)
        if channel_first:
            if x.ndim < 2:
                raise ValueError(f"x has shape {tuple(x.shape)}; channel_first=True needs [b, dim, ...]")
            x = x.movedim(1, -1)
        if x.ndim == 0 or x.shape[-1] != self.dim:
            layout = "axis 1 (channel-first)" if channel_first else "the last axis (channel-last)"
            raise ValueError(
                f"x has shape {tuple(x.shape) if not channel_first else tuple(x.movedim(-1, 1).shape)}; "
                f"expected dim={self.dim} features on {layout}: check dim, or set channel_first"
            )
        h = self.project_in(x)
        # Half inputs: the backend computes in float32 anyway; asking it in float32
        # returns the losses in float32 too (a bf16 loss keeps 3 digits).
        half = h.dtype in (torch.float16, torch.bfloat16)
        work = h.float() if half else h
        compute_loss = self.training if compute_loss is None else compute_loss
        if compute_loss:
            out = self.backend.lfq(work, self.cfg, mask, **self._distributed_options())
            codes, indices = out.codes, out.indices
            breakdown = LossBreakdown(out.per_sample_entropy, out.batch_entropy, out.commitment_loss)
            aux_loss = out.aux_loss
        else:
            if mask is not None:  # same checks as in training, though no loss uses it
                if not isinstance(mask, torch.Tensor):
                    raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
                validation.check_mask(mask.shape, mask.dtype, work.shape, self.cfg)
            codes = self.backend.straight_through(work, self.cfg)
            indices = self.backend.codes_to_indices(work, self.cfg)
            aux_loss = work.new_zeros(())
            breakdown = LossBreakdown(aux_loss, aux_loss, aux_loss)
        quantized = self.project_out(codes.to(h.dtype) if half else codes)
        if channel_first:
            quantized = quantized.movedim(-1, 1)
        if not self.keep_num_codebooks_dim:
            indices = indices.squeeze(-1)
        ret = Return(quantized, indices, aux_loss)
        wants = self.return_loss_breakdown if return_loss_breakdown is None else return_loss_breakdown
        return (ret, breakdown) if wants else ret

    def indices_to_codes(self, indices, project_out: bool = True):
        """Codes of `indices` in the input layout.

        Args:
            indices: int `[...tokens]` (one codebook, axis dropped) or `[...tokens, C]`.
            project_out: apply `project_out` (to `dim` features) when the layer has projections.

        Returns:
            `[b, ..., C*D or dim]` channel-last, or `[b, C*D or dim, ...]` when the
            layer is channel-first (or, with channel_first=None, when the codes
            have ndim >= 4, i.e. image or video tokens).
        """
        if not isinstance(indices, torch.Tensor):
            raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
        if not self.keep_num_codebooks_dim:
            indices = indices.unsqueeze(-1)
        codes = self.backend.indices_to_codes(indices, self.cfg, validation.dtype_name(self._codes_like.dtype))
        if project_out and self.has_projections:
            codes = self.project_out(codes)
        channel_first = self.options.is_channel_first(codes.ndim)
        return codes.movedim(-1, 1) if channel_first else codes
