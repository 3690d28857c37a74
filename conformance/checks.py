"""The value and gradient checks: every interface operation against the reference.

A check is data (`Spec`): which operation, with which arguments, which part of
its output, compared how. The same spec runs the backend, the oracle
(`lfq.reference`, which has the same function names and signatures, on the
float64 input) and writes the reproducer snippet, so the three cannot disagree.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from lfq.conformance import compare
from lfq.conformance.cases import Case

from lfq import reference
from lfq.interface import LOSS_TERMS

__all__ = ["COMPILED_DEFAULT", "SPECS", "Oracle", "Spec", "call", "evaluate", "oracle"]


@dataclasses.dataclass(frozen=True)
class Spec:
    """One check.

    Attributes:
        name: the check's name in reports ("entropy.batch_entropy", "vjp.codes", ...).
        group: "values" (codes and indices), "losses", "usage", "grads" (loss-term
            gradients) or "st_grad" (straight-through gradient); cases skip groups.
        op: the interface operation.
        args: symbolic arguments: "z", "cfg", "mask", "indices", "dtype",
            "cotangent", "none", or "'text'" for a string literal.
        pick: which output: None (all), an int (tuple position) or a field name.
        kind: comparison: "bits" (codes), "indices", "loss", "grad", "usage".
    """

    name: str
    group: str
    op: str
    args: tuple
    pick: object
    kind: str


_Z, _ZM = ("z", "cfg"), ("z", "cfg", "mask")
SPECS: tuple[Spec, ...] = (
    Spec("quantize", "values", "quantize", _Z, None, "bits"),
    Spec("codes_to_indices", "values", "codes_to_indices", _Z, None, "indices"),
    Spec("indices_to_codes", "values", "indices_to_codes", ("indices", "cfg", "dtype"), None, "bits"),
    Spec("lfq.codes", "values", "lfq", _ZM, "codes", "bits"),
    Spec("lfq.indices", "values", "lfq", _ZM, "indices", "indices"),
    Spec("entropy.per_sample_entropy", "losses", "entropy", _ZM, 0, "loss"),
    Spec("entropy.batch_entropy", "losses", "entropy", _ZM, 1, "loss"),
    Spec("commitment_loss", "losses", "commitment_loss", _ZM, None, "loss"),
    *(Spec(f"lfq.{term}", "losses", "lfq", _ZM, term, "loss") for term in LOSS_TERMS),
    Spec("code_usage.fraction_used", "usage", "code_usage", ("indices", "cfg", "mask"), "fraction_used", "usage"),
    Spec("code_usage.perplexity", "usage", "code_usage", ("indices", "cfg", "mask"), "perplexity", "usage"),
    *(
        Spec(f"vjp.{term}", "grads", "vjp", (f"'{term}'", "z", "cfg", "none", "mask"), None, "grad")
        for term in LOSS_TERMS
    ),
    Spec("vjp.codes", "st_grad", "vjp", ("'codes'", "z", "cfg", "cotangent", "mask"), None, "grad"),
)
#: Checks of compiled mode in the default run (the full run compiles every spec).
COMPILED_DEFAULT = ("lfq.codes", "lfq.indices", *(f"lfq.{t}" for t in LOSS_TERMS), "vjp.aux_loss", "vjp.codes")


@dataclasses.dataclass
class Oracle:
    """Inputs of one (case, dtype) and the reference's float64 results, keyed by check name."""

    case: Case
    dtype: str
    z: np.ndarray
    mask: np.ndarray | None
    cotangent: np.ndarray
    indices: np.ndarray
    values: dict


def _resolve(arg: str, inputs: dict):
    if arg.startswith("'"):
        return arg.strip("'")
    return inputs[arg]


def _pick(output, pick):
    if pick is None:
        return output
    return output[pick] if isinstance(pick, int) else getattr(output, pick)


def call(module, spec: Spec, inputs: dict, cache: dict):
    """Run `spec.op` of `module` (a backend or `lfq.reference`) and pick its output.

    `cache` holds whole outputs by (op, args) so that `lfq` runs once for its six checks.
    """
    key = (spec.op, spec.args)
    if key not in cache:
        try:
            cache[key] = getattr(module, spec.op)(*(_resolve(a, inputs) for a in spec.args))
        except Exception as err:  # reported per check, never a crash of the suite
            cache[key] = err
    output = cache[key]
    if isinstance(output, Exception):
        raise output
    return _pick(output, spec.pick)


def applies(spec: Spec, case: Case) -> bool:
    """Whether `spec` runs on `case` (the case may skip its group)."""
    return spec.group not in case.skip


def oracle(case: Case, dtype: str) -> Oracle:
    """The reference's results for `case` at `dtype` (input rounded to `dtype`, then float64)."""
    z, mask = case.inputs(dtype)
    cot = case.cotangent(dtype)
    z64 = z.astype(np.float64)
    cfg = case.cfg
    indices = reference.codes_to_indices(z64, cfg)
    inputs = {
        "z": z64,
        "cfg": cfg,
        "mask": mask,
        "indices": indices,
        "dtype": "float64",
        "cotangent": cot.astype(np.float64),
        "none": None,
    }
    cache: dict = {}
    values = {}
    for spec in SPECS:
        if applies(spec, case):
            values[spec.name] = np.asarray(call(reference, spec, inputs, cache))
    return Oracle(case, dtype, z, mask, cot, indices, values)


def backend_inputs(target, o: Oracle) -> dict:
    """The oracle's inputs as the target's native arrays."""
    return {
        "z": target.put(o.z, o.dtype),
        "cfg": o.case.cfg,
        "mask": None if o.mask is None else target.put(o.mask),
        "indices": target.put(o.indices),
        "dtype": o.dtype,
        "cotangent": target.put(o.cotangent, o.dtype),
        "none": None,
    }


def evaluate(spec: Spec, got: np.ndarray, want: np.ndarray, o: Oracle, tolerance_scale: float = 1.0):
    """Compare one output with its expected value by `spec.kind`; returns a `compare.Outcome`."""
    case, dtype = o.case, o.dtype
    if spec.kind == "bits":
        return compare.bits(got, want, dtype, z=o.z if spec.op != "indices_to_codes" else None, what=spec.name)
    if spec.kind == "indices":
        return compare.exact_integers(got, want, case.cfg, what=spec.name)
    tol = case.tolerance(dtype, spec.kind)
    tol = type(tol)(tol.rtol * tolerance_scale, tol.atol * tolerance_scale)
    if spec.kind == "usage":
        return compare.close(got, want, tol, what=spec.name)
    return compare.close(
        got,
        compare.past_range_as_inf(want, dtype),
        tol,
        dtype=dtype,
        normalize=spec.kind == "grad",
        z=o.z if spec.kind == "grad" else None,
        what=spec.name,
    )


def snippet_call(spec: Spec, module: str, numpy_inputs: bool) -> str:
    """The Python expression of `spec` for a reproducer ("be.entropy(z, cfg, mask)[1]")."""
    names = {
        "z": "z64" if numpy_inputs else "Z",
        "mask": "mask" if numpy_inputs else "M",
        "indices": "idx" if numpy_inputs else "I",
        "cotangent": "cot64" if numpy_inputs else "COT",
        "dtype": "'float64'" if numpy_inputs else "dtype",
        "cfg": "cfg",
        "none": "None",
    }
    args = ", ".join(a if a.startswith("'") else names[a] for a in spec.args)
    text = f"{module}.{spec.op}({args})"
    if spec.pick is None:
        return text
    return f"{text}[{spec.pick}]" if isinstance(spec.pick, int) else f"{text}.{spec.pick}"
