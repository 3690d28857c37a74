"""`LFQ`: the lookup-free quantization layer as a `torch.nn.Module`, a drop-in for
vector-quantize-pytorch's `LFQ`.

It takes every constructor argument, call argument, mask shape, return field,
attribute and checkpoint of vector-quantize-pytorch's `LFQ` (docs/migration.md
has the table), and computes the spec: exact entropies, a correct mask,
straight-through values exactly on the codes. The layer builds one `lfq.Config`
and calls the torch backend's functional `lfq(...)`: no LFQ math is written here.

Layouts: sequences `[b, n, dim]` are channel-last; images `[b, dim, h, w]` and
video `[b, dim, t, h, w]` (ndim >= 4) are channel-first unless `channel_first`
says otherwise. Indices are `[b, n]` / `[b, h, w]` for one codebook and gain a
trailing codebook axis `[..., C]` when num_codebooks > 1 (or
`keep_num_codebooks_dim=True`).
"""

from __future__ import annotations

import dataclasses
import types
from typing import NamedTuple

import array_api_compat.torch as torch_namespace
import torch
import torch.nn.functional as F
from torch import nn

from lfq import factorized, features, validation
from lfq.layer_options import (
    LAYER_ARGUMENTS,
    LayerArgument,
    arguments,
    bind,
    document,
    mask_layout,
    resolve,
    schedule_options,
    signature,
)

from . import distributed as _dist
from .backend import TorchBackend
from .ops import straight_through

__all__ = ["ARGUMENTS", "CosineSimLinear", "LFQ", "LossBreakdown", "Return", "TORCH_ARGUMENTS"]


class Return(NamedTuple):
    """Output of `LFQ.forward`.

    Attributes:
        quantized: the input's shape and layout; straight-through codes
            (projected out to `dim` when the layer has projections).
        indices: `[...tokens]` or `[...tokens, C]` int64.
        aux_loss: scalar, `entropy_loss_weight * (H_sample - gamma H_batch)
            + commitment_loss_weight * commitment`; 0 in eval mode unless
            `compute_loss=True`. Also readable as `entropy_aux_loss`, its name
            in vector-quantize-pytorch.
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    aux_loss: torch.Tensor

    @property
    def entropy_aux_loss(self) -> torch.Tensor:
        """`aux_loss` under vector-quantize-pytorch's name."""
        return self.aux_loss


class LossBreakdown(NamedTuple):
    """The terms of the aux loss (scalars, nats for the entropies)."""

    per_sample_entropy: torch.Tensor
    batch_entropy: torch.Tensor
    commitment: torch.Tensor


class CosineSimLinear(nn.Module):
    r"""`project_in` of `cosine_sim_project_in=True`: $s\,\hat x \hat W$, unit rows of x, unit columns of W.

    Its parameter is `weight` of shape `[dim_in, dim_out]`, as in
    vector-quantize-pytorch, so that its checkpoints load.
    """

    def __init__(self, dim_in: int, dim_out: int, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.randn(dim_in, dim_out))

    def forward(self, x):
        return (F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=0)) * self.scale


_BUILTIN_ACTIVATIONS = {nn.Identity: "identity", nn.Tanh: "tanh"}
_ACTIVATION_FUNCTIONS = {torch.tanh: "tanh", F.tanh: "tanh"}
_ACTIVATION_MODULES = {"identity": nn.Identity, "tanh": nn.Tanh}


def _activation(value):
    """`(Config.activation, custom callable or None, module to keep as .activation)`."""
    if isinstance(value, str):
        return value, None, _ACTIVATION_MODULES.get(value, nn.Identity)()
    for cls, name in _BUILTIN_ACTIVATIONS.items():
        if type(value) is cls:
            return name, None, value
    if value in _ACTIVATION_FUNCTIONS:
        return _ACTIVATION_FUNCTIONS[value], None, value
    if callable(value):  # any module or function: its gradient through a custom path
        return "identity", value, value
    raise TypeError(f"straight_through_activation={value!r} must be a module, a callable, 'identity' or 'tanh'")


