"""JAX backend values against the NumPy reference (`lfq.reference`), eagerly and under jit.

Tolerances (values; gradients are in test_jax_grad.py):

* float64 (64-bit mode): 1e-12 absolute on losses of size O(D log 2): the same
  algorithm in the same dtype, so only summation order differs.
* float32: `16 * eps32 * (1 + D log 2)`: the entropies are sums of terms bounded by
  D log 2 nats, each computed to a few float32 roundings (measured: <= 1e-6).
* float16 / bfloat16 inputs: the math runs in float32 (error ~1e-6 relative) and
  the result is rounded to the input dtype, as the reference rounds its float64
  result; the two roundings can land one ulp apart: `rtol = 2**-10` (float16),
  `2**-7` (bfloat16).
* indices exact, codes bitwise.

64-bit mode is switched on only inside `jax.enable_x64` contexts (and in a
subprocess), so no test leaks global x64 state into another.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import lfq  # noqa: E402
from lfq import reference  # noqa: E402

BE = lfq.get("jax")
EPS32 = float(np.finfo(np.float32).eps)
HALF_RTOL = {"float16": 2.0**-10, "bfloat16": 2.0**-7}
LOSS_FIELDS = ("aux_loss", "per_sample_entropy", "batch_entropy", "commitment_loss")

CONFIGS = {
    "plain": lfq.Config(codebook_dim=6),
    "C3": lfq.Config(codebook_dim=4, num_codebooks=3),
    "spherical": lfq.Config(codebook_dim=5, num_codebooks=2, spherical=True, scale=2.0),
    "soft_clamp_tanh": lfq.Config(codebook_dim=5, soft_clamp=1.5, activation="tanh"),
    "lsb_axis1": lfq.Config(codebook_dim=3, num_codebooks=2, bit_order="lsb", feature_axis=1),
    "groups": lfq.Config(codebook_dim=8, batch_entropy="groups:3", inv_temperature=3.0),
    "D1": lfq.Config(codebook_dim=1, num_codebooks=4, inv_temperature=0.5),
}


@pytest.fixture
def no_x64():
    with jax.enable_x64(False):
        yield


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _inputs(cfg, dtype, seed=0, tokens=(3, 17)):
    """`z` (NumPy, in `dtype`) with the features on cfg.feature_axis, and a token mask."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(tokens + (cfg.num_features,)) * 0.3
    z = np.moveaxis(z, -1, cfg.feature_axis).astype(lfq.validation.numpy_dtype(dtype))
    mask = rng.random(tokens) > 0.3
    return z, mask


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def _loss_tol(cfg):
    return 16 * EPS32 * (1 + cfg.codebook_dim * math.log(2))


# Eager and jit run the same code (jit wraps the eager functions); eager dispatch
# compiles every primitive on first use, so eager runs on a subset to stay fast.
MODES = [(name, True) for name in sorted(CONFIGS)] + [("plain", False), ("C3", False)]


@pytest.mark.parametrize("name,compiled", MODES, ids=[f"{n}-{'jit' if c else 'eager'}" for n, c in MODES])
def test_float32_matches_reference(no_x64, name, compiled):
    cfg = CONFIGS[name]
    be = BE.compiled() if compiled else BE
    z, mask = _inputs(cfg, "float32")
    for m in (None, mask):
        out = be.lfq(jnp.asarray(z), cfg, None if m is None else jnp.asarray(m))
        ref = reference.lfq(z.astype(np.float64), cfg, m)
        assert out.codes.dtype == jnp.float32 and out.codes.shape == z.shape
        assert np.array_equal(np.asarray(out.codes), reference.quantize(z, cfg))
        assert out.indices.dtype == jnp.int32
        assert np.array_equal(np.asarray(out.indices), ref.indices)
        for field in LOSS_FIELDS:
            got = getattr(out, field)
            assert got.dtype == jnp.float32 and got.shape == ()
            np.testing.assert_allclose(_f64(got), getattr(ref, field), rtol=0, atol=_loss_tol(cfg), err_msg=field)
    ps, batch = be.entropy(jnp.asarray(z), cfg, jnp.asarray(mask))
    commit = be.commitment_loss(jnp.asarray(z), cfg, jnp.asarray(mask))
    np.testing.assert_allclose(
        [_f64(ps), _f64(batch), _f64(commit)],
        [ref.per_sample_entropy, ref.batch_entropy, ref.commitment_loss],
        rtol=0,
        atol=_loss_tol(cfg),
    )


