"""benchmarks/bench_torch.py: its cases, its naive baseline's math, and small CPU runs."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lfq  # noqa: E402
from lfq import reference  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_torch  # noqa: E402


def test_cases_skip_what_does_not_fit_and_add_cuda_inference_rows():
    rows = bench_torch.cases([10, 20], 16384, "cpu")
    by = {(r["algorithm"], r["D"]): r for r in rows}
    assert "skip" not in by[("naive", 10)] and "skip" not in by[("factorized-eager", 20)]
    assert "GiB" in by[("naive", 20)]["skip"]
    assert not any(r["algorithm"].startswith("inference") for r in rows)
    cuda = bench_torch.cases([14], 4096, "cuda")
    inference = [r for r in cuda if r["algorithm"].startswith("inference")]
    assert len(inference) == 2 and all(r["N"] == bench_torch.INFERENCE_TOKENS for r in inference)
    assert [r["algorithm"] for r in cuda].count("factorized-cudagraphs") == 1
    assert not any(r["algorithm"] == "factorized-cudagraphs" for r in rows)


def test_naive_baseline_computes_the_same_loss():
    cfg = lfq.Config(codebook_dim=6)
    z = np.random.default_rng(0).standard_normal((256, 6)) * 0.05
    naive = bench_torch.naive_aux_loss(torch.from_numpy(z), bench_torch.all_codes(cfg, "cpu", torch.float64), cfg)
    want = float(reference.lfq(z, cfg).aux_loss)
    assert abs(float(naive) - want) <= 1e-12 * abs(want)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# vector-quantize-pytorch is optional (the `bench` extra): its row runs where it is installed.
ALGORITHMS = ["naive", "factorized-eager", "inference-eager"] + (["vqtorch"] if bench_torch.has_vqtorch() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_small_cases_run(algorithm, device):
    case = {"backend": "torch", "algorithm": algorithm, "D": 6, "N": 512, "device": device, "dtype": "float32"}
    bench_torch.prepare(case)
    result = bench_torch.run_case(case, repeat=2)
    assert result["ms"] > 0 and result.get("peak_mib", 0.0) >= 0.0
    if algorithm.startswith("inference"):
        assert result["gbps"] > 0 and result["copy_gbps"] > 0
