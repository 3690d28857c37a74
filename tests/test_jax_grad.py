"""JAX autodiff beyond `vjp` of the interface: eager vs jit, cotangent scaling, a user's
jax.grad and forward mode through the straight-through codes, gradients in half
dtypes under jit, and the sub-code probabilities' custom derivative.

The loss-term gradients of every config and dtype, eager and jit, are checked
with every backend's in tests/test_backends.py.

Tolerances are the conformance suite's (tests/conftest.py, `assert_close`),
gradients normalized by `unit = 4*tau*m*max(1, D log 2) / (W*C)` (W valid tokens):
the size of one token's gradient terms before they cancel. The batch-entropy
gradient of a near-uniform code distribution is a difference of terms of that
size, so its rounding error scales with `unit`, not with the (possibly tiny)
result (measured float32 error: <= 1.1e-7 * unit).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from conftest import assert_close, make_inputs  # noqa: E402

import lfq  # noqa: E402
from lfq import factorized, reference  # noqa: E402

BE = lfq.get("jax")
JIT = BE.compiled()

CONFIGS = {
    "plain": lfq.Config(codebook_dim=6),
    "C3_near_uniform": lfq.Config(codebook_dim=4, num_codebooks=3, inv_temperature=1.0),
    "spherical": lfq.Config(codebook_dim=5, num_codebooks=2, spherical=True, scale=2.0),
    "soft_clamp_tanh": lfq.Config(codebook_dim=5, soft_clamp=1.5, activation="tanh"),
    "lsb_axis0": lfq.Config(codebook_dim=3, num_codebooks=2, bit_order="lsb", feature_axis=0),
}


def _unit(cfg, mask):
    valid = max(int(np.sum(mask)), 1)
    return (
        4
        * cfg.inv_temperature
        * cfg.code_magnitude
        * max(1.0, cfg.codebook_dim * math.log(2))
        / (valid * cfg.num_codebooks)
    )


def test_eager_vjp_equals_jit_vjp_and_scales_with_cotangent():
    cfg = CONFIGS["plain"]
    with jax.enable_x64(False):
        z, mask = make_inputs(cfg, seed=2, tokens=(4, 13), dtype="float32")
        eager = BE.vjp("aux_loss", jnp.asarray(z), cfg, cotangent=2.5, mask=jnp.asarray(mask))
        jitted = JIT.vjp("aux_loss", jnp.asarray(z), cfg, cotangent=jnp.float32(2.5), mask=jnp.asarray(mask))
        unit = 2.5 * _unit(cfg, mask)
        assert_close(np.asarray(eager), np.asarray(jitted), "float32", "grad", scale=unit, what="eager vs jit")
        ref = reference.vjp("aux_loss", z.astype(np.float64), cfg, cotangent=2.5, mask=mask)
        assert_close(np.asarray(eager), ref, "float32", "grad", scale=unit, what="eager vs reference")
        with pytest.raises(ValueError, match="must be a scalar"):
            BE.vjp("aux_loss", jnp.asarray(z), cfg, cotangent=jnp.ones(3))


@pytest.mark.parametrize("name", ["plain", "spherical", "soft_clamp_tanh", "lsb_axis0"])
def test_straight_through_gradient(name):
    cfg = CONFIGS[name]
    with jax.enable_x64(True):
        z, _ = make_inputs(cfg, seed=3, tokens=(4, 13), dtype="float64")
        cot = np.random.default_rng(4).standard_normal(z.shape)
        got = JIT.vjp("codes", jnp.asarray(z), cfg, cotangent=jnp.asarray(cot))
        assert_close(np.asarray(got), reference.vjp("codes", z, cfg, cotangent=cot), "float64", "grad")
        # The same through a user's jax.grad of the lfq output.
        user = jax.jit(jax.grad(lambda z_: jnp.sum(BE.lfq(z_, cfg).codes * cot)))(jnp.asarray(z))
        assert_close(np.asarray(user), np.asarray(got), "float64", "grad", what="user jax.grad")
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
        assert_close(np.asarray(tangent), (1 - np.tanh(z) ** 2) * dz, "float64", "grad", what="tangent")


def test_user_loss_gradient_combines_terms():
    """jax.grad of a user loss = codes' cotangent through straight-through + aux gradient."""
    cfg = CONFIGS["C3_near_uniform"]
    with jax.enable_x64(True):
        z, mask = make_inputs(cfg, seed=7, tokens=(4, 13), dtype="float64")
        target = np.random.default_rng(8).standard_normal(z.shape)

        def loss(z_):
            out = BE.lfq(z_, cfg, jnp.asarray(mask))
            return jnp.sum((out.codes - target) ** 2) + out.aux_loss

        got = jax.jit(jax.grad(loss))(jnp.asarray(z))
        codes = reference.quantize(z, cfg)
        expected = reference.vjp("codes", z, cfg, cotangent=2 * (codes - target)) + reference.vjp(
            "aux_loss", z, cfg, mask=mask
        )
        assert_close(np.asarray(got), expected, "float64", "grad", scale=_unit(cfg, mask))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_gradients_in_input_dtype(dtype):
    cfg = CONFIGS["plain"]
    with jax.enable_x64(False):
        z, mask = make_inputs(cfg, seed=9, tokens=(4, 13), dtype=dtype)
        got = JIT.vjp("aux_loss", jnp.asarray(z), cfg, mask=jnp.asarray(mask))
        assert got.dtype == z.dtype
        ref = reference.vjp("aux_loss", z.astype(np.float64), cfg, mask=mask)
        assert_close(np.asarray(got), ref, dtype, "grad")


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
        assert_close(np.asarray(g_hook), np.asarray(g_auto), "float64", "grad", what="hooked vs autodiff")