X64_MODES = [(name, True) for name in ("plain", "spherical", "soft_clamp_tanh", "lsb_axis1", "groups")] + [
    ("plain", False)
]


@pytest.mark.parametrize("name,compiled", X64_MODES, ids=[f"{n}-{'jit' if c else 'eager'}" for n, c in X64_MODES])
def test_float64_matches_reference_to_1e12(x64, name, compiled):
    cfg = CONFIGS[name]
    be = BE.compiled() if compiled else BE
    z, mask = _inputs(cfg, "float64", seed=1)
    out = be.lfq(jnp.asarray(z), cfg, jnp.asarray(mask))
    ref = reference.lfq(z, cfg, mask)
    assert out.indices.dtype == jnp.int64 and out.codes.dtype == jnp.float64
    assert np.array_equal(np.asarray(out.indices), ref.indices)
    assert np.array_equal(np.asarray(out.codes), ref.codes)
    for field in LOSS_FIELDS:
        np.testing.assert_allclose(
            np.asarray(getattr(out, field)), getattr(ref, field), rtol=0, atol=1e-12, err_msg=field
        )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["plain", "C3", "spherical"])
def test_half_inputs_compute_in_float32(no_x64, name, dtype):
    cfg = CONFIGS[name]
    z, mask = _inputs(cfg, dtype, seed=2)
    out = BE.lfq(jnp.asarray(z), cfg, jnp.asarray(mask))
    ref = reference.lfq(z, cfg, mask)  # float64 inside, rounded to `dtype`
    assert out.codes.dtype == z.dtype
    assert np.array_equal(np.asarray(out.codes).view(np.uint16), np.asarray(ref.codes).view(np.uint16))
    assert np.array_equal(np.asarray(out.indices), ref.indices)
    for field in LOSS_FIELDS:
        got = getattr(out, field)
        assert got.dtype == z.dtype
        np.testing.assert_allclose(
            _f64(got), _f64(getattr(ref, field)), rtol=HALF_RTOL[dtype], atol=HALF_RTOL[dtype] * 1e-3, err_msg=field
        )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_ties_and_nan_give_negative_code_and_zero_bit(no_x64, dtype):
    cfg = lfq.Config(codebook_dim=5, scale=0.75)
    # 1e-40 is subnormal in float32/bfloat16 (XLA flushes those: the sign test must not), 0 in float16;
    # 5e-8 is subnormal in float16.
    z = np.array([[0.0, -0.0, np.nan, 1e-40, -2.0], [3.0, np.inf, -np.inf, -1e-40, 5e-8]], dtype=np.float32)
    z = z.astype(lfq.validation.numpy_dtype(dtype))
    for be in (BE, BE.compiled()):
        codes = np.asarray(be.quantize(jnp.asarray(z), cfg))
        expected = reference.quantize(z, cfg)
        assert codes.dtype == z.dtype
        assert np.array_equal(
            codes.view(np.uint16 if z.itemsize == 2 else np.uint32),
            expected.view(np.uint16 if z.itemsize == 2 else np.uint32),
        )
        idx = np.asarray(be.codes_to_indices(jnp.asarray(z), cfg))
        assert np.array_equal(idx, reference.codes_to_indices(z, cfg))
    assert idx[0, 0] == (0b00010 if dtype != "float16" else 0) and idx[1, 0] == 0b11001
    out = BE.compiled().lfq(jnp.asarray(z[1:]), cfg)  # the codes inside lfq too
    assert np.array_equal(np.asarray(out.indices), reference.codes_to_indices(z[1:], cfg))
    assert np.array_equal(np.asarray(out.codes, np.float32), reference.quantize(z[1:], cfg).astype(np.float32))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_positive_is_exact_for_every_bit_pattern_class(dtype):
    from lfq.backends.jax_backend import positive

    np_dtype = lfq.validation.numpy_dtype(dtype)
    info = jnp.finfo(np_dtype)
    values = np.array(
        [
            0.0,
            -0.0,
            np.nan,
            -np.nan,
            np.inf,
            -np.inf,
            info.smallest_subnormal,
            -info.smallest_subnormal,
            info.smallest_normal,
            info.max,
            -info.max,
            1.0,
            -1.0,
        ],
        dtype=np_dtype,
    )
    with jax.enable_x64(dtype == "float64"):
        got = np.asarray(jax.jit(positive)(jnp.asarray(values)))
    assert np.array_equal(got, values.astype(np.float64) > 0), (values, got)


