"""Running the suite: every check of every case on a backend, and pairwise between backends.

`run` is what `lfq conformance` and the pytest entry call. It takes backends by
registry name (your own after `lfq.register(name, "module:Class")`) or as
objects, and returns a `Report` (see `lfq.conformance.report`). A `progress`
callable gets a `Step` (a line of text that also carries the counts) as each
part of a run starts.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable

import numpy as np
from lfq.conformance import cases as case_table
from lfq.conformance import checks, compare, errors, shapes
from lfq.conformance.report import Report, Result, reproducer
from lfq.conformance.target import DeviceUnsupported, Target

import lfq
from lfq.validation import FLOAT_DTYPES

__all__ = [
    "OracleCache",
    "SHAPES_CONFIG",
    "Step",
    "compiled_of",
    "cross",
    "plan",
    "resolve_backend",
    "run",
    "run_backend",
    "run_case",
    "run_contract",
]

#: The config of the contract's `compiled.shapes` checks: that of the case compiled in the
#: default run, so that a backend compiling one program per config (compiled torch)
#: reuses the programs of that case for most shapes instead of compiling more.
SHAPES_CONFIG = next(c.cfg for c in case_table.CASES if c.compiled == "default")


class Step(str):
    """What a run is about to do, as the line `"<backend>: <what>"`, with its counts.

    Attributes:
        backend: the backend's name (or "a~b" in a cross run).
        what: the step: "<case> <dtype>" (eager, or the only mode), "<case> <dtype>
            compiled" (the same case in compiled mode, where it runs), "errors and
            dtypes", "compiled.shapes", or "done" (the last, after every step).
        done: steps of this backend finished so far.
        total: its number of steps ("done" has `done == total`).
        seconds: time spent on this backend so far.
    """

    backend: str
    what: str
    done: int
    total: int
    seconds: float

    def __new__(cls, backend: str, what: str, done: int, total: int, seconds: float):
        self = super().__new__(cls, f"{backend}: {what}")
        self.backend, self.what, self.done, self.total, self.seconds = backend, what, done, total, seconds
        return self


class _Steps:
    """Counts one backend's steps and reports each to `progress` (when given)."""

    def __init__(self, progress, backend: str, total: int):
        self.progress, self.backend, self.total = progress, backend, total
        self.done, self.start = 0, time.perf_counter()

    def __call__(self, what: str) -> None:
        if self.progress is not None:
            self.progress(Step(self.backend, what, self.done, self.total, time.perf_counter() - self.start))
        self.done = min(self.done + 1, self.total) if what != "done" else self.total


def resolve_backend(backend):
    """A backend object from a registry name (or the object itself)."""
    return lfq.get(backend) if isinstance(backend, str) else backend


def _dtypes_for(case, backend, dtypes, full):
    # a full-run case asked for by name in a default run runs in float32
    wanted = dtypes if dtypes else (FLOAT_DTYPES if full else (case.dtypes or ("float32",)))
    declared, possible = tuple(backend.dtypes), case_table.input_dtypes()
    return [d for d in FLOAT_DTYPES if d in wanted and d in declared and d in possible]


class OracleCache:
    """Reference results per (case, dtype), shared by every backend of a run."""

    def __init__(self):
        self._store = {}

    def get(self, case, dtype):
        key = (case.name, dtype)
        if key not in self._store:
            with np.errstate(all="ignore"):
                self._store[key] = checks.oracle(case, dtype)
        return self._store[key]


def _outcome_result(name, check, o, outcome, repro_args):
    return Result(
        name,
        check,
        o.case.name,
        o.dtype,
        "pass" if outcome.passed else "fail",
        outcome.max_abs,
        outcome.max_rel,
        outcome.ratio,
        outcome.message,
        "" if outcome.passed else reproducer(*repro_args),
        o.case.seed,
    )


def _run_specs(target, o, specs, prefix="", eager=None):
    """Results of `specs` on one (case, dtype); also returns the outputs (for compiled agreement)."""
    label = target.name
    results, outputs, cache = [], {}, {}
    try:
        inputs = checks.backend_inputs(target, o)
    except Exception as err:
        return [
            Result(
                label,
                prefix + "asarray",
                o.case.name,
                o.dtype,
                "fail",
                None,
                None,
                None,
                f"asarray raised {type(err).__name__}: {err}",
                "",
                o.case.seed,
            )
        ], outputs
    for spec in specs:
        if not checks.applies(spec, o.case):
            continue
        name = prefix + spec.name
        repro = (target, spec, o)
        try:
            got = target.get(checks.call(target.backend, spec, inputs, cache))
        except Exception as err:
            results.append(
                Result(
                    label,
                    name,
                    o.case.name,
                    o.dtype,
                    "fail",
                    None,
                    None,
                    None,
                    f"{spec.name} raised {type(err).__name__}: {err}",
                    reproducer(*repro),
                    o.case.seed,
                )
            )
            continue
        outputs[spec.name] = got
        outcome = checks.evaluate(spec, got, o.values[spec.name], o)
        if outcome.passed and eager is not None and spec.name in eager:
            agree = _agreement(spec, got, eager[spec.name], o)
            if not agree.passed:
                outcome = compare.Outcome(
                    False,
                    outcome.max_abs,
                    outcome.max_rel,
                    agree.ratio,
                    "compiled disagrees with eager: " + agree.message,
                )
        results.append(_outcome_result(label, name, o, outcome, repro))
    return results, outputs


