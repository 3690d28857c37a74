"""The tiled batch entropy across replicas (`lfq.distributed_tiled`), in the three engines.

A small `Config.entropy_tile` forces the tiled path at D = 12..14, where the
single-process reference (`lfq.reference`, float64) is cheap; every replica then
all-gathers the bit logits, computes its block of the tile grid and all-reduces
a scalar, and no histogram is communicated. Checked against the reference over
the concatenated batch:

* values on every replica;
* gradients under each framework's data-parallel convention (the same as for
  the histogram all-reduce, see tests/test_torch_distributed.py,
  test_jax_sharding.py, test_tf_distributed.py): torch, rank r's gradient over
  the world size is its rows of the single-process gradient; JAX (shard_map),
  a shard's gradient is its rows; TensorFlow, the gradient of the loss over the
  replica count is its rows.

Batches are uneven (torch: 2 and 3 sequences), masks ragged, and one replica has
no valid token. Real processes (torch, gloo) or devices (JAX: 4 CPU devices,
TensorFlow: 2 logical CPUs), each in one subprocess run per engine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lfq
from lfq import distributed_tiled, reference

CFG = lfq.Config(codebook_dim=12, num_codebooks=2, inv_temperature=4.0, entropy_tile=2**9)
TERMS = ("aux_loss", "per_sample_entropy", "batch_entropy", "commitment_loss")


def global_batch(sequences: int, tokens: int, seed: int, empty: slice):
    """Features `[sequences, tokens, C*D]` and masks: none, ragged, and one with `empty` all False."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((sequences, tokens, CFG.num_features)) * 0.4
    ragged = rng.random((sequences, tokens)) > 0.3
    ragged[0, 0] = True
    empty_mask = ragged.copy()
    empty_mask[empty] = False
    return z, {"none": None, "ragged": ragged, "empty": empty_mask}


def test_block_size_covers_the_rows():
    for rows in (1, 2, 7, 64, 4096):
        for replicas in (1, 2, 3, 4, 8):
            size = distributed_tiled.block_size(rows, replicas)
            assert size * replicas >= rows > (size - 1) * replicas


@pytest.mark.parametrize("replicas", [1, 2, 3, 4, 8])
def test_replica_blocks_tile_p_a(replicas):
    """The replicas' blocks of P_A, side by side, are P_A (zero-padded): every row of pbar once."""
    from lfq import factorized
    from lfq.distributed_tiled import _share_factors

    rng = np.random.default_rng(replicas)
    for bits in range(1, 9):
        a = rng.standard_normal((5, 2, bits)) * 3
        w = (rng.random(5) > 0.3).astype(float)
        want_a, want_b = factorized.subcode_factors(a, w, np, lambda x: factorized.subcode_probs(x, np))
        blocks = []
        for rank in range(replicas):
            coll = distributed_tiled.Collectives(
                gather=None,
                psum=None,
                share=lambda x, size, r=rank: x[..., r * size : (r + 1) * size],
                replicas=replicas,
                sum_rest=None,
            )
            mine, probs_b = _share_factors(a, w, np, coll, lambda x: factorized.subcode_probs(x, np))
            np.testing.assert_allclose(probs_b, want_b, rtol=1e-14)
            blocks.append(mine)
        joined = np.concatenate(blocks, axis=-1)
        np.testing.assert_allclose(joined[..., : want_a.shape[-1]], want_a, rtol=1e-13, atol=1e-300)
        assert not joined[..., want_a.shape[-1] :].any()


# --------------------------------------------------------------------------- torch

TORCH_WORLD = 2
TORCH_SHARDS = (slice(0, 2), slice(2, 5))  # uneven: 2 and 3 sequences of 3 tokens
LARGE = lfq.Config(codebook_dim=26, max_exact_bits=26, inv_temperature=2.0)
LARGE_SHARDS = (slice(0, 2), slice(2, 5))


def tiled_layer():
    """The torch `LFQ` layer (projections 6 -> 12 features) with tiles forced."""
    import dataclasses

    import torch
    from lfq.backends.torch_backend import LFQ

    torch.manual_seed(0)
    layer = LFQ(dim=6, codebook_dim=12, inv_temperature=4.0, commitment_loss_weight=0.5).double()
    layer.cfg = layer.cfg.replace(entropy_tile=2**7)
    layer.options = dataclasses.replace(layer.options, config=layer.cfg)
    return layer