def test_straight_through_value_is_bitwise_the_codes(no_x64):
    cfg = lfq.Config(codebook_dim=4, scale=3.0, activation="tanh", soft_clamp=2.0)
    # Large |z| is where f(z) + (q - f(z)) would round away from q.
    z = jnp.asarray(np.array([[1e8, -3e7, 0.1, -1e-3]], dtype=np.float32))
    st = BE.straight_through(z, cfg)
    assert np.array_equal(np.asarray(st).view(np.uint32), np.asarray(BE.quantize(z, cfg)).view(np.uint32))
    assert np.array_equal(np.asarray(BE.lfq(z, cfg).codes), np.asarray(st))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "jit"])
def test_indices_round_trip_and_dtype(no_x64, compiled):
    be = BE.compiled() if compiled else BE
    cfg = lfq.Config(codebook_dim=31, num_codebooks=2)
    z = np.random.default_rng(3).standard_normal((5, 62)).astype(np.float32)
    idx = be.codes_to_indices(jnp.asarray(z), cfg)
    assert idx.dtype == jnp.int32 and idx.shape == (5, 2)
    assert np.array_equal(np.asarray(idx), reference.codes_to_indices(z, cfg))
    codes = be.indices_to_codes(idx, cfg)
    assert codes.dtype == jnp.float32
    assert np.array_equal(np.asarray(codes), reference.quantize(z, cfg))
    assert be.indices_to_codes(idx, cfg, "bfloat16").dtype == jnp.bfloat16


def test_indices_int64_with_x64(x64):
    cfg = lfq.Config(codebook_dim=40, num_codebooks=2, bit_order="lsb", max_exact_bits=40)
    z = np.random.default_rng(4).standard_normal((3, 80))
    for be in (BE, BE.compiled()):
        idx = be.codes_to_indices(jnp.asarray(z), cfg)
        assert idx.dtype == jnp.int64
        assert np.array_equal(np.asarray(idx), reference.codes_to_indices(z, cfg))
        assert np.array_equal(np.asarray(be.indices_to_codes(idx, cfg, "float64")), reference.quantize(z, cfg))


def test_indices_past_31_bits_need_x64(no_x64):
    cfg = lfq.Config(codebook_dim=32)
    z = jnp.ones((2, 32))
    for be in (BE, BE.compiled()):
        with pytest.raises(ValueError, match=r"codebook_dim=32 does not fit int32.*jax_enable_x64"):
            be.codes_to_indices(z, cfg)
        with pytest.raises(ValueError, match="jax_enable_x64"):
            be.indices_to_codes(np.zeros((2, 1), np.int64), cfg)


def test_index_range_checked_eagerly_and_modulo_under_jit(no_x64):
    cfg = lfq.Config(codebook_dim=4)
    for be in (BE, BE.compiled()):
        with pytest.raises(ValueError, match=r"indices contains 16, outside \[0, 15\]"):
            be.indices_to_codes(jnp.asarray([[3], [16]]), cfg)
        with pytest.raises(ValueError, match="indices contains -1"):
            be.indices_to_codes(jnp.asarray([[-1]]), cfg)
    # A NumPy int64 past the int32 range is seen before conversion, not wrapped.
    with pytest.raises(ValueError, match=str(2**32 + 3)):
        BE.indices_to_codes(np.array([[2**32 + 3]], dtype=np.int64), cfg)
    # Under a user's jit the values are tracers: no error, the index is taken mod 2**D.
    traced = jax.jit(lambda i: BE.indices_to_codes(i, cfg))(jnp.asarray([[16 + 5], [-1]]))
    expected = BE.indices_to_codes(jnp.asarray([[5], [15]]), cfg)
    assert np.array_equal(np.asarray(traced), np.asarray(expected))


def test_all_false_mask_gives_zero_losses(no_x64):
    cfg = CONFIGS["C3"]
    z, _ = _inputs(cfg, "float32")
    mask = jnp.zeros(z.shape[:-1], bool)
    for be in (BE, BE.compiled()):
        out = be.lfq(jnp.asarray(z), cfg, mask)
        for field in LOSS_FIELDS:
            assert float(getattr(out, field)) == 0.0
    grad = BE.compiled().vjp("aux_loss", jnp.asarray(z), cfg, mask=mask)
    assert np.array_equal(np.asarray(grad), np.zeros(z.shape, np.float32))


