"""benchmarks/cpu.py, the one CPU benchmark command: a small run prints every table."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("jax")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_a_small_run_prints_ratios_floor_ops_and_inference(tmp_path):
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "cpu.py"), "--dims", "4", "--stds", "0.1", "--tokens", "64"]
    cmd += ["--repeat", "2", "--variants", "jax-jit", "torch-eager", "--inference-tokens", "4096"]
    cmd += ["--skip", "memory", "first-call", "--warm-cache", "--json", str(out), "--allocators", "heap reuse"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    steps = {r["variant"]: r for r in rows["steps"]}
    assert set(steps) == {"jax-jit", "torch-eager"} and all(r["ms"] > 0 for r in steps.values())
    assert rows["floors"]["4"] > 0 and rows["ops"]["4"] > 50  # aten ops of one eager step
    assert {r["variant"] for r in rows["inference"]} == {
        "torch-eager",
        "torch-compiled",
        "jax-jit",
        "torch-compiled into buffers",
        "jax-jit donated",
        "clone",
        "jax -z",
        "jax -z donated",
    }
    assert {r["allocator"] for r in rows["inference"]} == {"heap reuse"}
    assert all(r["gbps"] > 0 for r in rows["inference"])
    assert "| 4 | 0.1 | jax-jit |" in proc.stdout and "| 4 | 0.1 | torch-eager |" in proc.stdout
    assert "x floor" in proc.stdout and "copy GB/s" in proc.stdout


def test_the_memory_case_measures_growth_against_the_tables():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "cpu.py"), "--_memory", json.dumps(["torch-eager", 2048, 8])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["pab_mib"] == 2048 * (16 + 16) * 4 / 2**20 + 256 * 4 / 2**20
    assert row["peak_mib"] >= 0 and row["x_pab"] == row["peak_mib"] / row["pab_mib"]