def _agreement(spec, got, other, o):
    """Compare two backends' (or modes') outputs: bitwise/exact, or within twice the tolerance."""
    if spec.kind == "bits":
        return compare.bits(got, other.astype(np.float64), o.dtype, what=spec.name)
    if spec.kind == "indices":
        return compare.exact_integers(got, other.astype(np.int64), o.case.cfg, what=spec.name)
    return checks.evaluate(spec, got, other.astype(np.float64), o, tolerance_scale=2.0)


def plan(backend, *, dtypes=None, full: bool = False, case_names=None) -> list[tuple]:
    """The `(case, dtype)` pairs a run covers on `backend` (dtypes it does not declare left out)."""
    unknown = sorted(set(dtypes or ()) - set(FLOAT_DTYPES))
    if unknown:
        raise ValueError(f"dtypes {unknown} are not input dtypes of LFQ: use some of {', '.join(FLOAT_DTYPES)}")
    be = resolve_backend(backend)
    return [
        (case, dtype) for case in case_table.select(full, case_names) for dtype in _dtypes_for(case, be, dtypes, full)
    ]


def compiled_of(target: Target) -> tuple[Target | None, list[Result]]:
    """The compiled twin of `target` when "compiled" is in its modes (else None), and any failure."""
    if "compiled" not in tuple(target.backend.modes):
        return None, []
    try:
        return target.compiled(), []
    except Exception as err:
        return None, [
            Result(
                target.name,
                "compiled",
                "-",
                None,
                "fail",
                None,
                None,
                None,
                f"'compiled' is in modes but compiled() raised {type(err).__name__}: {err}",
                "",
                None,
            )
        ]


def run_case(
    target: Target, case, dtype: str, *, compiled: Target | None = None, full: bool = False, oracles=None
) -> list[Result]:
    """Every value and gradient check of one (case, dtype), in eager and (if given) compiled mode."""
    o = (oracles or OracleCache()).get(case, dtype)
    with np.errstate(all="ignore"):  # NumPy-based backends warn on the NaN/inf cases
        return _run_case(target, o, case, dtype, full, compiled)


def _compiles(case, dtype, full) -> bool:
    """Whether a (case, dtype) runs in compiled mode too (when the backend has it)."""
    # Compiling costs seconds per (operation, config, shape, dtype): only the cases marked for it,
    # in their own dtypes (the full run: every operation, and the cases marked "full" too).
    return dtype in case.dtypes and case.compiled in (("default", "full") if full else ("default",))


def _run_case(target, o, case, dtype, full, compiled, step=None):
    specs = (
        checks.SPECS
        if full or case.grads_in_default
        else [s for s in checks.SPECS if s.group not in ("grads", "st_grad")]
    )
    results, eager = _run_specs(target, o, specs)
    if compiled is not None and _compiles(case, dtype, full):
        if step is not None:
            step(f"{case.name} {dtype} compiled")
        specs = checks.SPECS if full else [s for s in checks.SPECS if s.name in checks.COMPILED_DEFAULT]
        results += _run_specs(compiled, o, specs, "compiled.", eager)[0]
    return results


def run_contract(target: Target, progress: Callable[[str], None] | None = None) -> list[Result]:
    """The checks without a case: bad-input errors, declared dtypes, compiled mode across shapes.

    `progress`, when given, is called with "errors and dtypes" and "compiled.shapes"
    as each part starts.
    """
    with np.errstate(all="ignore"):
        return _run_contract(target, progress or (lambda what: None))


def _contract_steps(backend) -> int:
    return 2 if "compiled" in tuple(backend.modes) else 1


def _run_contract(target: Target, step) -> list[Result]:
    results = []
    step("errors and dtypes")
    for check in errors.ERROR_CHECKS:
        passed, message, skipped = errors.run_error_check(target, check)
        results.append(
            Result(
                target.name,
                check.name,
                "-",
                None,
                "skip" if skipped else ("pass" if passed else "fail"),
                None,
                None,
                None,
                message,
                "" if passed else errors.reproducer(target, check),
                None,
            )
        )
    for check, dtype, passed, message in errors.run_dtype_checks(target):
        status = "skip" if passed is None else ("pass" if passed else "fail")
        results.append(Result(target.name, check, "-", dtype, status, None, None, None, message, "", None))
    # One compiled backend across many shapes, ranks and empty batches (lfq.conformance.shapes):
    # one row "compiled.shapes", the shape as its case.
    if "compiled" in tuple(target.backend.modes):
        step("compiled.shapes")
    for label, dtype, passed, message in shapes.run_shape_checks(target, cfg=SHAPES_CONFIG):
        check, _, shape = label.partition("[")
        results.append(
            Result(
                target.name,
                check,
                shape.rstrip("]") or "-",
                dtype,
                "pass" if passed else "fail",
                None,
                None,
                None,
                message,
                "",
                None,
            )
        )
    return results


