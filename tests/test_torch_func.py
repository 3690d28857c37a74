"""torch.func transforms through the torch backend (issue 18, item 2).

`torch.func.grad`, `vjp`, `jacrev` and `vmap` of the aux loss, of the
straight-through codes, and of a model holding the `LFQ` layer (through
`torch.func.functional_call`), compared with plain `torch.autograd` on generated
configurations, shapes and inputs, float32 and float64. Every custom
`autograd.Function` of the backend (straight-through, the sub-code probabilities'
analytic gradient, the full-precision matmul) lies on these paths.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lfq.backends.torch_backend import LFQ  # noqa: E402

import lfq  # noqa: E402

BE = lfq.get("torch")
DTYPES = {
    "float32": (torch.float32, dict(rtol=2e-5, atol=1e-6)),
    "float64": (torch.float64, dict(rtol=1e-10, atol=1e-12)),
}


def _draws(seed: int, count: int = 4, odd: bool = False):
    """`count` generated (config, token count, seed): D, C, spherical, soft clamp, activation, tau.

    `odd`: odd D only (see `test_vmap_at_even_d`).
    """
    rng = np.random.default_rng(seed)
    for _ in range(count):
        cfg = lfq.Config(
            codebook_dim=int(rng.choice([1, 3, 5])) if odd else int(rng.integers(1, 7)),
            num_codebooks=int(rng.integers(1, 3)),
            spherical=bool(rng.random() < 0.5),
            soft_clamp=None if rng.random() < 0.5 else float(rng.choice([0.5, 3.0])),
            activation=str(rng.choice(["identity", "tanh"])),
            inv_temperature=float(rng.choice([1.0, 10.0, 100.0])),
        )
        yield cfg, int(rng.integers(1, 9)), int(rng.integers(0, 2**31))


def _input(cfg, n, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, cfg.num_features, generator=g, dtype=torch.float64) * 0.3).to(dtype)


def _autograd(fn, z, cotangent=None):
    z = z.detach().requires_grad_(True)
    out = fn(z)
    (grad,) = torch.autograd.grad(out, z, torch.ones_like(out) if cotangent is None else cotangent)
    return grad


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_grad_and_vjp_of_the_aux_loss_and_the_codes(dtype):
    torch_dtype, tol = DTYPES[dtype]
    for cfg, n, seed in _draws(1):
        z = _input(cfg, n, seed, torch_dtype)

        def aux(z, cfg=cfg):
            return BE.lfq(z, cfg).aux_loss

        def codes(z, cfg=cfg):
            return BE.straight_through(z, cfg)

        torch.testing.assert_close(torch.func.grad(aux)(z), _autograd(aux, z), **tol)
        value, vjp_fn = torch.func.vjp(aux, z)
        torch.testing.assert_close(value, aux(z), rtol=0, atol=0)
        torch.testing.assert_close(vjp_fn(torch.ones_like(value))[0], _autograd(aux, z), **tol)
        cot = _input(cfg, n, seed + 1, torch_dtype)
        value, vjp_fn = torch.func.vjp(codes, z)
        assert torch.equal(value, BE.quantize(z, cfg))  # the codes bitwise
        torch.testing.assert_close(vjp_fn(cot)[0], _autograd(codes, z, cot), **tol)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_jacrev_of_the_aux_loss_and_the_codes(dtype):
    torch_dtype, tol = DTYPES[dtype]
    for cfg, n, seed in _draws(2, count=3):
        z = _input(cfg, n, seed, torch_dtype)

        def aux(z, cfg=cfg):
            return BE.lfq(z, cfg).aux_loss

        def codes(z, cfg=cfg):
            return BE.straight_through(z, cfg)

        torch.testing.assert_close(torch.func.jacrev(aux)(z), _autograd(aux, z), **tol)
        want = torch.autograd.functional.jacobian(codes, z)
        torch.testing.assert_close(torch.func.jacrev(codes)(z), want, **tol)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_vmap_of_the_forward_and_of_per_sample_gradients(dtype):
    torch_dtype, tol = DTYPES[dtype]
    for cfg, n, seed in _draws(3, count=3, odd=True):
        batch = torch.stack([_input(cfg, n, seed + i, torch_dtype) for i in range(3)])

        def aux(z, cfg=cfg):
            return BE.lfq(z, cfg).aux_loss

        torch.testing.assert_close(torch.func.vmap(aux)(batch), torch.stack([aux(z) for z in batch]), **tol)
        per_sample = torch.func.vmap(torch.func.grad(aux))(batch)
        torch.testing.assert_close(per_sample, torch.stack([_autograd(aux, z) for z in batch]), **tol)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_grad_of_a_model_through_functional_call(dtype):
    torch_dtype, tol = DTYPES[dtype]
    for cfg, n, seed in _draws(4, count=3):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(
            torch.nn.Linear(5, cfg.num_features),
            LFQ(
                codebook_size=cfg.codebook_size,
                num_codebooks=cfg.num_codebooks,
                spherical=cfg.spherical,
                soft_clamp_input_value=cfg.soft_clamp,
                straight_through_activation=cfg.activation,
            ),
        ).to(torch_dtype)
        model.train()
        x = torch.randn(n, 5, dtype=torch_dtype)
        target = torch.randn(n, cfg.num_features, dtype=torch_dtype)
        params = {k: v.detach() for k, v in model.named_parameters()}

        def loss(params, x):
            quantized, _, aux = torch.func.functional_call(model, params, (x,))
            return aux + ((quantized - target) ** 2).mean()

        got = torch.func.grad(loss)(params, x)
        model.zero_grad()
        loss(dict(model.named_parameters()), x).backward()
        assert got.keys() == params.keys()
        for name, param in model.named_parameters():
            torch.testing.assert_close(got[name], param.grad, **tol, msg=name)
        if cfg.codebook_dim % 2 == 0:
            continue  # see test_vmap_at_even_d
        # and per-example gradients of the same model
        per_example = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x[:, None])
        for i in range(n):
            one = torch.func.grad(loss)(params, x[i : i + 1])
            for name in params:
                torch.testing.assert_close(per_example[name][i], one[name], **tol, msg=name)


@pytest.mark.parametrize("codebook_dim", [4, 5, 8])
def test_vmap_at_even_and_odd_d(codebook_dim):
    """vmap over independent batches equals a loop over them (even D: equal halves A and B)."""
    cfg = lfq.Config(codebook_dim=codebook_dim)
    batch = _input(cfg, 6, codebook_dim, torch.float32).reshape(2, 3, codebook_dim)
    mapped = torch.func.vmap(lambda z: BE.lfq(z, cfg).aux_loss)(batch)
    looped = torch.stack([BE.lfq(z, cfg).aux_loss for z in batch])
    torch.testing.assert_close(mapped, looped, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_forward_mode_jvp_and_jacfwd(dtype):
    """Forward mode: the straight-through Function's `jvp` rule routes the carrier's tangent
    (without it jvp of the codes was silently 0). A 0-d loss's tangent may come back in
    float64 for float32 input: torch's forward AD promotes `python float * 0-d tensor`."""
    torch_dtype, tol = DTYPES[dtype]
    for cfg, n, seed in _draws(5, count=3):
        z = _input(cfg, n, seed, torch_dtype)

        def aux(z, cfg=cfg):
            return BE.lfq(z, cfg).aux_loss

        def codes(z, cfg=cfg):
            return BE.straight_through(z, cfg)

        tangent = _input(cfg, n, seed + 1, torch_dtype)
        _, got = torch.func.jvp(codes, (z,), (tangent,))
        _, vjp_fn = torch.func.vjp(codes, z)
        jac = torch.func.jacrev(codes)(z).reshape(z.numel(), z.numel())
        torch.testing.assert_close(got.reshape(-1), jac @ tangent.reshape(-1), **tol)
        torch.testing.assert_close(torch.func.jacfwd(codes)(z), torch.func.jacrev(codes)(z), **tol)
        got = torch.func.jacfwd(aux)(z).to(torch_dtype)
        torch.testing.assert_close(got, torch.func.jacrev(aux)(z), **tol)
