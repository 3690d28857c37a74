"""`ResidualLFQ` and `GroupedResidualLFQ`: vector-quantize-pytorch's residual LFQ stacks over lfq's `LFQ`.

Residual quantization (Zeghidour et al. 2021, Algorithm 1) with LFQ stages: stage
i quantizes what the earlier stages left, with codes scaled by 2**-i. Each stage
is an exact `LFQ` layer, so every stage's indices and losses are the spec's. The
constructor arguments, call arguments, outputs and methods are
vector-quantize-pytorch's (docs/migration.md); the stages take the same keyword
arguments as `LFQ`.
"""

from __future__ import annotations

import math
import random

import torch
from torch import nn

from . import distributed as _dist
from .module import LFQ

__all__ = ["GroupedResidualLFQ", "ResidualLFQ"]


def _dropout_seed(device) -> int:
    """A random seed, the same on every data-parallel process (summed over them)."""
    seed = torch.randint(0, 10_000, (), device=device)
    if _dist.world_size(None) > 1:
        torch.distributed.all_reduce(seed)
    return int(seed.item())


class ResidualLFQ(nn.Module):
    """A stack of `num_quantizers` LFQ stages, each quantizing the residual of the ones before.

    Args:
        dim: input feature size. When it differs from D = log2(codebook_size),
            learned projections `project_in` / `project_out` map to D and back.
        num_quantizers: Q, the number of stages; stage i has codebook scale 2**-i.
        codebook_size: codes per stage, a power of two.
        quantize_dropout: in training, keep only the first k stages of each step,
            k drawn uniformly from `quantize_dropout_cutoff_index + 1 .. Q` (one
            draw per step, the same on every data-parallel process); the dropped
            stages give index -1 and loss 0.
        quantize_dropout_cutoff_index: the fewest stages dropout keeps, minus one.
        quantize_dropout_multiple_of: round the kept count up to a multiple of this.
        soft_clamp_input_value: v of stage 0's soft clamp; halved at each stage.
        channel_first: None = auto (ndim >= 4 inputs are `[b, dim, ...]`).
        **kwargs: `LFQ` arguments every stage takes (entropy_loss_weight,
            commitment_loss_weight, inv_temperature, spherical, ...).

    Call: `forward(x, mask=None, return_all_codes=False,
    rand_quantize_dropout_fixed_seed=None)` returns `(quantized, indices, losses)`
    and, with `return_all_codes`, the codes of every stage: `quantized` has x's
    shape; `indices` is `[...tokens, Q]`; `losses` is `[Q]` (each stage's aux
    loss); all codes are `[Q, ...tokens, D]`.
    """

    def __init__(
        self,
        *,
        dim,
        num_quantizers,
        codebook_size=None,
        quantize_dropout=False,
        quantize_dropout_cutoff_index=0,
        quantize_dropout_multiple_of=1,
        soft_clamp_input_value=None,
        channel_first=None,
        **kwargs,
    ):
        super().__init__()
        if isinstance(num_quantizers, bool) or not isinstance(num_quantizers, int) or num_quantizers < 1:
            raise ValueError(f"num_quantizers={num_quantizers!r} must be an int >= 1")
        if not isinstance(quantize_dropout_cutoff_index, int) or not 0 <= quantize_dropout_cutoff_index:
            raise ValueError(f"quantize_dropout_cutoff_index={quantize_dropout_cutoff_index!r} must be an int >= 0")
        if "codebook_scale" in kwargs:
            raise TypeError("codebook_scale is set per stage (2**-i); it is not a ResidualLFQ argument")
        if codebook_size is None:
            codebook_dim = kwargs.pop("codebook_dim", None)
            if codebook_dim is None:
                raise ValueError("pass codebook_size (a power of two) or codebook_dim (bits per stage)")
            codebook_size = 2**codebook_dim
        self.layers = nn.ModuleList()
        for index in range(num_quantizers):
            self.layers.append(
                LFQ(
                    codebook_size=codebook_size,
                    codebook_scale=2.0**-index,
                    soft_clamp_input_value=soft_clamp_input_value,
                    channel_first=False,
                    **kwargs,
                )
            )
            if soft_clamp_input_value is not None:
                soft_clamp_input_value *= 0.5
        first = self.layers[0]
        if first.has_projections:
            raise ValueError(
                "the stages of ResidualLFQ have no projections of their own: pass dim (the "
                "input size) to ResidualLFQ, not a dim other than C*D to the stages"
            )
        features = first.cfg.num_features
        self.dim = dim
        self.has_projections = dim != features
        self.project_in = nn.Linear(dim, features) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(features, dim) if self.has_projections else nn.Identity()
        self.num_quantizers = num_quantizers
        self.codebook_size = first.codebook_size
        self.codebook_dim = first.codebook_dim
        self.channel_first = channel_first
        self.quantize_dropout = bool(quantize_dropout) and num_quantizers > 1
        self.quantize_dropout_cutoff_index = quantize_dropout_cutoff_index
        self.quantize_dropout_multiple_of = quantize_dropout_multiple_of

    @property
    def codebooks(self) -> torch.Tensor:
        """`[Q, 2**D, D]`: each stage's `codebook`."""
        return torch.stack([layer.codebook for layer in self.layers])

    def _is_channel_first(self, ndim: int) -> bool:
        return ndim >= 4 if self.channel_first is None else self.channel_first

    def _dropout_stop(self, seed) -> int:
        """The last stage run this step (quantize dropout)."""
        rng = random.Random(seed)
        stop = rng.randrange(self.quantize_dropout_cutoff_index, self.num_quantizers)
        if self.quantize_dropout_multiple_of != 1:
            multiple = self.quantize_dropout_multiple_of
            stop = math.ceil((stop + 1) / multiple) * multiple - 1
        return stop

    def forward(self, x, mask=None, return_all_codes=False, rand_quantize_dropout_fixed_seed=None):
        """See the class docstring."""
        channel_first = self._is_channel_first(x.ndim)
        if channel_first:
            x = x.movedim(1, -1)
        x = self.project_in(x)
        stop = self.num_quantizers - 1
        if self.training and self.quantize_dropout and torch.is_grad_enabled():
            seed = rand_quantize_dropout_fixed_seed
            stop = self._dropout_stop(_dropout_seed(x.device) if seed is None else seed)
        quantized_out = torch.zeros_like(x)
        residual = x
        all_indices, all_losses = [], []
        for index, layer in enumerate(self.layers):
            if index > stop:  # dropped: index -1, loss 0
                all_indices.append(torch.full_like(all_indices[0], -1))
                all_losses.append(torch.zeros_like(all_losses[0]))
                continue
            quantized, indices, loss = layer(residual, mask=mask)
            residual = residual - quantized.detach()
            quantized_out = quantized_out + quantized
            all_indices.append(indices)
            all_losses.append(loss)
        quantized_out = self.project_out(quantized_out)
        if channel_first:
            quantized_out = quantized_out.movedim(-1, 1).contiguous()
        ret = (quantized_out, torch.stack(all_indices, dim=-1), torch.stack(all_losses, dim=-1))
        if not return_all_codes:
            return ret
        return (*ret, self.get_codes_from_indices(ret[1]))

    def get_codes_from_indices(self, indices) -> torch.Tensor:
        """`[Q, ...tokens, D]` codes of `[...tokens, q]` indices (q <= Q; index -1 gives zeros).

        Fewer than Q columns (the coarse stages only) need `quantize_dropout`, as there.
        """
        if not isinstance(indices, torch.Tensor) or indices.is_floating_point():
            raise TypeError("indices must be an integer torch.Tensor of shape [..., num_quantizers]")
        given = indices.shape[-1]
        if given > self.num_quantizers or (given < self.num_quantizers and not self.quantize_dropout):
            raise ValueError(
                f"indices has {given} stages on its last axis, the layer {self.num_quantizers}: fewer are "
                "allowed only with quantize_dropout=True (the coarse stages of a dropout-trained stack)"
            )
        codes = []
        for index, layer in enumerate(self.layers):
            if index >= given:
                column = torch.full_like(indices[..., 0], -1)
            else:
                column = indices[..., index]
            dropped = column == -1
            stage = layer.indices_to_codes(column.masked_fill(dropped, 0), project_out=False)
            codes.append(stage.masked_fill(dropped[..., None], 0.0))
        return torch.stack(codes)

    def get_output_from_indices(self, indices) -> torch.Tensor:
        """The forward pass's `quantized` for `indices` (bitwise, for the same tokens)."""
        codes = self.get_codes_from_indices(indices)
        total = torch.zeros_like(codes[0])
        for stage in codes:  # in the forward pass's order, so the sum rounds the same way
            total = total + stage
        out = self.project_out(total)
        return out.movedim(-1, 1).contiguous() if self._is_channel_first(out.ndim) else out