def run_backend(
    backend,
    *,
    dtypes=None,
    full=False,
    device=None,
    case_names=None,
    oracles=None,
    progress: Callable[[str], None] | None = None,
) -> list[Result]:
    """Every check on one backend; see `run`."""
    be = resolve_backend(backend)
    registry_name = backend if isinstance(backend, str) else None
    try:
        target = Target(be, device, registry_name=registry_name)
    except DeviceUnsupported as err:
        name = registry_name or getattr(be, "name", type(be).__name__)
        return [Result(name, "device", "-", None, "fail", None, None, None, str(err), "", None)]
    oracles = oracles or OracleCache()
    compiled, results = compiled_of(target)
    runs = plan(be, dtypes=dtypes, full=full, case_names=case_names)
    compiled_runs = 0 if compiled is None else sum(_compiles(case, dtype, full) for case, dtype in runs)
    step = _Steps(progress, target.name, len(runs) + compiled_runs + _contract_steps(be))
    for case, dtype in runs:
        step(f"{case.name} {dtype}")
        o = oracles.get(case, dtype)
        with np.errstate(all="ignore"):  # as in run_case
            results += _run_case(target, o, case, dtype, full, compiled, step)
    results += run_contract(target, step)
    step("done")
    return results


def run(
    backends: Iterable | str | None = None,
    *,
    dtypes=None,
    full: bool = False,
    device: str | None = None,
    cases=None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Run the conformance suite.

    Args:
        backends: registry names or backend objects (default: every available
            registered backend).
        dtypes: dtype names to run (default: each case's default dtypes, or all
            four with `full`), always intersected with each backend's `dtypes`.
        full: every case, every dtype, every check also in compiled mode.
        device: device string passed to `asarray(..., device=...)`; None: default.
        cases: case names to run (default: the table of the run).
        progress: called with a `Step` (a `str`, "<backend>: <what>") as each
            (backend, case, dtype) and each part of the contract starts, and with
            "<backend>: done" after a backend's last step.

    Returns:
        A `Report`; `report.ok` is False on any failure.
    """
    if backends is None:
        backends = [n for n in lfq.list_backends() if lfq.is_available(n)]
    elif isinstance(backends, str) or not isinstance(backends, Iterable):
        backends = [backends]
    report, oracles = Report(), OracleCache()
    for backend in backends:
        start = time.perf_counter()
        results = run_backend(
            backend, dtypes=dtypes, full=full, device=device, case_names=cases, oracles=oracles, progress=progress
        )
        name = results[0].backend if results else str(backend)
        report.add(name, results, time.perf_counter() - start)
    return report


def cross(
    backends: Iterable | None = None,
    *,
    dtypes=None,
    full: bool = False,
    device: str | None = None,
    cases=None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Compare installed backends pairwise on the same inputs (no oracle involved).

    Codes and indices must agree bitwise; losses and gradients within twice the
    case's tolerance (each backend may err by the tolerance, in opposite directions).
    """
    if backends is None:
        backends = [n for n in lfq.list_backends() if lfq.is_available(n)]
    targets = [Target(b, device) for b in backends]
    report, oracles = Report(), OracleCache()
    for a, b in itertools.combinations(targets, 2):
        label, start, results = f"{a.name}~{b.name}", time.perf_counter(), []
        runs = [
            (case, d)
            for case in case_table.select(full, cases)
            for d in _dtypes_for(case, a.backend, dtypes, full)
            if d in tuple(b.backend.dtypes)
        ]
        step = _Steps(progress, label, len(runs))
        for case, dtype in runs:
            step(f"{case.name} {dtype}")
            o = oracles.get(case, dtype)
            with np.errstate(all="ignore"):
                _, out_a = _run_specs(a, o, checks.SPECS)
                _, out_b = _run_specs(b, o, checks.SPECS)
            for spec in checks.SPECS:
                if spec.name not in out_a or spec.name not in out_b:
                    continue  # not applicable, or a backend failed it (its own run reports why)
                outcome = _agreement(spec, out_a[spec.name], out_b[spec.name], o)
                results.append(_outcome_result(label, "cross." + spec.name, o, outcome, (a, spec, o)))
        step("done")
        report.add(label, results, time.perf_counter() - start)
    return report
