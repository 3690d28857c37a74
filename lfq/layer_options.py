"""The arguments of the LFQ layers, validated and resolved once for every framework.

The torch `nn.Module`, the JAX module and the Keras layer take the same
arguments, named as in vector-quantize-pytorch's `LFQ` where they mean the same
thing. `layer_options` turns them into an `lfq.Config` plus the layout decisions
the layers share, so the three cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

from lfq.config import Config

__all__ = ["LAYER_ARGUMENTS", "LayerOptions", "SCHEDULE_ARGUMENTS", "layer_options", "mask_layout", "schedule_options"]


@dataclasses.dataclass(frozen=True)
class LayerOptions:
    """Resolved layer arguments.

    Attributes:
        config: the `lfq.Config` the layer runs (features last: layers move axes).
        dim: feature size of the layer's input and output (`C*D` without projections).
        has_projections: whether learned `project_in` (`dim -> C*D`) and
            `project_out` (`C*D -> dim`) exist.
        keep_num_codebooks_dim: whether indices keep their codebook axis.
        channel_first: True, False, or None (decided per input by `is_channel_first`).
    """

    config: Config
    dim: int
    has_projections: bool
    keep_num_codebooks_dim: bool
    channel_first: bool | None

    def is_channel_first(self, ndim: int) -> bool:
        """Whether an input of `ndim` axes has its features on axis 1.

        Auto (None): images `b c h w` and video `b c t h w` (ndim >= 4) are
        channel-first, sequences `b n d` channel-last.
        """
        return ndim >= 4 if self.channel_first is None else self.channel_first


def _flag(name: str, value) -> None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be None (auto), True or False")


def _codebook_dim(codebook_size, codebook_dim, dim) -> int:
    if codebook_size is None and codebook_dim is None:
        if dim is not None and not isinstance(dim, bool) and isinstance(dim, int) and dim >= 1:
            return dim  # as in vector-quantize-pytorch: dim alone means codebook_size = 2**dim
        raise ValueError(
            "pass codebook_size (a power of two, e.g. 1024) or codebook_dim (bits per "
            "codebook, e.g. 10), or dim alone (codebook_size = 2**dim): give exactly one "
            "of codebook_size and codebook_dim"
        )
    if codebook_size is None:
        return codebook_dim
    resolved = Config.from_codebook_size(codebook_size).codebook_dim
    if codebook_dim is not None and codebook_dim != resolved:
        raise ValueError(
            f"codebook_size={codebook_size} means codebook_dim={resolved}, but codebook_dim={codebook_dim} "
            "was also given: pass only one of them"
        )
    return resolved


def layer_options(
    *,
    dim=None,
    codebook_size=None,
    codebook_dim=None,
    num_codebooks=1,
    entropy_loss_weight=0.1,
    commitment_loss_weight=0.25,
    diversity_gamma=1.0,
    inv_temperature=100.0,
    spherical=False,
    codebook_scale=1.0,
    soft_clamp_input_value=None,
    straight_through_activation="identity",
    bit_order="msb",
    batch_entropy="exact",
    max_exact_bits=24,
    precision="highest",
    channel_first=None,
    keep_num_codebooks_dim=None,
    has_projections=None,
) -> LayerOptions:
    """Validate and resolve the arguments shared by every LFQ layer.

    Args:
        dim: input feature size; default `C*D`. When it differs from `C*D`, learned
            projections are created (see `has_projections`). Given alone (no
            codebook_size or codebook_dim) it also sets D = dim, as in
            vector-quantize-pytorch (`codebook_size = 2**dim`).
        codebook_size: codes per codebook, a power of two; or give `codebook_dim`.
        codebook_dim: D, bits per codebook (both may be given if they agree).
        num_codebooks: C.
        entropy_loss_weight: weight of the entropy loss (`Config.entropy_weight`).
        commitment_loss_weight: weight of the commitment loss (`Config.commitment_weight`).
        diversity_gamma: gamma of `H_sample - gamma*H_batch`.
        inv_temperature: tau of the soft assignment.
        spherical: the BSQ variant.
        codebook_scale: s, the code magnitude (`Config.scale`).
        soft_clamp_input_value: v of the soft clamp `v*tanh(z/v)` (`Config.soft_clamp`).
        straight_through_activation: f of the straight-through rule, "identity" or "tanh".
        bit_order: "msb" (default) or "lsb" index bit order.
        batch_entropy: "exact" or the upper-bound approximation "groups:G".
        max_exact_bits: largest D of the exact batch entropy.
        precision: "highest" (full float32 matrix products) or "default".
        channel_first: None = auto (see `LayerOptions.is_channel_first`); True/False forces it.
        keep_num_codebooks_dim: None = keep the codebook axis of the indices only
            when num_codebooks > 1 (image tokenizers expect `b h w` indices).
        has_projections: None = auto (when `dim != C*D`); True/False forces it.

    Raises:
        ValueError, TypeError: naming the argument, its value and the fix.
    """
    for name, value in (
        ("channel_first", channel_first),
        ("keep_num_codebooks_dim", keep_num_codebooks_dim),
        ("has_projections", has_projections),
    ):
        _flag(name, value)
    config = Config(
        codebook_dim=_codebook_dim(codebook_size, codebook_dim, dim),
        num_codebooks=num_codebooks,
        scale=codebook_scale,
        spherical=spherical,
        inv_temperature=inv_temperature,
        diversity_gamma=diversity_gamma,
        entropy_weight=entropy_loss_weight,
        commitment_weight=commitment_loss_weight,
        bit_order=bit_order,
        soft_clamp=soft_clamp_input_value,
        activation=straight_through_activation,
        batch_entropy=batch_entropy,
        max_exact_bits=max_exact_bits,
        precision=precision,
    )
    features = config.num_features
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise ValueError(f"dim={dim!r} must be a positive int (the input feature size) or None")
    dim = features if dim is None else dim
    if has_projections is False and dim != features:
        raise ValueError(
            f"has_projections=False but dim={dim} != C*D = {features}: without projections the input "
            "must have C*D features; drop has_projections (auto) or make them equal"
        )
    if keep_num_codebooks_dim is False and num_codebooks > 1:
        raise ValueError(
            f"keep_num_codebooks_dim=False with num_codebooks={num_codebooks}: the indices of several "
            "codebooks need their own axis (it needs num_codebooks == 1); use None or True"
        )
    return LayerOptions(
        config=config,
        dim=dim,
        has_projections=dim != features if has_projections is None else has_projections,
        keep_num_codebooks_dim=num_codebooks > 1 if keep_num_codebooks_dim is None else keep_num_codebooks_dim,
        channel_first=channel_first,
    )


#: Names of the arguments `layer_options` takes, in order.
LAYER_ARGUMENTS = tuple(inspect.signature(layer_options).parameters)


def mask_layout(mask_shape, tokens) -> tuple[int, ...]:
    """The shape to view a layer's mask as, so that it broadcasts to the `tokens` shape.

    A layer's token shape is its input's shape without the feature axis:
    `[b, n]` for sequences, `[b, h, w]` for images, `[b, t, h, w]` for video.
    Accepted masks (vector-quantize-pytorch takes the first and the last two):

    * per token, in the input's own layout: `tokens` itself (`[b, h, w]`);
    * per sample: `[b]` (every token of a sample shares its flag);
    * per token, flattened after the batch axis: `[b, h*w]`, `[b, t*h*w]`.

    Args:
        mask_shape: the mask's shape.
        tokens: the layer's token shape.

    Returns:
        The shape to reshape the mask to before broadcasting it to `tokens`
        (`[b, 1, ..., 1]` for a per-sample mask, `tokens` otherwise).

    No shape is ambiguous: the three layouts differ in rank, and where two
    have the same shape (sequences: `[b, n]` is both the input's layout and
    the flattened one) they mean the same tokens.

    Raises:
        ValueError: a shape that is none of these (the message lists them).
    """
    mask_shape, tokens = tuple(mask_shape), tuple(tokens)
    layouts = {"per token, the input's layout": (tokens, tokens)}
    if len(tokens) >= 2:
        layouts["per sample"] = (tokens[:1], tokens[:1] + (1,) * (len(tokens) - 1))
    if len(tokens) >= 3:
        layouts["per token, flattened after the batch axis"] = ((tokens[0], math.prod(tokens[1:])), tokens)
    matches = [view for shape, view in layouts.values() if shape == mask_shape]
    if not matches:
        accepted = ", ".join(f"{shape} ({name})" for name, (shape, _) in layouts.items())
        raise ValueError(f"mask has shape {mask_shape}; for input tokens {tokens} it must be one of: {accepted}")
    return matches[0]


#: The layers' per-call schedule arguments and the backend options they become.
SCHEDULE_ARGUMENTS = {
    "inv_temperature": "inv_temperature",
    "entropy_loss_weight": "entropy_weight",
    "commitment_loss_weight": "commitment_weight",
    "diversity_gamma": "diversity_gamma",
}


def schedule_options(**values) -> dict:
    """The layers' per-call schedule arguments (`SCHEDULE_ARGUMENTS`, None = the layer's
    value) as the backend options of `lfq.factorized.Schedule`."""
    unknown = sorted(set(values) - set(SCHEDULE_ARGUMENTS))
    if unknown:
        raise TypeError(f"unexpected schedule argument(s) {unknown}; known: {list(SCHEDULE_ARGUMENTS)}")
    return {SCHEDULE_ARGUMENTS[name]: value for name, value in values.items() if value is not None}
