"""docs/make_large_codebook_figures.py: its estimators against the reference, and its smoke run.

The script writes every estimator from its definition in NumPy; here each one is
checked against `lfq.reference` on small codebooks, where the literal
enumeration of the 2^D codes (the definition of the batch entropy) is feasible.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from lfq import reference
from lfq.config import Config

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "make_large_codebook_figures.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("large_codebook_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cases():
    """(D, tau, N, seed): small codebooks, the three temperatures of the study."""
    rng = np.random.default_rng(21)
    return [
        (int(rng.integers(3, 11)), tau, int(rng.integers(5, 80)), int(rng.integers(1 << 30))) for tau in (1, 10, 100)
    ]


@pytest.mark.parametrize("d, tau, n, seed", _cases())
def test_estimators_match_their_definitions(study, d, tau, n, seed):
    rng = np.random.default_rng(seed)
    x = study.tokenizer_like_features(rng, n, d)
    a = 4.0 * tau * x
    cfg = Config(codebook_dim=d, inv_temperature=float(tau))
    literal = float(reference.entropy(x, cfg, method="literal")[1])
    values = study.estimate_all(a, np.random.default_rng(seed))
    assert values["exact"] == pytest.approx(literal, rel=1e-10, abs=1e-12)

    for groups in range(1, d + 1):
        grouped = float(
            reference.entropy(x, Config(codebook_dim=d, inv_temperature=float(tau), batch_entropy=f"groups:{groups}"))[
                1
            ]
        )
        assert study.grouped(a, groups) == pytest.approx(grouped, rel=1e-10, abs=1e-12)
        # Subadditivity of entropy: the sum over groups bounds the exact value from above.
        assert study.grouped(a, groups) >= literal - 1e-10
    assert values["per_bit"] == pytest.approx(study.grouped(a, d), rel=1e-12)
    assert values["groups:2"] == pytest.approx(study.grouped(a, 2), rel=1e-12)

    # The eps variants only lower -p log p where p < eps, so they never exceed the exact value.
    assert values["eps_clamp"] <= literal + 1e-10 and values["eps_add"] <= literal + 1e-10


def test_pooled_is_the_mixture_of_the_subcode_marginals(study):
    """Pooled = (D / w) H(mean over sub-codes of their marginals), from the literal pbar."""
    rng = np.random.default_rng(5)
    for d, w in ((6, 3), (8, 4), (9, 9)):
        x = study.tokenizer_like_features(rng, 40, d)
        a = 40.0 * x
        # Literal pbar over all 2^D codes, MSB first, reshaped to one axis per bit.
        pbar = study.subcode_probs(a).mean(0).reshape((2,) * d)
        marginals = [pbar.sum(axis=tuple(i for i in range(d) if not lo <= i < lo + w)).ravel() for lo in range(0, d, w)]
        expected = d // w * study.entropy_of(np.mean(marginals, axis=0))
        assert study.pooled(a, w) == pytest.approx(expected, rel=1e-12)
    assert [study.pooled_width(d) for d in (8, 12, 18, 20, 28, 7)] == [8, 6, 9, 5, 7, 7]


def test_tiles_give_the_untiled_value(study, monkeypatch):
    """Tiles of one row of pbar give the value of the whole pbar made at once."""
    rng = np.random.default_rng(8)
    a = 30.0 * study.tokenizer_like_features(rng, 64, 9)
    whole = study.exact_entropies(a)
    monkeypatch.setattr(study, "TILE_ENTRIES", 1)
    tiled = study.exact_entropies(a)
    for key in whole:
        assert tiled[key] == pytest.approx(whole[key], rel=1e-12)


def test_quick_run_writes_the_figure_and_numbers(tmp_path):
    subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], check=True, capture_output=True, timeout=300
    )
    result = json.loads((tmp_path / "large_codebooks.json").read_text())
    assert (tmp_path / "large_codebooks.png").stat().st_size > 10_000
    assert {(r["D"], r["tau"]) for r in result["rows"]} == {(d, t) for d in (8, 10) for t in (1.0, 10.0, 100.0)}
    for row in result["rows"]:
        assert row["groups:2"] >= row["exact"] - 1e-9 and row["per_bit"] >= row["groups:2"] - 1e-9
    # The committed numbers come from the default run over D = 8..28.
    committed = json.loads((ROOT / "docs" / "figures" / "large_codebooks.json").read_text())
    assert committed["command"] == "python docs/make_large_codebook_figures.py"
    assert sorted({r["D"] for r in committed["rows"]}) == [8, 12, 16, 20, 24, 28]
    comm = {c["D"]: c for c in committed["communication"]}
    assert comm[24]["histogram_allreduce"] == 64 * 2**20 and comm[32]["histogram_allreduce"] == 16 * 2**30


def test_page_numbers_are_the_committed_ones():
    """Every row of the error table in docs/large-codebooks.md is the committed JSON's, to its rounding."""
    page = (ROOT / "docs" / "large-codebooks.md").read_text()
    committed = json.loads((ROOT / "docs" / "figures" / "large_codebooks.json").read_text())
    rows = {(r["D"], r["tau"]): r for r in committed["rows"]}
    names = ("per_bit", "groups:2", "groups:9-bit", "pooled", "eps_clamp", "eps_add", "subsample")
    checked = 0
    for line in page.splitlines():
        cells = [c.strip().replace("−", "-") for c in line.strip("|").split("|")]
        if len(cells) != 4 + len(names) or not cells[0].isdigit():
            continue
        row = rows[(int(cells[0]), float(cells[2]))]
        assert int(cells[1]) == row["N"] and float(cells[3]) == pytest.approx(row["exact"], abs=5e-4)
        for name, cell in zip(names, cells[4:]):
            assert float(cell) == pytest.approx(100 * (row[name] - row["exact"]) / row["exact"], abs=0.051), name
        checked += 1
    assert checked >= 10
