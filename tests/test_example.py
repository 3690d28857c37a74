"""A reduced run of examples/digits_autoencoder on every framework, and a figure regeneration."""

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
    png, report = tmp_path / "digits.png", tmp_path / "report.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0")
    proc = subprocess.run([sys.executable, str(TRAIN), "--backend", backend, "--steps", "30", "--out", str(png),
                           "--json", str(report), "--no-progress"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(report.read_text())
    assert 0 < metrics["test_mse"] < 0.2          # pixels in [0, 1]: 0.2 would be noise
    assert 1 <= metrics["codes_used"] <= 1024 and metrics["perplexity"] >= 1
    assert "test reconstruction MSE" in proc.stdout and png.stat().st_size > 1000


def test_figures_regenerate(tmp_path):
    pytest.importorskip("matplotlib")
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "make_figures.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=dict(os.environ, MPLBACKEND="Agg"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {p.name for p in tmp_path.glob("*.png")}
    assert names == {p.name for p in (ROOT / "docs" / "figures").glob("*.png")}
    # every figure the docs show is one the script makes
    shown = set()
    for page in (ROOT / "docs").glob("*.md"):
        shown |= {line.split("figures/")[1].split(")")[0] for line in page.read_text().splitlines()
                  if "](figures/" in line}
    assert shown <= names


def test_docs_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
