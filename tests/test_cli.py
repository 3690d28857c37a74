"""The `lfq` command, and the conformance suite run the ways a user runs it.

Every installed backend goes through `lfq conformance` here (a backend is skipped
only when its framework is not installed). The pytest entry is run from a folder
outside the repository, on the reference and on backends registered from outside
the package.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

import lfq

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0", PYTHONUNBUFFERED="1")
FRAMEWORKS = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}


def run(args, cwd=None, extra_env=None, timeout=600):
    env = dict(ENV, **(extra_env or {}))
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def lfq_cli(*args, **kwargs):
    return run([sys.executable, "-m", "lfq.cli", *args], **kwargs)


def explain(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-3000:]}"


OUTSIDE_MODULE = textwrap.dedent('''
    """A third party's backend: the reference behind a wrapper, and one with a bug."""
    import numpy as np
    from lfq.backends.numpy_backend import NumPyBackend


    class Wrapped:
        name = "outside"
        dtypes = NumPyBackend.dtypes
        modes = NumPyBackend.modes

        def __init__(self):
            self._inner = NumPyBackend()

        def __getattr__(self, attr):
            return getattr(self._inner, attr)


    class TiesUp(Wrapped):
        """Bug: z >= 0 gives +s."""

        def quantize(self, z, cfg):
            out = self._inner.quantize(z, cfg)
            return np.where(np.asarray(z) == 0, -out, out)