#: The torch layer's own arguments: vector-quantize-pytorch's that the other frameworks lack, and
#: torch.distributed's.
TORCH_ARGUMENTS = (
    LayerArgument(
        "frac_per_sample_entropy",
        1.0,
        "accepted for compatibility (0 < value <= 1); the exact entropy needs no sampled subset of "
        "tokens, so it changes nothing.",
        "float",
    ),
    LayerArgument(
        "cosine_sim_project_in",
        False,
        "`project_in` is a `CosineSimLinear`, scaled by `cosine_sim_project_in_scale`.",
        "bool",
    ),
    LayerArgument(
        "cosine_sim_project_in_scale",
        None,
        "the scale of the cosine projection; None: `codebook_scale`.",
        "float | None",
    ),
    LayerArgument(
        "experimental_softplus_entropy_loss",
        False,
        "the entropy term of the aux loss is softplus(H_sample - gamma H_batch + entropy_loss_offset).",
        "bool",
    ),
    LayerArgument("entropy_loss_offset", 5.0, "the offset of the softplus variant.", "float"),
    LayerArgument("force_quantization_f32", True, "accepted; half inputs are always computed in float32.", "bool"),
    LayerArgument(
        "orthogonal_rotation",
        False,
        "a fixed random orthogonal `[D, D]` matrix (buffer `orthogonal_rot`) rotates each codebook's "
        "features before quantizing and the codes back after.",
        "bool",
    ),
    LayerArgument(
        "distributed",
        None,
        "sum the losses over the data-parallel group (global batch entropy, DDP-exact gradients). "
        "None (auto) = on when torch.distributed is initialized with more than one process in "
        "`process_group`; True/False forces it.",
        "bool | None",
    ),
    LayerArgument("process_group", None, "the group for `distributed`; None: the world.", "Any"),
)

_STRAIGHT_THROUGH = dataclasses.replace(
    arguments("straight_through_activation")[0],
    doc='f of the straight-through rule: "identity", "tanh", or any module or callable '
    "(`nn.Identity()`, `nn.Tanh()`, `nn.SiLU()`, a function): the codes' value is exactly the code, "
    "their gradient is `f'(x) * upstream`.",
    annotation="str | Callable",
)

#: vector-quantize-pytorch's `LFQ` arguments, in its order.
_VQP_ORDER = """
dim codebook_size entropy_loss_weight commitment_loss_weight diversity_gamma
straight_through_activation num_codebooks keep_num_codebooks_dim codebook_scale
frac_per_sample_entropy has_projections projection_has_bias soft_clamp_input_value
cosine_sim_project_in cosine_sim_project_in_scale channel_first experimental_softplus_entropy_loss
entropy_loss_offset spherical force_quantization_f32 orthogonal_rotation
""".split()
_RECORDS = {r.name: r for r in (*LAYER_ARGUMENTS, *TORCH_ARGUMENTS, _STRAIGHT_THROUGH)}
#: Every argument of `LFQ`, in the order of its signature: vector-quantize-pytorch's, then lfq's.
ARGUMENTS = tuple(_RECORDS[name] for name in _VQP_ORDER) + tuple(
    record for name, record in _RECORDS.items() if name not in _VQP_ORDER
)
_SIGNATURE = signature(ARGUMENTS, self_=True)


