"""The Flax modules (`flax_modules.LFQ`, NNX, and `LinenLFQ`): the plain JAX module's results, bit for bit."""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
import jax.numpy as jnp  # noqa: E402
from flax import nnx, serialization  # noqa: E402
from lfq.backends.jax_backend import LFQ as PlainLFQ  # noqa: E402
from lfq.backends.jax_backend import LFQResult, LossBreakdown  # noqa: E402
from lfq.backends.jax_backend.flax_modules import LFQ, LinenLFQ  # noqa: E402

STATIC = ("train", "compute_loss", "return_loss_breakdown", "axis_name")
LAYERS = {  # name: (options, input shape); the last two are channel-first (image, video)
    "sequence_projections": (dict(dim=12, codebook_dim=4, num_codebooks=2, inv_temperature=3.0), (3, 5, 12)),
    "image": (dict(codebook_dim=3, num_codebooks=2), (2, 6, 4, 3)),
    "video_projections_c1": (dict(dim=5, codebook_size=16, projection_has_bias=False), (1, 5, 2, 3, 2)),
}


def plain_params(model: LFQ) -> dict:
    """The params pytree of the plain module holding the NNX module's parameters."""
    if model.project_in is None:
        return {}
    return {
        name: {k: v[...] for k, v in nnx.state(getattr(model, name), nnx.Param).items()}
        for name in ("project_in", "project_out")
    }


def inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    channel_first = len(shape) >= 4
    mask_shape = (shape[0], *shape[2:]) if channel_first else shape[:-1]
    return x, jnp.asarray(rng.random(mask_shape) > 0.3)


def same(a, b) -> bool:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b)
    )


def test_flax_is_imported_only_by_flax_modules_and_missing_flax_names_the_extra():
    code = textwrap.dedent("""
        import sys, lfq, lfq.backends.jax_backend
        lfq.get("jax")
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("flax", "optax")))
        sys.modules["flax"] = None           # as if flax were not installed
        try:
            import lfq.backends.jax_backend.flax_modules
        except ImportError as err:
            print(err)
    """)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    loaded, message = out.stdout.strip().split("\n", 1)
    assert loaded == "[]"
    assert "pip install 'lfq[flax]'" in message and "needs Flax" in message


def test_arguments_are_the_plain_modules():
    plain = [f.name for f in dataclasses.fields(PlainLFQ)]
    nnx_args = list(inspect.signature(LFQ.__init__).parameters)[1:]
    linen_fields = [f.name for f in dataclasses.fields(LinenLFQ) if f.name not in ("parent", "name")]
    assert nnx_args == plain + ["param_dtype", "deterministic", "rngs"]
    assert linen_fields == plain + ["param_dtype"]
    for layer in (
        LFQ(codebook_dim=6, num_codebooks=2, spherical=True, bit_order="lsb"),
        LinenLFQ(codebook_dim=6, num_codebooks=2, spherical=True, bit_order="lsb"),
    ):
        assert layer.config == PlainLFQ(codebook_dim=6, num_codebooks=2, spherical=True, bit_order="lsb").config
    with pytest.raises(ValueError, match="codebook_size=1000 must be a power of two"):
        LinenLFQ(codebook_size=1000)  # checked at construction, like the others
    with pytest.raises(ValueError, match="codebook_size=16 means codebook_dim=4, but codebook_dim=5"):
        LFQ(codebook_size=16, codebook_dim=5)
    with pytest.raises(ValueError, match=r"has projections .* pass rngs=nnx.Rngs\(0\)"):
        LFQ(dim=8, codebook_dim=4)


@pytest.mark.parametrize("name", LAYERS)
def test_nnx_and_linen_equal_the_plain_module_bitwise(name):
    options, shape = LAYERS[name]
    model = LFQ(**options, rngs=nnx.Rngs(0))
    params = plain_params(model)
    plain = PlainLFQ(**options)
    linen = LinenLFQ(**options)
    x, mask = inputs(shape, seed=len(name))
    # Linen's params have the plain module's structure: each takes the other's
    variables = jax.jit(linen.init)(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, dict(variables.get("params", {}))) == jax.tree.map(jnp.shape, params)
    if params:
        assert isinstance(model.project_in, nnx.Linear) and isinstance(model.project_out, nnx.Linear)
        assert model.project_in.kernel.shape == (model.input_dim, model.config.num_features)
    expected = jax.jit(plain.apply, static_argnames=STATIC)(params, x, mask, return_loss_breakdown=True)
    got_nnx = nnx.jit(lambda m, x, mask: m(x, mask, return_loss_breakdown=True))(model, x, mask)
    got_linen = jax.jit(linen.apply, static_argnames=STATIC)({"params": params}, x, mask, return_loss_breakdown=True)
    assert isinstance(got_nnx[0], LFQResult) and isinstance(got_nnx[1], LossBreakdown)
    assert same(got_nnx, expected) and same(got_linen, expected)
    assert got_nnx[0].quantized.shape == shape and float(expected[0].aux_loss) != 0.0
    # inference: no loss; model.eval() in NNX, train=False in Linen
    expected_eval = jax.jit(plain.apply, static_argnames=STATIC)(params, x, train=False)
    model.eval()
    assert same(nnx.jit(lambda m, x: m(x))(model, x), expected_eval) and float(expected_eval.aux_loss) == 0.0
    assert same(jax.jit(linen.apply, static_argnames=STATIC)({"params": params}, x, train=False), expected_eval)
    model.train()
    if name == "sequence_projections":  # eagerly too
        assert same(model(x, train=False), plain.apply(params, x, train=False))
    # codes from indices
    tokens = expected_eval.indices
    decoded = plain.indices_to_codes(params, tokens)
    assert same(model.indices_to_codes(tokens), decoded)
    assert same(linen.apply({"params": params}, tokens, method=LinenLFQ.indices_to_codes), decoded)


