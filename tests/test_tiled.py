"""The tiled exact batch entropy (`lfq.tiled`, `Config.entropy_tile`): same values and gradients.

* tiled and untiled agree in every backend and mode, for a generated class of
  configurations (masks, several codebooks, spherical codes, groups:G, odd and
  even D, per-call schedules), with tile sizes that do not divide the grid and
  one-row tiles: float64 to ~1e-12 relative, float32 at float32 level;
* the tiled reference equals the literal enumeration (D <= 12);
* at D = 26..28 the tiled value (and at D = 26 its gradient) equals an
  independent float64 computation written here from the definition;
* a float32 forward + backward at D = 30, N = 64 grows the process by far less
  than a stored histogram (4 GiB), in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import lfq
from lfq import reference, tiled


def _backends(compiled: bool = True):
    out = [("numpy", "eager")]
    for name in ("torch", "jax", "tensorflow"):
        if lfq.registry.framework(name) is None or lfq.is_available(name):
            out.append((name, "eager"))
            if compiled:
                out.append((name, "compiled"))
    return out


def _backend(name, mode):
    be = lfq.get(name)
    return be.compiled() if mode == "compiled" else be


def _x64(name):
    """JAX's 64-bit mode for float64 runs (a no-op context elsewhere)."""
    if name == "jax":
        import jax

        return jax.enable_x64(True)
    import contextlib

    return contextlib.nullcontext()


