"""The `LFQ` init/apply module: layer API, projections, layouts, losses, training."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from lfq.backends.jax_backend import LFQ, LFQResult, LossBreakdown  # noqa: E402

import lfq  # noqa: E402
from lfq import reference  # noqa: E402

BE = lfq.get("jax")
STATIC = ("train", "compute_loss", "return_loss_breakdown", "axis_name")


def jit_apply(q):
    """`q.apply` under jit (eager dispatch compiles every primitive: slow in tests)."""
    return jax.jit(q.apply, static_argnames=STATIC)


def test_codebook_size_and_dim_resolve_d():
    assert LFQ(codebook_size=2**10).config.codebook_dim == 10
    assert LFQ(codebook_dim=7, num_codebooks=2).config.num_features == 14
    assert LFQ(codebook_size=16, codebook_dim=4).config.codebook_dim == 4
    with pytest.raises(ValueError, match="codebook_size=1000 must be a power of two"):
        LFQ(codebook_size=1000)
    assert LFQ(dim=8).config.codebook_dim == 8  # dim alone: codebook_size = 2**dim, as in vector-quantize-pytorch
    with pytest.raises(ValueError, match="pass codebook_size .* or codebook_dim"):
        LFQ()
    with pytest.raises(ValueError, match="codebook_size=16 means codebook_dim=4, but codebook_dim=5"):
        LFQ(codebook_size=16, codebook_dim=5)
    with pytest.raises(ValueError, match="keep_num_codebooks_dim=False with num_codebooks=2"):
        LFQ(codebook_dim=4, num_codebooks=2, keep_num_codebooks_dim=False)
    with pytest.raises(ValueError, match="has_projections=False but dim=9"):
        LFQ(dim=9, codebook_dim=4, has_projections=False)
    with pytest.raises(ValueError, match="inv_temperature=-1"):
        LFQ(codebook_dim=4, inv_temperature=-1.0)


def test_config_mapping_and_hashable():
    q = LFQ(
        codebook_dim=6,
        num_codebooks=2,
        entropy_loss_weight=0.3,
        commitment_loss_weight=0.5,
        diversity_gamma=2.0,
        inv_temperature=7.0,
        spherical=True,
        codebook_scale=2.0,
        soft_clamp_input_value=3.0,
        straight_through_activation="tanh",
        bit_order="lsb",
        batch_entropy="groups:2",
        max_exact_bits=20,
        precision="default",
    )
    assert q.config == lfq.Config(
        codebook_dim=6,
        num_codebooks=2,
        entropy_weight=0.3,
        commitment_weight=0.5,
        diversity_gamma=2.0,
        inv_temperature=7.0,
        spherical=True,
        scale=2.0,
        soft_clamp=3.0,
        activation="tanh",
        bit_order="lsb",
        batch_entropy="groups:2",
        max_exact_bits=20,
        precision="default",
    )
    assert hash(q) == hash(LFQ(**{f: getattr(q, f) for f in q.__dataclass_fields__}))


def test_without_projections_apply_is_the_functional_lfq():
    q = LFQ(codebook_dim=5, num_codebooks=2)
    params = q.init(jax.random.key(0))
    assert params == {} and not q.uses_projections
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 10)), jnp.float32)
    mask = jnp.asarray(np.random.default_rng(1).random((2, 7)) > 0.5)
    (out, breakdown) = jit_apply(q)(params, x, mask, return_loss_breakdown=True)
    ref = BE.compiled().lfq(x, q.config, mask)
    assert isinstance(out, LFQResult) and isinstance(breakdown, LossBreakdown)
    assert np.array_equal(np.asarray(out.quantized), np.asarray(ref.codes))
    assert np.array_equal(np.asarray(out.indices), np.asarray(ref.indices)) and out.indices.shape == (2, 7, 2)
    np.testing.assert_allclose(
        [float(out.aux_loss), *map(float, breakdown)],
        [float(ref.aux_loss), float(ref.per_sample_entropy), float(ref.batch_entropy), float(ref.commitment_loss)],
        rtol=1e-6,
        atol=1e-7,
    )


def test_projections_are_created_and_applied():
    q = LFQ(dim=12, codebook_size=32)
    params = q.init(jax.random.key(1))
    assert q.uses_projections
    assert params["project_in"]["kernel"].shape == (12, 5) and params["project_in"]["bias"].shape == (5,)
    assert params["project_out"]["kernel"].shape == (5, 12)
    bound = 1 / np.sqrt(12)
    assert float(jnp.max(jnp.abs(params["project_in"]["kernel"]))) <= bound
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 4, 12)), jnp.float32)
    out = jit_apply(q)(params, x)
    hp = jax.lax.Precision.HIGHEST
    z = jnp.matmul(x, params["project_in"]["kernel"], precision=hp) + params["project_in"]["bias"]
    ref = BE.compiled().lfq(z, q.config)
    expected = jnp.matmul(ref.codes, params["project_out"]["kernel"], precision=hp) + params["project_out"]["bias"]
    np.testing.assert_allclose(np.asarray(out.quantized), np.asarray(expected), rtol=1e-6, atol=1e-6)
    assert out.indices.shape == (3, 4)  # C == 1: codebook axis dropped
    assert np.array_equal(np.asarray(out.indices), np.asarray(ref.indices)[..., 0])
    nobias = LFQ(dim=12, codebook_size=32, projection_has_bias=False).init(jax.random.key(1))
    assert set(nobias["project_in"]) == {"kernel"}
    square = LFQ(codebook_dim=4, has_projections=True).init(jax.random.key(2))
    assert square["project_in"]["kernel"].shape == (4, 4)


def test_projection_gradient_matches_reference_chain_rule():
    """d aux / d kernel_in = x^T (reference gradient w.r.t. z), in float64."""
    q = LFQ(dim=6, codebook_dim=4, num_codebooks=2, inv_temperature=2.0)
    with jax.enable_x64(True):
        params = q.init(jax.random.key(3), dtype=jnp.float64)
        x = np.random.default_rng(4).standard_normal((9, 6))
        grads = jax.jit(jax.grad(lambda p: q.apply(p, jnp.asarray(x)).aux_loss))(params)
        w, b = (np.asarray(params["project_in"][k]) for k in ("kernel", "bias"))
        gz = reference.vjp("aux_loss", x @ w + b, q.config)
        np.testing.assert_allclose(np.asarray(grads["project_in"]["kernel"]), x.T @ gz, rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(np.asarray(grads["project_in"]["bias"]), gz.sum(0), rtol=1e-11, atol=1e-14)
        assert np.all(np.asarray(grads["project_out"]["kernel"]) == 0)  # aux does not see project_out


def test_channel_first_auto_for_images_and_video():
    q = LFQ(codebook_dim=3, num_codebooks=2)
    image = jnp.asarray(np.random.default_rng(5).standard_normal((2, 6, 4, 5)), jnp.float32)  # b c h w
    out = jit_apply(q)({}, image)
    assert out.quantized.shape == (2, 6, 4, 5) and out.indices.shape == (2, 4, 5, 2)
    last = BE.compiled().lfq(jnp.moveaxis(image, 1, -1), q.config)
    assert np.array_equal(np.asarray(out.indices), np.asarray(last.indices))
    assert np.array_equal(np.asarray(out.quantized), np.moveaxis(np.asarray(last.codes), -1, 1))
    assert np.array_equal(np.asarray(q.indices_to_codes({}, out.indices)), np.asarray(out.quantized))
    video = jnp.zeros((1, 6, 2, 3, 3))  # b c t h w
    assert jit_apply(q)({}, video).indices.shape == (1, 2, 3, 3, 2)
    seq = jnp.zeros((2, 5, 6))  # b n d: channel-last
    assert jit_apply(q)({}, seq).quantized.shape == (2, 5, 6)
    forced = LFQ(codebook_dim=3, num_codebooks=2, channel_first=True)
    assert jit_apply(forced)({}, jnp.zeros((2, 6, 5))).indices.shape == (2, 5, 2)
    with pytest.raises(ValueError, match="expected 6 features on the last axis"):
        jit_apply(LFQ(codebook_dim=3, num_codebooks=2, channel_first=False))({}, image)


def test_indices_to_codes_with_projection_and_single_codebook():
    q = LFQ(dim=8, codebook_size=16)
    params = q.init(jax.random.key(6))
    x = jnp.asarray(np.random.default_rng(7).standard_normal((2, 8, 3, 3)), jnp.float32)  # image, C == 1
    out = jit_apply(q)(params, x, train=False)
    assert out.indices.shape == (2, 3, 3)
    np.testing.assert_allclose(
        np.asarray(q.indices_to_codes(params, out.indices)), np.asarray(out.quantized), rtol=1e-6, atol=1e-6
    )
    raw = q.indices_to_codes(params, out.indices, project_out=False)
    assert raw.shape == (2, 4, 3, 3) and set(np.unique(np.asarray(raw))) == {-1.0, 1.0}


def test_eval_mode_skips_the_loss_unless_asked():
    q = LFQ(codebook_dim=4)
    x = jnp.asarray(np.random.default_rng(8).standard_normal((5, 4)), jnp.float32)
    evaluated, breakdown = jit_apply(q)({}, x, train=False, return_loss_breakdown=True)
    assert float(evaluated.aux_loss) == 0.0 and all(float(v) == 0.0 for v in breakdown)
    trained = jit_apply(q)({}, x)
    assert float(trained.aux_loss) != 0.0
    assert float(jit_apply(q)({}, x, train=False, compute_loss=True).aux_loss) == float(trained.aux_loss)
    assert np.array_equal(np.asarray(evaluated.quantized), np.asarray(trained.quantized))
    assert isinstance(jit_apply(LFQ(codebook_dim=4, return_loss_breakdown=True))({}, x), tuple)


def test_module_under_jit_vmap_and_mask():
    q = LFQ(dim=6, codebook_dim=4)
    params = q.init(jax.random.key(9))
    x = jnp.asarray(np.random.default_rng(10).standard_normal((3, 5, 6)), jnp.float32)
    mask = jnp.asarray(np.random.default_rng(11).random((3, 5)) > 0.5)
    eager = q.apply(params, x, mask)
    jitted = jax.jit(q.apply)(params, x, mask)
    # eager and jit differ only by the order of float32 roundings (fusion): a few eps of the terms
    np.testing.assert_allclose(np.asarray(jitted.aux_loss), np.asarray(eager.aux_loss), rtol=0, atol=1e-5)
    per_example = jax.jit(jax.vmap(lambda xi, mi: q.apply(params, xi, mi).aux_loss))(x, mask)
    assert per_example.shape == (3,)
    with pytest.raises(ValueError, match=r"mask has shape \(5,\); for input tokens \(3, 5\)"):
        q.apply(params, x, jnp.ones(5, bool))  # [b] = (3,) is a per-sample mask, [n] is no layout


def test_module_bad_inputs():
    q = LFQ(dim=6, codebook_dim=4)
    params = q.init(jax.random.key(12))
    with pytest.raises(ValueError, match="params has no 'project_in'.*LFQ.init"):
        q.apply({}, jnp.zeros((2, 6)))
    with pytest.raises(ValueError, match="expected 6 features on the last axis, got shape \\(2, 5\\)"):
        q.apply(params, jnp.zeros((2, 5)))
    with pytest.raises(TypeError, match="x has dtype int32"):
        q.apply(params, jnp.zeros((2, 6), jnp.int32))


def test_training_step_with_adam_reduces_the_loss():
    """A jitted training step (grad + a hand-written Adam) on a tiny autoencoder."""
    q = LFQ(dim=8, codebook_size=2**6)
    key_q, key_x = jax.random.split(jax.random.key(13))
    params = q.init(key_q)
    x = jax.random.normal(key_x, (64, 8))

    def loss_fn(params, x):
        out = q.apply(params, x)
        return jnp.mean((out.quantized - x) ** 2) + out.aux_loss

    @jax.jit
    def step(params, opt, x):
        loss, grads = jax.value_and_grad(loss_fn)(params, x)
        t = opt["t"] + 1
        m = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, opt["m"], grads)
        v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, opt["v"], grads)
        params = jax.tree.map(
            lambda p, m, v: p - 1e-2 * (m / (1 - 0.9**t)) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8), params, m, v
        )
        return params, {"t": t, "m": m, "v": v}, loss

    zeros = jax.tree.map(jnp.zeros_like, params)
    opt = {"t": 0, "m": zeros, "v": zeros}
    losses = []
    for _ in range(60):
        params, opt, loss = step(params, opt, x)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0]


def test_per_call_schedule_is_traced_and_masks_take_every_layout():
    """An annealed temperature under jit: one trace; vector-quantize-pytorch's mask shapes."""
    q = LFQ(codebook_dim=4, inv_temperature=100.0, commitment_loss_weight=0.5)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32))
    traces = []

    def loss(x, tau, weight, mask):
        traces.append(1)
        return q.apply({}, x, mask, inv_temperature=tau, entropy_loss_weight=weight).aux_loss

    step = jax.jit(loss)
    own = np.random.default_rng(1).random((2, 3, 3)) > 0.3
    for tau, weight in [(1.0, 0.1), (5.0, 0.2), (50.0, 0.05)]:
        got = step(x, tau, weight, own)
        cfg = q.config.replace(inv_temperature=tau, entropy_weight=weight, feature_axis=1)
        want = reference.lfq(np.asarray(x, np.float64), cfg, own).aux_loss
        np.testing.assert_allclose(float(got), float(want), rtol=2e-5, atol=1e-6)
    assert len(traces) == 1
    flat = q.apply({}, x, own.reshape(2, 9), inv_temperature=5.0).aux_loss
    assert float(flat) == float(q.apply({}, x, own, inv_temperature=5.0).aux_loss)
    per_sample = q.apply({}, x, np.array([True, False])).aux_loss
    expanded = np.broadcast_to(np.array([True, False])[:, None, None], (2, 3, 3))
    assert float(per_sample) == float(q.apply({}, x, expanded).aux_loss)
    with pytest.raises(ValueError, match="per sample"):
        q.apply({}, x, np.ones((2, 4), bool))
