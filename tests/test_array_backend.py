"""Behaviour every framework adapter inherits from `lfq.array_backend.ArrayBackend`."""

from __future__ import annotations

import numpy as np
import pytest

import lfq
from lfq import reference

FRAMEWORKS = ["torch", "jax", "tensorflow"]


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_commitment_loss_needs_no_exact_batch_entropy(name):
    """Commitment alone works at any D; the batch entropy past max_exact_bits is refused."""
    if not lfq.is_available(name):
        pytest.skip(f"{name} is not installed")
    be = lfq.get(name)
    cfg = lfq.Config(codebook_dim=30, num_codebooks=2)
    z = np.random.default_rng(0).standard_normal((5, 60)).astype(np.float32)
    mask = np.array([True, False, True, True, False])
    got = be.to_numpy(be.commitment_loss(be.asarray(z), cfg, be.asarray(mask)))
    np.testing.assert_allclose(got, reference.commitment_loss(z.astype(np.float64), cfg, mask), rtol=1e-6)
    with pytest.raises(ValueError, match="max_exact_bits"):
        be.entropy(be.asarray(z), cfg)


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_transformed_features_are_the_features_the_losses_see(name):
    """`transformed_features(z, cfg)`: compute-dtype `[N, C, D]`, soft clamp and sphere
    applied in order, for any layout and token rank (the hook the layers use)."""
    if not lfq.is_available(name):
        pytest.skip(f"{name} is not installed")
    from lfq import features

    be = lfq.get(name)
    rng = np.random.default_rng(3)
    for cfg, tokens, dtype in [
        (lfq.Config(codebook_dim=4, num_codebooks=2, soft_clamp=1.5), (3, 5), "float32"),
        (lfq.Config(codebook_dim=3, num_codebooks=2, spherical=True, scale=2.0), (7,), "float32"),
        (
            lfq.Config(codebook_dim=2, num_codebooks=3, soft_clamp=0.5, spherical=True, feature_axis=1),
            (2, 4),
            "bfloat16",
        ),
    ]:
        shape = list(tokens) + [cfg.num_features]
        if cfg.feature_axis == 1:
            shape.insert(1, shape.pop())
        z64 = rng.standard_normal(shape) * 2
        z = be.asarray(z64, dtype)
        exact = np.asarray(be.to_numpy(z), np.float64)
        grouped = features.group_features(exact, cfg, np).reshape(-1, cfg.num_codebooks, cfg.codebook_dim)
        want = features.transform_groups(grouped, cfg, np)
        got = be.to_numpy(be.transformed_features(z, cfg))
        assert got.shape == want.shape and got.dtype == np.float32, (name, got.shape, got.dtype)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6, err_msg=f"{name} {cfg}")


@pytest.mark.parametrize("bit_order", ["msb", "lsb"])
def test_float32_index_sums_equal_the_integer_rule_for_every_width(bit_order):
    """`features.indices_from_bits` (exact float32 runs of at most 24 bits, shifted into
    place) against the reference's int64 sum, for every D from 1 to 63."""
    from lfq import features

    rng = np.random.default_rng(7)
    for d in range(1, 64):
        cfg = lfq.Config(codebook_dim=d, num_codebooks=2, bit_order=bit_order, max_exact_bits=1)
        z = rng.standard_normal((9, 2 * d))
        z[0] = 1.0  # every bit set: the largest index, 2**D - 1
        bits = features.group_features(z, cfg, np) > 0
        got = features.indices_from_bits(bits, cfg, np, np.int64, lambda v, t: np.asarray(v, dtype=t))
        assert got.dtype == np.int64 and np.array_equal(got, reference.codes_to_indices(z, cfg)), d
        assert all(stop - start <= 24 for start, stop, _ in features.index_chunks(cfg))