def _cases(count: int, seed: int, max_bits: int = 12):
    """Generated `(cfg, tile, tokens, masked, sigma)`: tile choices that divide the rows,
    do not divide them, are one row, and are one entry (also one row)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        d = int(rng.integers(2, max_bits + 1))
        c = int(rng.integers(1, 4))
        groups = int(rng.integers(1, 3)) if d >= 4 and rng.random() < 0.3 else 1
        cfg = lfq.Config(
            codebook_dim=d,
            num_codebooks=c,
            spherical=bool(rng.random() < 0.3),
            batch_entropy="exact" if groups == 1 else f"groups:{groups}",
            inv_temperature=float(rng.choice([1.0, 10.0, 100.0])),
        )
        k = -(-d // groups)  # the widest group
        row = c * 2 ** (k // 2)
        tile = [1, 3 * row, row, int(rng.integers(1, 4 * row + 1))][i % 4]
        out.append((cfg, tile, int(rng.integers(3, 40)), bool(rng.random() < 0.5), float(rng.choice([0.01, 0.1]))))
    return out


def _compare(be, cfg, tile, z, mask, dtype, schedule=None):
    """Tiled vs untiled values and gradients of `be` on `z` (NumPy float64).

    float64: tiled and untiled agree to ~1e-12. Lower precisions: their values agree
    at the dtype's level, and the tiled gradient is as close to the float64 reference
    as the untiled one (the batch entropy's gradient cancels to a small fraction of
    its terms near a uniform histogram, so its float32 error is not relative to itself).
    """
    schedule = schedule or {}
    tiled_cfg = cfg.replace(entropy_tile=tile)
    zz = be.asarray(z, dtype)
    mm = None if mask is None else be.asarray(mask)
    loss_tol = dict(float64=1e-12, float32=2e-6, float16=1e-3, bfloat16=8e-3)[dtype]
    want, got = be.lfq(zz, cfg, mm, **schedule), be.lfq(zz, tiled_cfg, mm, **schedule)
    batch = abs(float(np.asarray(be.to_numpy(want.batch_entropy), np.float64)))
    for field in ("batch_entropy", "aux_loss"):
        w = float(np.asarray(be.to_numpy(getattr(want, field)), np.float64))
        g = float(np.asarray(be.to_numpy(getattr(got, field)), np.float64))
        # the aux loss is a difference of entropies: its error is relative to the batch entropy's size
        assert abs(g - w) <= loss_tol * max(abs(w) + batch, 1e-3), (cfg, tile, dtype, field, g, w)
    exact = np.asarray(be.to_numpy(zz), np.float64)
    exact_cfg = cfg.replace(**{k: float(v) for k, v in schedule.items()})
    for term in ("batch_entropy", "aux_loss"):
        w = np.asarray(be.to_numpy(be.vjp(term, zz, cfg, mask=mm, **schedule)), np.float64)
        g = np.asarray(be.to_numpy(be.vjp(term, zz, tiled_cfg, mask=mm, **schedule)), np.float64)
        scale = max(np.abs(w).max(), 1e-30)
        if dtype == "float64":
            assert np.abs(g - w).max() <= 1e-10 * scale, (cfg, tile, term, np.abs(g - w).max() / scale)
        else:
            ref = reference.vjp(term, exact, exact_cfg, mask=mask)
            err_tiled, err_untiled = np.abs(g - ref).max(), np.abs(w - ref).max()
            assert err_tiled <= 4 * err_untiled + 1e-6 * scale, (cfg, tile, dtype, term, err_tiled, err_untiled)


def _inputs(cfg, tokens, masked, sigma, seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((tokens, cfg.num_features)) * sigma
    mask = (rng.random(tokens) < 0.7) if masked else None
    return z, mask


@pytest.mark.parametrize("name,mode", _backends(compiled=False), ids=lambda v: v)
def test_tiled_equals_untiled_eager(name, mode):
    be = _backend(name, mode)
    # JAX eager compiles every operation for every new shape (minutes here): fewer configurations.
    for i, (cfg, tile, tokens, masked, sigma) in enumerate(_cases(2 if name == "jax" else 8, seed=1)):
        z, mask = _inputs(cfg, tokens, masked, sigma, i)
        with _x64(name):
            _compare(be, cfg, tile, z, mask, "float64")
        _compare(be, cfg, tile, z, mask, "float32")


@pytest.mark.parametrize("name,mode", [b for b in _backends() if b[1] == "compiled"], ids=lambda v: v)
def test_tiled_equals_untiled_compiled(name, mode):
    """Compiled modes: few configurations (each compiles its programs), odd D, mask, a
    tile that does not divide the rows, and a per-call temperature (a run-time input)."""
    be = _backend(name, mode)
    cfg = lfq.Config(codebook_dim=9, num_codebooks=2)
    z, mask = _inputs(cfg, 24, True, 0.05, 7)
    _compare(be, cfg, 3 * 2 * 2**4, z, mask, "float32", dict(inv_temperature=30.0))


@pytest.mark.parametrize("name", [n for n, m in _backends(compiled=False) if n in ("torch", "jax")])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_tiled_half_inputs(name, dtype):
    be = lfq.get(name)
    cfg = lfq.Config(codebook_dim=10, num_codebooks=2, spherical=True)
    z, mask = _inputs(cfg, 20, True, 0.5, 3)
    _compare(be, cfg, 2 * 2**5 * 5, z, mask, dtype)


@pytest.mark.parametrize("name", [n for n, m in _backends(compiled=False) if n != "numpy"])
def test_tiled_schedules(name):
    be = lfq.get(name)
    for i, (cfg, tile, tokens, masked, sigma) in enumerate(_cases(2, seed=5, max_bits=8)):
        z, mask = _inputs(cfg, tokens, masked, sigma, i)
        _compare(be, cfg, tile, z, mask, "float32", dict(inv_temperature=7.0, diversity_gamma=0.5))


def test_tiled_reference_equals_literal():
    for i, (cfg, tile, tokens, masked, sigma) in enumerate(_cases(16, seed=2)):
        z, mask = _inputs(cfg, tokens, masked, sigma, 100 + i)
        tiled_cfg = cfg.replace(entropy_tile=tile)
        literal = reference.entropy(z, cfg, mask, method="literal")
        got = reference.entropy(z, tiled_cfg, mask)
        np.testing.assert_allclose(got, literal, rtol=1e-12, atol=1e-14, err_msg=f"{cfg} tile={tile}")


def test_tiled_threshold_and_rows():
    """Tiles start past 2**24 histogram entries (all codebooks) or when asked; rows round down."""
    assert not tiled.uses_tiles(lfq.Config(codebook_dim=24), 24)
    assert tiled.uses_tiles(lfq.Config(codebook_dim=25, max_exact_bits=25), 25)
    assert tiled.uses_tiles(lfq.Config(codebook_dim=23, num_codebooks=4), 23)
    assert tiled.uses_tiles(lfq.Config(codebook_dim=4, entropy_tile=10**9), 4)
    cfg = lfq.Config(codebook_dim=10, num_codebooks=3, entropy_tile=200)
    assert tiled.tile_rows(cfg, 32, 32) == 2  # 200 // (3 * 32)
    assert tiled.tile_rows(cfg.replace(entropy_tile=1), 32, 32) == 1
    assert tiled.tile_rows(cfg.replace(entropy_tile=10**9), 32, 32) == 32
    with pytest.raises(ValueError, match="entropy_tile"):
        lfq.Config(codebook_dim=4, entropy_tile=0)


def test_max_exact_bits_error_names_the_cost():
    with pytest.raises(ValueError, match=r"6\*N\*2\*\*27 flops.*D=25\.\.32.*groups:2"):
        reference.entropy(np.zeros((2, 27)), lfq.Config(codebook_dim=27))


def test_tile_range_shares_add_up():
    """A replica's share (`tile_range`): the shares' values and gradients add up to the whole."""
    rng = np.random.default_rng(9)
    pa, pb = rng.random((12, 2, 16)), rng.random((12, 2, 8))
    pa /= pa.sum(-1, keepdims=True)
    pb /= pb.sum(-1, keepdims=True)
    count = np.float64(12.0)
    whole = tiled.entropy_sum(pa, pb, count, 3, np)
    parts = [tiled.entropy_sum(pa, pb, count, 3, np, tile_range=r) for r in ((0, 2), (2, 6))]
    assert abs(sum(parts) - whole) <= 1e-14 * whole
    d_whole = tiled.entropy_sum_vjp(pa, pb, count, 1.0, 3, np)
    d_parts = [tiled.entropy_sum_vjp(pa, pb, count, 1.0, 3, np, tile_range=r) for r in ((0, 2), (2, 6))]
    for k in range(2):
        np.testing.assert_allclose(d_parts[0][k] + d_parts[1][k], d_whole[k], rtol=1e-13, atol=1e-15)


# ------------------------------------------------------------- large D, independent oracle


def _independent_entropy(x, d, tau, rows=2**10):
    """Batch entropy from the definition, float64, sharing no code with lfq.

    p(code | x) = prod_i sigmoid(4 tau x_i b_i) (b_i = +-1, unit codes); the mean over
    tokens of the outer product of the two halves' code probabilities is built
    `rows` rows at a time and -sum p log p accumulated.
    """
    a = 4.0 * tau * np.asarray(x, np.float64)  # [N, D]
    high = (d + 1) // 2

    def half(logits):
        k = logits.shape[1]
        bits = (np.arange(2**k)[:, None] >> np.arange(k - 1, -1, -1)) & 1  # MSB first; 1 = positive
        signs = 2 * bits - 1
        return np.exp(-np.logaddexp(0.0, -(logits[:, None, :] * signs[None]))).prod(-1)  # [N, 2^k]

    pa, pb = half(a[:, :high]), half(a[:, high:])
    n = a.shape[0]
    total = 0.0
    for start in range(0, pa.shape[1], rows):
        p = pa[:, start : start + rows].T @ pb / n
        total -= float(np.sum(p * np.log(np.where(p > 0, p, 1.0))))
    return total


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,d,dtype",
    [("numpy", 26, "float64"), ("torch", 26, "float64"), ("jax", 27, "float32"), ("torch", 28, "float32")],
)
def test_large_d_against_independent(name, d, dtype):
    if lfq.registry.framework(name) is not None and not lfq.is_available(name):
        pytest.skip(f"{name} is not installed")
    tau = 30.0
    cfg = lfq.Config(codebook_dim=d, max_exact_bits=32, inv_temperature=tau)
    n = 32
    x = np.random.default_rng(d).standard_normal((n, d)) * 0.01
    be = lfq.get(name)
    want = _independent_entropy(x, d, tau)
    got = float(be.to_numpy(be.entropy(be.asarray(x, dtype), cfg)[1]))
    assert abs(got - want) <= (1e-12 if dtype == "float64" else 2e-6) * want, (got, want)
    if d == 26 and name == "torch":  # the gradient: a directional derivative by central differences
        direction = np.random.default_rng(1).standard_normal(x.shape)
        h = 1e-5
        fd = (_independent_entropy(x + h * direction, d, tau) - _independent_entropy(x - h * direction, d, tau)) / (
            2 * h
        )
        grad = be.to_numpy(be.vjp("batch_entropy", be.asarray(x, dtype), cfg))
        assert abs(np.sum(grad * direction) - fd) <= 1e-6 * np.abs(grad).sum() * np.abs(direction).max(), (
            np.sum(grad * direction),
            fd,
        )


_MEMORY_SCRIPT = """
import resource, sys
import numpy as np
name = sys.argv[1]
if name == "torch":
    import torch