@document(ARGUMENTS)
class LFQ(nn.Module):
    """Lookup-free quantization layer (MAGVIT-v2), exact entropy, torch backend.

    Takes every argument of vector-quantize-pytorch's `LFQ` (keywords only, in
    its order; docs/migration.md says what each does here), then lfq's; the
    arguments shared with the other frameworks' layers are declared once in
    `lfq.layer_options.LAYER_ARGUMENTS`.

    Args:

    Call: `layer(x, inv_temperature=None, return_loss_breakdown=None, mask=None,
    compute_loss=None, *, entropy_loss_weight=None, commitment_loss_weight=None,
    diversity_gamma=None)` (vector-quantize-pytorch's positional order) returns
    `Return(quantized, indices, aux_loss)`, or `(Return, LossBreakdown)` when the
    breakdown is asked for. The schedule arguments (a float or a 0-d tensor)
    override the layer's values for this call; they never recompile a compiled
    step. `mask` is boolean: per token (`[b, n]`, `[b, h, w]`, `[b, t, h, w]`),
    per token flattened (`[b, h*w]`, `[b, t*h*w]`) or per sample (`[b]`); False
    tokens count in no loss. `compute_loss` defaults to `self.training`.

    Checkpoints: the persistent buffer `mask` holds the index weight of each bit
    (vector-quantize-pytorch's buffer of the same name); state dicts of
    vector-quantize-pytorch's `LFQ` load with `strict=True`, and the derived
    buffers `codebook` / `zero` that some of its versions saved are accepted.
    """

    def __init__(self, **arguments):
        super().__init__()
        args = types.SimpleNamespace(**bind(_SIGNATURE, arguments, "LFQ")[0])
        activation_name, self._custom_activation, activation = _activation(args.straight_through_activation)
        opts = resolve({**vars(args), "straight_through_activation": activation_name})
        frac = args.frac_per_sample_entropy
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac <= 1:
            raise ValueError(f"frac_per_sample_entropy={frac!r} must be in (0, 1]")
        if args.distributed is not None and not isinstance(args.distributed, bool):
            raise TypeError(f"distributed={args.distributed!r} must be None (auto), True or False")
        self.cfg, self.dim, self.has_projections = opts.config, opts.dim, opts.has_projections
        features_ = self.cfg.num_features
        if self.has_projections:
            if args.cosine_sim_project_in:
                scale = args.cosine_sim_project_in_scale
                self.project_in = CosineSimLinear(self.dim, features_, args.codebook_scale if scale is None else scale)
            else:
                self.project_in = nn.Linear(self.dim, features_, bias=args.projection_has_bias)
            self.project_out = nn.Linear(features_, self.dim, bias=args.projection_has_bias)
        else:
            self.project_in = self.project_out = nn.Identity()
        self.activation = activation
        self.options = opts
        self.keep_num_codebooks_dim = opts.keep_num_codebooks_dim
        self.channel_first = args.channel_first
        self.frac_per_sample_entropy = frac
        self.experimental_softplus_entropy_loss = bool(args.experimental_softplus_entropy_loss)
        self.entropy_loss_offset = float(args.entropy_loss_offset)
        self.force_quantization_f32 = args.force_quantization_f32
        self.orthogonal_rotation = args.orthogonal_rotation
        self.return_loss_breakdown = args.return_loss_breakdown
        self.distributed = args.distributed
        self.process_group = args.process_group
        self.backend = TorchBackend()
        # vector-quantize-pytorch's buffers: `mask` (saved) holds each bit's index weight;
        # `zero` (not saved) follows .to()/.double(), so it also gives the layer's dtype.
        self.register_buffer("mask", torch.tensor(features.bit_weights(self.cfg), dtype=torch.int64))
        self.register_buffer("zero", torch.tensor(0.0), persistent=False)
        if args.orthogonal_rotation:
            rotation = torch.empty(self.cfg.codebook_dim, self.cfg.codebook_dim)
            nn.init.orthogonal_(rotation)
            self.register_buffer("orthogonal_rot", rotation)

    __init__.__signature__ = _SIGNATURE  # type: ignore[attr-defined]  # help() shows the table's arguments

    # ------------------------------------------------------------ attributes

    @property
    def codebook_dim(self) -> int:
        return self.cfg.codebook_dim

    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    @property
    def num_codebooks(self) -> int:
        return self.cfg.num_codebooks

    @property
    def spherical(self) -> bool:
        return self.cfg.spherical

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of `codebook` and of `indices_to_codes` (follows `.to()`, `.double()`)."""
        return self.zero.dtype

    @property
    def codebook(self) -> torch.Tensor:
        """`[2**D, D]`: every code's entries `+-codebook_scale`, row = index (bit order of the config).

        As in vector-quantize-pytorch these are the sign patterns before the
        spherical normalization (`indices_to_codes` gives the normalized codes).
        Made on request (`2**D * D` entries), not stored.
        """
        cfg = self.cfg.replace(num_codebooks=1, spherical=False)
        index = torch.arange(self.codebook_size, device=self.zero.device)[:, None]
        return self.backend.indices_to_codes(index, cfg, validation.dtype_name(self.dtype))

    def _schedule_property(name):  # noqa: N805 - builds properties at class creation
        field = arguments(name)[0].config_field

        def get(self):
            return getattr(self.cfg, field)

        def set_(self, value):
            self.cfg = self.cfg.replace(**{field: value})
            self.options = dataclasses.replace(self.options, config=self.cfg)

        return property(get, set_, doc=f"`Config.{field}`; assigning it changes the layer's config.")

    entropy_loss_weight = _schedule_property("entropy_loss_weight")
    commitment_loss_weight = _schedule_property("commitment_loss_weight")
    diversity_gamma = _schedule_property("diversity_gamma")
    inv_temperature = _schedule_property("inv_temperature")
    codebook_scale = _schedule_property("codebook_scale")
    soft_clamp_input_value = _schedule_property("soft_clamp_input_value")
    del _schedule_property

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_dim={self.codebook_dim}, num_codebooks={self.num_codebooks}, "
            f"channel_first={self.channel_first}, distributed={self.distributed}"
        )

    # ---------------------------------------------------------- checkpoints

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        for name in ("codebook", "zero"):  # derived buffers that some vector-quantize-pytorch versions saved
            state_dict.pop(prefix + name, None)
        key = prefix + "mask"
        saved = state_dict.get(key)
        if saved is None:  # a checkpoint of an lfq version without the buffer
            state_dict[key] = self.mask
        elif saved.shape == self.mask.shape and not torch.equal(saved.to(self.mask), self.mask):
            error_msgs.append(
                f"{key}: the checkpoint's bit weights {saved.tolist()} are not this layer's "
                f"{self.mask.tolist()} (bit_order={self.cfg.bit_order!r}): build the layer with the bit "
                "order the checkpoint was trained with ('lsb' for weights 1, 2, 4, ...)"
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # --------------------------------------------------------------- forward

    def _distributed_options(self) -> dict:
        return _dist.layer_options(self.distributed, self.process_group)

    @staticmethod
    def _compiled_schedule(options: dict, device) -> dict:
        """The backend's schedule options; under torch.compile, as tensors (graph inputs that
        change without recompiling, not constants)."""
        if torch.compiler.is_compiling():
            for name, value in options.items():
                if not isinstance(value, torch.Tensor):
                    # ones * value, not scalar_tensor(value): inductor specializes the latter on the value
                    options[name] = torch.ones((), dtype=torch.float64, device=device) * value
        return options

    def _token_mask(self, mask, tokens: tuple):
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        view = mask_layout(mask.shape, tokens)
        return mask if tuple(mask.shape) == tokens else mask.reshape(view).expand(tokens)

    def _rotate(self, x, inverse: bool):
        """Each codebook's `[D]` features times the rotation (or its transpose)."""
        rotation = self.orthogonal_rot.to(x.dtype)
        groups = x.unflatten(-1, (self.num_codebooks, self.codebook_dim))
        return (groups @ (rotation.t() if inverse else rotation)).flatten(-2)

    def _custom_straight_through(self, work, codes, cfg):
        """Codes' value with the gradient of the user's activation at the transformed features."""
        x = self.backend.transformed_features(work, cfg)  # [N, C, D], soft clamp / sphere applied
        carrier = self._custom_activation(x).reshape(work.shape)
        return straight_through(codes.detach(), carrier.to(codes.dtype))

    def forward(
        self,
        x,
        inv_temperature=None,
        return_loss_breakdown=None,
        mask=None,
        compute_loss=None,
        *,
        entropy_loss_weight=None,
        commitment_loss_weight=None,
        diversity_gamma=None,
    ):
        """Quantize `x`; see the class docstring for shapes and the return value."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if isinstance(inv_temperature, torch.Tensor) and (
            inv_temperature.ndim != 0 or not inv_temperature.is_floating_point()
        ):
            raise TypeError(
                f"inv_temperature got a {tuple(inv_temperature.shape)} {inv_temperature.dtype} tensor: the second "
                "positional argument of forward is inv_temperature (vector-quantize-pytorch's order); pass a "
                "mask as mask=..."
            )
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
        if mask is not None:
            mask = self._token_mask(mask, tuple(x.shape[:-1]))
        cfg = self.cfg
        h = self.project_in(x)
        if self.orthogonal_rotation:  # vector-quantize-pytorch's order: clamp, rotate, then the rest
            if cfg.soft_clamp is not None:
                h = features.soft_clamp(h, cfg.soft_clamp, torch_namespace)
                cfg = cfg.replace(soft_clamp=None)
            h = self._rotate(h, inverse=False)
        # Half inputs: the backend computes in float32 anyway; asking it in float32
        # returns the losses in float32 too (a bf16 loss keeps 3 digits).
        half = h.dtype in (torch.float16, torch.bfloat16)
        work = h.float() if half else h
        schedule = self._compiled_schedule(
            schedule_options(
                inv_temperature=inv_temperature,
                entropy_loss_weight=entropy_loss_weight,
                commitment_loss_weight=commitment_loss_weight,
                diversity_gamma=diversity_gamma,
            ),
            work.device,
        )
        compute_loss = self.training if compute_loss is None else compute_loss
        if compute_loss:
            out = self.backend.lfq(work, cfg, mask, **schedule, **self._distributed_options())
            codes, indices = out.codes, out.indices
            breakdown = LossBreakdown(out.per_sample_entropy, out.batch_entropy, out.commitment_loss)
            aux_loss = out.aux_loss
            if self.experimental_softplus_entropy_loss:
                aux_loss = factorized.aux_loss(
                    *breakdown,
                    cfg,
                    torch_namespace,
                    validation.split_schedule(schedule)[0],
                    softplus_offset=self.entropy_loss_offset,
                )
        else:
            if mask is not None:  # same checks as in training, though no loss uses it
                validation.check_mask(mask.shape, mask.dtype, work.shape, cfg)
            codes = self.backend.straight_through(work, cfg)
            indices = self.backend.codes_to_indices(work, cfg)
            aux_loss = work.new_zeros(())
            breakdown = LossBreakdown(aux_loss, aux_loss, aux_loss)
        if self._custom_activation is not None:
            codes = self._custom_straight_through(work, codes, cfg)
        codes = codes.to(h.dtype) if half else codes
        if self.orthogonal_rotation:
            codes = self._rotate(codes, inverse=True)
        quantized = self.project_out(codes)
        if channel_first:  # contiguous, as indices_to_codes returns it: one memory layout for decoders
            quantized = quantized.movedim(-1, 1).contiguous()
        if not self.keep_num_codebooks_dim:
            indices = indices.squeeze(-1)
        ret = Return(quantized, indices, aux_loss)
        wants = self.return_loss_breakdown if return_loss_breakdown is None else return_loss_breakdown
        return (ret, breakdown) if wants else ret

    def indices_to_codes(self, indices, project_out: bool = True):
        """Codes of `indices` in the input layout, as the forward pass lays them out.

        Args:
            indices: int `[...tokens]` (one codebook, axis dropped) or `[...tokens, C]`.
            project_out: apply `project_out` (to `dim` features) when the layer has projections.

        Returns:
            `[b, ..., C*D or dim]` channel-last, or `[b, C*D or dim, ...]` when the
            layer is channel-first (or, with channel_first=None, when the codes
            have ndim >= 4, i.e. image or video tokens), contiguous. Same values,
            shape and strides as the forward pass's `quantized` for the same
            tokens (from a contiguous input), so a decoder fed either gives bitwise
            the same output.
        """
        if not isinstance(indices, torch.Tensor):
            raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
        if not self.keep_num_codebooks_dim:
            indices = indices.unsqueeze(-1)
        codes = self.backend.indices_to_codes(indices, self.cfg, validation.dtype_name(self.dtype))
        if self.orthogonal_rotation:
            codes = self._rotate(codes, inverse=True)
        if project_out and self.has_projections:
            codes = self.project_out(codes)
        channel_first = self.options.is_channel_first(codes.ndim)
        return codes.movedim(-1, 1).contiguous() if channel_first else codes