def layer_inputs():
    import torch

    x = np.random.default_rng(6).standard_normal((5, 3, 6))
    mask = np.random.default_rng(7).random((5, 3)) > 0.3
    return torch.from_numpy(x), torch.from_numpy(mask)


def large_batch():
    return np.random.default_rng(3).standard_normal((5, LARGE.num_features)) * 0.3


def _torch_worker(rank, port, out_dir):
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=TORCH_WORLD)
    try:
        be = lfq.get("torch")
        z, masks = global_batch(5, 3, 0, TORCH_SHARDS[1])
        results = {}
        for name, mask in masks.items():
            zt = torch.from_numpy(z[TORCH_SHARDS[rank]])
            mt = None if mask is None else torch.from_numpy(mask[TORCH_SHARDS[rank]])
            out = be.lfq(zt, CFG, mt, distributed=True)
            grad = be.vjp("aux_loss", zt, CFG, mask=mt, distributed=True)
            results[name] = {"losses": [float(getattr(out, t)) for t in TERMS], "grad": grad.numpy() / TORCH_WORLD}
        # The backend's compiled mode (torch.compile, fullgraph): uneven batches are padded to
        # the group's largest before the program, so its all-gather reads no size.
        cbe = be.compiled()
        zt = torch.from_numpy(z[TORCH_SHARDS[rank]])
        mt = torch.from_numpy(masks["ragged"][TORCH_SHARDS[rank]])
        out = cbe.lfq(zt, CFG, mt, distributed=True)
        grad = cbe.vjp("aux_loss", zt, CFG, mask=mt, distributed=True)
        results["compiled"] = {"losses": [float(getattr(out, t)) for t in TERMS], "grad": grad.numpy() / TORCH_WORLD}
        # DDP: the layer's parameter gradients after DDP's averaging.
        layer = torch.nn.parallel.DistributedDataParallel(tiled_layer())  # distributed=None: auto on
        x, m = layer_inputs()
        ret = layer(x[TORCH_SHARDS[rank]], mask=m[TORCH_SHARDS[rank]])
        (ret.aux_loss + ret.quantized.square().sum() * TORCH_WORLD / x[..., 0].numel()).backward()
        results["ddp"] = {k: p.grad.numpy() for k, p in layer.module.named_parameters()}
        # D = 26 (past the default threshold, tiles automatic): 2 and 3 tokens.
        z26 = large_batch()
        zt = torch.from_numpy(z26[LARGE_SHARDS[rank]])
        out = be.lfq(zt, LARGE, distributed=True)
        grad = be.vjp("aux_loss", zt, LARGE, distributed=True)
        results["large"] = {"losses": [float(getattr(out, t)) for t in TERMS], "grad": grad.numpy() / TORCH_WORLD}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def torch_results(tmp_path_factory):
    torch = pytest.importorskip("torch")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_dir = str(tmp_path_factory.mktemp("tiled_ddp"))
    torch.multiprocessing.spawn(_torch_worker, args=(port, out_dir), nprocs=TORCH_WORLD, join=True)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(TORCH_WORLD)]


@pytest.mark.parametrize("scenario", ["none", "ragged", "empty", "compiled"])
def test_torch_values_and_gradients_equal_one_process(torch_results, scenario):
    """Eager with each mask scenario; "compiled": the compiled backend on the ragged mask."""
    z, masks = global_batch(5, 3, 0, TORCH_SHARDS[1])
    mask = masks["ragged" if scenario == "compiled" else scenario]
    ref = reference.lfq(z, CFG, mask)
    want_grad = reference.vjp("aux_loss", z, CFG, mask=mask)
    for rank, results in enumerate(torch_results):
        got = results[scenario]
        np.testing.assert_allclose(got["losses"], [float(getattr(ref, t)) for t in TERMS], rtol=1e-12, atol=1e-15)
        scale = np.abs(want_grad).max()
        np.testing.assert_allclose(got["grad"], want_grad[TORCH_SHARDS[rank]], rtol=0, atol=1e-11 * scale)


