"""Data-parallel LFQ on `torch.distributed`: the losses of the GLOBAL batch.

The shared code computes, per replica, token sums (`lfq.factorized.LossSums`):
the summed Bernoulli entropies, the token count, the summed squared errors and the
token-summed code histograms. Summing them over replicas is exact, so after one
all-reduce every replica holds the sums of the concatenated global batch and
computes the same losses from them; uneven token counts (masks, ragged shards)
are weighted by their counts automatically.

Gradients. Every replica r evaluates the same global loss L(S), S = sum_r s_r.
The all-reduce is autograd-aware: its backward all-reduces (sums) the upstream
gradients, so replica r receives sum_q dL_q/dS = W * dL/dS (W replicas, the same
L on each) times its own ds_r/dtheta. DDP then averages parameter gradients
over the W replicas, which leaves exactly the gradient of L over the
concatenated batch, as a single process would compute it. (With per-replica
losses L_q that differ, the result is the gradient of their mean, which is what
DDP's averaging means for any loss.)

The collective is `torch.distributed._functional_collectives.all_reduce`, which
`torch.compile` traces into the graph (the in-place `dist.all_reduce` it could
not capture).

Past the tile threshold (`lfq.tiled`) no histogram exists to all-reduce:
`all_reduce_tiled` runs `lfq.distributed_tiled.reduce_sums` with an all-gather of
the bit logits (its backward a reduce-scatter: the sum over replicas of the
gradients of this replica's rows) and the all-reduce above for the scalar partial
sums, so the gradient convention is the same. Uneven batches are padded to the
largest with weight-0 rows (all-gather needs equal sizes); they add nothing.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist

from lfq import distributed_tiled
from lfq.factorized import LossSums

__all__ = ["all_reduce_sums", "all_reduce_tiled", "layer_options", "parse_options", "world_size"]

_OPTIONS = ("distributed", "process_group")


def parse_options(options: dict):
    """`(distributed, process_group)` from the extra keyword arguments of lfq/entropy/commitment_loss.

    Raises:
        TypeError: an unknown keyword, or `distributed` not a bool.
        RuntimeError: `distributed=True` without an initialized process group.
    """
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(
            f"unexpected keyword argument(s) {unknown}: the torch backend takes "
            f"{', '.join(_OPTIONS)} (distributed=True sums the losses over the process group)"
        )
    enabled = options.get("distributed", False)
    group = options.get("process_group")
    if not isinstance(enabled, bool):
        raise TypeError(f"distributed={enabled!r} must be True or False")
    if group is not None and not enabled:
        raise ValueError("process_group is given but distributed=False: pass distributed=True to use it")
    if enabled and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "distributed=True needs an initialized torch.distributed process group: call "
            "torch.distributed.init_process_group(...) first, or pass distributed=False"
        )
    return enabled, group


def world_size(group=None) -> int:
    """Number of processes in `group` (default: the world); 1 when torch.distributed is not initialized."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def layer_options(distributed, process_group) -> dict:
    """The backend options of a layer's `distributed` / `process_group` arguments.

    `distributed=None` (auto) is on when `process_group` (default: the world) has
    more than one process; True/False forces it.
    """
    enabled = distributed
    if enabled is None:
        enabled = world_size(process_group) > 1
    return {"distributed": True, "process_group": process_group} if enabled else {}


