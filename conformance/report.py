"""Results of a conformance run: one `Result` per check, a `Report` with the summary table.

The table has one row per (backend, check): pass/fail, how many (case, dtype)
runs passed, the worst error as a fraction of its tolerance ("err/tol": up to 1
passes; "exact" for the bitwise and integer checks that matched) and the worst
case (the one closest to, or furthest past, its tolerance). The largest absolute
and relative errors are in `summary()` and the JSON report: raw, they mislead (a
gradient of 1e291 passes with an absolute error of 1e287). Failures come with a
reproducer: the case's config and seed and a Python snippet.
"""

from __future__ import annotations

import dataclasses
import json

import lfq

__all__ = ["Report", "Result", "backend_lines", "reproducer"]


@dataclasses.dataclass
class Result:
    """One check on one (case, dtype) of one backend.

    Attributes:
        backend: backend name (or "a~b" in a cross run).
        check: check name, e.g. "entropy.batch_entropy", "vjp.codes", "errors.mask_shape".
        case: case name ("-" for checks without a case).
        dtype: input dtype name, or None.
        status: "pass", "fail" or "skip".
        max_abs, max_rel: largest absolute / relative error (None when not numeric).
        ratio: largest error / allowed error (None for exact checks).
        message: why it failed or was skipped.
        reproducer: Python snippet reproducing a failure.
        seed: the case's input seed.
    """

    backend: str
    check: str
    case: str
    dtype: str | None
    status: str
    max_abs: float | None
    max_rel: float | None
    ratio: float | None
    message: str = ""
    reproducer: str = ""
    seed: int | None = None

    @property
    def where(self) -> str:
        """ "case@dtype", or whichever of the two applies."""
        if self.dtype is None:
            return self.case
        return self.dtype if self.case == "-" else f"{self.case}@{self.dtype}"