# --------------------------------------------------------------------------- JAX

JAX_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np, jax.numpy as jnp
    from jax.sharding import Mesh, PartitionSpec as P
    sys.path.insert(0, sys.argv[1])
    import lfq
    from lfq import reference
    from test_distributed_tiled import CFG, TERMS, global_batch

    mesh = Mesh(np.array(jax.devices()), ("data",))
    be = lfq.get("jax")
    z, masks = global_batch(8, 3, 1, slice(4, 6))  # 2 sequences per shard; shard 2 empty in "empty"
    report = {"devices": jax.device_count()}

    def per_shard(z, m):
        out = be.lfq(z, CFG, m, axis_name="data")
        grad = jax.grad(lambda z_: be.lfq(z_, CFG, m, axis_name="data").aux_loss)(z)
        return jnp.stack([getattr(out, t) for t in TERMS])[None], grad

    run = jax.jit(jax.shard_map(per_shard, mesh=mesh, in_specs=(P("data"), P("data")),
                                out_specs=(P("data"), P("data"))))
    for name, mask in masks.items():
        m = np.ones(z.shape[:2], bool) if mask is None else mask
        losses, grad = run(jnp.asarray(z), jnp.asarray(m))
        ref = reference.lfq(z, CFG, mask)
        want = np.array([float(getattr(ref, t)) for t in TERMS])
        want_grad = reference.vjp("aux_loss", z, CFG, mask=mask)
        report[name] = {
            "value": float(np.max(np.abs(np.asarray(losses) - want))),
            "grad": float(np.max(np.abs(np.asarray(grad) - want_grad)) / np.max(np.abs(want_grad))),
        }
    # Several tiled groups of unequal sizes (5, 4, 4 bits): one all-gather for all of them.
    groups = lfq.Config(codebook_dim=13, batch_entropy="groups:3", entropy_tile=2**3, inv_temperature=4.0)
    zg = np.random.default_rng(4).standard_normal((8, 3, 13)) * 0.4
    mg = np.random.default_rng(5).random((8, 3)) > 0.3

    def grouped(z, m):
        f = lambda z_: be.lfq(z_, groups, m, axis_name="data").aux_loss
        return jax.value_and_grad(f)(z)

    value, grad = jax.jit(jax.shard_map(grouped, mesh=mesh, in_specs=(P("data"), P("data")),
                                        out_specs=(P(), P("data"))))(jnp.asarray(zg), jnp.asarray(mg))
    want_grad = reference.vjp("aux_loss", zg, groups, mask=mg)
    report["groups"] = {
        "value": abs(float(value) - float(reference.lfq(zg, groups, mg).aux_loss)),
        "grad": float(np.max(np.abs(np.asarray(grad) - want_grad)) / np.max(np.abs(want_grad))),
    }
    # Three devices (not a power of two: P_A made whole and sliced) and groups of 3, 2, 2 bits
    # (fewer high bits than log2(4 devices): the same fallback).
    for tag, devices, bits in (("three_devices", 3, 12), ("small_groups", 4, 7)):
        cfg = lfq.Config(codebook_dim=bits, batch_entropy="groups:3" if bits == 7 else "exact",
                         entropy_tile=2**3, inv_temperature=4.0)
        sub = Mesh(np.array(jax.devices()[:devices]), ("data",))
        zs = np.random.default_rng(devices).standard_normal((devices * 2, 3, bits)) * 0.4
        ms = np.random.default_rng(bits).random((devices * 2, 3)) > 0.3
        f = lambda z, m, cfg=cfg: jax.value_and_grad(lambda z_: be.lfq(z_, cfg, m, axis_name="data").aux_loss)(z)
        value, grad = jax.jit(jax.shard_map(f, mesh=sub, in_specs=(P("data"), P("data")),
                                            out_specs=(P(), P("data"))))(jnp.asarray(zs), jnp.asarray(ms))
        want_grad = reference.vjp("aux_loss", zs, cfg, mask=ms)
        report[tag] = {
            "value": abs(float(value) - float(reference.lfq(zs, cfg, ms).aux_loss)),
            "grad": float(np.max(np.abs(np.asarray(grad) - want_grad)) / np.max(np.abs(want_grad))),
        }
    # The program exchanges no histogram: the largest all-reduce is the scalars' (no 2**12-entry one).
    hlo = run.lower(jnp.asarray(z), jnp.asarray(np.ones(z.shape[:2], bool))).as_text()
    report["all_gather"] = "all_gather" in hlo or "all-gather" in hlo
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def jax_report():
    pytest.importorskip("jax")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, here], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("scenario", ["none", "ragged", "empty", "groups", "three_devices", "small_groups"])