def test_grad_through_the_straight_through_codes_and_the_aux_loss():
    options, shape = LAYERS["sequence_projections"]
    model = LFQ(**options, rngs=nnx.Rngs(2))
    plain, params = PlainLFQ(**options), plain_params(model)
    x, mask = inputs(shape, seed=3)
    w = jnp.asarray(np.random.default_rng(4).standard_normal(shape), jnp.float32)

    def objective(out):
        return jnp.sum(out.quantized * w) + out.aux_loss

    grads_plain = jax.jit(jax.grad(lambda p, x: objective(plain.apply(p, x, mask)), argnums=(0, 1)))(params, x)
    grad_model, grad_x = nnx.jit(nnx.grad(lambda m, x: objective(m(x, mask)), argnums=(0, 1)))(model, x)
    grad_model = {name: {k: v[...] for k, v in grad_model[name].items()} for name in ("project_in", "project_out")}
    for got, want in zip(jax.tree.leaves((grad_model, grad_x)), jax.tree.leaves(grads_plain)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    assert float(jnp.max(jnp.abs(grad_x))) > 0  # the straight-through path reaches x
    linen = LinenLFQ(**options)
    grads_linen = jax.jit(jax.grad(lambda v, x: objective(linen.apply(v, x, mask)), argnums=(0, 1)))(
        {"params": params}, x
    )
    for got, want in zip(jax.tree.leaves(grads_linen), jax.tree.leaves(grads_plain)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    # aux alone reaches project_in only
    aux_grad = nnx.jit(nnx.grad(lambda m: m(x).aux_loss))(model)
    assert float(jnp.max(jnp.abs(aux_grad["project_in"]["kernel"][...]))) > 0
    assert float(jnp.max(jnp.abs(aux_grad["project_out"]["kernel"][...]))) == 0


def reconstruction(out, x):
    return jnp.mean((out.quantized - x) ** 2) + out.aux_loss


def test_training_steps_reduce_the_loss_nnx_and_linen():
    optax = pytest.importorskip("optax")
    x = jax.random.normal(jax.random.key(5), (16, 6, 12))
    model = LFQ(dim=12, codebook_dim=6, rngs=nnx.Rngs(6))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, optimizer, x):
        loss, grads = nnx.value_and_grad(lambda m: reconstruction(m(x), x))(model)
        optimizer.update(model, grads)
        return loss

    nnx_losses = [float(nnx_step(model, optimizer, x)) for _ in range(25)]
    assert nnx_losses[-1] < nnx_losses[0] - 0.05, nnx_losses

    linen = LinenLFQ(dim=12, codebook_dim=6)
    params = linen.init(jax.random.key(7), x)["params"]
    tx = optax.adam(1e-2)

    @jax.jit
    def linen_step(params, opt_state, x):
        loss, grads = jax.value_and_grad(lambda p: reconstruction(linen.apply({"params": p}, x), x))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, linen_losses = tx.init(params), []
    for _ in range(25):
        params, opt_state, loss = linen_step(params, opt_state, x)
        linen_losses.append(float(loss))
    assert linen_losses[-1] < linen_losses[0] - 0.05, linen_losses


def test_state_save_and_restore():
    options, shape = LAYERS["sequence_projections"]
    x, mask = inputs(shape, seed=8)
    model = LFQ(**options, rngs=nnx.Rngs(9))
    forward = nnx.jit(lambda m, x: m(x, mask))
    reference = forward(model, x)
    graphdef, state = nnx.split(model)
    assert same(forward(nnx.merge(graphdef, state), x), reference)
    # through bytes: a fresh model (other seed) restored from the serialized pure dict
    blob = serialization.to_bytes(nnx.to_pure_dict(nnx.state(model)))
    fresh = LFQ(**options, rngs=nnx.Rngs(10))
    assert not same(forward(fresh, x).quantized, reference.quantized)
    fresh_state = nnx.state(fresh)
    nnx.replace_by_pure_dict(fresh_state, serialization.from_bytes(nnx.to_pure_dict(fresh_state), blob))
    nnx.update(fresh, fresh_state)
    assert same(forward(fresh, x), reference)
    # Linen: the variables pytree round-trips through bytes
    linen = LinenLFQ(**options)
    variables = linen.init(jax.random.key(11), x)
    apply = jax.jit(linen.apply)
    restored = serialization.from_bytes(linen.init(jax.random.key(12), x), serialization.to_bytes(variables))
    assert same(apply(restored, x, mask), apply(variables, x, mask))


def test_wrong_input_features_raise_clearly():
    model = LFQ(dim=12, codebook_dim=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"expected 12 features on the last axis, got shape \(2, 3, 10\)"):
        nnx.jit(lambda m, x: m(x))(model, jnp.zeros((2, 3, 10)))
    linen = LinenLFQ(codebook_dim=3, num_codebooks=2)
    with pytest.raises(ValueError, match=r"expected 6 features on axis 1 \(channel-first\)"):
        linen.init(jax.random.key(0), jnp.zeros((2, 5, 4, 4)))
    with pytest.raises(TypeError, match="LFQ quantizes real floating-point features"):
        linen.apply({}, jnp.zeros((2, 6), jnp.int32))
