"""benchmarks/bench_jax.py: the naive baseline is a correct LFQ, and a case runs end to end."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import lfq  # noqa: E402
from lfq import reference  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_jax  # noqa: E402


@pytest.mark.parametrize(
    "cfg", [lfq.Config(codebook_dim=6), lfq.Config(codebook_dim=5, scale=0.5, inv_temperature=3.0)]
)
def test_naive_baseline_equals_the_reference(cfg):
    """The baseline must compute the same loss (and gradient) as the library, or the speed-up means nothing."""
    with jax.enable_x64(True):
        z = np.random.default_rng(0).standard_normal((200, cfg.codebook_dim)) * 0.2
        value, grad = jax.value_and_grad(lambda z_: bench_jax.naive_aux_loss(z_, cfg, jax.lax.Precision.HIGHEST))(
            jnp.asarray(z)
        )
        np.testing.assert_allclose(float(value), float(reference.lfq(z, cfg).aux_loss), rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(grad), reference.vjp("aux_loss", z, cfg), rtol=1e-9, atol=1e-14)


def test_cases_cover_precisions_and_skip_oversized_naive_rows():
    rows = bench_jax.cases([10, 22], 16384, "cpu")
    names = {(r["algorithm"], r["D"]) for r in rows}
    assert {("factorized", 10), ("factorized/default", 10), ("naive", 10), ("naive/default", 10)} <= names
    skipped = [r for r in rows if "skip" in r]
    assert skipped and all(r["algorithm"].startswith("naive") and r["D"] == 22 for r in skipped)
    assert all(r["device"] == "cuda" for r in bench_jax.cases([10], 4096, "cuda"))


@pytest.mark.parametrize("algorithm", ["factorized", "naive/default"])
def test_a_case_runs(algorithm):
    case = next(c for c in bench_jax.cases([4], 64, "cpu") if c["algorithm"] == algorithm)
    bench_jax.prepare(case)
    result = bench_jax.run_case(case, repeat=2)
    assert result["ms"] > 0 and result["compile_ms"] > 0 and "peak_mib" not in result
