"""Input checks shared by every backend, on shapes and dtype names only.

Backends call these with their native array's `shape` and dtype before any
framework arithmetic, so misuse is refused with a message that names the
argument, the value and the fix, identically in every framework. Every check
that takes a `cfg` first refuses one that is not an `lfq.Config` (`check_config`);
`check_array` and `foreign_array_error` state the foreign-array rule of
docs/spec.md ("Bad input") once for every backend.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lfq.config import Config

__all__ = [
    "FLOAT_DTYPES",
    "check_array",
    "check_codes_dtype",
    "check_config",
    "check_cotangent",
    "check_exact_batch_entropy",
    "check_features",
    "check_index_dtype",
    "check_index_range",
    "check_indices",
    "check_mask",
    "dtype_name",
    "foreign_array_error",
    "numpy_dtype",
    "program_schedule",
    "split_schedule",
    "token_shape",
]

#: Input dtypes every backend accepts (by name); all math runs in float32 or float64.
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def dtype_name(dtype) -> str:
    """Framework-neutral dtype name: "float32", "int64", "bool", ... ."""
    name = getattr(dtype, "name", None)
    if not isinstance(name, str):
        name = str(dtype)
    return name.replace("torch.", "")


def numpy_dtype(name: str):
    """The NumPy dtype of a dtype name; "bfloat16" comes from ml_dtypes (a JAX dependency)."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise TypeError("bfloat16 NumPy arrays need ml_dtypes: pip install ml_dtypes") from err
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def check_config(cfg) -> None:
    """Refuse a `cfg` that is not an `lfq.Config` (for example the dict of its fields)."""
    if not isinstance(cfg, Config):
        fix = "lfq.Config(**your_dict)" if isinstance(cfg, Mapping) else "lfq.Config(codebook_dim=..., ...)"
        raise TypeError(f"cfg must be an lfq.Config, got {type(cfg).__name__}: build one with {fix}")


def _type_name(x) -> str:
    kind = type(x)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def foreign_array_error(x, name: str, backend: str, accepts: str, convert: str | None = None) -> TypeError:
    """The TypeError for an array argument `x` that backend `backend` does not take.

    The rule (docs/spec.md, "Bad input"): a backend takes its framework's arrays
    (and NumPy arrays where its framework's own operations do: numpy, jax,
    tensorflow); Python lists, tuples and scalars and other frameworks' tensors are
    refused, never converted behind the caller's back.

    Args:
        accepts: what the backend takes, e.g. "torch.Tensor".
        convert: the framework's own conversion, e.g. "torch.as_tensor(...)".
    """
    fix = "backend.asarray(...)" + (f" or {convert}" if convert else "")
    return TypeError(
        f"{name} of type {_type_name(x)} is not an array the {backend} backend takes ({accepts}): convert it with {fix}"
    )


def check_array(
    x, name: str, backend: str, native=None, accepts: str | None = None, convert: str | None = None
) -> None:
    """Refuse an array argument of a type the backend does not take (see `foreign_array_error`).

    Args:
        native: the accepted types (an `isinstance` tuple). None: anything with a
            `shape` and a `dtype` (what a generic backend can tell), which still
            refuses Python lists, tuples and scalars.
    """
    if native is None:
        ok = hasattr(x, "shape") and hasattr(x, "dtype")
        accepts = accepts or "arrays with a shape and a dtype"
    else:
        ok = isinstance(x, native)
    if not ok:
        raise foreign_array_error(x, name, backend, accepts or "its native arrays", convert)


def check_codes_dtype(dtype) -> str:
    """The float dtype name asked of `indices_to_codes`; any other dtype is refused.

    Codes are the floats +-m, so an integer or boolean dtype (which would silently
    give 0/1 or truncated codes) is a ValueError listing the float dtypes. Dtype
    objects are accepted by name (`np.float32`, `np.dtype("float64")`).
    """
    name = dtype
    if dtype is None:  # np.dtype(None) would be float64
        name = None
    elif not isinstance(dtype, str):
        try:
            name = dtype_name(np.dtype(dtype))
        except TypeError:
            name = None
    if name not in FLOAT_DTYPES:
        raise ValueError(
            f"dtype={dtype!r} is not a float dtype name: the codes are floats +-m, use one of {', '.join(FLOAT_DTYPES)}"
        )
    return name