def test_masked_nan_tokens_reach_no_loss(no_x64):
    cfg = CONFIGS["spherical"]
    z, mask = _inputs(cfg, "float32", seed=5)
    z[~mask] = np.nan
    out = BE.compiled().lfq(jnp.asarray(z), cfg, jnp.asarray(mask))
    ref = reference.lfq(np.where(mask[..., None], z, 0.0).astype(np.float64), cfg, mask)
    for field in LOSS_FIELDS:
        np.testing.assert_allclose(_f64(getattr(out, field)), getattr(ref, field), atol=_loss_tol(cfg))
    grad = np.asarray(BE.compiled().vjp("aux_loss", jnp.asarray(z), cfg, mask=jnp.asarray(mask)))
    assert np.all(np.isfinite(grad)) and np.all(grad[~mask] == 0)


def test_vmap_matches_per_example_calls(no_x64):
    cfg = CONFIGS["C3"]
    z, mask = _inputs(cfg, "float32", seed=6, tokens=(4, 9))
    batched = jax.jit(jax.vmap(lambda zi, mi: BE.lfq(zi, cfg, mi)))(jnp.asarray(z), jnp.asarray(mask))
    for i in range(z.shape[0]):
        single = BE.compiled().lfq(jnp.asarray(z[i]), cfg, jnp.asarray(mask[i]))
        assert np.array_equal(np.asarray(batched.indices[i]), np.asarray(single.indices))
        np.testing.assert_allclose(
            np.asarray(batched.aux_loss[i]), np.asarray(single.aux_loss), rtol=0, atol=_loss_tol(cfg)
        )
    # indices_to_codes under vmap: tracers, so no eager range check, same values
    codes = jax.jit(jax.vmap(lambda i: BE.indices_to_codes(i, cfg)))(batched.indices)
    assert np.array_equal(np.asarray(codes), np.asarray(batched.codes))


def test_user_jit_with_static_config(no_x64):
    cfg = CONFIGS["plain"]
    z, mask = _inputs(cfg, "float32", seed=7)
    step = jax.jit(lambda z, m, cfg: BE.lfq(z, cfg, m).aux_loss, static_argnames="cfg")
    got = step(jnp.asarray(z), jnp.asarray(mask), cfg=cfg)
    np.testing.assert_allclose(_f64(got), reference.lfq(z.astype(np.float64), cfg, mask).aux_loss, atol=_loss_tol(cfg))
    assert hash(cfg) == hash(lfq.Config(codebook_dim=6))


def test_precision_option_default_runs(no_x64):
    # On the CPU both precisions are full float32. On NVIDIA GPUs "default" is TF32: each
    # histogram entry is off by up to ~1e-3 relative, the batch entropy by ~1e-3 * (1 + H)
    # (docs/jax.md; measured on an H200: <= 3e-5 nats).
    cfg = lfq.Config(codebook_dim=8, precision="default")
    z, mask = _inputs(cfg, "float32", seed=8)
    ref = reference.lfq(z.astype(np.float64), cfg, mask)
    got = BE.compiled().lfq(jnp.asarray(z), cfg, jnp.asarray(mask))
    tol = _loss_tol(cfg) if jax.default_backend() == "cpu" else 1e-3 * (1 + float(ref.batch_entropy))
    np.testing.assert_allclose(_f64(got.batch_entropy), ref.batch_entropy, atol=tol)


def test_code_usage_and_conversions(no_x64):
    cfg = CONFIGS["C3"]
    z, mask = _inputs(cfg, "float32", seed=9)
    idx = BE.codes_to_indices(jnp.asarray(z), cfg)
    usage = BE.code_usage(idx, cfg, jnp.asarray(mask))
    ref = reference.code_usage(np.asarray(idx), cfg, mask)
    np.testing.assert_array_equal(usage.fraction_used, ref.fraction_used)
    np.testing.assert_allclose(usage.perplexity, ref.perplexity, rtol=1e-12)
    arr = BE.asarray(np.ones((2, 3)), "bfloat16")
    assert isinstance(arr, jax.Array) and arr.dtype == jnp.bfloat16
    assert BE.to_numpy(arr).dtype == lfq.validation.numpy_dtype("bfloat16")
    assert "float64" not in BE.dtypes and BE.modes == ("eager", "compiled")
    assert BE.compiled().compiled() is BE.compiled() and BE.compiled().name == "jax"
    assert isinstance(BE, lfq.LFQBackend)