def _wait(tensor: torch.Tensor) -> torch.Tensor:
    # Eager functional collectives return a lazily waited tensor; wait here so that
    # autograd sees a plain tensor. Under torch.compile the wait is a graph op.
    import torch.distributed._functional_collectives as funcol

    return funcol.wait_tensor(tensor)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the group; backward sums the upstream gradients over the group too."""

    @staticmethod
    def forward(ctx, x, group):
        import torch.distributed._functional_collectives as funcol

        ctx.group = group
        return _wait(funcol.all_reduce(x, "sum", group))

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed._functional_collectives as funcol

        return _wait(funcol.all_reduce(grad.contiguous(), "sum", ctx.group)), None


def all_reduce_sums(sums: LossSums, group=None) -> LossSums:
    """`sums` summed over the process group, with one collective for all fields.

    Args:
        sums: this replica's `LossSums` (scalars and `[C, 2**|A|, 2**|B|]` histograms).
        group: a `torch.distributed.ProcessGroup`; None = the default (world) group.

    Returns:
        The global `LossSums`, identical on every replica, differentiable (see the
        module docstring for what the gradient is).
    """
    group = dist.group.WORLD if group is None else group
    # Every field is on the input's device in its compute dtype (the token count too).
    parts = [sums.sample_entropy, sums.token_count, sums.commitment, *sums.histograms]
    flat = torch.cat([p.reshape(-1) for p in parts])
    total = _AllReduceSum.apply(flat, group)
    out, start = [], 0
    for p in parts:
        out.append(total[start : start + p.numel()].reshape(p.shape))
        start += p.numel()
    return LossSums(out[0], out[1], out[2], tuple(out[3:]))


class _AllGather(torch.autograd.Function):
    """Rows of every replica concatenated in rank order (equal sizes); backward: the
    reduce-scatter (sum over replicas) of the upstream gradient, this replica's rows."""

    @staticmethod
    def forward(ctx, x, group):
        import torch.distributed._functional_collectives as funcol

        ctx.group = group
        return _wait(funcol.all_gather_tensor(x.contiguous(), 0, group))

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed._functional_collectives as funcol

        return _wait(funcol.reduce_scatter_tensor(grad.contiguous(), "sum", 0, ctx.group)), None


def largest_rows(n: int, group=None) -> int:
    """The largest `n` over the process group (one small all-reduce, read on the host)."""
    import torch.distributed._functional_collectives as funcol

    group = dist.group.WORLD if group is None else group
    device = "cuda" if dist.get_backend(group) == "nccl" else "cpu"
    return int(_wait(funcol.all_reduce(torch.tensor([n], device=device), "max", group)))


def _gather_padded(x: torch.Tensor, group, equal_rows: bool = False) -> torch.Tensor:
    """`_AllGather` of `x` `[n, ...]` padded with zero rows to the largest n of the group.

    `equal_rows`: every replica's `n` is known to be equal (the backend's compiled
    mode pads each batch to the group's largest before its program, see
    `TorchBackend.program_rows`), so no size is read: a compiled graph cannot read
    one. (A user's own `torch.compile` of the eager backend breaks its graph at the read.)
    """
    if equal_rows:
        return _AllGather.apply(x, group)
    largest = largest_rows(x.shape[0], group)
    if largest > x.shape[0]:
        x = torch.cat([x, x.new_zeros((largest - x.shape[0],) + tuple(x.shape[1:]))])
    return _AllGather.apply(x, group)


def all_reduce_tiled(sums: LossSums, group, cfg, subcode_probs_fn, tiled_entropy_fn, equal_rows=False) -> LossSums:
    """`lfq.distributed_tiled.reduce_sums` over the process group (see the module docstring).

    Args:
        sums: this replica's `LossSums`, some groups as `lfq.tiled.Factors`.
        group: a `torch.distributed.ProcessGroup`; None = the default (world) group.
        cfg: configuration.
        subcode_probs_fn, tiled_entropy_fn: the backend's hooks.
        equal_rows: every replica has the same number of rows (see `_gather_padded`).
    """
    import array_api_compat.torch as xp

    group = dist.group.WORLD if group is None else group
    rank = dist.get_rank(group)
    collectives = distributed_tiled.Collectives(
        gather=lambda x: _gather_padded(x, group, equal_rows),
        psum=lambda x: _AllReduceSum.apply(x, group),
        share=lambda x, size: x[..., rank * size : (rank + 1) * size],
        replicas=dist.get_world_size(group),
        sum_rest=lambda rest: all_reduce_sums(rest, group),
    )
    return distributed_tiled.reduce_sums(sums, cfg, xp, collectives, subcode_probs_fn, tiled_entropy_fn)


class _EqualRows:
    """The collectives of the compiled backend, whose programs see equal row counts on
    every replica (`TorchBackend.program_rows`): no size is read inside the graph."""

    all_reduce_sums = staticmethod(all_reduce_sums)
    all_reduce_tiled = staticmethod(functools.partial(all_reduce_tiled, equal_rows=True))


EQUAL_ROWS = _EqualRows()
