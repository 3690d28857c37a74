"""The spec's corners (docs/spec.md, "The corners") in every backend, eager mode.

Generated inputs of these classes run in tests/test_differential.py; here each
rule is pinned with the example that showed it broken (issue 14), including what a
tolerance-based comparison cannot see: the sign of a zero.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest

import lfq
from lfq import reference

BACKENDS = [name for name in lfq.list_backends() if lfq.is_available(name)]
TERMS = ("per_sample_entropy", "batch_entropy", "commitment_loss", "aux_loss")


def _x64(name, dtype):
    if name != "jax":
        return contextlib.nullcontext()
    import jax

    return jax.enable_x64(dtype == "float64")


def _losses(name, z, cfg, dtype, mask=None):
    be = lfq.get(name)
    with _x64(name, dtype):
        out = be.lfq(be.asarray(z, dtype), cfg, None if mask is None else be.asarray(mask))
        grad = be.vjp("aux_loss", be.asarray(z, dtype), cfg, None, None if mask is None else be.asarray(mask))
        return (
            [float(np.asarray(be.to_numpy(getattr(out, t)), dtype=np.float64)) for t in TERMS],
            np.asarray(be.to_numpy(grad), dtype=np.float64),
        )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", BACKENDS)
def test_no_tokens_give_positive_zero_losses(name, dtype):
    cfg = lfq.Config(codebook_dim=4, num_codebooks=2)
    for mask in (None, np.zeros((0,), bool)):
        values, grad = _losses(name, np.zeros((0, 8)), cfg, dtype, mask)
        assert values == [0.0] * 4 and all(math.copysign(1.0, v) == 1.0 for v in values), values
        assert grad.shape == (0, 8)
    # an all-false mask: tests/test_backends.py (test_all_false_mask_gives_zero_losses_and_gradients)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("z, tau, dtype", [(1e34, 1e4, "float32"), (1e38, 1.0, "bfloat16"), (3e38, 1.0, "float32")])
def test_saturated_bits_give_their_limits(name, z, tau, dtype):
    cfg = lfq.Config(codebook_dim=4, inv_temperature=tau, commitment_weight=0.0)
    x = np.array([[z, -z, 0.0, z], [-z, -z, z, 0.0]])
    values, grad = _losses(name, x, cfg, dtype)
    # three bits of each token are saturated (entropy 0), the zero bit is uniform (ln 2)
    want = reference.lfq(x.astype(lfq.validation.numpy_dtype(dtype)).astype(np.float64), cfg)
    assert values[0] == pytest.approx(math.log(2), rel=1e-2)  # a sum over bits, mean over tokens
    assert values[0] == pytest.approx(float(want.per_sample_entropy), rel=1e-2)
    assert values[1] == pytest.approx(float(want.batch_entropy), rel=1e-2)
    assert values[2] == math.inf  # the commitment loss overflows honestly ...
    assert np.isfinite(values[3])  # ... and with weight 0 stays out of the aux loss
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("name", BACKENDS)
def test_nan_propagates_and_inf_saturates(name):
    cfg = lfq.Config(codebook_dim=4, num_codebooks=2)
    tail = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    values, _ = _losses(name, np.array([[np.inf, -np.inf] + tail, [0.1] * 8]), cfg, "float32")
    want = reference.lfq(np.array([[np.inf, -np.inf] + tail, [0.1] * 8]), cfg)
    assert values[0] == pytest.approx(float(want.per_sample_entropy), rel=1e-5, abs=1e-7)
    assert values[1] == pytest.approx(float(want.batch_entropy), rel=1e-5)
    assert values[2] == values[3] == math.inf
    values, _ = _losses(name, np.array([[np.nan, -np.inf] + tail, [0.1] * 8]), cfg, "float32")
    assert all(math.isnan(v) for v in values), values


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_spherical_subnormal_and_zero_groups(name, dtype):
    """Issue 14, items 5 and 6: H_s 0.090 and commitment 0 for a subnormal D = 1 group
    (XLA used to flush it: 0.693 and 1.0), and gradient 0 at a zero group (NaN before)."""
    tiny = 1e-40 if dtype == "float32" else 5e-324
    cfg = lfq.Config(codebook_dim=1, spherical=True, inv_temperature=1.0)
    values, grad = _losses(name, np.array([[tiny]]), cfg, dtype)
    assert values[0] == pytest.approx(0.0900948, rel=1e-5) and values[2] == 0.0, values
    assert np.array_equal(grad, np.zeros((1, 1)))
    cfg = lfq.Config(codebook_dim=2, num_codebooks=2, spherical=True)
    z = np.array([[0.0, 0.0, 1.0, 2.0], [0.0, -0.0, 0.0, 0.0]])
    values, grad = _losses(name, z, cfg, dtype)
    want = reference.vjp("aux_loss", z, cfg)
    assert np.array_equal(grad[:, :2], np.zeros((2, 2))) and np.array_equal(grad[1], np.zeros(4))
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)


def test_reference_spherical_gradient_of_tiny_groups():
    """Issue 14, item 7: the gradient scales as 1/|z| (homogeneity of degree -1), down to
    groups whose squares underflow float64."""
    cfg = lfq.Config(codebook_dim=2, spherical=True)
    z = np.array([[0.3, 0.4]])
    for term in ("per_sample_entropy", "commitment_loss", "aux_loss"):
        base = reference.vjp(term, z, cfg)
        np.testing.assert_allclose(reference.vjp(term, z * 1e-170, cfg), base * 1e170, rtol=1e-12)


@pytest.mark.parametrize("name", BACKENDS)
def test_zero_weights_switch_their_terms_off(name):
    """Issue 14, item 4: commitment_weight=0 with float32 z = 1e30 gave aux NaN."""
    cfg = lfq.Config(codebook_dim=4, commitment_weight=0.0)
    z = np.array([[1e30, -1e30, 1.0, 0.0]])
    values, grad = _losses(name, z, cfg, "float32")
    assert values[2] == math.inf
    assert values[3] == pytest.approx(float(reference.lfq(z, cfg).aux_loss), abs=1e-6)
    assert np.isfinite(grad).all()
    values, grad = _losses(name, z, lfq.Config(codebook_dim=4, commitment_weight=0.0, entropy_weight=0.0), "float32")
    assert values[3] == 0.0 and math.copysign(1.0, values[3]) == 1.0
    assert np.array_equal(grad, np.zeros_like(grad))


@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("name", BACKENDS)
def test_commitment_loss_and_its_gradient_at_any_d(name, mode):
    """Issue 14, item 9: `max_exact_bits` bounds the batch entropy only; the commitment
    loss and its gradient work at D = 63 in every backend and mode (and the reference)."""
    be = lfq.get(name)
    if mode not in tuple(be.modes):
        pytest.skip(f"{name} has no {mode} mode")
    be = be if mode == "eager" else be.compiled()
    cfg = lfq.Config(codebook_dim=63)
    z = np.random.default_rng(63).standard_normal((3, 63)).astype(np.float32).astype(np.float64)
    value = float(np.asarray(be.to_numpy(be.commitment_loss(be.asarray(z, "float32"), cfg)), np.float64))
    assert value == pytest.approx(float(reference.commitment_loss(z, cfg)), rel=1e-6)
    grad = np.asarray(be.to_numpy(be.vjp("commitment_loss", be.asarray(z, "float32"), cfg)), np.float64)
    np.testing.assert_allclose(grad, reference.vjp("commitment_loss", z, cfg), rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="max_exact_bits"):
        be.vjp("aux_loss", be.asarray(z, "float32"), cfg)


def _subnormal_groups(rng, shape, dtype):
    """Features of subnormal magnitude, log-uniform from the smallest subnormal up to the smallest normal."""
    info = np.finfo(np.dtype(dtype))
    steps = np.exp(rng.uniform(0.0, math.log(float(info.smallest_normal / info.smallest_subnormal)), shape))
    signs = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return (np.floor(steps) * float(info.smallest_subnormal) * signs).astype(dtype)


@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("name", BACKENDS)
def test_soft_clamp_keeps_subnormal_groups(name, mode):
    """Issue 18, item 1: `v*tanh(z/v)` rounded subnormal features to 0 (z/v underflows), so a
    spherical group became a zero group. The clamp is the identity on them to working precision,
    so every loss and gradient equals the unclamped one, for generated subnormal inputs, float32
    and float64, clamp on and off, spherical on and off."""
    be = lfq.get(name)
    if mode not in tuple(be.modes):
        pytest.skip(f"{name} has no {mode} mode")
    be = be if mode == "eager" else be.compiled()
    rng = np.random.default_rng(18)
    combos = [(c, s) for c in (None, 0.5, 3.0, 1e3) for s in (False, True)]
    if mode == "compiled":  # each config compiles: the one that showed the defect
        combos = [(3.0, True)]
    for dtype in ("float32", "float64"):
        for clamp, spherical in combos:
            d = int(rng.integers(1, 4))
            base = dict(codebook_dim=d, num_codebooks=2, spherical=spherical, inv_temperature=1.0, scale=0.5)
            cfg = lfq.Config(**base, soft_clamp=clamp)
            z = _subnormal_groups(rng, (6, 2 * d), dtype)
            with _x64(name, dtype):
                out = be.lfq(be.asarray(z, dtype), cfg)
                got = [float(np.asarray(be.to_numpy(getattr(out, t)), np.float64)) for t in TERMS]
            want = reference.lfq(z.astype(np.float64), lfq.Config(**base))
            want = [float(getattr(want, t)) for t in TERMS]
            tol = 1e-6 if dtype == "float32" else 1e-12
            assert got == pytest.approx(want, rel=tol, abs=tol), (dtype, clamp, spherical, d)
            if spherical and d == 1:  # every group projects onto its code: commitment exactly 0
                assert got[2] == 0.0, (dtype, clamp)
