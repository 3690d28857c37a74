"""Data-parallel LFQ with two real processes (gloo on CPU), against one process.

One spawn of two ranks runs every scenario, each rank holding an uneven shard of
one global batch (different batch sizes and masks; one scenario masks out all of
rank 1's tokens). The parent process computes the same quantities on the
concatenated batch and compares:

* values: every rank's losses equal the single-process losses of the global batch;
* functional gradients: rank r's gradient w.r.t. its shard, divided by the world
  size (DDP's averaging), equals the single-process gradient rows of that shard;
* DDP: after `DistributedDataParallel`'s gradient averaging, the `LFQ` layer's
  parameter gradients equal the single-process gradients, eagerly and with the
  DDP-wrapped layer under `torch.compile`.

Everything is float64, so agreement is to ~1e-12.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from lfq.backends.torch_backend import LFQ  # noqa: E402

import lfq  # noqa: E402
from lfq import reference  # noqa: E402

WORLD = 2
CFG = lfq.Config(codebook_dim=4, num_codebooks=2, inv_temperature=5.0, soft_clamp=1.5)
SHARDS = (slice(0, 2), slice(2, 5))  # uneven: 2 and 3 sequences of 4 tokens


def global_batch():
    """Features `[5, 4, 8]`, a ragged mask, and a mask with no token on rank 1."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 4, 8)) * 0.3
    mask = rng.random((5, 4)) > 0.35
    mask[0, 0] = True
    empty_rank1 = mask.copy()
    empty_rank1[SHARDS[1]] = False
    return z, {"ragged": mask, "rank1_empty": empty_rank1, "none": None}


def make_layer():
    torch.manual_seed(0)
    return LFQ(
        dim=6,
        codebook_dim=4,
        num_codebooks=2,
        inv_temperature=5.0,
        soft_clamp_input_value=1.5,
        commitment_loss_weight=0.5,
    ).double()


def layer_inputs():
    x = np.random.default_rng(1).standard_normal((5, 4, 6))
    mask = np.ones((5, 4), dtype=bool)
    mask[3, 1:] = False
    return torch.from_numpy(x), torch.from_numpy(mask)


def layer_loss(ret, global_tokens, world):
    """Aux loss plus a reconstruction term written so that DDP's average is the global mean."""
    recon = (ret.quantized.square()).sum() * world / global_tokens
    return ret.aux_loss + recon


def _worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        be = lfq.get("torch")
        shard = SHARDS[rank]
        z, masks = global_batch()
        results = {}
        for name, mask in masks.items():
            zt = torch.from_numpy(z[shard])
            mt = None if mask is None else torch.from_numpy(mask[shard])
            out = be.lfq(zt, CFG, mt, distributed=True)
            grad = be.vjp("aux_loss", zt, CFG, mask=mt, distributed=True)
            results[name] = {"losses": [float(v) for v in out[2:]], "grad": grad / WORLD, "indices": out.indices}
        layer = torch.nn.parallel.DistributedDataParallel(make_layer())  # distributed=None: auto on
        x, mask = layer_inputs()
        ret = layer(x[shard], mask=mask[shard])
        layer_loss(ret, x.shape[0] * x.shape[1], WORLD).backward()
        results["ddp"] = {
            "aux": float(ret.aux_loss.detach()),
            "grads": {k: p.grad for k, p in layer.module.named_parameters()},
        }
        # The whole DDP-wrapped layer under torch.compile (DDP's optimizer splits the
        # graph at its gradient buckets; the loss sums' all-reduce is traced).
        wrapped = make_layer()
        compiled = torch.compile(torch.nn.parallel.DistributedDataParallel(wrapped))
        ret = compiled(x[shard], mask=mask[shard])
        layer_loss(ret, x.shape[0] * x.shape[1], WORLD).backward()
        from torch._dynamo.utils import counters

        results["ddp_compiled"] = {
            "aux": float(ret.aux_loss.detach()),
            "graphs": counters["stats"]["unique_graphs"],
            "grads": {k: p.grad for k, p in wrapped.named_parameters()},
        }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("ddp"))
    torch.multiprocessing.spawn(_worker, args=(_free_port(), out_dir), nprocs=WORLD, join=True)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]


@pytest.mark.parametrize("scenario", ["none", "ragged", "rank1_empty"])
def test_values_and_gradients_equal_one_process(rank_results, scenario):
    z, masks = global_batch()
    mask = masks[scenario]
    ref = reference.lfq(z, CFG, mask)
    want_losses = [float(v) for v in ref[2:]]
    want_grad = reference.vjp("aux_loss", z, CFG, mask=mask)
    for rank, results in enumerate(rank_results):
        got = results[scenario]
        np.testing.assert_allclose(got["losses"], want_losses, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(got["indices"].numpy(), ref.indices[SHARDS[rank]])
        scale = np.abs(want_grad).max()
        np.testing.assert_allclose(got["grad"].numpy(), want_grad[SHARDS[rank]], rtol=0, atol=1e-11 * scale)


@pytest.mark.parametrize("run", ["ddp", "ddp_compiled"])
def test_ddp_parameter_gradients_equal_one_process(rank_results, run):
    layer = make_layer()
    x, mask = layer_inputs()
    ret = layer(x, mask=mask)
    layer_loss(ret, x.shape[0] * x.shape[1], 1).backward()
    for rank, results in enumerate(rank_results):
        assert results[run].get("graphs", 1) >= 1  # the compiled run did compile the layer
        assert abs(results[run]["aux"] - float(ret.aux_loss.detach())) <= 1e-12
        for name, p in layer.named_parameters():
            got = results[run]["grads"][name]
            torch.testing.assert_close(got, p.grad, rtol=1e-11, atol=1e-13, msg=f"rank {rank} {name}")
