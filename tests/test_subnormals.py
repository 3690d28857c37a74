"""Subnormal-free matrix products (docs/spec.md, "Subnormal probabilities").

A CPU matrix product with subnormal inputs can run 100 times slower, and at input
std 0.1 about 10% of the float32 sub-code probabilities are subnormal. The shared
math flushes them (`factorized.flush_subnormal`) without touching any process-wide
floating-point mode. These tests generate inputs over std 0.01..10 and check:

* `subcode_probs` holds no subnormal, in every namespace and float dtype, and
  differs from the unflushed product by less than the smallest normal number;
* no operand of any matrix product of an eager torch step (forward and backward)
  is subnormal, while the unflushed probabilities of the same inputs are;
* every backend and mode gives the reference's losses and gradients within the
  conformance tolerances across those scales;
* torch's flush-denormal mode and NumPy's subnormal arithmetic are as before.
"""

from __future__ import annotations

import numpy as np
import pytest
from lfq.conformance.cases import DEFAULT_TOLERANCES

import lfq
from lfq import factorized, reference

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

TINY = {np.float32: np.finfo(np.float32).tiny, np.float64: np.finfo(np.float64).tiny}
SCALES = np.geomspace(0.01, 10.0, 7)


def _inputs(seed: int, std: float, n: int, d: int, dtype=np.float32) -> np.ndarray:
    return (std * np.random.default_rng(seed).standard_normal((n, d))).astype(dtype)


def _subnormal_count(x) -> int:
    x = np.abs(np.asarray(x, dtype=np.float64) if not isinstance(x, np.ndarray) else x)
    return int(np.count_nonzero((x > 0) & (x < np.finfo(x.dtype).tiny)))


def _unflushed_probs(a: np.ndarray) -> np.ndarray:
    """The product of the per-bit factors in a's dtype, as `subcode_probs` computed it before flushing."""
    log_pos, log_neg = factorized.bit_log_probs(a, np)
    pairs = np.exp(np.stack([log_neg, log_pos], axis=-1))
    probs = np.ones(a.shape[:-1] + (1,), a.dtype)
    for i in range(a.shape[-1]):
        probs = (probs[..., :, None] * pairs[..., i, None, :]).reshape(a.shape[:-1] + (-1,))
    return probs


def _namespaces(dtype=np.float32):
    import array_api_compat.torch as torch_xp

    out = [("numpy", np, np.asarray), ("torch", torch_xp, torch.from_numpy)]
    try:
        import jax.numpy as jnp
    except ImportError:
        return out
    if dtype == np.float32:  # JAX's float64 needs a process-wide switch this test leaves alone
        out.append(("jax", jnp, jnp.asarray))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(2))
def test_subcode_probs_hold_no_subnormal(seed, dtype):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(3, 9))
    cfg = lfq.Config(codebook_dim=k)
    for std in SCALES:
        # float64 reaches its subnormals only at logits of about 700: scale up its inputs
        x = _inputs(seed, std * (20.0 if dtype == np.float64 else 1.0), 256, k, dtype)
        a = np.asarray(factorized.bit_logits(x, cfg, np), dtype=dtype)
        want = _unflushed_probs(a)
        for name, xp, to in _namespaces(dtype):
            got = np.asarray(factorized.subcode_probs(to(a), xp))
            assert got.dtype == dtype, name
            assert _subnormal_count(got) == 0, (name, std)
            # entries below the smallest normal became 0, the rest are the product's
            # (to rounding: the order of the k - 1 multiplications and exp differ)
            flushed = np.where(want < TINY[dtype], 0.0, want).astype(dtype)
            rtol = 16 * np.finfo(dtype).eps * k
            np.testing.assert_allclose(got, flushed, rtol=rtol, atol=TINY[dtype], err_msg=name)


def test_flush_keeps_normal_numbers_and_signs():
    for dtype in (np.float32, np.float64):
        tiny = TINY[dtype]
        sub = np.nextafter(dtype(tiny), dtype(0))
        x = np.array([0.0, -0.0, sub, -sub, tiny, -tiny, 1.0, -2.5, np.inf, -np.inf], dtype=dtype)
        want = np.where(np.abs(x) < tiny, 0.0, x).astype(dtype)
        for name, xp, to in _namespaces(dtype):
            got = np.asarray(factorized.flush_subnormal(to(x.copy()), xp))
            np.testing.assert_array_equal(got, want, err_msg=name)
            nonneg = np.asarray(factorized.flush_subnormal(to(np.abs(x)), xp, nonnegative=True))
            np.testing.assert_array_equal(nonneg, np.abs(want), err_msg=name)


