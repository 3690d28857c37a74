"""A reduced run of examples/digits_autoencoder on every framework, and the figure regenerations."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "digits_autoencoder" / "train.py"
FRAMEWORK = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}


@pytest.mark.parametrize("backend", sorted(FRAMEWORK))
def test_digits_autoencoder_reduced_run(backend, tmp_path):
    for needed in (FRAMEWORK[backend], "sklearn", "tqdm", "matplotlib"):
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"needs {needed}")
    report = tmp_path / "report.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0")
    command = [
        sys.executable,
        str(TRAIN),
        "--backend",
        backend,
        "--steps",
        "30",
        "--json",
        str(report),
        "--no-progress",
    ]
    if backend == "torch":  # the default output: the current directory, not the source tree
        png = tmp_path / "digits_torch.png"
    else:
        png = tmp_path / "out" / "digits.png"
        png.parent.mkdir()
        command += ["--out", str(png), "--inv-temperature", "100", "--commitment-weight", "0"]
    before = set(TRAIN.parent.iterdir())
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(report.read_text())
    assert 0 < metrics["test_mse"] < 0.2  # pixels in [0, 1]: 0.2 would be noise
    assert 1 <= metrics["codes_used"] <= 1024 and metrics["perplexity"] >= 1
    assert metrics["threads"] == 1
    if backend != "torch":
        assert metrics["inv_temperature"] == 100 and metrics["commitment_weight"] == 0
    assert "test reconstruction MSE" in proc.stdout and png.stat().st_size > 1000
    assert set(TRAIN.parent.iterdir()) <= before | {TRAIN.parent / "__pycache__"}  # nothing written there


def test_figures_regenerate(tmp_path):
    pytest.importorskip("matplotlib")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "make_figures.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=dict(os.environ, MPLBACKEND="Agg"),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {p.name for p in tmp_path.glob("*.png")}
    # knobs_*.png come from docs/make_knob_figures.py (test_knob_figures_regenerate), large_codebooks.png
    # from docs/make_large_codebook_figures.py (tests/test_large_codebooks_doc.py)
    others = {
        p.name for p in (ROOT / "docs" / "figures").glob("*.png") if p.name.startswith(("knobs_", "large_codebooks"))
    }
    assert names == {p.name for p in (ROOT / "docs" / "figures").glob("*.png")} - others
    # every figure the docs show is one of the two scripts makes
    shown = set()
    for page in (ROOT / "docs").glob("*.md"):
        shown |= {
            line.split("figures/")[1].split(")")[0] for line in page.read_text().splitlines() if "](figures/" in line
        }
    assert shown <= names | others


def test_knob_figures_regenerate(tmp_path):
    for needed in ("torch", "sklearn", "matplotlib"):
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"needs {needed}")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "make_knob_figures.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=dict(os.environ, MPLBACKEND="Agg"),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    committed = {p.name for p in (ROOT / "docs" / "figures").glob("knobs_*")}
    assert {p.name for p in tmp_path.glob("knobs_*")} == committed
    report = json.loads((tmp_path / "knobs_results.json").read_text())
    assert report["settings"]["steps"] == 20 and len(report["runs"]) == 12
    for run in report["runs"]:
        (result,) = run["results"]
        assert 1 <= result["codes_used"] <= 1024 and 0 < result["test_mse"] < 0.2
    # the page's numbers are those of the committed full sweep
    full = json.loads((ROOT / "docs" / "figures" / "knobs_results.json").read_text())
    page = (ROOT / "docs" / "knobs.md").read_text()
    assert full["command"] == "python docs/make_knob_figures.py" and full["settings"]["steps"] == 2000
    for name in (
        "tau=1",
        "tau=10",
        "tau=100",
        "entropy=0.03",
        "commitment=0",
        "entropy=0,commitment=0",
        "tau 1->100",
        "entropy 0.3->0.03",
    ):
        codes = ", ".join(str(c) for c in full["summary"][name]["codes_used"]["per_seed"])
        assert f"| {codes} |" in page, (name, codes)


# The strict docs build and the checks of the built site: tests/test_docs_site.py.