''')


@pytest.fixture
def outside(tmp_path):
    (tmp_path / "outside_lfq.py").write_text(OUTSIDE_MODULE)
    return tmp_path


def test_console_script_and_info():
    script = os.path.join(os.path.dirname(sys.executable), "lfq")
    proc = run([script, "info"] if os.path.exists(script) else [sys.executable, "-m", "lfq.cli", "info"])
    assert proc.returncode == 0, explain(proc)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"lfq {lfq.__version__} (spec {lfq.SPEC_VERSION})")
    for name in lfq.list_backends():
        row = next(line for line in lines if line.split()[:1] == [name])
        available = importlib.util.find_spec(FRAMEWORKS[name]) is not None if name in FRAMEWORKS else True
        assert row.split()[1] == ("yes" if available else "no"), row
        if available:
            assert "float32" in row and "eager" in row


def test_conformance_numpy_with_json(tmp_path):
    path = tmp_path / "report.json"
    proc = lfq_cli("conformance", "--backend", "numpy", "--json", str(path))
    assert proc.returncode == 0, explain(proc)
    assert re.search(r"^numpy\s+entropy\.batch_entropy\s+pass\s", proc.stdout, re.M)
    report = json.loads(path.read_text())
    assert report["ok"] and all(r["status"] in ("pass", "skip") for r in report["results"])


@pytest.mark.parametrize("name", sorted(FRAMEWORKS))
def test_conformance_framework_backend(name):
    if importlib.util.find_spec(FRAMEWORKS[name]) is None:
        pytest.skip(f"{FRAMEWORKS[name]} is not installed")
    proc = lfq_cli("conformance", "--backend", name)
    assert proc.returncode == 0, explain(proc)
    assert f"{name}: " in proc.stdout and " 0 failed" in proc.stdout


def test_failure_exits_nonzero_with_a_runnable_reproducer():
    proc = lfq_cli("conformance", "--register", "lsb=lfq.conformance.broken:LsbAsMsb", "--backend", "lsb",
                   "--case", "ragged-d8-c2")
    assert proc.returncode == 1, explain(proc)
    assert re.search(r"^lsb\s+codes_to_indices\s+FAIL\s", proc.stdout, re.M), explain(proc)
    block = proc.stdout.split("FAIL lsb codes_to_indices")[1].split("  reproducer:\n")[1]
    snippet = "\n".join(line[4:] for line in block.splitlines() if line.startswith("    "))
    assert "seed 3" in snippet and "Config(codebook_dim=8, num_codebooks=2" in snippet
    again = run([sys.executable, "-c", snippet])
    assert again.returncode == 0, explain(again)
    assert float(again.stdout.split("=")[-1]) > 0


def test_cross_mode():
    proc = lfq_cli("conformance", "--cross", "--backend", "numpy",
                   "--register", "arr=lfq.conformance.broken:NumPyArrayBackend", "--backend", "arr")
    assert proc.returncode == 0, explain(proc)
    assert re.search(r"^numpy~arr\s+cross\.lfq\.aux_loss\s+pass", proc.stdout, re.M)


def test_usage_errors_exit_2():
    proc = lfq_cli("conformance", "--backend", "no-such-backend")
    assert proc.returncode == 2 and "known backends are" in proc.stderr
    proc = lfq_cli("conformance", "--cross", "--backend", "numpy")
    assert proc.returncode == 2 and "two or more" in proc.stderr


def test_device_goes_to_asarray():
    proc = lfq_cli("conformance", "--backend", "numpy", "--device", "cuda")
    assert proc.returncode == 1, explain(proc)
    assert "device='cuda': NumPy arrays live on the host" in proc.stdout


def test_write_and_check_golden(tmp_path):
    proc = lfq_cli("conformance", "--write-golden", str(tmp_path))
    assert proc.returncode == 0, explain(proc)
    assert (tmp_path / "manifest.json").exists() and len(list(tmp_path.glob("*.npz"))) >= 5
    proc = lfq_cli("conformance", "--check-golden", str(tmp_path))
    assert proc.returncode == 0 and "golden files reproduce" in proc.stdout, explain(proc)
    # the package's files were written on another machine: float64 results within the tolerance
    for proc in (lfq_cli("conformance", "--check-golden"),
                 run([sys.executable, "-m", "lfq.conformance.golden", "--check"])):
        assert proc.returncode == 0, explain(proc)
        assert re.search(r"golden files reproduce \(\d+ arrays\): integer arrays, inputs and codes bit for bit; "
                         r"float64 results within rtol 1e-12", proc.stdout), explain(proc)


def test_check_golden_reports_a_gradient_beyond_the_tolerance(tmp_path):
    import numpy as np

    from lfq.conformance import golden

    golden.write(str(tmp_path))
    path = tmp_path / "ragged-d8-c2.float32.npz"
    with np.load(path) as data:
        arrays = {key: data[key].copy() for key in data.files}
    arrays["grad_aux_loss"].flat[0] += 1e-9 * np.abs(arrays["grad_aux_loss"]).max()
    path.write_bytes(golden._npz_bytes(arrays))
    for proc in (lfq_cli("conformance", "--check-golden", str(tmp_path)),
                 run([sys.executable, "-m", "lfq.conformance.golden", "--check", "--dir", str(tmp_path)])):
        assert proc.returncode == 1, explain(proc)
        assert re.search(r"^ragged-d8-c2\.float32\.npz:grad_aux_loss: 1 of 1024 outside .*"
                         r"\(\d+ x the allowed error\); max difference 1e-09 of max\|stored\|$", proc.stdout, re.M), \
            explain(proc)
        assert "1 golden differences" in proc.stdout, explain(proc)


def test_pytest_entry_from_outside_the_repository(tmp_path):
    proc = run([sys.executable, "-m", "pytest", "--pyargs", "lfq.conformance", "--lfq-backend", "numpy",
                "-q", "-p", "no:cacheprovider"], cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert re.search(r"\d+ passed", proc.stdout)


def test_backend_registered_from_outside_the_package(outside):
    env = {"PYTHONPATH": str(outside)}
    code = ("import lfq, lfq.conformance as c; lfq.register('outside', 'outside_lfq:Wrapped'); "
            "r = c.run('outside'); print(r.ok, len(r.results))")
    proc = run([sys.executable, "-c", code], cwd=outside, extra_env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("True"), explain(proc)
    for target, expected in (("outside_lfq:Wrapped", 0), ("outside_lfq:TiesUp", 1)):
        # -p names the plugin explicitly, as in a checkout without the entry point: harmless here
        proc = run([sys.executable, "-m", "pytest", "-p", "lfq.conformance.plugin", "--pyargs", "lfq.conformance",
                    "-q", "-p", "no:cacheprovider", "--lfq-register", f"outside={target}", "--lfq-backend", "outside"],
                   cwd=outside, extra_env=env)
        assert proc.returncode == expected, explain(proc)
        if expected:
            assert "quantize [edges-large-nan-masked@float32]" in proc.stdout, explain(proc)
    proc = lfq_cli("conformance", "--register", "outside=outside_lfq:TiesUp", "--backend", "outside",
                   cwd=outside, extra_env=env)
    assert proc.returncode == 1 and re.search(r"^outside\s+quantize\s+FAIL", proc.stdout, re.M), explain(proc)
