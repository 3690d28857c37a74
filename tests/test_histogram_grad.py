"""The code histogram's gradient taken one half at a time (`lfq.histogram_grad`) and the
backend hooks that use it: the shared VJP against finite differences, eager torch's
autograd Function (first and second derivatives) against the reference and against
autodiff of the composition, and JAX's token blocks against the reference.

Tolerances are the conformance suite's (tests/conftest.py), gradients normalized as in
tests/test_jax_grad.py.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
from conftest import assert_close, make_inputs

import lfq
from lfq import factorized, histogram_grad, reference
from lfq.array_backend import ArrayBackend

CONFIGS = {
    "D1": lfq.Config(codebook_dim=1),
    "D7_C2": lfq.Config(codebook_dim=7, num_codebooks=2),
    "D8_tau1": lfq.Config(codebook_dim=8, inv_temperature=1.0),
    "D5_C3_groups": lfq.Config(codebook_dim=5, num_codebooks=3, batch_entropy="groups:2"),
}


def _unit(cfg, mask):
    valid = max(int(np.sum(mask)), 1)
    return (
        4
        * cfg.inv_temperature
        * cfg.code_magnitude
        * max(1.0, cfg.codebook_dim * math.log(2))
        / (valid * cfg.num_codebooks)
    )


@pytest.mark.parametrize("k", [1, 2, 5, 6])
@pytest.mark.parametrize("weighted", [False, True])
def test_shared_vjp_matches_finite_differences(k, weighted):
    rng = np.random.default_rng(k)
    n, c = 7, 2
    a = rng.standard_normal((n, c, k)) * 2.0
    weights = (rng.random(n) > 0.3).astype(np.float64) if weighted else None
    high = (k + 1) // 2
    cotangent = rng.standard_normal((c, 2**high, 2 ** (k - high)))

    def objective(logits):
        return float(np.sum(cotangent * factorized.code_histogram(logits, weights, np)))

    _, probs_a, probs_b = histogram_grad.histogram_with_factors(a, weights, np, np.matmul)
    got = histogram_grad.code_histogram_vjp(a, probs_a, probs_b, cotangent, np, np.matmul)
    want = np.zeros_like(a)
    step = 1e-6
    for index in np.ndindex(a.shape):
        up, down = a.copy(), a.copy()
        up[index] += step
        down[index] -= step
        want[index] = (objective(up) - objective(down)) / (2 * step)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_eager_histogram_gradient_matches_the_reference(name, dtype):
    cfg = CONFIGS[name]
    be = lfq.get("torch")
    z, mask = make_inputs(cfg, seed=3, tokens=(5, 9), dtype=dtype)
    got = be.vjp("aux_loss", torch.from_numpy(z), cfg, mask=torch.from_numpy(mask))
    want = reference.vjp("aux_loss", z.astype(np.float64), cfg, mask=mask)
    assert_close(got.numpy(), want, dtype, "grad", scale=_unit(cfg, mask), what=f"{name} aux_loss grad")


@pytest.mark.parametrize("name", ["D7_C2", "D5_C3_groups"])
def test_torch_second_derivatives_equal_the_composition(name, monkeypatch):
    """create_graph through the Function (tables recomputed differentiably) gives the
    Hessian-vector product of autodiff through the composition."""
    from lfq.backends.torch_backend.backend import TorchBackend

    cfg = CONFIGS[name]
    be = lfq.get("torch")
    z, mask = make_inputs(cfg, seed=5, tokens=(4, 6))
    v = torch.from_numpy(np.random.default_rng(1).standard_normal(z.shape))

    def hvp():
        zt = torch.from_numpy(z).requires_grad_(True)
        (grad,) = torch.autograd.grad(be.lfq(zt, cfg, mask=torch.from_numpy(mask)).aux_loss, zt, create_graph=True)
        (second,) = torch.autograd.grad(torch.sum(grad * v), zt)
        return grad.detach().numpy(), second.numpy()

    grad, second = hvp()
    monkeypatch.setattr(TorchBackend, "code_histogram", ArrayBackend.code_histogram)
    grad_composed, second_composed = hvp()
    np.testing.assert_allclose(grad, grad_composed, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(second, second_composed, rtol=1e-8, atol=1e-12 * float(np.max(np.abs(second_composed))))


def _check_blocks(monkeypatch, be, put, cfg, seed, masked, blocks_owner, blocks_name, context=None):
    """`be`'s aux loss and its gradient with 8-token blocks (512 bytes of P_A: 45 tokens ->
    6 blocks, 3 tokens padded), the block function counted, against the reference."""
    monkeypatch.setattr(histogram_grad, "BLOCKS_FROM_BYTES", 2048)
    monkeypatch.setattr(histogram_grad, "BLOCK_BYTES_RANGE", (512, 512))
    calls = []
    blocks = getattr(blocks_owner, blocks_name)

    def counting(*args, **kwargs):
        calls.append(args[2])
        return blocks(*args, **kwargs)

    monkeypatch.setattr(blocks_owner, blocks_name, counting)
    z, mask = make_inputs(cfg, seed=seed, tokens=(5, 9), dtype="float32")
    mask_arg = put(mask) if masked else None
    mask_ref = mask if masked else None
    with context or contextlib.nullcontext():
        loss = be.lfq(put(z), cfg, mask=mask_arg).aux_loss
        grad = be.vjp("aux_loss", put(z), cfg, mask=mask_arg)
    assert calls and set(calls) == {8}
    want = reference.lfq(z.astype(np.float64), cfg, mask=mask_ref).aux_loss
    assert_close(np.asarray(loss), want, "float32", "loss", what="blocked aux_loss")
    want_grad = reference.vjp("aux_loss", z.astype(np.float64), cfg, mask=mask_ref)
    unit = _unit(cfg, mask if masked else np.ones_like(mask))
    assert_close(np.asarray(grad), want_grad, "float32", "grad", scale=unit, what="blocked aux_loss grad")


@pytest.mark.parametrize("masked", [False, True])
def test_jax_token_blocks_match_the_reference(masked, monkeypatch):
    """Past the block size JAX sums the histogram over padded blocks of tokens, each
    recomputed in the backward pass; values and gradients are the reference's."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    cfg = lfq.Config(codebook_dim=6, num_codebooks=2, inv_temperature=0.7)  # 64 bytes of P_A per token
    be = lfq.get("jax")
    blocks = (histogram_grad, "token_block_histogram")
    _check_blocks(monkeypatch, be, jnp.asarray, cfg, 7, masked, *blocks, jax.enable_x64(False))


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_tensorflow_token_blocks_match_the_reference(masked, compiled, monkeypatch):
    """TensorFlow's blocks (a while loop forward and backward, the gradient recomputing
    each block): values and gradients are the reference's, eagerly and under XLA."""
    tf = pytest.importorskip("tensorflow")
    from lfq.backends.tf_backend import ops as tf_ops

    cfg = lfq.Config(codebook_dim=6, num_codebooks=2, inv_temperature=0.6 + 0.01 * compiled)  # own programs
    be = lfq.get("tensorflow")
    be = be.compiled() if compiled else be
    _check_blocks(monkeypatch, be, tf.constant, cfg, 8, masked, tf_ops, "block_histogram")


def test_token_block_rows():
    """One pass below 16 MiB of P_A (or for a symbolic N); from there a quarter of P_A per
    block, at least 4 and at most 16 MiB."""
    row = (1, 16, 4)  # D = 16, float32: 1024 bytes (256 entries) of P_A per token
    assert histogram_grad.token_block_rows(16383, *row) is None
    assert histogram_grad.token_block_rows(None, *row) is None
    assert histogram_grad.token_block_rows(2**14, *row) == 2**12  # 16 MiB: 4 blocks of 4 MiB
    assert histogram_grad.token_block_rows(2**15, *row) == 2**13  # 8 MiB blocks
    assert histogram_grad.token_block_rows(2**20, *row) == 2**14  # 16 MiB blocks
    assert histogram_grad.token_block_rows(3 * 2**20, 3, 36, 4) == 5  # rows of 3 MiB: 15 MiB blocks
