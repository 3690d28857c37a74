"""Every backend, mode and input dtype against the reference, in one place.

The values and gradients of the interface operations are checked on rows of the
conformance suite's case table (`lfq.conformance.cases`), by its checks and
tolerances (`lfq.conformance.checks`); the rules the table cannot show
(signed zeros, NaN and subnormals bitwise, the straight-through value at huge
inputs, all-false masks, 63-bit indices, array conversion) are pinned here once
for every backend. Framework-specific behaviour (compilers, devices, layers,
distributed training) stays in tests/test_<framework>_*.py.

Compiled torch is left out where marked (`_affordable`): `torch.compile` costs seconds
per program, and its programs are checked against eager mode in
tests/test_torch_backend.py (`test_compiled_backend_matches_eager`,
`test_compiled_index_ops_match_eager`) and by the conformance run of
tests/test_cli.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_close, backend_in_mode, backend_runs, precision_mode, targets
from lfq.conformance import cases, checks, runner
from lfq.conformance.target import Target

import lfq
from lfq import reference
from lfq.validation import FLOAT_DTYPES, numpy_dtype

#: Rows of the case table that together cover every option the backend tests sweep:
#: D = 1 and a single token; spherical after soft clamp with tanh, scale, gamma and both
#: weights; lsb over two codebooks of an image; grouped batch entropy; channel-first with
#: an all-true mask; three codebooks with zero and subnormal groups; edge values, huge
#: values and NaN in masked-out tokens of a ragged mask. Two rows share a shape: eager
#: JAX compiles each primitive once per shape and dtype.
EAGER_CASES = (
    "single-token-d1",
    "spherical-clamp-tanh",
    "d11-c2-image-lsb",
    "groups-d12",
    "channel-first-d5-c2",
    "spherical-zero-tiny-groups",
    "edges-large-nan-masked",
)
#: Rows run in compiled mode and, for JAX, in half precision (each compiles anew per config and shape).
COMPILED_CASES = ("spherical-clamp-tanh", "channel-first-d5-c2", "edges-large-nan-masked")
#: Eager JAX dispatch compiles every primitive once per shape and dtype (seconds each): it runs
#: these rows in float32; the same code, jit-wrapped, runs every row under jit.
JAX_EAGER_CASES = ("single-token-d1", "spherical-clamp-tanh")

_ORACLES = runner.OracleCache()


def _affordable(params):
    """Leave out compiled torch and eager JAX outside float32 (see the module docstring and
    JAX_EAGER_CASES): their programs and dtypes are covered in the modes kept."""
    return [
        p
        for p in params
        if not p.id.startswith("torch-compiled")
        and not (p.id.startswith("jax-eager") and not p.id.endswith("-float32"))
    ]


def _with_cases(params, rows):
    return [pytest.param(p.values[0], row, id=f"{p.id}-{row}") for p in params for row in rows]


_CASE_RUNS = (
    _with_cases(backend_runs(["numpy", "torch", "tensorflow"], modes=["eager"]), EAGER_CASES)
    + _with_cases(backend_runs(["jax"], modes=["eager"], dtypes=["float32"]), JAX_EAGER_CASES)
    + _with_cases(backend_runs(["jax"], modes=["compiled"], dtypes=["float32", "float64"]), EAGER_CASES)
    + _with_cases(backend_runs(["jax"], modes=["compiled"], dtypes=["float16", "bfloat16"]), COMPILED_CASES)
    + _with_cases(backend_runs(["tensorflow"], modes=["compiled"], dtypes=["float32", "float64"]), COMPILED_CASES)
)


@pytest.mark.parametrize("backend_run, case", _CASE_RUNS, indirect=["backend_run"])
def test_case_matches_reference(backend_run, case):
    """Codes bitwise, indices exactly, losses, code usage and every gradient of one table row,
    by the conformance checks; compiled modes run the checks of the suite's compiled default
    run (lfq's outputs, the aux loss and straight-through gradients), each program compiling
    anew per config, shape and dtype."""
    row = cases.get(case)
    oracle = _ORACLES.get(row, backend_run.dtype)
    target = Target(backend_run.be)
    inputs = checks.backend_inputs(target, oracle)
    specs = [
        spec
        for spec in checks.SPECS
        if checks.applies(spec, row) and (backend_run.mode == "eager" or spec.name in checks.COMPILED_DEFAULT)
    ]
    outputs: dict = {}
    failures = []
    with np.errstate(all="ignore"):
        for spec in specs:
            got = target.get(checks.call(backend_run.be, spec, inputs, outputs))
            outcome = checks.evaluate(spec, got, oracle.values[spec.name], oracle)
            if not outcome.passed:
                failures.append(outcome.message)
    assert specs and not failures, "\n".join(failures)


# ------------------------------------------------------------------ masks


@pytest.mark.parametrize(
    "backend_run",
    _affordable(backend_runs(dtypes=["float32"])),
    indirect=True,
)
def test_all_false_mask_gives_zero_losses_and_gradients(backend_run):
    """No valid token: every loss is +0.0 (not NaN, not -0.0) and every loss gradient is 0,
    even with NaN in the masked-out tokens."""
    cfg = lfq.Config(codebook_dim=5, num_codebooks=2, spherical=True)
    z = np.random.default_rng(2).standard_normal((3, 4, cfg.num_features))
    z[0, 0] = np.nan
    mask = np.zeros(z.shape[:-1], dtype=bool)
    be, put, get = backend_run.be, backend_run.put, backend_run.get
    out = be.lfq(put(z), cfg, put(mask))
    for term in lfq.LOSS_TERMS:
        value = float(get(getattr(out, term)).astype(np.float64))
        assert value == 0.0 and math.copysign(1.0, value) == 1.0, (term, value)
    # compiled: the aux loss only (each term's gradient is its own program)
    for term in lfq.LOSS_TERMS if backend_run.mode == "eager" else ("aux_loss",):
        grad = get(be.vjp(term, put(z), cfg, None, put(mask))).astype(np.float64)
        assert np.array_equal(grad, np.zeros(z.shape)), term


# ------------------------------------------------- signed zeros, NaN, straight-through


@pytest.mark.parametrize("backend_run", _affordable(backend_runs()), indirect=True)
def test_ties_nan_subnormals_and_huge_values_are_exact(backend_run):
    """+-0.0 and NaN give -s and bit 0; subnormals keep their sign (also where the arithmetic
    flushes them); the straight-through value is bitwise the code for huge |z|, with gradient 1."""
    dtype, be, put, get = backend_run.dtype, backend_run.be, backend_run.put, backend_run.get
    tiny = float(cases.smallest_subnormal(dtype))
    big = 3e4 if dtype == "float16" else 1e30
    cfg = lfq.Config(codebook_dim=4, scale=0.75)
    zn = np.array([[0.0, -0.0, np.nan, tiny], [-tiny, big, -big, 1.0], [np.inf, -np.inf, 1e-3, -0.0]]).astype(
        numpy_dtype(dtype)
    )
    z = put(zn)
    with np.errstate(invalid="ignore"):
        want_codes = reference.quantize(zn, cfg)
        want_indices = reference.codes_to_indices(zn, cfg)
    codes = get(be.quantize(z, cfg))
    assert codes.dtype == zn.dtype and np.array_equal(codes.view(np.uint8), want_codes.view(np.uint8))
    assert codes[0].astype(np.float64).tolist() == [-0.75, -0.75, -0.75, 0.75]
    assert codes[1, 0] == -0.75  # -tiny is negative, flushed or not
    assert np.array_equal(get(be.codes_to_indices(z, cfg)), want_indices)
    st = get(be.lfq(z, cfg).codes)
    assert np.array_equal(st.view(np.uint8), want_codes.view(np.uint8))
    finite = np.nan_to_num(zn.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    cot = np.linspace(-1.0, 2.0, zn.size).reshape(zn.shape).astype(numpy_dtype(dtype))
    grad = get(be.vjp("codes", put(finite), cfg, put(cot))).astype(np.float64)
    assert np.array_equal(grad, cot.astype(np.float64))  # identity activation: the upstream gradient


# ---------------------------------------------------------------------- indices


@pytest.mark.parametrize("bit_order", ["msb", "lsb"])
@pytest.mark.parametrize("backend_run", _affordable(backend_runs(dtypes=["float64"])), indirect=True)
def test_indices_round_trip_up_to_63_bits(backend_run, bit_order):
    """int64 indices, never negative (the largest is 2**D - 1), decoded back to the codes;
    int32 indices are accepted where they fit."""
    be, put, get = backend_run.be, backend_run.put, backend_run.get
    for d, c in ((1, 1), (9, 2), (24, 1), (25, 3), (31, 1), (40, 2), (63, 1)):  # float32 runs end at 24 bits
        cfg = lfq.Config(
            codebook_dim=d, num_codebooks=c, bit_order=bit_order, max_exact_bits=1, batch_entropy=f"groups:{d}"
        )
        z = np.random.default_rng(d).standard_normal((5, c * d))
        z[0] = 1.0  # every bit set: the largest index
        idx = be.codes_to_indices(put(z), cfg)
        got = get(idx)
        assert got.dtype == np.int64 and np.array_equal(got, reference.codes_to_indices(z, cfg)), d
        assert got.min() >= 0
        for dtype in ("float32", "float64"):
            back = get(be.indices_to_codes(idx, cfg, dtype))
            assert back.dtype == np.dtype(dtype) and np.array_equal(back, reference.quantize(z, cfg).astype(dtype))
        if d <= 31:
            narrow = be.asarray(got.astype(np.int32))
            assert np.array_equal(get(be.indices_to_codes(narrow, cfg, "float64")), reference.quantize(z, cfg))


# ------------------------------------------------------------- interface and arrays


@pytest.mark.parametrize("target", targets(), indirect=True)
def test_backend_implements_the_interface(target):
    name, mode, be = target
    assert isinstance(be, lfq.LFQBackend) and be.name == lfq.get(name).name
    info = lfq.registry.static_info(name)
    assert tuple(be.modes) == info.modes and set(info.current_dtypes()) <= set(FLOAT_DTYPES)
    assert set(be.dtypes) >= {"float16", "bfloat16", "float32"}
    if "compiled" in be.modes:
        assert be.compiled() is be.compiled() and be.compiled().compiled() is be.compiled()


@pytest.mark.parametrize("backend_run", backend_runs(modes=["eager"]), indirect=True)
def test_asarray_and_to_numpy_round_trip_is_bitwise(backend_run):
    """NumPy -> backend -> NumPy keeps dtype and bits; a cast on the way rounds as NumPy does
    (ml_dtypes for bfloat16)."""
    dtype, be = backend_run.dtype, backend_run.be
    x = (np.random.default_rng(0).standard_normal(17) * 3).astype(numpy_dtype(dtype))
    back = backend_run.get(be.asarray(x))
    assert back.dtype == x.dtype and np.array_equal(back.view(np.uint8), x.view(np.uint8))
    wide = np.random.default_rng(1).standard_normal(33)
    cast = backend_run.get(be.asarray(wide, dtype))
    assert cast.dtype == x.dtype and np.array_equal(cast.view(np.uint8), wide.astype(x.dtype).view(np.uint8))


@pytest.mark.parametrize("name", lfq.list_backends())
def test_batch_entropy_equals_the_literal_enumeration(name):
    """The factorized entropies equal the definition, summed over all 2**D codes (D = 10)."""
    cfg = lfq.Config(codebook_dim=10, inv_temperature=30.0)
    rng = np.random.default_rng(5)
    z, mask = rng.standard_normal((64, 10)) * 0.1, rng.random(64) > 0.3
    be = backend_in_mode(name, "eager")
    with precision_mode(name, "float64"):
        got = [np.asarray(be.to_numpy(h)) for h in be.entropy(be.asarray(z, "float64"), cfg, be.asarray(mask))]
    for g, want, what in zip(got, reference.entropy(z, cfg, mask, method="literal"), ("per-sample", "batch")):
        assert_close(g, want, "float64", what=what)
