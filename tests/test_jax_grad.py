"""JAX autodiff against the reference's analytic VJPs (`lfq.reference.vjp`).

Tolerances:

* float64 (inside `jax.enable_x64`): `1e-12 * unit`.
* float32: `32 * eps32 * unit`.

`unit = 4*tau*m*max(1, D log 2) / (W*C)` (W valid tokens) is the size of one
token's gradient terms before they cancel: the batch-entropy gradient of a
near-uniform code distribution is a difference of terms of that size, so its
rounding error scales with `unit`, not with the (possibly tiny) result
(measured float32 error: <= 1.1e-7 * unit).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import lfq  # noqa: E402
from lfq import factorized, reference  # noqa: E402

BE = lfq.get("jax")
JIT = BE.compiled()
EPS32 = float(np.finfo(np.float32).eps)

CONFIGS = {
    "plain": lfq.Config(codebook_dim=6),
    "C3_near_uniform": lfq.Config(codebook_dim=4, num_codebooks=3, inv_temperature=1.0),
    "spherical": lfq.Config(codebook_dim=5, num_codebooks=2, spherical=True, scale=2.0),
    "soft_clamp_tanh": lfq.Config(codebook_dim=5, soft_clamp=1.5, activation="tanh"),
    "lsb_axis0": lfq.Config(codebook_dim=3, num_codebooks=2, bit_order="lsb", feature_axis=0),
    "groups": lfq.Config(codebook_dim=9, batch_entropy="groups:2", inv_temperature=2.0),
}


def _inputs(cfg, dtype, seed=0, tokens=(4, 13)):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(tokens + (cfg.num_features,)) * 0.3
    z = np.moveaxis(z, -1, cfg.feature_axis).astype(lfq.validation.numpy_dtype(dtype))
    return z, rng.random(tokens) > 0.3


def _unit(cfg, mask):
    valid = max(int(np.sum(mask)), 1)
    return (
        4
        * cfg.inv_temperature
        * cfg.code_magnitude
        * max(1.0, cfg.codebook_dim * math.log(2))
        / (valid * cfg.num_codebooks)
    )


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_loss_gradients_float64(name):
    cfg = CONFIGS[name]
    with jax.enable_x64(True):
        z, mask = _inputs(cfg, "float64")
        for term in lfq.LOSS_TERMS:
            got = JIT.vjp(term, jnp.asarray(z), cfg, mask=jnp.asarray(mask))
            assert got.dtype == jnp.float64 and got.shape == z.shape
            np.testing.assert_allclose(
                np.asarray(got),
                reference.vjp(term, z, cfg, mask=mask),
                rtol=0,
                atol=1e-12 * _unit(cfg, mask),
                err_msg=term,
            )


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_loss_gradients_float32(name):
    cfg = CONFIGS[name]
    with jax.enable_x64(False):
        z, mask = _inputs(cfg, "float32", seed=1)
        for term in lfq.LOSS_TERMS:
            got = JIT.vjp(term, jnp.asarray(z), cfg, mask=jnp.asarray(mask))
            assert got.dtype == jnp.float32
            np.testing.assert_allclose(
                np.asarray(got, np.float64),
                reference.vjp(term, z.astype(np.float64), cfg, mask=mask),
                rtol=0,
                atol=32 * EPS32 * _unit(cfg, mask),
                err_msg=term,
            )


def test_eager_vjp_equals_jit_vjp_and_scales_with_cotangent():
    cfg = CONFIGS["plain"]
    with jax.enable_x64(False):
        z, mask = _inputs(cfg, "float32", seed=2)
        eager = BE.vjp("aux_loss", jnp.asarray(z), cfg, cotangent=2.5, mask=jnp.asarray(mask))
        jitted = JIT.vjp("aux_loss", jnp.asarray(z), cfg, cotangent=jnp.float32(2.5), mask=jnp.asarray(mask))
        np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), rtol=0, atol=8 * EPS32 * _unit(cfg, mask))
        ref = reference.vjp("aux_loss", z.astype(np.float64), cfg, cotangent=2.5, mask=mask)
        np.testing.assert_allclose(np.asarray(eager, np.float64), ref, rtol=0, atol=80 * EPS32 * _unit(cfg, mask))
        with pytest.raises(ValueError, match="must be a scalar"):
            BE.vjp("aux_loss", jnp.asarray(z), cfg, cotangent=jnp.ones(3))


@pytest.mark.parametrize("name", ["plain", "spherical", "soft_clamp_tanh", "lsb_axis0"])
def test_straight_through_gradient(name):
    cfg = CONFIGS[name]
    with jax.enable_x64(True):
        z, _ = _inputs(cfg, "float64", seed=3)
        cot = np.random.default_rng(4).standard_normal(z.shape)
        got = JIT.vjp("codes", jnp.asarray(z), cfg, cotangent=jnp.asarray(cot))
        np.testing.assert_allclose(
            np.asarray(got), reference.vjp("codes", z, cfg, cotangent=cot), rtol=1e-13, atol=1e-15
        )
        # The same through a user's jax.grad of the lfq output.
        user = jax.jit(jax.grad(lambda z_: jnp.sum(BE.lfq(z_, cfg).codes * cot)))(jnp.asarray(z))
        np.testing.assert_allclose(np.asarray(user), np.asarray(got), rtol=1e-13, atol=1e-15)
    with pytest.raises(ValueError, match="cotangent has shape"):
        BE.vjp("codes", jnp.zeros((2, cfg.num_features)), cfg, cotangent=jnp.zeros((3,)))


def test_forward_mode_jvp_of_the_codes():
    """custom_jvp straight-through: forward mode works too, tangent = f'(x) * dz."""
    cfg = lfq.Config(codebook_dim=4, activation="tanh")
    with jax.enable_x64(True):
        z = np.random.default_rng(5).standard_normal((3, 4))
        dz = np.random.default_rng(6).standard_normal((3, 4))
        codes, tangent = jax.jvp(lambda z_: BE.straight_through(z_, cfg), (jnp.asarray(z),), (jnp.asarray(dz),))
        assert np.array_equal(np.asarray(codes), reference.quantize(z, cfg))
        np.testing.assert_allclose(np.asarray(tangent), (1 - np.tanh(z) ** 2) * dz, rtol=1e-14)