class Report:
    """All results of a run, by backend."""

    def __init__(self):
        self.results: list[Result] = []
        self.seconds: dict[str, float] = {}

    def add(self, backend: str, results: list[Result], seconds: float) -> None:
        self.results.extend(results)
        self.seconds[backend] = self.seconds.get(backend, 0.0) + seconds

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if r.status == "fail"]

    @property
    def ok(self) -> bool:
        """True when nothing failed (and something ran)."""
        return bool(self.results) and not self.failures

    def failed_checks(self, backend: str | None = None) -> set[str]:
        """Names of the checks with at least one failure."""
        return {r.check for r in self.failures if backend is None or r.backend == backend}

    def summary(self) -> list[dict]:
        """One row per (backend, check), in run order."""
        rows: dict[tuple, dict] = {}
        for r in self.results:
            row = rows.setdefault(
                (r.backend, r.check),
                {
                    "backend": r.backend,
                    "check": r.check,
                    "status": "pass",
                    "passed": 0,
                    "runs": 0,
                    "max_abs": None,
                    "max_rel": None,
                    "max_ratio": None,
                    "worst": "-",
                    "_key": 0.0,
                },
            )
            if r.status == "skip":
                row["status"] = "skip" if row["runs"] == 0 else row["status"]
                continue
            row["runs"] += 1
            row["passed"] += r.status == "pass"
            if r.status == "fail":
                row["status"] = "fail"
            for field, value in (("max_abs", r.max_abs), ("max_rel", r.max_rel), ("max_ratio", r.ratio)):
                if value is not None and (row[field] is None or value > row[field] or value != value):
                    row[field] = value
            # worst: the first failure, else the run closest to its tolerance (none when all exact)
            key = float("inf") if r.status == "fail" else (r.ratio or 0.0)
            if key > row["_key"]:
                row["_key"], row["worst"] = key, r.where
        return [{k: v for k, v in row.items() if k != "_key"} for row in rows.values()]

    def table(self) -> str:
        """The summary as a text table (err/tol: the worst error over its tolerance, <= 1 passes)."""
        header = ("backend", "check", "status", "passed", "err/tol", "worst case")
        lines = [header]
        for row in self.summary():
            lines.append(
                (
                    row["backend"],
                    row["check"],
                    row["status"].upper() if row["status"] == "fail" else row["status"],
                    f"{row['passed']}/{row['runs']}",
                    _err_over_tol(row),
                    row["worst"],
                )
            )
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
        text = ["  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines]
        text.insert(1, "  ".join("-" * w for w in widths))
        for backend, seconds in self.seconds.items():
            mine = [r for r in self.results if r.backend == backend]
            failed = sum(r.status == "fail" for r in mine)
            text.append(
                f"{backend}: {len(mine) - failed} of {len(mine)} checks passed, {failed} failed ({seconds:.1f} s)"
            )
        return "\n".join(text)

    def failure_details(self, limit: int = 10) -> str:
        """The first `limit` failures with their messages and reproducers."""
        parts = []
        for r in self.failures[:limit]:
            parts.append(f"FAIL {r.backend} {r.check} [{r.where}, seed {r.seed}]\n  {r.message}")
            if r.reproducer:
                parts.append("  reproducer:\n" + "\n".join("    " + line for line in r.reproducer.splitlines()))
        if len(self.failures) > limit:
            parts.append(f"... and {len(self.failures) - limit} more failures (see --json)")
        return "\n".join(parts)

    def to_json(self) -> dict:
        return {
            "spec_version": lfq.SPEC_VERSION,
            "lfq_version": lfq.__version__,
            "ok": self.ok,
            "seconds": self.seconds,
            "summary": self.summary(),
            "results": [dataclasses.asdict(r) for r in self.results],
        }

    def write_json(self, path: str) -> None:
        with open(path, "w") as handle:
            json.dump(self.to_json(), handle, indent=1, default=str)


def _err_over_tol(row: dict) -> str:
    """The table's err/tol: the ratio; "exact" for a matching exact check; "-" without numbers."""
    ratio = row["max_ratio"]
    if ratio is not None:
        return "0" if ratio == 0 else f"{ratio:.2g}"
    if row["max_abs"] == 0 and row["status"] != "fail":
        return "exact"  # bitwise / integer checks (no tolerance): every run matched
    return "-"


def backend_lines(target) -> list[str]:
    """Snippet lines that end with `be = <the backend>`: by registry name, else by class."""
    if target.parent is not None:
        lines = backend_lines(target.parent)
        return lines[:-1] + [lines[-1] + ".compiled()"]
    cls = type(target.backend)
    if target.registry_name is not None:
        get = f"be = lfq.get({target.registry_name!r})"
        if cls.__module__.startswith("lfq.backends.") or "." in cls.__qualname__:
            return [get]  # built in (or not importable by name): the registry knows it
        return [f"lfq.register({target.registry_name!r}, {cls.__module__ + ':' + cls.__qualname__!r})", get]
    return [f"be = __import__({cls.__module__!r}, fromlist=['_']).{cls.__qualname__}()"]


def reproducer(target, spec, o) -> str:
    """A Python snippet that recomputes one check of one case outside the suite."""
    from lfq.conformance.checks import snippet_call

    device = "" if target.device is None else f", device={target.device!r}"
    lines = [
        f"# case {o.case.name!r}, dtype {o.dtype}, seed {o.case.seed}, check {spec.name}",
        f"# cfg = {o.case.cfg!r}",
        "import numpy as np",
        "import lfq",
        "from lfq import reference",
        "from lfq.conformance import cases",
        f"case = cases.get({o.case.name!r})",
        f"cfg, dtype = case.cfg, {o.dtype!r}",
        "z, mask = case.inputs(dtype)  # the seeded input, rounded to dtype",
        "z64 = z.astype(np.float64)     # the oracle's input: exact",
        *backend_lines(target),
        f"Z = be.asarray(z, dtype{device})",
        f"M = None if mask is None else be.asarray(mask{device})",
        "get = lambda x: np.asarray(x) if isinstance(x, (np.ndarray, np.generic)) else be.to_numpy(x)",
    ]
    if "indices" in spec.args:
        lines += ["idx = reference.codes_to_indices(z64, cfg)", f"I = be.asarray(idx{device})"]
    if "cotangent" in spec.args:
        lines += [
            "cot = case.cotangent(dtype)",
            "cot64 = cot.astype(np.float64)",
            f"COT = be.asarray(cot, dtype{device})",
        ]
    lines += [
        f"got = get({snippet_call(spec, 'be', False)})",
        f"want = {snippet_call(spec, 'reference', True)}",
        "print('max |got - want| =', np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))",
    ]
    return "\n".join(lines)