import lfq
be = lfq.get(name)
cfg = lfq.Config(codebook_dim=30, max_exact_bits=32)
z = be.asarray(np.random.default_rng(0).standard_normal((64, 30)) * 0.05, "float32")
if name == "torch":
    torch.matmul(torch.rand(64, 64), torch.rand(64, 64))  # BLAS set up before the baseline
    z.requires_grad_(True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = be.lfq(z, cfg)
if name == "torch":
    out.aux_loss.backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024, float(np.asarray(be.to_numpy(out.batch_entropy))))
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["torch", "numpy"])
def test_d30_memory(name):
    """D = 30, N = 64: a stored float32 histogram alone would be 4 GiB (its gradient as much
    again); tiled, the peak RSS of a forward (+ backward in torch) grows by under 1 GiB."""
    if lfq.registry.framework(name) is not None and not lfq.is_available(name):
        pytest.skip(f"{name} is not installed")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, name], capture_output=True, text=True, env=env, timeout=1200, check=True
    )
    growth, entropy = out.stdout.split()
    assert int(growth) < 2**30, f"peak RSS grew by {int(growth) / 2**20:.0f} MiB"
    assert 0.0 < float(entropy) <= 30 * np.log(2)


def test_bench_tiled_row_and_gpu_step(monkeypatch, tmp_path, capsys):
    """benchmarks/gpu.py's tiled step is a valid bench_tiled.py command; a small row runs here."""
    pytest.importorskip("torch")
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    monkeypatch.syspath_prepend(bench)
    import bench_tiled
    import gpu

    calls = []
    monkeypatch.setattr(gpu, "step", lambda title, cmd, out, name, timeout: calls.append(cmd) or 0)
    assert gpu.main(["--out", str(tmp_path), "--skip-conformance"]) == 0
    (cmd,) = [c for c in calls if c[1].endswith("bench_tiled.py")]
    assert "--in-process" in cmd and cmd[cmd.index("--device") + 1] == "cuda"
    assert bench_tiled.main(["--rows", "12:16", "--tile", "200", "--in-process"]) == 0
    d, n, ms, floor_ms, over, _, _, rows = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert (d, n, rows) == ("12", "16", "3") and float(ms) > 0 and float(floor_ms) > 0 and float(over) > 0
