"""Bad-input behaviour (docs/spec.md section 9) and the declared dtypes.

Each error check feeds one kind of misuse to every entry point it concerns and
requires a `ValueError` or `TypeError` whose message names the offending
argument (a framework's own stack trace is not an answer). Only eager mode:
under a compiler, where raising is impossible, the documented behaviour holds.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from lfq.conformance.cases import NO_BFLOAT16, input_dtypes

from lfq.config import Config
from lfq.validation import FLOAT_DTYPES

__all__ = ["ERROR_CHECKS", "ErrorCheck", "reproducer", "run_dtype_checks", "run_error_check"]


@dataclasses.dataclass(frozen=True)
class ErrorCheck:
    """One kind of misuse.

    Attributes:
        name: report name ("errors.feature_size", ...).
        config: `lfq.Config` keyword arguments.
        z: `(shape, numpy dtype name)` of the features given (None: a valid float32 z).
        mask: `(shape, numpy dtype name)` of the mask given, or None.
        indices: the index values given to `indices_to_codes` and `code_usage`, or None.
        ops: the entry points that must refuse it.
        names: regular expressions, one of which the message must match (the argument's name).
        why: the rule, for the report.
        cfg_as_dict: give `config` as a plain dict instead of an `lfq.Config`.
        z_as_list: give z as a nested Python list (a foreign array) instead of a native array.
        codes_dtype: the dtype name given to `indices_to_codes`.
        cotangent: shape of the float32 cotangent given to `vjp` ("vjp" and "vjp_codes"), or None.
    """

    name: str
    config: dict
    ops: tuple
    names: tuple
    why: str
    z: tuple | None = None
    mask: tuple | None = None
    indices: tuple | None = None
    cfg_as_dict: bool = False
    z_as_list: bool = False
    codes_dtype: str = "float32"
    cotangent: tuple | None = None


_Z_OPS = ("quantize", "codes_to_indices", "entropy", "commitment_loss", "lfq", "vjp")
_LOSS_OPS = ("entropy", "commitment_loss", "lfq", "vjp")
_Z_NAME = (r"\bz\b",)

ERROR_CHECKS: tuple[ErrorCheck, ...] = (
    ErrorCheck(
        "errors.feature_size",
        dict(codebook_dim=5, num_codebooks=4),
        _Z_OPS,
        _Z_NAME + (r"\b20\b",),
        "wrong feature size: name z and the expected C*D = 20",
        z=((3, 16), "float32"),
    ),
    ErrorCheck(
        "errors.integer_input",
        dict(codebook_dim=4),
        _Z_OPS,
        _Z_NAME,
        "integer features are refused (TypeError naming z)",
        z=((3, 4), "int32"),
    ),
    ErrorCheck(
        "errors.complex_input",
        dict(codebook_dim=4),
        _Z_OPS,
        _Z_NAME,
        "complex features are refused (TypeError naming z)",
        z=((3, 4), "complex64"),
    ),
    ErrorCheck(
        "errors.mask_shape",
        dict(codebook_dim=4),
        _LOSS_OPS,
        (r"\bmask\b",),
        "a mask not of z.shape without the feature axis is refused",
        mask=((3, 2), "bool"),
    ),
    ErrorCheck(
        "errors.mask_dtype",
        dict(codebook_dim=4),
        _LOSS_OPS,
        (r"\bmask\b",),
        "a non-boolean mask is refused",
        mask=((3,), "float32"),
    ),
    ErrorCheck(
        "errors.index_range",
        dict(codebook_dim=4, num_codebooks=2),
        ("indices_to_codes",),
        (r"\bindices\b",),
        "an index outside [0, 2**D) is refused in eager code",
        indices=((0, 16), (-1, 3)),
    ),
    ErrorCheck(
        "errors.exact_entropy_bits",
        dict(codebook_dim=8, max_exact_bits=6),
        ("entropy", "lfq", "vjp"),
        (r"\bmax_exact_bits\b", r"\bcodebook_dim\b"),
        "D past max_exact_bits for the exact batch entropy is refused, naming the options",
    ),
    ErrorCheck(
        "errors.config_dict",
        dict(codebook_dim=2, num_codebooks=2),
        _Z_OPS + ("indices_to_codes", "code_usage"),
        (r"\bcfg\b",),
        "a dict of Config fields as cfg is refused (TypeError naming cfg and lfq.Config)",
        indices=((0, 3), (2, 1)),
        cfg_as_dict=True,
    ),
    ErrorCheck(
        "errors.code_usage_range",
        dict(codebook_dim=4),
        ("code_usage",),
        (r"\bindices\b",),
        "code_usage refuses an index outside [0, 2**D) like indices_to_codes",
        indices=((99,), (-3,)),
    ),
    ErrorCheck(
        "errors.codes_dtype",
        dict(codebook_dim=4),
        ("indices_to_codes",),
        (r"\bdtype\b",),
        "indices_to_codes refuses a non-float dtype name (codes are floats +-m)",
        indices=((0,), (15,)),
        codes_dtype="int32",
    ),
    ErrorCheck(
        "errors.foreign_array",
        dict(codebook_dim=4),
        _Z_OPS,
        _Z_NAME,
        "a Python list as z is refused (TypeError naming z), not converted or failed on",
        z_as_list=True,
    ),
    ErrorCheck(
        "errors.cotangent_shape",
        dict(codebook_dim=4),
        ("vjp", "vjp_codes"),
        (r"\bcotangent\b",),
        "a vjp cotangent not of the term's shape (z's for codes, () for a loss) is refused",
        cotangent=(3,),
    ),
)


def _call(target, op: str, z, cfg, mask, indices, check: ErrorCheck, cotangent=None):
    be = target.backend
    if op == "indices_to_codes":
        return be.indices_to_codes(indices, cfg, check.codes_dtype)
    if op == "code_usage":
        return be.code_usage(indices, cfg)
    if op == "vjp":
        return be.vjp("aux_loss", z, cfg, cotangent, mask)
    if op == "vjp_codes":
        return be.vjp("codes", z, cfg, cotangent)
    if op in ("quantize", "codes_to_indices"):
        return getattr(be, op)(z, cfg)
    return getattr(be, op)(z, cfg, mask)


def run_error_check(target, check: ErrorCheck):
    """`(passed, message, skipped)` of one misuse against every entry point of `check.ops`."""
    cfg = Config(**check.config)
    shape, dtype = check.z or ((3, cfg.num_features), "float32")
    host = np.ones(shape, dtype=dtype) * (np.arange(np.prod(shape)).reshape(shape) % 3 - 1)
    try:
        z = target.put(host.astype(dtype))
    except Exception as err:  # the backend cannot even hold such an array: the case does not arise
        return True, f"skipped: asarray of a {dtype} array raised {type(err).__name__}: {err}", True
    mask = indices = cotangent = None
    if check.mask is not None:
        mshape, mdtype = check.mask
        mask = target.put(np.ones(mshape, dtype=mdtype))
    if check.indices is not None:
        indices = target.put(np.array(check.indices, dtype=np.int64))
    if check.cotangent is not None:
        cotangent = target.put(np.ones(check.cotangent, dtype=np.float32))
    if check.z_as_list:
        z = host.astype(dtype).tolist()
    if check.cfg_as_dict:
        cfg = dict(check.config)
    problems = []
    for op in check.ops:
        try:
            _call(target, op, z, cfg, mask, indices, check, cotangent)
        except (ValueError, TypeError) as err:
            text = str(err)
            if not any(re.search(pattern, text) for pattern in check.names):
                problems.append(f"{op}: {type(err).__name__} does not name {' or '.join(check.names)}: {text!r}")
        except Exception as err:
            problems.append(f"{op}: raised {type(err).__name__} (want ValueError or TypeError): {err}")
        else:
            problems.append(f"{op}: accepted it (want ValueError or TypeError)")
    if problems:
        return False, f"{check.why}; " + "; ".join(problems), False
    return True, "", False


def run_dtype_checks(target):
    """`[(name, dtype, passed, message)]`: declared dtypes work, undeclared ones are refused.

    `passed` is None (skipped, the message says why) for a dtype the harness cannot
    make inputs in (`cases.input_dtypes`: bfloat16 without ml_dtypes).
    """
    be = target.backend
    declared = tuple(be.dtypes)
    results = []
    unknown = sorted(set(declared) - set(FLOAT_DTYPES))
    ok = bool(declared) and not unknown
    results.append(
        (
            "dtypes.declared_names",
            None,
            ok,
            "" if ok else f"dtypes={declared!r} must be a non-empty subset of {FLOAT_DTYPES}",
        )
    )
    # The shape of the default run's [4, 16] cases, so a compiling backend reuses its programs.
    cfg = Config(codebook_dim=8, num_codebooks=2)
    host = np.random.default_rng(0).standard_normal((4, 16, 16)) * 0.01
    for dtype in FLOAT_DTYPES:
        if dtype not in input_dtypes():
            results.append(("dtypes.declared" if dtype in declared else "dtypes.refused", dtype, None, NO_BFLOAT16))
        elif dtype in declared:
            try:
                out = be.lfq(target.put(_cast(host, dtype), dtype), cfg)
                got = {f: target.get(getattr(out, f)).dtype.name for f in ("codes", "aux_loss", "batch_entropy")}
                bad = {f: d for f, d in got.items() if d != dtype}
                message = "" if not bad else f"lfq on {dtype} input returned {bad}; outputs keep the input dtype"
            except Exception as err:
                message = f"declared dtype {dtype} fails: lfq raised {type(err).__name__}: {err}"
            results.append(("dtypes.declared", dtype, not message, message))
        else:
            results.append(("dtypes.refused", dtype, *_refused(target, host, dtype, cfg)))
    return results


def _cast(host, dtype):
    from lfq.validation import numpy_dtype

    return host.astype(numpy_dtype(dtype))


def _refused(target, host, dtype, cfg):
    """An undeclared dtype must be refused: by asarray, or by the operation (naming z)."""
    try:
        z = target.put(_cast(host, dtype), dtype)
    except (TypeError, ValueError):
        return True, ""
    except Exception as err:
        return False, f"asarray(..., {dtype!r}) raised {type(err).__name__} (want TypeError/ValueError): {err}"
    actual = target.get(z).dtype.name
    if actual != dtype:
        return False, (
            f"undeclared dtype {dtype}: asarray(..., {dtype!r}) silently returned {actual}; "
            "refuse it with a TypeError naming the dtype"
        )
    try:
        target.backend.lfq(z, cfg)
    except (TypeError, ValueError) as err:
        if re.search(_Z_NAME[0], str(err)) or dtype in str(err):
            return True, ""
        return False, f"undeclared dtype {dtype}: refused, but the message names neither z nor {dtype}: {err}"
    except Exception as err:
        return False, f"undeclared dtype {dtype}: raised {type(err).__name__} (want TypeError): {err}"
    return False, f"undeclared dtype {dtype} (not in dtypes={tuple(target.backend.dtypes)}) was accepted by lfq"


_CALLS = {
    "quantize": "be.quantize(z, cfg)",
    "codes_to_indices": "be.codes_to_indices(z, cfg)",
    "entropy": "be.entropy(z, cfg, mask)",
    "commitment_loss": "be.commitment_loss(z, cfg, mask)",
    "lfq": "be.lfq(z, cfg, mask)",
    "vjp": "be.vjp('aux_loss', z, cfg, cotangent, mask)",
    "vjp_codes": "be.vjp('codes', z, cfg, cotangent)",
    "indices_to_codes": "be.indices_to_codes(indices, cfg, codes_dtype)",
    "code_usage": "be.code_usage(indices, cfg)",
}


def reproducer(target, check: ErrorCheck) -> str:
    """A snippet that feeds the misuse of `check` to each of its entry points and prints the answer."""
    from lfq.conformance.report import backend_lines

    cfg = Config(**check.config)
    shape, dtype = check.z or ((3, cfg.num_features), "float32")
    lines = [
        "import numpy as np",
        "import lfq",
        *backend_lines(target),
        f"cfg = {check.config!r}" if check.cfg_as_dict else f"cfg = lfq.Config(**{check.config!r})",
        f"z = np.ones({shape!r}, {dtype!r}).tolist()"
        if check.z_as_list
        else f"z = be.asarray(np.ones({shape!r}, {dtype!r}))",
        f"mask = indices = cotangent = None; codes_dtype = {check.codes_dtype!r}",
    ]
    if check.mask is not None:
        lines.append(f"mask = be.asarray(np.ones({check.mask[0]!r}, {check.mask[1]!r}))")
    if check.indices is not None:
        lines.append(f"indices = be.asarray(np.array({check.indices!r}, dtype=np.int64))")
    if check.cotangent is not None:
        lines.append(f"cotangent = be.asarray(np.ones({check.cotangent!r}, 'float32'))")
    calls = ", ".join(f"({op!r}, lambda: {_CALLS[op]})" for op in check.ops)
    lines += [
        f"for name, call in [{calls}]:",
        "    try:",
        "        call()",
        "        print(name, 'accepted it')",
        "    except Exception as err:  # want ValueError/TypeError naming the argument",
        "        print(name, type(err).__name__, err)",
    ]
    return "\n".join(lines)