def test_user_loss_gradient_combines_terms():
    """jax.grad of a user loss = codes' cotangent through straight-through + aux gradient."""
    cfg = CONFIGS["C3_near_uniform"]
    with jax.enable_x64(True):
        z, mask = _inputs(cfg, "float64", seed=7)
        target = np.random.default_rng(8).standard_normal(z.shape)

        def loss(z_):
            out = BE.lfq(z_, cfg, jnp.asarray(mask))
            return jnp.sum((out.codes - target) ** 2) + out.aux_loss

        got = jax.jit(jax.grad(loss))(jnp.asarray(z))
        codes = reference.quantize(z, cfg)
        expected = reference.vjp("codes", z, cfg, cotangent=2 * (codes - target)) + reference.vjp(
            "aux_loss", z, cfg, mask=mask
        )
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12, atol=1e-12 * _unit(cfg, mask))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_gradients_in_input_dtype(dtype):
    cfg = CONFIGS["plain"]
    rtol = {"float16": 2.0**-10, "bfloat16": 2.0**-7}[dtype]
    with jax.enable_x64(False):
        z, mask = _inputs(cfg, dtype, seed=9)
        got = JIT.vjp("aux_loss", jnp.asarray(z), cfg, mask=jnp.asarray(mask))
        assert got.dtype == z.dtype
        ref = reference.vjp("aux_loss", z, cfg, mask=mask)  # float64 rounded to `dtype`
        scale = np.max(np.abs(ref.astype(np.float64)))
        # one ulp of the output dtype, and float32 noise for entries far below the largest
        np.testing.assert_allclose(
            np.asarray(got, np.float64), ref.astype(np.float64), rtol=rtol, atol=rtol * scale * 2**-6
        )


@pytest.mark.parametrize("bits", [0, 1, 4, 7])
def test_subcode_probs_hook_matches_product_form(bits):
    """The analytic VJP of the sub-code probabilities equals autodiff of the product form."""
    cfg = lfq.Config(codebook_dim=8)
    with jax.enable_x64(True):
        a = jnp.asarray(np.random.default_rng(bits).standard_normal((11, 2, bits)) * 6)
        cot = jnp.asarray(np.random.default_rng(99).standard_normal((11, 2, 2**bits)))
        product = lambda a_: factorized.subcode_probs(a_, jnp)  # noqa: E731
        hooked = lambda a_: BE.subcode_probs(a_, cfg)  # noqa: E731
        assert np.array_equal(np.asarray(hooked(a)), np.asarray(product(a)))
        pullback = jax.jit(lambda a_, cot_, fn: jax.vjp(fn, a_)[1](cot_)[0], static_argnums=2)
        g_hook, g_auto = pullback(a, cot, hooked), pullback(a, cot, product)
        np.testing.assert_allclose(np.asarray(g_hook), np.asarray(g_auto), rtol=1e-12, atol=1e-14)
