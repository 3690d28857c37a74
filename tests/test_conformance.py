"""The conformance suite itself: its case table, its verdicts on honest and broken backends.

The suite must pass honest implementations (the reference, and the shared
ArrayBackend computing in float32) and fail each deliberately broken one
(`lfq.conformance.broken`) with a message naming the broken check.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from lfq.conformance import broken, cases, checks, runner
from lfq.conformance.target import DeviceUnsupported, Target

import lfq
from lfq import conformance
from lfq.validation import FLOAT_DTYPES

# ------------------------------------------------------------------ the case table


def test_table_covers_the_required_configs_shapes_and_dtypes():
    cfgs = [c.cfg for c in cases.CASES]
    assert {c.codebook_dim for c in cfgs} >= set(range(1, 17))
    assert {c.num_codebooks for c in cfgs} >= {1, 2, 3, 4}
    assert min(c.inv_temperature for c in cfgs) <= 1e-2 and max(c.inv_temperature for c in cfgs) >= 1e3
    assert any(c.spherical for c in cfgs) and any(c.soft_clamp for c in cfgs)
    assert any(c.scale != 1.0 for c in cfgs) and any(c.diversity_gamma != 1.0 for c in cfgs)
    assert {c.bit_order for c in cfgs} == {"msb", "lsb"}
    assert {c.mask for c in cases.CASES} == {"none", "all_true", "all_false", "ragged"}
    ranks = {len(c.tokens) for c in cases.CASES}
    assert {0, 1, 3, 4} <= ranks  # [C*D], [N, C*D], image, video
    assert any(c.cfg.feature_axis == 1 for c in cases.CASES)  # channel-first
    assert {v for c in cases.CASES for v in c.values} == {
        "edges",
        "large",
        "extremes",
        "saturating",
        "nan_masked",
        "zero_groups",
        "tiny_groups",
        "smallest_groups",
    }
    default = [c for c in cases.CASES if c.dtypes]
    assert {d for c in default for d in c.dtypes} == set(FLOAT_DTYPES)


def test_inputs_are_deterministic_and_hold_the_edge_values():
    case = cases.get("edges-large-nan-masked")
    for dtype in FLOAT_DTYPES:
        z1, m1 = case.inputs(dtype)
        z2, m2 = case.inputs(dtype)
        assert z1.dtype == np.dtype(z1.dtype) and z1.tobytes() == z2.tobytes() and (m1 == m2).all()
        valid = z1[m1].astype(np.float64)  # [valid tokens, C*D]
        assert np.sum((valid == 0) & np.signbit(valid)) >= 1  # -0.0
        assert np.sum((valid == 0) & ~np.signbit(valid)) >= 1  # +0.0
        tiny = cases.smallest_subnormal(dtype)
        assert np.any(valid == tiny) and np.any(valid == -tiny)  # 1 ulp from 0
        assert np.all(np.isfinite(valid))
        assert np.isnan(z1[~m1].astype(np.float64)).any()  # NaN only where masked out


def test_ragged_mask_has_full_partial_and_empty_rows():
    _, mask = cases.get("ragged-d8-c2").inputs("float32")
    lengths = mask.sum(axis=1)
    assert lengths[0] == mask.shape[1] and lengths[-1] == 0 and 0 < lengths[1:-1].min()


def test_oracle_input_is_the_rounded_input_exactly():
    o = checks.oracle(cases.get("image-d10"), "bfloat16")
    assert o.z.dtype.name == "bfloat16"
    np.testing.assert_array_equal(o.z.astype(np.float64).astype(o.z.dtype).view(np.uint16), o.z.view(np.uint16))
    assert all(np.asarray(v).dtype.kind in "fib" for v in o.values.values())


def test_tolerance_overrides_need_a_reason():
    base = cases.get("tokens-d4")
    good = dataclasses.replace(
        base, tolerances=({"dtype": "float32", "kind": "loss", "rtol": 1e-5, "atol": 1e-5, "reason": "measured: ..."},)
    )
    assert good.tolerance("float32", "loss") == cases.Tolerance(1e-5, 1e-5)
    assert good.tolerance("float64", "loss") == cases.DEFAULT_TOLERANCES["float64"]["loss"]
    with pytest.raises(ValueError, match="reason"):
        dataclasses.replace(
            base, tolerances=({"dtype": "float32", "kind": "loss", "rtol": 1, "atol": 1, "reason": ""},)
        )
    with pytest.raises(ValueError, match="reason"):
        dataclasses.replace(base, skip={"grads": ""})
    for case in cases.CASES:
        assert all(o["reason"] for o in case.tolerances) and all(case.skip.values())


# ------------------------------------------------------------------ honest backends pass


def test_reference_backend_conforms_in_the_full_run():
    report = conformance.run("numpy", full=True)
    assert report.ok, report.failure_details()
    checked = {r.check for r in report.results}
    assert {s.name for s in checks.SPECS} <= checked
    assert {e.name for e in conformance.errors.ERROR_CHECKS} <= checked


def test_float32_array_backend_conforms_with_margin():
    """The shared ArrayBackend in float32 passes, and its float32 losses stay far inside the bound."""
    report = conformance.run(broken.NumPyArrayBackend(), full=True)
    assert report.ok, report.failure_details()
    losses = [
        r.ratio
        for r in report.results
        if r.dtype == "float32" and r.check.startswith(("entropy.", "lfq.")) and r.ratio is not None
    ]
    assert losses and max(losses) < 0.2


def test_default_run_of_the_reference_takes_seconds():
    import time

    start = time.perf_counter()
    assert conformance.run("numpy").ok
    assert time.perf_counter() - start < 20


# ------------------------------------------------------------------ broken backends fail


@pytest.mark.parametrize("cls", list(broken.BROKEN), ids=lambda c: c.__name__)
def test_broken_backend_fails_naming_the_check(cls):
    report = conformance.run(cls())
    assert not report.ok
    missing = set(broken.BROKEN[cls]) - report.failed_checks()
    assert not missing, f"{cls.__name__} passed {missing}:\n{report.table()}"
    details = report.failure_details(limit=len(report.failures))
    for check in broken.BROKEN[cls]:
        assert f" {check} [" in details
    assert "FAIL" in report.table() and "reproducer" in details


def test_reduced_precision_is_caught_by_a_wide_margin():
    """bfloat16-rounded matmul inputs err >= 2x the float32 bound; honest float32 < 0.2x."""
    report = conformance.run(broken.ReducedPrecisionMatmul(), dtypes=["float32"])
    ratios = [r.ratio for r in report.results if r.check == "entropy.batch_entropy"]
    assert sum(x > 2 for x in ratios) >= 3


def test_straight_through_arithmetic_fails_on_large_values_only_where_rounding_shows():
    report = conformance.run(broken.StraightThroughArithmetic(), dtypes=["float32"])
    failing = {r.case for r in report.failures if r.check == "lfq.codes"}
    assert "edges-large-nan-masked" in failing


class _Unchecked:
    """The reference with no input validation at all: integer z reaches NumPy."""

    name, dtypes, modes = "unchecked", FLOAT_DTYPES, ("eager",)

    def __init__(self):
        self._ref = lfq.get("numpy")

    def __getattr__(self, attr):
        return getattr(self._ref, attr)

    def quantize(self, z, cfg):
        return np.where(np.asarray(z) > 0, 1.0, -1.0)


def test_missing_validation_fails_the_error_checks():
    report = conformance.run(_Unchecked(), cases=["tokens-d4"])
    assert {"errors.integer_input", "errors.complex_input"} <= report.failed_checks()
    assert "quantize: accepted it" in report.failure_details(limit=50)


class _SilentFloat64(_Unchecked):
    """Declares float32 only but computes float64 silently."""

    dtypes = ("float32",)

    def quantize(self, z, cfg):
        return self._ref.quantize(z, cfg)


def test_undeclared_dtype_must_be_refused():
    report = conformance.run(_SilentFloat64(), cases=["tokens-d4"])
    refused = [r for r in report.results if r.check == "dtypes.refused"]
    assert {r.dtype for r in refused} == {"float16", "bfloat16", "float64"}
    assert all(r.status == "fail" and "accepted" in r.message for r in refused)


class _CompiledBroken(_Unchecked):
    """Eager mode is the reference; "compiled" mode drops the batch entropy from the aux loss."""

    modes = ("eager", "compiled")

    def quantize(self, z, cfg):
        return self._ref.quantize(z, cfg)

    def compiled(self):
        return broken.AuxWithoutBatchEntropy()


def test_compiled_mode_is_checked_against_eager_and_the_reference():
    report = conformance.run(_CompiledBroken())
    # the shape checks run the same broken compiled twin, whose aux loss is wrong on every shape
    assert report.failed_checks() == {"compiled.lfq.aux_loss", "compiled.vjp.aux_loss", "compiled.shapes"}


def test_device_is_passed_to_asarray_when_given():
    seen = []

    class WithDevice(_Unchecked):
        def quantize(self, z, cfg):
            return self._ref.quantize(z, cfg)

        def asarray(self, array, dtype=None, device=None):
            seen.append(device)
            return self._ref.asarray(array, dtype)

    assert conformance.run(WithDevice(), cases=["tokens-d4"], device="cpu").ok
    assert seen and set(seen) == {"cpu"}

    class NoDevice(_Unchecked):
        def asarray(self, array, dtype=None):
            return self._ref.asarray(array, dtype)

    with pytest.raises(DeviceUnsupported, match="device"):
        Target(NoDevice(), "cuda")
    assert conformance.run(NoDevice(), device="cuda").failed_checks() == {"device"}
    # the reference lives on the host: asking it for CUDA arrays fails, naming the reason
    report = conformance.run("numpy", device="cuda")
    assert "asarray" in report.failed_checks() and "host" in report.failures[0].message


def test_cross_compares_backends_pairwise():
    report = conformance.cross(["numpy", broken.NumPyArrayBackend()])
    assert report.ok, report.failure_details()
    assert {r.backend for r in report.results} == {"numpy~numpy-array"}
    bad = conformance.cross(["numpy", broken.LsbAsMsb()], cases=["ragged-d8-c2"])
    assert "cross.codes_to_indices" in bad.failed_checks()


def test_report_json_and_table(tmp_path):
    report = conformance.run(broken.TieRuleFlipped(), cases=["edges-large-nan-masked"])
    path = tmp_path / "report.json"
    report.write_json(str(path))
    import json

    data = json.loads(path.read_text())
    assert data["ok"] is False and data["spec_version"] == lfq.SPEC_VERSION
    rows = {(row["check"], row["status"]) for row in data["summary"]}
    assert ("quantize", "fail") in rows and ("entropy.batch_entropy", "pass") in rows
    failing = [r for r in data["results"] if r["status"] == "fail"]
    assert all(r["seed"] == 18 and r["reproducer"] for r in failing if r["case"] != "-")


def test_reproducer_snippet_runs_and_shows_the_error():
    report = conformance.run(broken.TieRuleFlipped(), cases=["edges-large-nan-masked"], dtypes=["float32"])
    result = next(r for r in report.failures if r.check == "codes_to_indices")
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(result.reproducer, "<reproducer>", "exec"), {})
    assert float(out.getvalue().split("=")[-1]) > 0


def test_plan_respects_declared_dtypes():
    pairs = runner.plan(_SilentFloat64(), full=True)
    assert pairs and {d for _, d in pairs} == {"float32"}