class GroupedResidualLFQ(nn.Module):
    """`groups` independent `ResidualLFQ` stacks over equal slices of the features.

    Args:
        dim: input feature size, divisible by `groups`.
        groups: number of stacks.
        accept_image_fmap: the features are on axis 1 (`[b, dim, h, w]`), else last.
        **kwargs: `ResidualLFQ` arguments for every stack.

    Call: `forward(x, mask=None, return_all_codes=False)` returns
    `(quantized, indices [G, ...tokens, Q], losses [G, Q])` and, with
    `return_all_codes`, a tuple of each group's codes `[Q, ...tokens, D]`
    (vector-quantize-pytorch's structure).
    """

    def __init__(self, *, dim, groups=1, accept_image_fmap=False, **kwargs):
        super().__init__()
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or dim % groups:
            raise ValueError(f"groups={groups!r} must be an int >= 1 that divides dim={dim}")
        self.dim, self.groups, self.accept_image_fmap = dim, groups, accept_image_fmap
        kwargs.setdefault("channel_first", bool(accept_image_fmap))
        self.rvqs = nn.ModuleList(ResidualLFQ(dim=dim // groups, **kwargs) for _ in range(groups))

    @property
    def codebooks(self) -> torch.Tensor:
        return torch.stack([rvq.codebooks for rvq in self.rvqs])

    @property
    def split_dim(self) -> int:
        return 1 if self.accept_image_fmap else -1

    def get_codes_from_indices(self, indices) -> torch.Tensor:
        return torch.stack([rvq.get_codes_from_indices(part) for rvq, part in zip(self.rvqs, indices)])

    def get_output_from_indices(self, indices) -> torch.Tensor:
        parts = [rvq.get_output_from_indices(part) for rvq, part in zip(self.rvqs, indices)]
        return torch.cat(parts, dim=self.split_dim)

    def forward(self, x, mask=None, return_all_codes=False):
        if x.shape[self.split_dim] != self.dim:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; expected dim={self.dim} features on axis "
                f"{self.split_dim} (accept_image_fmap={self.accept_image_fmap})"
            )
        seed = _dropout_seed(x.device) if self.training else None  # one dropout draw for every group
        outs = [
            rvq(part, mask=mask, return_all_codes=return_all_codes, rand_quantize_dropout_fixed_seed=seed)
            for rvq, part in zip(self.rvqs, x.chunk(self.groups, dim=self.split_dim))
        ]
        quantized, indices, losses, *codes = zip(*outs)
        ret = (torch.cat(quantized, dim=self.split_dim), torch.stack(indices), torch.stack(losses))
        return (*ret, codes[0]) if codes else ret  # the codes: one [Q, ...] tensor per group, as there