def test_jax_shard_map_values_and_gradients_equal_one_device(jax_report, scenario):
    assert jax_report["devices"] == 4 and jax_report["all_gather"]
    assert jax_report[scenario]["value"] < 1e-12
    assert jax_report[scenario]["grad"] < 1e-11


# --------------------------------------------------------------------------- TensorFlow

TF_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[1])
    import lfq
    from lfq import reference
    from test_distributed_tiled import CFG, TERMS, TORCH_SHARDS as SHARDS, global_batch

    be = lfq.get("tensorflow")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    z, masks = global_batch(5, 3, 2, SHARDS[1])
    report = {"replicas": strategy.num_replicas_in_sync}

    def distribute(array):  # uneven: 2 and 3 sequences
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(array[SHARDS[ctx.replica_id_in_sync_group]]))

    def step(z_local, m_local):
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            tape.watch(z_local)
            out = be.lfq(z_local, CFG, m_local, replica_context=context)
            scaled = out.aux_loss / context.num_replicas_in_sync
        return tf.stack([getattr(out, t) for t in TERMS]), tape.gradient(scaled, z_local)

    run = tf.function(lambda z_, m_: strategy.run(step, args=(z_, m_)))
    for name, mask in masks.items():
        m = np.ones(z.shape[:2], bool) if mask is None else mask
        losses, grads = run(distribute(z), distribute(m))
        losses = np.stack([v.numpy() for v in strategy.experimental_local_results(losses)])
        grad = np.concatenate([g.numpy() for g in strategy.experimental_local_results(grads)])
        ref = reference.lfq(z, CFG, mask)
        want_grad = reference.vjp("aux_loss", z, CFG, mask=mask)
        report[name] = {
            "value": float(np.max(np.abs(losses - np.array([float(getattr(ref, t)) for t in TERMS])))),
            "grad": float(np.max(np.abs(grad - want_grad)) / np.max(np.abs(want_grad))),
        }
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def tf_report():
    pytest.importorskip("tensorflow")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0")
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", TF_SCRIPT, here], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("scenario", ["none", "ragged", "empty"])
def test_tf_mirrored_values_and_gradients_equal_one_replica(tf_report, scenario):
    assert tf_report["replicas"] == 2
    assert tf_report[scenario]["value"] < 1e-12
    assert tf_report[scenario]["grad"] < 1e-11


def test_torch_large_codebook_equals_one_process(torch_results):
    """D = 26: 2**26 codes, tiled automatically; each rank computes half of the tile grid."""
    z = large_batch()
    ref = reference.lfq(z, LARGE)
    want_grad = reference.vjp("aux_loss", z, LARGE)
    for rank, results in enumerate(torch_results):
        got = results["large"]
        np.testing.assert_allclose(got["losses"], [float(getattr(ref, t)) for t in TERMS], rtol=1e-12, atol=1e-15)
        scale = np.abs(want_grad).max()
        np.testing.assert_allclose(got["grad"], want_grad[LARGE_SHARDS[rank]], rtol=0, atol=1e-11 * scale)


def test_torch_ddp_parameter_gradients_equal_one_process(torch_results):
    layer = tiled_layer()
    x, m = layer_inputs()
    ret = layer(x, mask=m)
    (ret.aux_loss + ret.quantized.square().sum() / x[..., 0].numel()).backward()
    for results in torch_results:
        for name, p in layer.named_parameters():
            np.testing.assert_allclose(results["ddp"][name], p.grad.numpy(), rtol=1e-10, atol=1e-13, err_msg=name)
