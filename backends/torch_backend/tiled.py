"""The tiled exact batch entropy (`lfq.tiled`) in torch: its gradient and its compiled form.

* Eager: `_TiledEntropy`, an autograd Function (`forward(*args)` + `setup_context`,
  so `torch.func.grad`/`vjp` work) whose forward is `lfq.tiled.entropy_sum` (a
  Python loop over the tiles) and whose backward is `lfq.tiled.entropy_sum_vjp`,
  which recomputes each tile: nothing of size `2**k` outlives a tile.
* Under `torch.compile`: the custom ops `lfq::tiled_entropy` and
  `lfq::tiled_entropy_vjp`, opaque to the compiler, so a grid of thousands of
  tiles is one node of the graph, not an unrolled loop (compile time does not
  grow with the tile count), and their implementation is the same eager loop.

Running sums are float64 (float32, compensated, on devices without float64).
Matrix products are at full float32 precision when `highest` (`ops.full_float32_matmuls`).
"""

from __future__ import annotations

import contextlib

import array_api_compat.torch as torch_namespace
import torch

from lfq import tiled

from .ops import full_float32_matmuls

__all__ = ["tiled_entropy"]

_NO_FLOAT64 = ("mps",)


def _context(x: torch.Tensor, highest: bool):
    return full_float32_matmuls(x.device.type) if highest else contextlib.nullcontext()


def _accumulate(x: torch.Tensor):
    return torch.float32 if x.device.type in _NO_FLOAT64 else torch.float64


def _forward(probs_a, probs_b, count, rows: int, highest: bool):
    with torch.no_grad(), _context(probs_a, highest):
        return tiled.entropy_sum(probs_a, probs_b, count, rows, torch_namespace, accumulate=_accumulate(probs_a))


def _backward(probs_a, probs_b, count, cotangent, rows: int, highest: bool):
    with torch.no_grad(), _context(probs_a, highest):
        return tiled.entropy_sum_vjp(
            probs_a, probs_b, count, cotangent, rows, torch_namespace, accumulate=_accumulate(probs_a)
        )


class _TiledEntropy(torch.autograd.Function):
    """Forward: `lfq.tiled.entropy_sum`. Backward: `lfq.tiled.entropy_sum_vjp` (recomputed tiles)."""

    @staticmethod
    def forward(probs_a, probs_b, count, rows, highest):
        return _forward(probs_a, probs_b, count, rows, highest)

    @staticmethod
    def setup_context(ctx, inputs, output):
        probs_a, probs_b, count, rows, highest = inputs
        ctx.save_for_backward(probs_a, probs_b, count)
        ctx.rows, ctx.highest = rows, highest

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, cotangent):
        probs_a, probs_b, count = ctx.saved_tensors
        d_a, d_b = _backward(probs_a, probs_b, count, cotangent, ctx.rows, ctx.highest)
        return d_a, d_b, None, None, None


@torch.library.custom_op("lfq::tiled_entropy", mutates_args=())
def _tiled_entropy_op(
    probs_a: torch.Tensor, probs_b: torch.Tensor, count: torch.Tensor, rows: int, highest: bool
) -> torch.Tensor:
    return _forward(probs_a, probs_b, count, rows, highest)


@_tiled_entropy_op.register_fake
def _(probs_a, probs_b, count, rows, highest):
    return probs_a.new_empty(())


@torch.library.custom_op("lfq::tiled_entropy_vjp", mutates_args=())
def _tiled_entropy_vjp_op(
    probs_a: torch.Tensor, probs_b: torch.Tensor, count: torch.Tensor, cotangent: torch.Tensor, rows: int, highest: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    d_a, d_b = _backward(probs_a, probs_b, count, cotangent, rows, highest)
    return d_a.contiguous(), d_b.contiguous()  # the layout the fake kernel states


@_tiled_entropy_vjp_op.register_fake
def _(probs_a, probs_b, count, cotangent, rows, highest):
    return probs_a.new_empty(probs_a.shape), probs_b.new_empty(probs_b.shape)


def _op_setup(ctx, inputs, output):
    probs_a, probs_b, count, rows, highest = inputs
    ctx.save_for_backward(probs_a, probs_b, count)
    ctx.rows, ctx.highest = rows, highest


def _op_backward(ctx, cotangent):
    probs_a, probs_b, count = ctx.saved_tensors
    d_a, d_b = _tiled_entropy_vjp_op(probs_a, probs_b, count, cotangent, ctx.rows, ctx.highest)
    return d_a, d_b, None, None, None


_tiled_entropy_op.register_autograd(_op_backward, setup_context=_op_setup)


def tiled_entropy(probs_a: torch.Tensor, probs_b: torch.Tensor, count: torch.Tensor, rows: int, highest: bool):
    """`lfq.tiled.entropy_sum` of `[N, C, R]` and `[N, C, S]` sub-code probabilities, with its
    recomputing gradient: a 0-d tensor of probs_a's dtype.

    Under `torch.compile` it is the custom op (one opaque node); eagerly the autograd
    Function (calling a custom op eagerly would import the compiler, seconds, for nothing).
    """
    count = count.to(probs_a.dtype)
    if torch.compiler.is_compiling():
        return _tiled_entropy_op(probs_a, probs_b, count, rows, highest)
    if torch.is_grad_enabled() and (probs_a.requires_grad or probs_b.requires_grad):
        return _TiledEntropy.apply(probs_a, probs_b, count, rows, highest)
    return _forward(probs_a, probs_b, count, rows, highest)
