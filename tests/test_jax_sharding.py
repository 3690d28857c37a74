"""Data parallelism: `lfq(z, cfg, mask, axis_name="data")` inside `jax.shard_map`, and
globally sharded arrays (jit / eager over a mesh, Auto and Explicit axes) without it.

The multi-device checks run once, in a subprocess with 4 CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`, 64-bit mode on), and
report errors against the single-device computation over the whole batch;
each test below asserts one of them. The mask leaves uneven valid-token counts
per shard (one shard has none).

Gradient contract (shard_map's default `check_vma=True`): `psum` of the loss
sums makes every loss replicated (equal on all shards), and psum's transpose is
the identity on each shard, so

* the gradient w.r.t. a shard's own tokens is that shard's slice of the
  single-device gradient (no averaging, no scaling);
* the gradient w.r.t. replicated parameters is already summed over the axis:
  every shard holds the full single-device gradient (do not psum it again;
  pmean of it is the identity).

With `check_vma=False` psum transposes to psum: token gradients come out
axis_size times too large (checked below, documented in docs/jax.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import lfq  # noqa: E402

SCRIPT = textwrap.dedent(r"""
    import json
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np, jax.numpy as jnp
    from jax.sharding import Mesh, PartitionSpec as P
    import lfq
    from lfq.backends.jax_backend import LFQ

    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    be = lfq.get("jax")
    cfg = lfq.Config(codebook_dim=5, num_codebooks=2, spherical=True, inv_temperature=3.0)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((8, 6, 10))                 # 8 sequences -> 2 per shard
    mask = rng.random((8, 6)) > 0.4
    mask[0:2] = True                                   # shard 0: all 12 valid
    mask[2:4] = False; mask[2, 1] = True               # shard 1: one valid token
    mask[4:6] = False                                  # shard 2: none valid
    counts = [int(mask[2 * i:2 * i + 2].sum()) for i in range(4)]
    errors = {"counts": counts}
    LOSSES = ("per_sample_entropy", "batch_entropy", "commitment_loss", "aux_loss")

    def err(a, b):
        return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))

    def single(z, m):
        out = be.lfq(z, cfg, m)
        return out, jax.grad(lambda z_: be.lfq(z_, cfg, m).aux_loss)(z)

    ref, ref_grad = jax.jit(single)(jnp.asarray(z), jnp.asarray(mask))

    def per_shard(backend):
        def f(z, m):
            out = backend.lfq(z, cfg, m, axis_name="data")
            grad = jax.grad(lambda z_: backend.lfq(z_, cfg, m, axis_name="data").aux_loss)(z)
            losses = jnp.stack([getattr(out, k) for k in LOSSES])
            return losses[None], out.indices, out.codes, grad
        return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P("data"), P("data")),
                                     out_specs=(P("data"), P("data"), P("data"), P("data"))))

    for tag, backend in (("eager", be), ("jit", be.compiled())):
        losses, idx, codes, grad = per_shard(backend)(jnp.asarray(z), jnp.asarray(mask))
        expected = np.array([float(getattr(ref, k)) for k in LOSSES])
        errors[f"{tag}_values"] = err(losses, np.broadcast_to(expected, losses.shape))
        errors[f"{tag}_indices_equal"] = bool(np.array_equal(np.asarray(idx), np.asarray(ref.indices)))
        errors[f"{tag}_codes_equal"] = bool(np.array_equal(np.asarray(codes), np.asarray(ref.codes)))
        errors[f"{tag}_token_grad"] = err(grad, ref_grad)
    errors["grad_scale"] = float(np.max(np.abs(np.asarray(ref_grad))))

    # Differentiating the shard_mapped function from outside gives the same gradient.
    outer = jax.shard_map(lambda z, m: be.lfq(z, cfg, m, axis_name="data").aux_loss, mesh=mesh,
                          in_specs=(P("data"), P("data")), out_specs=P())
    errors["outer_grad"] = err(jax.jit(jax.grad(outer))(jnp.asarray(z), jnp.asarray(mask)), ref_grad)

    # check_vma=False: psum transposes to psum, token gradients are axis_size times larger.
    novma = jax.shard_map(lambda z, m: jax.grad(lambda z_: be.lfq(z_, cfg, m, axis_name="data").aux_loss)(z),
                          mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P("data"), check_vma=False)
    errors["novma_grad_over_4"] = err(jax.jit(novma)(jnp.asarray(z), jnp.asarray(mask)) / 4, ref_grad)

    # All-false mask on every shard: zero losses, zero gradient.
    zero_losses, _, _, zero_grad = per_shard(be)(jnp.asarray(z), jnp.zeros((8, 6), bool))
    errors["all_false"] = err(zero_losses, 0.0) + err(zero_grad, 0.0)

    # Module with projections: the global loss (pmean'd reconstruction + global aux) has the
    # same parameter gradient on every shard as on one device, with no further reduction.
    quantizer = LFQ(dim=7, codebook_dim=5, num_codebooks=2, spherical=True, inv_temperature=3.0)
    params = quantizer.init(jax.random.key(0), dtype=jnp.float64)
    x = rng.standard_normal((8, 6, 7))

    def global_loss(params, x, m, axis_name=None):
        out = quantizer.apply(params, x, m, axis_name=axis_name)
        recon = jnp.sum(((out.quantized - x) ** 2) * m[..., None]) / 7
        count = jnp.sum(m)
        if axis_name is not None:
            recon, count = jax.lax.psum(recon, axis_name), jax.lax.psum(count, axis_name)
        return recon / count + out.aux_loss

    ref_loss, ref_pgrad = jax.jit(jax.value_and_grad(global_loss))(params, jnp.asarray(x), jnp.asarray(mask))

    def shard_step(params, x, m):
        loss, grads = jax.value_and_grad(global_loss)(params, x, m, "data")
        return loss[None], jax.tree.map(lambda g: g[None], grads)

    step = jax.jit(jax.shard_map(shard_step, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                                 out_specs=(P("data"), P("data"))))
    losses, grads = step(params, jnp.asarray(x), jnp.asarray(mask))
    errors["module_loss"] = err(losses, np.full(4, float(ref_loss)))
    errors["module_param_grad"] = max(err(g, np.broadcast_to(r, g.shape)) for g, r in
                                      zip(jax.tree.leaves(grads), jax.tree.leaves(ref_pgrad)))

    # Global arrays sharded over the batch, no axis_name: jit (GSPMD) or eager dispatch
    # inserts the collectives. With Explicit mesh axes (sharding in types, the default
    # of jax.make_mesh) the histogram product must name its output sharding.
    from jax.sharding import AxisType, NamedSharding
    for kind in ("Auto", "Explicit"):
        gmesh = jax.make_mesh((4,), ("data",), axis_types=(getattr(AxisType, kind),))
        zs = jax.device_put(jnp.asarray(z), NamedSharding(gmesh, P("data")))
        ms = jax.device_put(jnp.asarray(mask), NamedSharding(gmesh, P("data")))
        with jax.set_mesh(gmesh):
            out, grad = jax.jit(single)(zs, ms)
        eager = be.lfq(zs, cfg, ms)
        expected = np.array([float(getattr(ref, k)) for k in LOSSES])
        errors[f"gspmd_{kind}_values"] = max(err([getattr(o, k) for k in LOSSES], expected) for o in (out, eager))
        errors[f"gspmd_{kind}_grad"] = err(grad, ref_grad)
        errors[f"gspmd_{kind}_indices_equal"] = bool(np.array_equal(np.asarray(out.indices), np.asarray(ref.indices))
                                                     and np.array_equal(np.asarray(eager.indices), np.asarray(ref.indices)))

    # float32 (64-bit mode off inside the context): same contract to float32 rounding.
    with jax.enable_x64(False):
        z32, m32 = jnp.asarray(z, jnp.float32), jnp.asarray(mask)
        ref32, ref_grad32 = jax.jit(single)(z32, m32)
        losses32, _, _, grad32 = per_shard(be.compiled())(z32, m32)
        errors["f32_values"] = err(losses32, np.broadcast_to([float(getattr(ref32, k)) for k in LOSSES], losses32.shape))
        errors["f32_token_grad"] = err(grad32, ref_grad32)
    print(json.dumps(errors))