def test_float64_dtype_follows_x64(x64):
    assert "float64" in BE.dtypes
    assert BE.asarray(np.ones(3), "float64").dtype == jnp.float64


# ------------------------------------------------------------------ bad input


def test_bad_inputs_have_clear_errors(no_x64):
    cfg = lfq.Config(codebook_dim=5, num_codebooks=2)
    z = jnp.zeros((4, 10))
    for be in (BE, BE.compiled()):
        with pytest.raises(ValueError, match=r"expected feature axis .* C\*D = 2\*5 = 10, got 8"):
            be.lfq(jnp.zeros((4, 8)), cfg)
        with pytest.raises(TypeError, match="z has dtype int32.*cast it to a float dtype"):
            be.quantize(jnp.zeros((4, 10), jnp.int32), cfg)
        with pytest.raises(TypeError, match="z has dtype complex64"):
            be.entropy(jnp.zeros((4, 10), jnp.complex64), cfg)
        with pytest.raises(ValueError, match=r"mask has shape \(3,\), expected \(4,\)"):
            be.lfq(z, cfg, jnp.ones(3, bool))
        with pytest.raises(TypeError, match="mask has dtype float32; it must be boolean"):
            be.commitment_loss(z, cfg, jnp.ones(4))
        with pytest.raises(TypeError, match="indices has dtype float32"):
            be.indices_to_codes(jnp.zeros((4, 2)), cfg)
        with pytest.raises(ValueError, match=r"last axis must hold the num_codebooks = 2"):
            be.indices_to_codes(jnp.zeros((4, 3), jnp.int32), cfg)
        with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['axis'\].*axis_name"):
            be.lfq(z, cfg, axis="data")
        with pytest.raises(ValueError, match="term='loss' is not one of"):
            be.vjp("loss", z, cfg)
        with pytest.raises(ValueError, match="needs a cotangent"):
            be.vjp("codes", z, cfg)
        with pytest.raises(ValueError, match="exact batch entropy of codebook_dim=30"):
            be.lfq(jnp.zeros((2, 30)), lfq.Config(codebook_dim=30))
    with pytest.raises(NameError, match="axis_name='data' is not a bound axis.*jax.shard_map"):
        BE.lfq(z, cfg, axis_name="data")
    with pytest.raises(TypeError, match="float64 but JAX's 64-bit mode is off.*jax_enable_x64"):
        BE.lfq(np.zeros((4, 10)), cfg)
    with pytest.raises(TypeError, match=r"asarray\(dtype='float64'\) needs 64-bit mode"):
        BE.asarray(np.zeros(3), "float64")
    with pytest.raises(ValueError, match="is not a registered|unknown backend 'jaxx'"):
        lfq.get("jaxx")


def test_registry_returns_the_jax_backend():
    from lfq.backends.jax_backend import JaxBackend

    assert type(lfq.get("jax")) is JaxBackend and issubclass(JaxBackend, lfq.array_backend.ArrayBackend)


def test_global_x64_mode_in_a_subprocess():
    """64-bit mode switched on globally (as users do): int64 indices, float64 to 1e-12."""
    script = textwrap.dedent("""
        import jax
        jax.config.update("jax_enable_x64", True)
        import numpy as np, jax.numpy as jnp, lfq
        from lfq import reference
        be = lfq.get("jax")
        cfg = lfq.Config(codebook_dim=7, num_codebooks=2, spherical=True)
        z = np.random.default_rng(0).standard_normal((6, 5, 14))
        for b in (be.compiled(),):
            out = b.lfq(jnp.asarray(z), cfg)
            ref = reference.lfq(z, cfg)
            assert out.indices.dtype == jnp.int64, out.indices.dtype
            assert np.array_equal(np.asarray(out.indices), ref.indices)
            assert abs(float(out.aux_loss) - float(ref.aux_loss)) < 1e-12
            g = b.vjp("batch_entropy", jnp.asarray(z), cfg)
            assert np.max(np.abs(np.asarray(g) - reference.vjp("batch_entropy", z, cfg))) < 1e-12
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
