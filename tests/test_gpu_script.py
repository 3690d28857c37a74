"""benchmarks/gpu.py and the profilers it runs: the commands a short GPU lease runs.

A GPU session has minutes, so its script must be right before it gets there: every
step's command line is checked against the parser it calls, and both profilers run
here on the CPU.
"""

from __future__ import annotations

import os
import sys

import pytest

from lfq import cli

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import gpu  # noqa: E402
import run as bench_run  # noqa: E402


def test_every_step_is_a_valid_command_within_the_budget(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(gpu, "step", lambda title, cmd, out, name, timeout: calls.append((cmd, timeout)) or 0)
    assert gpu.main(["--out", str(tmp_path), "--budget", "500"]) == 0
    assert sum(timeout for _, timeout in calls) <= 500
    scripts = {}
    for cmd, _ in calls:
        assert cmd[0] == sys.executable
        if cmd[1:3] == ["-m", "lfq.cli"]:
            args = cli.build_parser().parse_args(cmd[3:])
            assert args.backend == ["torch", "jax"] and args.device == "cuda"
        elif cmd[1].endswith(".py"):
            scripts.setdefault(os.path.basename(cmd[1]), []).append(cmd[2:])
    for argv in scripts["run.py"]:
        args = bench_run.build_parser().parse_args(argv)
        assert args.device == "cuda" and args.in_process
    assert len(scripts["profile_torch.py"]) == len(scripts["profile_jax.py"]) == 1


def test_jax_profile_runs_on_the_cpu(capsys):
    pytest.importorskip("jax")
    import profile_jax

    assert profile_jax.main(["--dims", "6", "--tokens", "256"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.strip().splitlines()[2:]]
    assert [row[2] for row in rows] == ["highest", "default"]
    for row in rows:
        step_ms, gemm_ms, subcode_ms = float(row[3]), float(row[4]), float(row[6])
        assert step_ms > 0 and gemm_ms > 0 and subcode_ms > 0


def test_profile_runs_on_the_cpu(capsys):
    pytest.importorskip("torch")
    import profile_torch

    assert profile_torch.main(["--device", "cpu", "--dims", "6", "--tokens", "256"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"eager", "compiled"}
    for row in rows.values():
        wall, busy, kernels = map(float, row[3:6])
        assert wall > 0 and busy > 0 and kernels >= 1 and row[6] == "yes"
