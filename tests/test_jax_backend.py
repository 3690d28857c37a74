"""What the JAX backend does beyond the interface: int32 indices outside 64-bit
mode, the subnormal-safe sign test, tracers under a user's jit and vmap, the
precision option, its errors, and global 64-bit mode.

Its values and gradients against the reference, every dtype (float64 in 64-bit
mode), eager and jit, and the spec's corners are tested with every backend's in
tests/test_backends.py; comparisons use the conformance suite's tolerances
(tests/conftest.py, `assert_close`).

64-bit mode is switched on only inside `jax.enable_x64` contexts (and in a
subprocess), so no test leaks global x64 state into another.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from conftest import assert_close, make_inputs  # noqa: E402
from lfq.conformance.cases import Tolerance  # noqa: E402

import lfq  # noqa: E402
from lfq import reference  # noqa: E402

BE = lfq.get("jax")
C3 = lfq.Config(codebook_dim=4, num_codebooks=3)


@pytest.fixture
def no_x64():
    with jax.enable_x64(False):
        yield


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


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


def test_indices_past_31_bits_need_x64(no_x64):
    cfg = lfq.Config(codebook_dim=32)
    z = jnp.ones((2, 32))
    for be in (BE, BE.compiled()):
        with pytest.raises(ValueError, match=r"codebook_dim=32 does not fit int32.*jax_enable_x64"):
            be.codes_to_indices(z, cfg)
        with pytest.raises(ValueError, match="jax_enable_x64"):
            be.indices_to_codes(np.zeros((2, 1), np.int64), cfg)


def test_index_range_past_int32_and_modulo_under_jit(no_x64):
    # (the eager range check itself: tests/test_errors.py, every backend and mode)
    cfg = lfq.Config(codebook_dim=4)
    # A NumPy int64 past the int32 range is seen before conversion, not wrapped.
    with pytest.raises(ValueError, match=str(2**32 + 3)):
        BE.indices_to_codes(np.array([[2**32 + 3]], dtype=np.int64), cfg)
    # Under a user's jit the values are tracers: no error, the index is taken mod 2**D.
    traced = jax.jit(lambda i: BE.indices_to_codes(i, cfg))(jnp.asarray([[16 + 5], [-1]]))
    expected = BE.indices_to_codes(jnp.asarray([[5], [15]]), cfg)
    assert np.array_equal(np.asarray(traced), np.asarray(expected))


def test_vmap_matches_per_example_calls(no_x64):
    cfg = C3
    z, mask = make_inputs(cfg, seed=6, tokens=(4, 9), dtype="float32")
    batched = jax.jit(jax.vmap(lambda zi, mi: BE.lfq(zi, cfg, mi)))(jnp.asarray(z), jnp.asarray(mask))
    for i in range(z.shape[0]):
        single = BE.compiled().lfq(jnp.asarray(z[i]), cfg, jnp.asarray(mask[i]))
        assert np.array_equal(np.asarray(batched.indices[i]), np.asarray(single.indices))
        assert_close(np.asarray(batched.aux_loss[i]), np.asarray(single.aux_loss), "float32", what=f"aux {i}")
    # indices_to_codes under vmap: tracers, so no eager range check, same values
    codes = jax.jit(jax.vmap(lambda i: BE.indices_to_codes(i, cfg)))(batched.indices)
    assert np.array_equal(np.asarray(codes), np.asarray(batched.codes))


def test_user_jit_with_static_config(no_x64):
    cfg = lfq.Config(codebook_dim=6)
    z, mask = make_inputs(cfg, seed=7, dtype="float32")
    step = jax.jit(lambda z, m, cfg: BE.lfq(z, cfg, m).aux_loss, static_argnames="cfg")
    got = step(jnp.asarray(z), jnp.asarray(mask), cfg=cfg)
    assert_close(np.asarray(got), reference.lfq(z.astype(np.float64), cfg, mask).aux_loss, "float32", what="aux")
    assert hash(cfg) == hash(lfq.Config(codebook_dim=6))


def test_precision_option_default_runs(no_x64):
    # On the CPU both precisions are full float32. On NVIDIA GPUs "default" is TF32: each
    # histogram entry is off by up to ~1e-3 relative, the batch entropy by ~1e-3 * (1 + H)
    # (docs/jax.md; measured on an H200: <= 3e-5 nats).
    cfg = lfq.Config(codebook_dim=8, precision="default")
    z, mask = make_inputs(cfg, seed=8, dtype="float32")
    ref = reference.lfq(z.astype(np.float64), cfg, mask)
    got = BE.compiled().lfq(jnp.asarray(z), cfg, jnp.asarray(mask))
    tf32 = None if jax.default_backend() == "cpu" else Tolerance(1e-3, 1e-3)
    assert_close(np.asarray(got.batch_entropy), ref.batch_entropy, "float32", what="batch entropy", tol=tf32)


def test_bfloat16_conversions_and_dtypes_without_x64(no_x64):
    arr = BE.asarray(np.ones((2, 3)), "bfloat16")
    assert isinstance(arr, jax.Array) and arr.dtype == jnp.bfloat16
    assert BE.to_numpy(arr).dtype == lfq.validation.numpy_dtype("bfloat16")
    assert "float64" not in BE.dtypes and BE.compiled().name == "jax"


def test_float64_dtype_follows_x64(x64):
    assert "float64" in BE.dtypes
    assert BE.asarray(np.ones(3), "float64").dtype == jnp.float64


# ------------------------------------------------------------------ bad input


def test_jax_specific_refusals(no_x64):
    """Refusals only JAX has (the shared ones: tests/test_errors.py, every backend and mode)."""
    cfg = lfq.Config(codebook_dim=5, num_codebooks=2)
    z = jnp.zeros((4, 10))
    for be in (BE, BE.compiled()):
        with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['axis'\].*axis_name"):
            be.lfq(z, cfg, axis="data")
    with pytest.raises(NameError, match="axis_name='data' is not a bound axis.*jax.shard_map"):
        BE.lfq(z, cfg, axis_name="data")
    with pytest.raises(TypeError, match="float64 but JAX's 64-bit mode is off.*jax_enable_x64"):
        BE.lfq(np.zeros((4, 10)), cfg)
    with pytest.raises(TypeError, match=r"asarray\(dtype='float64'\) needs 64-bit mode"):
        BE.asarray(np.zeros(3), "float64")


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
