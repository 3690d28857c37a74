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
