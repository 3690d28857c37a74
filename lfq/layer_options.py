"""The arguments of the LFQ layers: declared once, validated and resolved once for every framework.

`LAYER_ARGUMENTS` is the table of the arguments every framework's layer takes
(the torch `nn.Module`, the plain JAX module, the Flax NNX and Linen modules,
the Keras layer), named as in vector-quantize-pytorch's `LFQ` where they mean
the same thing: each `LayerArgument` gives a name, its default and its meaning.
The layers build their signatures and the "Args:" section of their docstrings
from it (`signature`, `document`, `declare_fields`), so that `help()` on any of
them lists every argument, and a new option is one declaration here plus what
its framework does with it. `layer_options` turns the arguments into an
`lfq.Config` plus the layout decisions the layers share, so the layers cannot
drift apart; `schedule_options` turns a call's schedule arguments into the
backend's options.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import textwrap
from typing import Any

from lfq.config import Config

__all__ = [
    "LAYER_ARGUMENTS",
    "LayerArgument",
    "LayerOptions",
    "SCHEDULE_ARGUMENTS",
    "arguments",
    "bind",
    "declare_fields",
    "document",
    "layer_options",
    "mask_layout",
    "schedule_options",
    "signature",
]


@dataclasses.dataclass(frozen=True)
class LayerArgument:
    """One constructor argument of a layer.

    Attributes:
        name: the keyword.
        default: its default value.
        doc: its meaning, one paragraph (the text of the "Args:" entry).
        annotation: its type as text (shown in signatures and dataclass fields).
        config_field: the `lfq.Config` field it sets, where it sets one.
        per_call: whether a call may override it (a schedule value, see
            `schedule_options`; `config_field` is then the backend's option name).
    """

    name: str
    default: Any
    doc: str
    annotation: str = "Any"
    config_field: str | None = None
    per_call: bool = False


_A = LayerArgument

#: The arguments of every framework's LFQ layer, in the order of their signatures.
LAYER_ARGUMENTS: tuple[LayerArgument, ...] = (
    _A(
        "dim",
        None,
        "input feature size; default `C*D`. When it differs from `C*D`, learned projections `project_in` "
        "(`dim -> C*D`) and `project_out` (`C*D -> dim`) are created (see `has_projections`). Given alone "
        "(no codebook_size or codebook_dim) it also sets D = dim, as in vector-quantize-pytorch "
        "(`codebook_size = 2**dim`).",
        "int | None",
    ),
    _A("codebook_size", None, "codes per codebook, a power of two (`2**D`); or give `codebook_dim`.", "int | None"),
    _A(
        "codebook_dim",
        None,
        "D, bits per codebook (codebook_size and codebook_dim may both be given if they agree).",
        "int | None",
        "codebook_dim",
    ),
    _A(
        "num_codebooks",
        1,
        "C, the number of codebooks; codebook k owns features `k*D .. k*D+D-1`.",
        "int",
        "num_codebooks",
    ),
    _A(
        "entropy_loss_weight",
        0.1,
        "weight of the entropy term `H_sample - gamma*H_batch` in the aux loss.",
        "float",
        "entropy_weight",
        per_call=True,
    ),
    _A(
        "commitment_loss_weight",
        0.25,
        "weight of the commitment loss (mean squared distance of the features to their codes) in the aux "
        "loss; vector-quantize-pytorch's default is 0.",
        "float",
        "commitment_weight",
        per_call=True,
    ),
    _A(
        "diversity_gamma",
        1.0,
        "gamma of the entropy term `H_sample - gamma*H_batch`.",
        "float",
        "diversity_gamma",
        per_call=True,
    ),
    _A(
        "inv_temperature",
        100.0,
        "tau, the inverse temperature of the soft assignment (logits `2*tau*x.c`).",
        "float",
        "inv_temperature",
        per_call=True,
    ),
    _A(
        "spherical",
        False,
        "the BSQ variant: features and codes are normalized per codebook to the unit sphere.",
        "bool",
        "spherical",
    ),
    _A("codebook_scale", 1.0, "s, the magnitude of the code entries (+-s).", "float", "scale"),
    _A(
        "soft_clamp_input_value",
        None,
        "v of the soft clamp `v*tanh(z/v)` of the features; None: no clamp.",
        "float | None",
        "soft_clamp",
    ),
    _A(
        "straight_through_activation",
        "identity",
        'f of the straight-through rule (codes with the gradient of f), "identity" or "tanh".',
        "str",
        "activation",
    ),
    _A(
        "bit_order",
        "msb",
        '"msb" (the first feature is the highest bit of the index) or "lsb".',
        "str",
        "bit_order",
    ),
    _A(
        "batch_entropy",
        "exact",
        '"exact", or "groups:G", the upper bound over G groups of bits (large D).',
        "str",
        "batch_entropy",
    ),
    _A(
        "max_exact_bits",
        24,
        'the largest D of the exact batch entropy (larger D need batch_entropy="groups:G").',
        "int",
        "max_exact_bits",
    ),
    _A(
        "precision",
        "highest",
        '"highest" (full float32 matrix products) or "default" (the device\'s fastest).',
        "str",
        "precision",
    ),
    _A(
        "channel_first",
        None,
        "None (auto): images `[b, dim, h, w]` and video `[b, dim, t, h, w]` (ndim >= 4) are channel-first, "
        "sequences `[b, n, dim]` channel-last; True/False forces the layout.",
        "bool | None",
    ),
    _A(
        "keep_num_codebooks_dim",
        None,
        "None (auto): the indices keep their codebook axis `[..., C]` only when num_codebooks > 1 (image "
        "tokenizers expect `[b, h, w]` indices); True/False forces it.",
        "bool | None",
    ),
    _A(
        "has_projections",
        None,
        "None (auto): projections exist when `dim != C*D`; True/False forces them.",
        "bool | None",
    ),
    _A("projection_has_bias", True, "whether the projections have a bias.", "bool"),
    _A(
        "return_loss_breakdown",
        False,
        "default of the call argument of the same name: also return the unweighted loss terms.",
        "bool",
    ),
)
del _A

_TABLE = {argument.name: argument for argument in LAYER_ARGUMENTS}

#: The arguments `layer_options` resolves (the table's, less the layers' own plumbing).
_RESOLVED = tuple(name for name in _TABLE if name not in ("projection_has_bias", "return_loss_breakdown"))


def arguments(*names: str) -> tuple[LayerArgument, ...]:
    """The table's records of `names` (all of them when none is given), in the order given."""
    return LAYER_ARGUMENTS if not names else tuple(_TABLE[name] for name in names)


def signature(*groups, order=None, var_keyword: str | None = None, self_: bool = False) -> inspect.Signature:
    """A keyword-only signature of the `LayerArgument` records in `groups`.

    Args:
        *groups: sequences of `LayerArgument`.
        order: names in the order to list them (default: the groups' order); it
            must name every record.
        var_keyword: the name of a trailing `**` parameter, if any.
        self_: start with a positional `self` (for an `__init__`).
    """
    records = {record.name: record for group in groups for record in group}
    if order is not None:
        if sorted(order) != sorted(records):
            raise ValueError(f"order lists {sorted(set(order) ^ set(records))} differently from the records")
        records = {name: records[name] for name in order}
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] if self_ else []
    params += [
        inspect.Parameter(r.name, inspect.Parameter.KEYWORD_ONLY, default=r.default, annotation=r.annotation)
        for r in records.values()
    ]
    if var_keyword:
        params.append(inspect.Parameter(var_keyword, inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params)


def bind(sig: inspect.Signature, given: dict, owner: str) -> tuple[dict, dict]:
    """`(values, rest)`: every keyword-only argument of `sig` (given, else its default), and the
    given keywords that are not in `sig` (for a `**` parameter).

    Raises:
        TypeError: a keyword not in `sig` when `sig` has no `**` parameter, as Python would.
    """
    names = [n for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    rest = {k: v for k, v in given.items() if k not in names}
    if rest and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        hints = {k: difflib.get_close_matches(k, names, 1) for k in sorted(rest)}
        raise TypeError(
            f"{owner}() got unexpected keyword argument(s) "
            + ", ".join(f"{k!r}" + (f" (did you mean {m[0]!r}?)" if m else "") for k, m in hints.items())
            + f"; help({owner}) lists its arguments"
        )
    return {n: given.get(n, sig.parameters[n].default) for n in names}, rest


def _entries(records, indent: str) -> str:
    lines = []
    for record in records:
        text = f"{record.name}: {record.doc} Default: {record.default!r}."
        lines.append(
            textwrap.fill(text, 100, initial_indent=indent, subsequent_indent=indent + "    ", break_long_words=False)
        )
    return "\n".join(lines) + "\n"


def document(*groups, marker: str = "Args:", last: bool = False):
    """Decorator: insert the entries of the records in `groups` into the docstring's "Args:"
    section (its `marker` line): first, or after the docstring's own entries when `last`."""

    def decorate(obj):
        doc = obj.__doc__ or ""
        at = doc.find(marker + "\n")
        if at < 0:
            raise ValueError(f"{getattr(obj, '__qualname__', obj)}'s docstring has no {marker!r} line")
        line_start = doc.rfind("\n", 0, at) + 1
        indent = doc[line_start:at] + "    "
        end = at + len(marker) + 1
        if last:  # the section ends at its first blank line
            blank = doc.find("\n\n", end - 1)
            end = len(doc) if blank < 0 else blank + 1
        obj.__doc__ = doc[:end] + _entries([r for group in groups for r in group], indent) + doc[end:]
        return obj

    return decorate


def declare_fields(namespace: dict, records=LAYER_ARGUMENTS) -> None:
    """Declare the records as dataclass fields (annotation and default) in a class body:
    `declare_fields(locals())` as the first statement of a dataclass or Flax Linen module."""
    namespace.setdefault("__annotations__", {}).update({r.name: r.annotation for r in records})
    namespace.update({r.name: r.default for r in records})


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


@document(arguments(*_RESOLVED))
def layer_options(**given) -> LayerOptions:
    """Validate and resolve the arguments shared by every LFQ layer (keywords only).

    Args:

    Raises:
        ValueError, TypeError: naming the argument, its value and the fix.
    """
    values, _ = bind(layer_options.__signature__, given, "layer_options")
    for name in ("channel_first", "keep_num_codebooks_dim", "has_projections"):
        _flag(name, values[name])
    fields: dict[str, Any] = {}
    for name in _RESOLVED:
        field = _TABLE[name].config_field
        if field:
            fields[field] = values[name]
    fields["codebook_dim"] = _codebook_dim(values["codebook_size"], values["codebook_dim"], values["dim"])
    config = Config(**fields)
    features = config.num_features
    dim, num_codebooks = values["dim"], values["num_codebooks"]
    has_projections, keep = values["has_projections"], values["keep_num_codebooks_dim"]
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise ValueError(f"dim={dim!r} must be a positive int (the input feature size) or None")
    dim = features if dim is None else dim
    if has_projections is False and dim != features:
        raise ValueError(
            f"has_projections=False but dim={dim} != C*D = {features}: without projections the input "
            "must have C*D features; drop has_projections (auto) or make them equal"
        )
    if keep is False and num_codebooks > 1:
        raise ValueError(
            f"keep_num_codebooks_dim=False with num_codebooks={num_codebooks}: the indices of several "
            "codebooks need their own axis (it needs num_codebooks == 1); use None or True"
        )
    return LayerOptions(
        config=config,
        dim=dim,
        has_projections=dim != features if has_projections is None else has_projections,
        keep_num_codebooks_dim=num_codebooks > 1 if keep is None else keep,
        channel_first=values["channel_first"],
    )


layer_options.__signature__ = signature(arguments(*_RESOLVED))


def resolve(values: dict) -> LayerOptions:
    """`layer_options` of the table's arguments found in `values` (a layer's bound arguments)."""
    return layer_options(**{name: values[name] for name in _RESOLVED})


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


#: The layers' per-call schedule arguments and the backend options (`lfq.factorized.Schedule`
#: fields) they set: the table's `per_call` records.
SCHEDULE_ARGUMENTS = {r.name: r.config_field for r in LAYER_ARGUMENTS if r.per_call}


def schedule_options(**values) -> dict:
    """A call's schedule arguments as the backend's per-call options, the one place they are named.

    Args:
        **values: the layer's call arguments of `SCHEDULE_ARGUMENTS` (`inv_temperature=`,
            `entropy_loss_weight=`, ...); None keeps the layer's value.

    Returns:
        Keyword options of the backends' `lfq` / `entropy` / `commitment_loss`
        (the fields of `lfq.factorized.Schedule`: `inv_temperature`,
        `diversity_gamma`, `entropy_weight`, `commitment_weight`), without the Nones.
    """
    unknown = sorted(set(values) - set(SCHEDULE_ARGUMENTS))
    if unknown:
        raise TypeError(f"unexpected schedule argument(s) {unknown}; known: {list(SCHEDULE_ARGUMENTS)}")
    return {SCHEDULE_ARGUMENTS[name]: value for name, value in values.items() if value is not None}