def check_cotangent(shape, expected, term: str) -> None:
    """Refuse a `vjp` cotangent whose shape is not the shape of `term`'s value."""
    shape, expected = tuple(shape), tuple(expected)
    if shape != expected:
        what = (
            ", which is z's shape)"
            if term == "codes"
            else "): the cotangent of a loss term must be a scalar, a number or a 0-d array"
        )
        raise ValueError(f"cotangent has shape {shape}, expected {expected} (the shape of {term}{what}")


def _axis(cfg: Config, ndim: int) -> int:
    check_config(cfg)
    if not -ndim <= cfg.feature_axis < ndim:
        raise ValueError(
            f"feature_axis={cfg.feature_axis} is out of range for z with {ndim} dimensions: "
            f"use an axis in [{-ndim}, {ndim - 1}] (default -1, channels last)"
        )
    return cfg.feature_axis % ndim


def token_shape(shape, cfg: Config) -> tuple[int, ...]:
    """Shape of the token axes: `z.shape` without the feature axis."""
    shape = tuple(shape)
    axis = _axis(cfg, len(shape))
    return shape[:axis] + shape[axis + 1 :]


def check_features(shape, dtype, cfg: Config, name: str = "z") -> None:
    """Refuse features that are not real floating point or whose feature axis is not `C*D`."""
    check_config(cfg)
    kind = dtype_name(dtype)
    if kind not in FLOAT_DTYPES:
        if kind.startswith("complex"):
            fix = "pass the real part, or split real and imaginary parts into features"
        else:
            fix = "cast it to a float dtype first, e.g. float32"
        raise TypeError(
            f"{name} has dtype {kind}; LFQ quantizes real floating-point features ({', '.join(FLOAT_DTYPES)}): {fix}"
        )
    shape = tuple(shape)
    if len(shape) == 0:
        raise ValueError(
            f"{name} is a scalar; it needs a feature axis of size C*D = {cfg.num_features}: "
            f"pass an array of shape [..., {cfg.num_features}]"
        )
    axis = _axis(cfg, len(shape))
    if shape[axis] != cfg.num_features:
        raise ValueError(
            f"{name}: expected feature axis (axis {cfg.feature_axis}) of size C*D = "
            f"{cfg.num_codebooks}*{cfg.codebook_dim} = {cfg.num_features}, got {shape[axis]} "
            f"(shape {shape}): change codebook_dim/num_codebooks, or feature_axis if the "
            "features are on another axis"
        )


def check_mask(mask_shape, mask_dtype, z_shape, cfg: Config) -> None:
    """Refuse a mask that is not boolean or not of shape `z.shape` minus the feature axis."""
    check_config(cfg)
    kind = dtype_name(mask_dtype)
    if kind != "bool":
        raise TypeError(
            f"mask has dtype {kind}; it must be boolean (True = token counts in the losses): "
            "pass mask.astype(bool) or a comparison such as lengths_mask > 0"
        )
    expected = token_shape(z_shape, cfg)
    if tuple(mask_shape) != expected:
        raise ValueError(
            f"mask has shape {tuple(mask_shape)}, expected {expected} (z.shape {tuple(z_shape)} "
            f"without the feature axis): one boolean per token"
        )


def check_indices(shape, dtype, cfg: Config) -> None:
    """Refuse indices that are not integers or whose last axis is not the C codebooks."""
    check_config(cfg)
    kind = dtype_name(dtype)
    if not (kind.startswith("int") or kind.startswith("uint")):
        raise TypeError(
            f"indices has dtype {kind}; it must be an integer array (as returned by "
            "codes_to_indices): cast with astype(int64)"
        )
    shape = tuple(shape)
    if len(shape) == 0 or shape[-1] != cfg.num_codebooks:
        raise ValueError(
            f"indices has shape {shape}; its last axis must hold the num_codebooks = "
            f"{cfg.num_codebooks} indices of each token (shape [..., {cfg.num_codebooks}])"
        )


def check_index_range(low: int, high: int, cfg: Config) -> None:
    """Refuse index values outside `[0, 2**D)` (eager code only: needs concrete values)."""
    check_config(cfg)
    size = cfg.codebook_size
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        raise ValueError(
            f"indices contains {bad}, outside [0, {size - 1}] for codebook_dim={cfg.codebook_dim} "
            f"(codebook_size={size}): check codebook_dim and bit_order of the tokens' producer"
        )


def check_index_dtype(bits: int, cfg: Config) -> None:
    """Refuse a codebook_dim whose indices do not fit the backend's signed index type."""
    check_config(cfg)
    if cfg.codebook_dim > bits - 1:
        hint = " or enable 64-bit indices (jax: jax.config.update('jax_enable_x64', True))" if bits == 32 else ""
        raise ValueError(
            f"codebook_dim={cfg.codebook_dim} does not fit int{bits} indices (at most "
            f"{bits - 1} bits): use more codebooks with fewer bits each{hint}"
        )