class _ProductOperands(TorchDispatchMode):
    """Records the subnormal count of every matrix-product operand torch runs."""

    PRODUCTS = ("aten.mm", "aten.bmm", "aten.matmul", "aten.addmm", "aten.baddbmm")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.overloadpacket) in self.PRODUCTS:
            for arg in args:
                if isinstance(arg, torch.Tensor) and arg.is_floating_point():
                    self.seen.append(_subnormal_count(arg.detach().numpy()))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("d", [7, 12])
def test_no_product_operand_is_subnormal_in_a_torch_step(d):
    be, cfg = lfq.get("torch"), lfq.Config(codebook_dim=d)
    before = 0
    for std in SCALES:
        z = _inputs(d, std, 512, d)
        a = np.asarray(factorized.bit_logits(z.reshape(-1, 1, d), cfg, np), dtype=np.float32)
        before += _subnormal_count(_unflushed_probs(a[..., : (d + 1) // 2]))
        zt = torch.from_numpy(z).requires_grad_(True)
        with _ProductOperands() as mode:
            be.lfq(zt, cfg).aux_loss.backward()
        assert len(mode.seen) >= 3, "the histogram product and its gradient's two"
        assert sum(mode.seen) == 0, (std, mode.seen)
    assert before > 0, "these inputs must make subnormal probabilities, else the test shows nothing"


def _modes(compiled: bool):
    out = []
    for name in ("numpy", "torch", "jax", "tensorflow"):
        try:
            be = lfq.get(name)
        except ImportError:
            continue
        if compiled and name != "numpy":
            out.append((f"{name}-compiled", be.compiled()))
        elif not compiled:
            out.append((name, be))
    return out


def test_every_backend_matches_the_reference_across_scales():
    _check_modes_across_scales(_modes(compiled=False))


@pytest.mark.slow
def test_every_compiled_backend_matches_the_reference_across_scales():
    _check_modes_across_scales(_modes(compiled=True))


def _check_modes_across_scales(modes):
    # One config (one compiled program per mode); the scales are run-time inputs.
    cfg = lfq.Config(codebook_dim=7, num_codebooks=2)
    tol_loss, tol_grad = DEFAULT_TOLERANCES["float32"]["loss"], DEFAULT_TOLERANCES["float32"]["grad"]
    for std in SCALES[::2]:
        z = _inputs(int(std * 1000), std, 64, cfg.num_features)
        want = reference.lfq(z, cfg)
        want_grad = reference.vjp("aux_loss", z, cfg)
        unit = max(np.abs(want_grad).max(), np.finfo(np.float32).tiny)
        for name, be in modes:
            got = be.lfq(z, cfg) if name == "numpy" else be.lfq(_as(name, z), cfg)
            for field in ("aux_loss", "per_sample_entropy", "batch_entropy"):
                g, w = float(np.asarray(getattr(got, field))), float(getattr(want, field))
                assert abs(g - w) <= tol_loss.atol + tol_loss.rtol * abs(w), (name, std, field, g, w)
            grad = np.asarray(be.vjp("aux_loss", _as(name, z), cfg), dtype=np.float64) / unit
            err = np.abs(grad - want_grad / unit) - tol_grad.rtol * np.abs(want_grad / unit)
            assert err.max() <= tol_grad.atol, (name, std, err.max())


def _as(name: str, z: np.ndarray):
    if name.startswith("torch"):
        return torch.from_numpy(z)
    return z


def test_no_process_wide_floating_point_mode_changes():
    sub32 = np.nextafter(np.float32(TINY[np.float32]), np.float32(0))

    def torch_keeps_subnormals() -> bool:
        return bool((torch.tensor([sub32]) * 1.0).item() != 0.0)

    assert torch_keeps_subnormals(), "torch's flush-denormal mode was on before the test"
    z = _inputs(0, 0.1, 256, 12)
    for name, be in (("torch", lfq.get("torch")), ("numpy", lfq.get("numpy"))):
        be.lfq(_as(name, z), lfq.Config(codebook_dim=12))
        be.vjp("aux_loss", _as(name, z), lfq.Config(codebook_dim=12))
        assert torch_keeps_subnormals(), name
        assert np.float32(sub32) * np.float32(1.0) != 0, name
