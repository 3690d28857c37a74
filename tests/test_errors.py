"""Bad input, class by class, on every installed backend and mode and on `lfq.reference`.

docs/spec.md ("Bad input"): a cfg that is not an `lfq.Config`, an array argument of
a type the backend does not take (the foreign-array rule), an out-of-range index in
`code_usage`, a non-float `indices_to_codes` dtype and a `vjp` cotangent of the
wrong shape are each refused with a TypeError/ValueError naming the argument,
before any framework (or `jax.jit`, `tf.function`, `torch.compile`) sees them.
Index values and shapes are drawn by hypothesis.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

if importlib.util.find_spec("torch") is not None:
    import torch  # noqa: F401  (before tensorflow: their bundled libraries clash otherwise)

import lfq  # noqa: E402
from lfq import reference  # noqa: E402
from lfq.validation import FLOAT_DTYPES  # noqa: E402

NAMES = [name for name in ("numpy", "jax", "tensorflow", "torch") if lfq.is_available(name)]
TARGETS = [(name, mode) for name in NAMES for mode in lfq.get(name).modes]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# `target` (every backend x mode, as `(name, mode, backend)`) comes from tests/conftest.py.


def _backend(name, mode):
    be = lfq.get(name)
    return be.compiled() if mode == "compiled" else be


def _ints(be, values):
    return be.asarray(np.asarray(values, dtype=np.int64).astype(np.int32))


def _floats(be, shape):
    return be.asarray(np.linspace(-1.0, 1.0, int(np.prod(shape))).reshape(shape).astype(np.float32))


# ----------------------------------------------- the same bad input, the same message

_C24 = dict(codebook_dim=4, num_codebooks=2)
#: (what, call of (be, put), error, message): each backend and mode refuses these alike.
_BAD = [
    (
        "feature size",
        lambda be, put: be.lfq(put(np.zeros((4, 6))), lfq.Config(**_C24)),
        ValueError,
        r"expected feature axis .*C\*D = 2\*4 = 8, got 6",
    ),
    (
        "integer z",
        lambda be, put: be.quantize(put(np.zeros((4, 8), np.int32)), lfq.Config(**_C24)),
        TypeError,
        r"z has dtype int32.*cast it to a float dtype",
    ),
    (
        "complex z",
        lambda be, put: be.entropy(put(np.zeros((4, 8), np.complex64)), lfq.Config(**_C24)),
        TypeError,
        r"z has dtype complex64.*pass the real part",
    ),
    (
        "scalar z",
        lambda be, put: be.entropy(put(np.zeros(())), lfq.Config(**_C24)),
        ValueError,
        r"z is a scalar; it needs a feature axis of size C\*D = 8",
    ),
    (
        "mask shape",
        lambda be, put: be.lfq(put(np.zeros((4, 8))), lfq.Config(**_C24), put(np.ones(3, bool))),
        ValueError,
        r"mask has shape \(3,\), expected \(4,\)",
    ),
    (
        "mask dtype",
        lambda be, put: be.commitment_loss(put(np.zeros((4, 8))), lfq.Config(**_C24), put(np.ones(4))),
        TypeError,
        r"mask has dtype float32; it must be boolean",
    ),
    (
        "float indices",
        lambda be, put: be.indices_to_codes(put(np.zeros((4, 2))), lfq.Config(**_C24)),
        TypeError,
        r"indices has dtype float32",
    ),
    (
        "indices per codebook",
        lambda be, put: be.indices_to_codes(put(np.zeros((4, 3), np.int32)), lfq.Config(**_C24)),
        ValueError,
        r"last axis must hold the num_codebooks = 2",
    ),
    (
        "exact entropy bits",
        lambda be, put: be.lfq(put(np.zeros((2, 30))), lfq.Config(codebook_dim=30)),
        ValueError,
        r"exact batch entropy of codebook_dim=30.*groups:2",
    ),
    (
        "vjp term",
        lambda be, put: be.vjp("loss", put(np.zeros((4, 8))), lfq.Config(**_C24)),
        ValueError,
        r"term='loss' is not one of",
    ),
    (
        "vjp codes cotangent",
        lambda be, put: be.vjp("codes", put(np.zeros((4, 8))), lfq.Config(**_C24)),
        ValueError,
        r"needs a cotangent",
    ),
]


@pytest.mark.parametrize("what, call, error, message", _BAD, ids=[b[0] for b in _BAD])
def test_bad_input_is_refused_alike_by_every_backend(target, what, call, error, message):
    """The message names the argument, the value and the fix, in every backend and mode
    (framework-specific refusals stay in tests/test_<framework>_backend.py)."""
    _, _, be = target

    def put(array):
        return be.asarray(array, "float32" if array.dtype == np.float64 else None)

    with pytest.raises(error, match=message) as info:
        call(be, put)
    assert "in user code" not in str(info.value)  # raised before any trace, not from inside one


# --------------------------------------------------------------- cfg not a Config

_CFG = dict(codebook_dim=3, num_codebooks=2)


def _entry_points(be, z, mask, idx, cot):
    """Every public operation of the interface, as (name, call of cfg)."""
    return [
        ("quantize", lambda c: be.quantize(z, c)),
        ("codes_to_indices", lambda c: be.codes_to_indices(z, c)),
        ("indices_to_codes", lambda c: be.indices_to_codes(idx, c)),
        ("entropy", lambda c: be.entropy(z, c, mask)),
        ("commitment_loss", lambda c: be.commitment_loss(z, c)),
        ("lfq", lambda c: be.lfq(z, c, mask)),
        ("code_usage", lambda c: be.code_usage(idx, c)),
        ("vjp", lambda c: be.vjp("aux_loss", z, c, None, mask)),
        ("vjp codes", lambda c: be.vjp("codes", z, c, cot)),
    ]


@pytest.mark.parametrize("bad", [dict(_CFG), "codebook_dim=3", None], ids=["dict", "str", "None"])
def test_cfg_that_is_not_a_config_is_refused_everywhere(target, bad):
    _, mode, be = target
    z = _floats(be, (4, 6))
    calls = _entry_points(be, z, be.asarray(np.ones(4, bool)), _ints(be, [[1, 7], [0, 3]]), z)
    fix = r"lfq\.Config\(\*\*your_dict\)" if isinstance(bad, dict) else r"lfq\.Config\(codebook_dim="
    for _op, call in calls:
        with pytest.raises(
            TypeError,
            match=rf"^cfg must be an lfq\.Config, got {type(bad).__name__}: "
            rf"build one with {fix}",
        ):
            call(bad)
        if mode == "eager":
            call(lfq.Config(**_CFG))  # and the same call with a Config works


def test_cfg_dict_is_refused_by_every_reference_function():
    z, idx, mask = np.linspace(-1, 1, 24).reshape(4, 6), np.array([[1, 7]]), np.ones(4, bool)
    calls = [
        lambda c: reference.quantize(z, c),
        lambda c: reference.straight_through(z, c),
        lambda c: reference.codes_to_indices(z, c),
        lambda c: reference.indices_to_codes(idx, c),
        lambda c: reference.entropy(z, c, mask),
        lambda c: reference.entropy(z, c, method="literal"),
        lambda c: reference.commitment_loss(z, c),
        lambda c: reference.lfq(z, c, mask),
        lambda c: reference.code_usage(idx, c),
        lambda c: reference.vjp("aux_loss", z, c),
        lambda c: reference.vjp("codes", z, c, z),
        lambda c: reference.per_sample_entropy_vjp(z, c),
        lambda c: reference.batch_entropy_vjp(z, c),
        lambda c: reference.commitment_vjp(z, c),
        lambda c: reference.straight_through_vjp(z, c, z),
    ]
    for call in calls:
        with pytest.raises(
            TypeError,
            match=r"cfg must be an lfq\.Config, got dict: build one with "
            r"lfq\.Config\(\*\*your_dict\)",
        ):
            call(dict(_CFG))


def test_jax_user_jit_with_a_dict_cfg_is_refused_before_tracing():
    jax = pytest.importorskip("jax")
    be = lfq.get("jax")
    z = be.asarray(np.zeros((2, 6), np.float32))
    with pytest.raises(TypeError, match="cfg must be an lfq.Config, got dict"):
        be.compiled().lfq(z, dict(_CFG))
    with pytest.raises(TypeError, match="cfg must be an lfq.Config, got dict"):
        jax.jit(lambda z_: be.lfq(z_, dict(_CFG)).aux_loss)(z)


# --------------------------------------------------------------- foreign arrays


def _foreign(name):
    """The kinds of argument backend `name` refuses: Python containers, other frameworks'
    tensors and, for torch only (whose operations refuse them too), NumPy arrays; see
    test_numpy_arrays_are_accepted_where_the_framework_takes_them for the other half."""
    kinds = ["list", "tuple"] + [other for other in NAMES if other not in (name, "numpy")]
    return kinds + (["numpy"] if name == "torch" else [])


def _as_kind(x, kind):
    """`x` (a (4, 6)-like NumPy array) in the foreign form `kind` of `_foreign`."""
    host = np.asarray(x)
    if kind == "list":
        return host.tolist()
    if kind == "tuple":
        return tuple(map(tuple, host.tolist())) if host.ndim == 2 else tuple(host.tolist())
    if kind == "numpy":
        return host
    return lfq.get(kind).asarray(host)


def test_foreign_arrays_are_refused_naming_the_argument(target):
    name, _, be = target
    cfg = lfq.Config(codebook_dim=3, num_codebooks=2)
    z_host, mask_host, idx_host = np.zeros((4, 6), np.float32), np.ones(4, bool), np.array([[1, 7]], np.int32)
    z, mask, idx = be.asarray(z_host), be.asarray(mask_host), be.asarray(idx_host)
    backend_name = lfq.get(name).name
    for kind in _foreign(name):
        cases = [
            ("z", lambda: be.quantize(_as_kind(z_host, kind), cfg)),
            ("z", lambda: be.codes_to_indices(_as_kind(z_host, kind), cfg)),
            ("z", lambda: be.lfq(_as_kind(z_host, kind), cfg)),
            ("z", lambda: be.entropy(_as_kind(z_host, kind), cfg)),
            ("z", lambda: be.commitment_loss(_as_kind(z_host, kind), cfg)),
            ("z", lambda: be.vjp("aux_loss", _as_kind(z_host, kind), cfg)),
            ("mask", lambda: be.lfq(z, cfg, _as_kind(mask_host, kind))),
            ("mask", lambda: be.entropy(z, cfg, _as_kind(mask_host, kind))),
            ("mask", lambda: be.vjp("aux_loss", z, cfg, None, _as_kind(mask_host, kind))),
            ("indices", lambda: be.indices_to_codes(_as_kind(idx_host, kind), cfg)),
            ("indices", lambda: be.code_usage(_as_kind(idx_host, kind), cfg)),
            ("mask", lambda: be.code_usage(idx, cfg, _as_kind(np.ones(1, bool), kind))),
        ]
        for arg, call in cases:
            with pytest.raises(
                TypeError,
                match=rf"^{arg} of type \S+ is not an array the {backend_name} "
                rf"backend takes \(.+\): convert it with backend\.asarray",
            ):
                call()
    del mask


def test_numpy_arrays_are_accepted_where_the_framework_takes_them():
    """The other half of the rule: jax and tensorflow take NumPy arrays, as their operations do."""
    cfg = lfq.Config(codebook_dim=3, num_codebooks=2)
    z, mask = np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6), np.array([True, False, True, True])
    want = reference.lfq(z, cfg, mask)
    for name, mode in TARGETS:
        if name in ("jax", "tensorflow"):
            be = _backend(name, mode)
            out = be.lfq(z, cfg, mask)
            np.testing.assert_array_equal(be.to_numpy(out.indices), want.indices)
            np.testing.assert_array_equal(
                be.to_numpy(be.indices_to_codes(np.asarray(want.indices), cfg)), reference.quantize(z, cfg)
            )


def test_reference_takes_array_likes():
    """`lfq.reference` is the specification, not a backend: anything `np.asarray` takes."""
    cfg = lfq.Config(codebook_dim=2)
    assert reference.codes_to_indices([[0.5, -1.0]], cfg).tolist() == [[2]]


def test_jax_module_refuses_foreign_arrays():
    pytest.importorskip("jax")
    from lfq.backends.jax_backend import LFQ

    q = LFQ(codebook_dim=3)
    with pytest.raises(TypeError, match=r"^x of type list is not an array the jax backend takes"):
        q.apply({}, np.zeros((2, 3)).tolist())
    with pytest.raises(TypeError, match=r"^mask of type list is not an array the jax backend takes"):
        q.apply({}, np.zeros((2, 3), np.float32), [True, False])
    with pytest.raises(TypeError, match=r"^indices of type list is not an array the jax backend takes"):
        q.indices_to_codes({}, [1, 2])


# --------------------------------------------------------------- index range and codes dtype


@st.composite
def _bad_indices(draw):
    """A config, an index array and one value in it outside [0, 2**D)."""
    d, c = draw(st.integers(1, 10)), draw(st.integers(1, 3))
    tokens = draw(st.lists(st.integers(1, 4), min_size=1, max_size=2).map(tuple))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    idx = rng.integers(0, 2**d, tokens + (c,))
    bad = draw(st.one_of(st.integers(-(2**30), -1), st.integers(2**d, 2**30)))
    position = tuple(draw(st.integers(0, n - 1)) for n in idx.shape)
    idx[position] = bad
    return lfq.Config(codebook_dim=d, num_codebooks=c), idx, bad


def _range_message(bad, cfg):
    return rf"indices contains {bad}, outside \[0, {cfg.codebook_size - 1}\] for codebook_dim={cfg.codebook_dim}"


@SETTINGS
@given(case=_bad_indices())
def test_out_of_range_indices_are_refused_by_code_usage_and_indices_to_codes(target, case):
    _, _, be = target
    cfg, idx, bad = case
    native = _ints(be, idx)
    mask = be.asarray(np.zeros(idx.shape[:-1], bool))  # even where the token is masked out
    for call in (
        lambda: be.code_usage(native, cfg),
        lambda: be.code_usage(native, cfg, mask),
        lambda: be.indices_to_codes(native, cfg),
    ):
        with pytest.raises(ValueError, match=_range_message(bad, cfg)):
            call()


@SETTINGS
@given(case=_bad_indices())
def test_reference_refuses_out_of_range_indices(case):
    cfg, idx, bad = case
    for call in (lambda: reference.code_usage(idx, cfg), lambda: reference.indices_to_codes(idx, cfg)):
        with pytest.raises(ValueError, match=_range_message(bad, cfg)):
            call()


def test_code_usage_range_of_the_issue():
    cfg = lfq.Config(codebook_dim=4)
    for name, mode in TARGETS + [("reference", "eager")]:
        be = reference if name == "reference" else _backend(name, mode)
        for bad in (99, -3):
            idx = np.array([[1], [bad]]) if name == "reference" else _ints(be, [[1], [bad]])
            with pytest.raises(ValueError, match=rf"indices contains {bad}, outside \[0, 15\]"):
                be.code_usage(idx, cfg)


_NOT_FLOAT = ["int32", "int8", "int64", "uint8", "bool", "complex64", "float", "half", "", "Float32"]
_LISTS_FLOATS = r"use one of " + re.escape(", ".join(FLOAT_DTYPES))


@pytest.mark.parametrize("dtype", _NOT_FLOAT)
def test_non_float_codes_dtype_is_refused(target, dtype):
    _, _, be = target
    cfg = lfq.Config(codebook_dim=4, spherical=True)
    idx = _ints(be, [[0], [15]])
    with pytest.raises(ValueError, match=rf"dtype={re.escape(repr(dtype))}") as info:
        be.indices_to_codes(idx, cfg, dtype)
    assert all(name in str(info.value) for name in FLOAT_DTYPES), info.value


@pytest.mark.parametrize("dtype", _NOT_FLOAT + [np.int32, np.dtype("int64"), None])
def test_reference_refuses_non_float_codes_dtype(dtype):
    cfg = lfq.Config(codebook_dim=4, spherical=True)
    with pytest.raises(ValueError, match=rf"is not a float dtype name.*{_LISTS_FLOATS}"):
        reference.indices_to_codes(np.array([[0], [15]]), cfg, dtype)


@pytest.mark.parametrize("dtype", [*FLOAT_DTYPES, np.float32, np.dtype("float64")])
def test_reference_float_codes_dtypes_still_work(dtype):
    cfg = lfq.Config(codebook_dim=4, spherical=True)
    codes = reference.indices_to_codes(np.array([[0], [15]]), cfg, dtype)
    want = np.array([[-0.5] * 4, [0.5] * 4])
    np.testing.assert_array_equal(codes.astype(np.float64), want)
    assert codes.dtype.name == (dtype if isinstance(dtype, str) else np.dtype(dtype).name)


# --------------------------------------------------------------- vjp cotangent shape


@st.composite
def _wrong_cotangents(draw):
    tokens = draw(st.lists(st.integers(1, 4), min_size=1, max_size=2).map(tuple))
    z_shape = tokens + (4,)
    shape = draw(st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple).filter(lambda s: s != z_shape))
    scalar_bad = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple))
    return z_shape, shape, scalar_bad


@SETTINGS
@given(case=_wrong_cotangents())
def test_reference_vjp_refuses_a_cotangent_of_the_wrong_shape(case):
    z_shape, shape, scalar_bad = case
    cfg = lfq.Config(codebook_dim=4)
    z = np.linspace(-1, 1, int(np.prod(z_shape))).reshape(z_shape)
    with pytest.raises(
        ValueError,
        match=rf"cotangent has shape {re.escape(str(shape))}, "
        rf"expected {re.escape(str(z_shape))} \(the shape of codes",
    ):
        reference.vjp("codes", z, cfg, np.ones(shape))
    for term in lfq.LOSS_TERMS:
        with pytest.raises(
            ValueError,
            match=rf"cotangent has shape {re.escape(str(scalar_bad))}, "
            rf"expected \(\) \(the shape of {term}\): .* must be a scalar",
        ):
            reference.vjp(term, z, cfg, np.ones(scalar_bad))
    # The right shapes still work; a number is a scalar cotangent.
    reference.vjp("codes", z, cfg, np.ones(z_shape))
    reference.vjp("aux_loss", z, cfg, 2.0)
    reference.vjp("aux_loss", z, cfg, np.float64(2.0))


def test_backends_refuse_a_cotangent_of_the_wrong_shape(target):
    _, _, be = target
    cfg = lfq.Config(codebook_dim=4)
    z = _floats(be, (3, 4))
    with pytest.raises(ValueError, match=r"cotangent has shape \(2, 4\), expected \(3, 4\)"):
        be.vjp("codes", z, cfg, _floats(be, (2, 4)))
    with pytest.raises(ValueError, match=r"cotangent has shape \(3,\), expected \(\)"):
        be.vjp("aux_loss", z, cfg, _floats(be, (3,)))


# --------------------------------------------------------------- the conformance checks


def test_conformance_error_checks_pass_on_every_backend_and_fail_without_validation():
    from lfq.conformance import errors
    from lfq.conformance.target import Target

    new = {
        "errors.config_dict",
        "errors.code_usage_range",
        "errors.codes_dtype",
        "errors.foreign_array",
        "errors.cotangent_shape",
    }
    assert new <= {c.name for c in errors.ERROR_CHECKS}
    for name in NAMES:
        for check in errors.ERROR_CHECKS:
            passed, message, _ = errors.run_error_check(Target(lfq.get(name)), check)
            assert passed, (name, check.name, message)

    class Lax:  # the reference behind no checks of its own: converts lists, ignores cotangent shapes
        name, dtypes, modes = "lax", FLOAT_DTYPES, ("eager",)

        def __getattr__(self, attr):
            return getattr(reference, attr)

        def asarray(self, array, dtype=None):
            return np.asarray(array, dtype=dtype)

        def to_numpy(self, array):
            return np.asarray(array)

        def quantize(self, z, cfg):
            return np.where(np.asarray(z) > 0, 1.0, -1.0)

        def vjp(self, term, z, cfg, cotangent=None, mask=None):
            return np.zeros(np.shape(z))

    checks = {c.name: c for c in errors.ERROR_CHECKS}
    for name in ("errors.foreign_array", "errors.cotangent_shape", "errors.config_dict"):
        passed, message, _ = errors.run_error_check(Target(Lax()), checks[name])
        assert not passed and "accepted it" in message
        snippet = errors.reproducer(Target(lfq.get("numpy")), checks[name])
        with contextlib.redirect_stdout(None):
            exec(compile(snippet, "<reproducer>", "exec"), {})