def check_exact_batch_entropy(cfg: Config) -> None:
    """Refuse an exact batch entropy past `max_exact_bits` bits in one group.

    The message names the cost of raising the limit (about `6 N 2**bits` flops a
    training step, with a worked number) and the alternatives.
    """
    check_config(cfg)
    widest = -(-cfg.codebook_dim // cfg.entropy_groups)
    if widest > cfg.max_exact_bits:
        groups_needed = -(-cfg.codebook_dim // cfg.max_exact_bits)
        flops = 6 * 16384 * 2**widest * cfg.num_codebooks
        raise ValueError(
            f"the exact batch entropy of codebook_dim={cfg.codebook_dim} "
            f"(batch_entropy={cfg.batch_entropy!r}) needs 2**{widest} probabilities per "
            f"codebook, past max_exact_bits={cfg.max_exact_bits}. Options: raise max_exact_bits "
            f"to {widest} (exact up to 40 bits; past 2**24 entries the histogram is computed in tiles "
            f"and never stored, but a training step costs about 6*N*2**{widest} flops per codebook: "
            f"{flops:.1e} for N=16384 tokens and {cfg.num_codebooks} codebook(s), about "
            f"{flops / 5e13:.2g} s at 50 TFLOP/s; each bit more doubles it, D=25..32 costs "
            f"{6 * 16384 * 2**25:.1e}..{6 * 16384 * 2**32:.1e} flops per codebook); use more codebooks "
            f"(num_codebooks) with fewer bits each; or choose the upper-bound approximation "
            f"batch_entropy='groups:{groups_needed}' (the sum of the exact entropies of "
            f"{groups_needed} groups of bits, O(N 2**{-(-cfg.codebook_dim // groups_needed)}))"
        )


def split_schedule(options: Mapping):
    """`(Schedule, other options)`: the per-call schedule values taken out of keyword options.

    `inv_temperature`, `diversity_gamma`, `entropy_weight` and `commitment_weight`
    may be passed per call to `entropy` / `commitment_loss` / `lfq` (and `vjp`) of
    the array backends, overriding the config's for that call. A Python number is
    checked like the config field; a 0-d floating array (a framework's scalar
    tensor, traced under a compiler) is taken as given.

    Raises:
        ValueError, TypeError: a value that is not a finite number (positive for
            `inv_temperature`) or a 0-d floating array.
    """
    from lfq.factorized import SCHEDULE_FIELDS, Schedule

    values = {}
    rest = {}
    for key, value in options.items():
        if key not in SCHEDULE_FIELDS:
            rest[key] = value
        elif value is not None:
            values[key] = _schedule_value(key, value)
    return Schedule(**values), rest


def _schedule_value(name: str, value):
    if isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be a number or a 0-d floating array, not a bool")
    if isinstance(value, (int, float, np.floating, np.integer)):
        value = float(value)
        if not np.isfinite(value) or (name == "inv_temperature" and value <= 0):
            need = "a finite number > 0" if name == "inv_temperature" else "a finite number"
            raise ValueError(f"{name}={value!r} must be {need}")
        return value
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or tuple(shape) != () or not dtype_name(dtype).startswith(("float", "bfloat")):
        raise TypeError(
            f"{name} must be a Python number or a 0-d floating array (a scalar tensor), got "
            f"{_type_name(value)} of shape {None if shape is None else tuple(shape)}: pass float(value) "
            "or a 0-d tensor"
        )
    return value


def program_schedule(cfg: Config, options: Mapping):
    """`(program config, schedule values, other options)` for a compiled program.

    The program config has the schedule fields replaced by placeholders that keep
    only what selects a different program: which weights (and gamma) are zero.
    The values (the call's, else the config's; Python floats or 0-d arrays) are
    the program's run-time inputs, so configs and calls that differ only in them
    share one compiled program.
    """
    from lfq.factorized import SCHEDULE_FIELDS

    schedule, rest = split_schedule(options)
    values = {name: schedule.value(name, cfg) for name in SCHEDULE_FIELDS}
    values = {name: float(v) if isinstance(v, (int, float)) else v for name, v in values.items()}
    placeholders = {name: 0.0 if schedule.is_zero(name, cfg) else 1.0 for name in SCHEDULE_FIELDS[1:]}
    return cfg.replace(inv_temperature=1.0, **placeholders), values, rest
