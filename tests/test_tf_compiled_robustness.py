"""Compiled TensorFlow (`be.compiled()`, XLA) on the classes of input of issue 14.

The commitment loss needs no batch entropy, so `max_exact_bits` must not refuse it
(D = 63 here) in either mode, value and compiled gradient; the terms that need the
batch entropy still refuse, naming the fix. A run of shapes (ranks 1-4, an empty
batch, with and without a mask) through one compiled backend matches the reference.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")

import lfq  # noqa: E402
from lfq import reference  # noqa: E402

BE = lfq.get("tensorflow")
COMPILED = BE.compiled()


def commitment_grad(z64, cfg, mask):
    """d/dz of mean((z - q)**2) over the valid elements (identity transform)."""
    w = np.ones(z64.shape[:-1]) if mask is None else mask.astype(np.float64)
    return 2 * (z64 - reference.quantize(z64, cfg)) * w[..., None] / (w.sum() * cfg.num_features)


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_commitment_loss_at_d63(mode):
    backend = BE if mode == "eager" else COMPILED
    cfg = lfq.Config(codebook_dim=63)
    rng = np.random.default_rng(63)
    z = rng.standard_normal((2, 3, 63)).astype(np.float32)
    mask = rng.random((2, 3)) > 0.3
    z64 = z.astype(np.float64)
    for m in (None, mask):
        got = backend.commitment_loss(tf.constant(z), cfg, None if m is None else tf.constant(m))
        want = float(reference.commitment_loss(z64, cfg, m))
        assert abs(float(got) - want) <= 2e-6 * want, (mode, float(got), want)
    for bad in (lambda: backend.lfq(tf.constant(z), cfg), lambda: backend.entropy(tf.constant(z), cfg)):
        with pytest.raises(ValueError, match="max_exact_bits"):
            bad()


def test_compiled_commitment_vjp_at_d63_and_small_d():
    """The commitment gradient differentiates the commitment alone: D = 63 works in both
    modes and in the reference, and compiled equals eager."""
    rng = np.random.default_rng(6)
    for d in (63, 5):
        cfg = lfq.Config(codebook_dim=d)
        z = rng.standard_normal((4, 5, d)).astype(np.float32)
        mask = rng.random((4, 5)) > 0.3
        for m in (None, mask):
            got = COMPILED.vjp("commitment_loss", tf.constant(z), cfg, mask=None if m is None else tf.constant(m))
            np.testing.assert_allclose(got.numpy(), commitment_grad(z.astype(np.float64), cfg, m), rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(
                reference.vjp("commitment_loss", z.astype(np.float64), cfg, mask=m),
                commitment_grad(z.astype(np.float64), cfg, m),
                rtol=1e-12,
            )
            eager = BE.vjp("commitment_loss", tf.constant(z), cfg, mask=None if m is None else tf.constant(m))
            np.testing.assert_allclose(got.numpy(), eager.numpy(), rtol=1e-6, atol=1e-9)
        cot = tf.constant(2.5, tf.float32)
        got = COMPILED.vjp("commitment_loss", tf.constant(z), cfg, cot)
        np.testing.assert_allclose(
            got.numpy(), 2.5 * commitment_grad(z.astype(np.float64), cfg, None), rtol=1e-5, atol=1e-9
        )
    with pytest.raises(ValueError, match="max_exact_bits"):
        COMPILED.vjp("aux_loss", tf.constant(z[..., :1].repeat(63, -1)), lfq.Config(codebook_dim=63))


def test_shape_checks_pass_on_compiled_tensorflow():
    """The conformance shape checks (`lfq.conformance.shapes`) on the compiled TF backend."""
    from lfq.conformance.shapes import SHAPES, run_shape_checks
    from lfq.conformance.target import Target

    results = run_shape_checks(Target("tensorflow"))
    assert len(results) == len(SHAPES)
    assert all(passed for _, _, passed, _ in results), [r for r in results if not r[2]]


@pytest.mark.parametrize("d", [16, 20])
def test_compiled_batch_entropy_is_at_float32_precision(d):
    """XLA (TensorFlow's) summed the 2**D terms of a uniform histogram's entropy in one
    sequential float32 loop: 1e-5 off at D = 16, 1.9e-5 at D = 20. Sums in graphs now
    accumulate in float64 (the TF array namespace's `sum`)."""
    cfg = lfq.Config(codebook_dim=d)
    zeros = np.zeros((64, d))
    noisy = np.random.default_rng(d).standard_normal((64, d)) * 0.01
    for z in (zeros, noisy):
        want = float(reference.entropy(z, cfg)[1])
        got = float(COMPILED.entropy(tf.constant(z, tf.float32), cfg)[1])
        assert abs(got / want - 1) <= 1e-6, (got, want)