""")


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_shards_have_uneven_valid_counts(results):
    assert results["counts"][2] == 0 and results["counts"][1] == 1 and results["counts"][0] == 12


@pytest.mark.parametrize("tag", ["eager", "jit"])
def test_sharded_values_equal_single_device(results, tag):
    assert results[f"{tag}_values"] < 1e-12
    assert results[f"{tag}_indices_equal"] and results[f"{tag}_codes_equal"]


@pytest.mark.parametrize("tag", ["eager", "jit"])
def test_token_gradient_is_the_single_device_slice(results, tag):
    assert results[f"{tag}_token_grad"] < 1e-12 * results["grad_scale"]


def test_gradient_from_outside_shard_map(results):
    assert results["outer_grad"] < 1e-12 * results["grad_scale"]


def test_check_vma_false_scales_token_gradients_by_axis_size(results):
    assert results["novma_grad_over_4"] < 1e-12 * results["grad_scale"]


def test_all_false_mask_on_every_shard(results):
    assert results["all_false"] == 0.0


def test_module_parameter_gradient_is_global_on_every_shard(results):
    assert results["module_loss"] < 1e-12
    assert results["module_param_grad"] < 1e-11


@pytest.mark.parametrize("kind", ["Auto", "Explicit"])
def test_globally_sharded_arrays_without_axis_name(results, kind):
    """jit and eager calls on arrays sharded over a mesh (GSPMD), with Auto and Explicit axes."""
    assert results[f"gspmd_{kind}_values"] < 1e-12
    assert results[f"gspmd_{kind}_grad"] < 1e-12 * results["grad_scale"]
    assert results[f"gspmd_{kind}_indices_equal"]


def test_float32_sharded(results):
    assert results["f32_values"] < 1e-5
    assert results["f32_token_grad"] < 1e-5 * results["grad_scale"]


def test_vmap_axis_name_reduces_over_the_mapped_axis():
    """axis_name also works with a named vmap axis: the batch of shards is one global batch."""
    cfg = lfq.Config(codebook_dim=4, num_codebooks=2)
    be = lfq.get("jax")
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        z, mask = jnp.asarray(rng.standard_normal((3, 5, 8))), jnp.asarray(rng.random((3, 5)) > 0.5)
        mapped = jax.jit(jax.vmap(lambda zi, mi: be.lfq(zi, cfg, mi, axis_name="shards").aux_loss, axis_name="shards"))(
            z, mask
        )
        whole = be.compiled().lfq(z, cfg, mask).aux_loss
        np.testing.assert_allclose(np.asarray(mapped), np.full(3, float(whole)), rtol=0, atol=1e-13)
