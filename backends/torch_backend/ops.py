"""The torch pieces the shared `ArrayBackend` asks for: straight-through and a float32 matmul.

* `straight_through(value, carrier)`: a custom `torch.autograd.Function` whose
  forward returns `value` itself (bitwise: no `f(x) + (q - f(x))` arithmetic) and
  whose backward hands the upstream gradient to `carrier` unchanged.
* `subcode_probs(a)`: `lfq.factorized.subcode_probs` whose backward is
  the analytic `lfq.factorized.subcode_probs_vjp` (sums over the codes) instead of
  autograd through the per-bit product loop (four or more kernels per bit).
* `code_histogram(a, weights, product)`: `lfq.factorized.code_histogram` whose
  backward is `lfq.histogram_grad.code_histogram_vjp`, one half of the bits at a
  time and in place (peak memory).
* `matmul(a, b, highest)`: `matmul_highest` for float32 when asked, else `torch.matmul`.
* `matmul_highest(a, b)`: a batched matrix product at full float32 precision
  whatever the process-wide TF32 / bf16 settings are. It is a
  `torch.library.custom_op`, so the precision switch happens inside the op at run
  time, identically in eager mode and under `torch.compile` (the compiler sees an
  opaque op, not a change of global state), and the settings are restored on exit.
"""

from __future__ import annotations

import contextlib

import array_api_compat.torch as torch_namespace
import torch

from lfq import factorized, histogram_grad, tiled

__all__ = [
    "code_histogram",
    "device_constant",
    "full_float32_matmuls",
    "matmul",
    "matmul_highest",
    "no_autocast",
    "straight_through",
    "subcode_probs",
]


class _StraightThrough(torch.autograd.Function):
    """Forward: `value` (no arithmetic). Backward: upstream gradient -> `carrier`.

    Written in the `forward(*args)` + `setup_context` style with a generated vmap
    rule, so that `torch.func` transforms (grad, vjp, jacrev, vmap) go through it
    (the same holds for every Function here; docs/torch.md lists what is supported).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(value, carrier):  # noqa: ARG004 - carrier only receives the gradient
        # Returning an input unchanged is allowed: autograd hands back an alias of
        # `value` with this node as its gradient function, no copy.
        return value

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return None, grad


class _StraightThroughJvp(_StraightThrough):
    """`_StraightThrough` with a forward-mode rule, for eager code (torch.func.jvp, jacfwd).

    A separate class because torch.compile refuses to trace a Function that
    defines `jvp`; compiled code uses `_StraightThrough`.
    """

    @staticmethod
    def jvp(ctx, value_tangent, carrier_tangent):  # noqa: ARG004 - the value's tangent is dropped
        # The tangent of the carrier, as backward routes the gradient.
        return carrier_tangent


def straight_through(value: torch.Tensor, carrier: torch.Tensor) -> torch.Tensor:
    """`value` bitwise, with the gradient of `carrier` (both `[...]`, same shape and dtype)."""
    # A tensor wrapped by a torch.func transform may carry a tangent (jvp) without
    # requires_grad: it needs the Function's rule too.
    if not (torch.is_grad_enabled() and carrier.requires_grad) and not _functorch_wrapped(carrier):
        return value  # inference: nothing to route, no autograd node
    function = _StraightThrough if torch.compiler.is_compiling() else _StraightThroughJvp
    return function.apply(value, carrier)


def _functorch_wrapped(x: torch.Tensor) -> bool:
    # Not asked while torch.compile traces: dynamo cannot trace the query (a graph break).
    return not torch.compiler.is_compiling() and torch._C._functorch.is_functorch_wrapped_tensor(x)


def _precision_switches(device_type: str):
    """`(object, attribute, full-precision value)` that control float32 matmuls on a device.

    torch >= 2.9 has per-backend `fp32_precision` ("ieee" = full float32); mixing
    it with the legacy `allow_tf32` / `set_float32_matmul_precision` API raises,
    so only the per-backend switch is touched where it exists.
    """
    backends = {"cuda": torch.backends.cuda.matmul, "cpu": getattr(torch.backends.mkldnn, "matmul", None)}
    backend = backends.get(device_type)
    if backend is not None and hasattr(backend, "fp32_precision"):
        return [(backend, "fp32_precision", "ieee")]
    if device_type == "cuda":  # older torch: the legacy switch
        return [(torch.backends.cuda.matmul, "allow_tf32", False)]
    return []


@contextlib.contextmanager
def full_float32_matmuls(device_type: str):
    """Run float32 matrix products of `device_type` at full precision inside; restore after.

    The switches are process-wide: another thread's matmuls that run at the same
    moment also run at full precision (slower, never less exact).
    """
    saved = []
    try:
        for obj, attr, value in _precision_switches(device_type):
            previous = getattr(obj, attr)
            if previous != value:
                setattr(obj, attr, value)
                saved.append((obj, attr, previous))
        yield
    finally:
        for obj, attr, previous in reversed(saved):
            setattr(obj, attr, previous)


@torch.library.custom_op("lfq::matmul_highest", mutates_args=())
def matmul_highest(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b` for `[C, M, K] @ [C, K, P] -> [C, M, P]` at full float32 precision."""
    with full_float32_matmuls(a.device.type):
        return torch.matmul(a, b)


@matmul_highest.register_fake
def _(a, b):
    torch._check(a.shape[-1] == b.shape[-2], lambda: "matmul_highest: inner sizes differ")
    return a.new_empty((*a.shape[:-1], b.shape[-1]))


def _matmul_highest_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _matmul_highest_backward(ctx, grad):
    # The gradient products feed the entropy's gradient: full precision as well.
    a, b = ctx.saved_tensors
    grad_a = matmul_highest(grad, b.mT) if ctx.needs_input_grad[0] else None
    grad_b = matmul_highest(a.mT, grad) if ctx.needs_input_grad[1] else None
    return grad_a, grad_b


matmul_highest.register_autograd(_matmul_highest_backward, setup_context=_matmul_highest_setup)


@torch.library.custom_op("lfq::stored", mutates_args=())
def stored(x: torch.Tensor) -> torch.Tensor:
    """A copy of `x` that inductor cannot see through: what is computed before it is
    stored once, and what reads it loads it, instead of inductor fusing the producer
    into every consumer (recomputing it per element). Under `torch.compile` only."""
    return x.clone()


@stored.register_fake
def _(x):
    return torch.empty_like(x)


_DEVICE_CONSTANTS: dict = {}


def device_constant(key, make, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`make()` (host data: a list or NumPy array) as a tensor on `device`, copied there once.

    Copying host data to a GPU from pageable memory blocks the host until the
    GPU's queue has drained; done on every call it would serialise host and
    device. So eager calls share one copy per `(key, dtype, device)` (never
    written to). Under `torch.compile` the tensor is made afresh and becomes a
    constant of the compiled graph.
    """
    if torch.compiler.is_compiling():
        return torch.as_tensor(make(), dtype=dtype, device=device)
    full_key = (key, dtype, device)
    tensor = _DEVICE_CONSTANTS.get(full_key)
    if tensor is None:
        # A normal tensor even when first made under inference_mode, so that
        # training code may use it afterwards.
        with torch.inference_mode(False):
            tensor = _DEVICE_CONSTANTS[full_key] = torch.as_tensor(make(), dtype=dtype, device=device)
    return tensor


class _SubcodeProbs(torch.autograd.Function):
    """Forward: `factorized.subcode_probs(a)`. Backward: `factorized.subcode_probs_vjp`.

    The backward is written in differentiable torch operations on the saved
    tensors, so second derivatives stay exact.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(a):
        # The `[..., k, 2]` sigmoid pairs are an output (saved for the backward) so that
        # inductor stores them once: left inside the table's fused kernel, they were
        # recomputed for every entry (a division per bit per entry, scalar code: 2-3x the
        # whole step at D = 14), and their products made subnormals one multiply at a time.
        pairs = factorized.sigmoid_pairs(a, torch_namespace)
        compiling = torch.compiler.is_compiling()
        if compiling:
            pairs = stored(pairs)
        return factorized.subcode_probs(a, torch_namespace, not compiling, pairs), pairs

    @staticmethod
    def setup_context(ctx, inputs, output):
        (a,) = inputs
        probs, pairs = output
        ctx.mark_non_differentiable(pairs)
        ctx.save_for_backward(a, probs, pairs)

    @staticmethod
    def backward(ctx, cotangent, _pairs_cotangent):
        a, probs, pairs = ctx.saved_tensors
        # Differentiated itself (create_graph, torch.func): sigmoid(a) from `a`, differentiably.
        positive = None if torch.is_grad_enabled() else pairs[..., 1]
        return factorized.subcode_probs_vjp(a, probs, cotangent, torch_namespace, positive=positive)


class _EagerMatmulHighest(torch.autograd.Function):
    """`matmul_highest` for eager mode: the same products and gradient, without the custom op.

    Calling a `torch.library.custom_op` imports `torch._dynamo` on first use (1.5-5 s);
    an eager user should not pay for the compiler, so eager calls come here and only
    traced code meets the custom op (which the compiler needs as an opaque op).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(a, b):
        with full_float32_matmuls(a.device.type):
            return torch.matmul(a, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors  # differentiable: second derivatives stay at full precision too
        grad_a = _EagerMatmulHighest.apply(grad, b.mT) if ctx.needs_input_grad[0] else None
        grad_b = _EagerMatmulHighest.apply(a.mT, grad) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


def matmul(a: torch.Tensor, b: torch.Tensor, highest: bool) -> torch.Tensor:
    """Batched `a @ b`: full float32 precision for float32 when `highest` (the custom op
    `matmul_highest` under torch.compile, `_EagerMatmulHighest` in eager mode), else
    torch's own settings (float64 has no reduced mode)."""
    if highest and a.dtype == torch.float32:
        if torch.compiler.is_compiling():
            return matmul_highest(a, b)
        if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
            return _EagerMatmulHighest.apply(a, b)
        with full_float32_matmuls(a.device.type):
            return torch.matmul(a, b)
    return torch.matmul(a, b)


#: Tables from this size on are worth a `malloc_trim` before the backward: glibc's
#: largest mmap threshold, below which freed blocks stay in its heap anyway.
_TRIM_BYTES = 32 * 2**20


class _CodeHistogram(torch.autograd.Function):
    """Bit logits `[N, C, k]` -> code histogram, with the half-at-a-time gradient.

    Forward: `histogram_grad.histogram_with_factors`; the tables `P_A * w`, `P_B`
    are extra outputs (non-differentiable, dropped by the caller) so that the
    context can keep them. Backward: `histogram_grad.code_histogram_vjp`, with
    in-place products and sums into the temporaries it forms (one `[N, C, 2^|A|]`
    table beyond the saved ones, instead of four). Where the backward itself is
    differentiated (`create_graph`, `torch.func`), the tables are recomputed from
    `a` by differentiable operations and nothing is written in place.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(a, weights, product):
        with torch.no_grad():
            return histogram_grad.histogram_with_factors(a, weights, torch_namespace, product)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, weights, ctx.product = inputs
        _, probs_a, probs_b = output
        ctx.mark_non_differentiable(probs_a, probs_b)
        ctx.set_materialize_grads(False)  # no zero-filled gradients for the tables
        ctx.save_for_backward(a, weights, probs_a, probs_b)

    @staticmethod
    def backward(ctx, cotangent, _grad_probs_a, _grad_probs_b):
        a, weights, probs_a, probs_b = ctx.saved_tensors
        if cotangent is None:  # the histogram did not reach the loss
            return None, None, None
        product = ctx.product
        if torch.is_grad_enabled() or _functorch_wrapped(cotangent):
            # The backward is differentiated: recompute the tables differentiably.
            probs_a, probs_b = factorized.subcode_factors(a, weights, torch_namespace, subcode_probs)
            grad = histogram_grad.code_histogram_vjp(a, probs_a, probs_b, cotangent, torch_namespace, product)
        else:
            if a.device.type == "cpu" and probs_a.numel() * probs_a.element_size() >= _TRIM_BYTES:
                # glibc keeps the forward's freed temporaries in its heap, where the
                # backward's tables do not fit: hand them back first (peak RSS at
                # N = 2**17, D = 16: 2.1 -> 1.8 units of P_A + P_B). Only for large
                # tables: the trim walks the whole heap (other frameworks' too), and
                # pages it returns are faulted in again, which costs small steps 10-20%.
                tiled.release_heap()
            grad = histogram_grad.code_histogram_vjp(
                a, probs_a, probs_b, cotangent, torch_namespace, product, torch.Tensor.mul_, torch.Tensor.add_
            )
        return grad, None, None


def code_histogram(a: torch.Tensor, weights: torch.Tensor | None, product) -> torch.Tensor:
    """`[N, C, k]` bit logits (and `[N]` weights or None) -> `[C, 2**|A|, 2**|B|]` code
    histogram (`lfq.factorized.code_histogram`), with the half-at-a-time gradient.
    `product(p, q)` is the backend's batched matrix product (its precision).

    Eager training steps only: without gradients there is no backward to schedule,
    and under `torch.compile` inductor's own schedule of the autodiff composition
    peaks lower (1.8 against 2.1 units of `P_A + P_B` at N = 2**17, D = 16).
    """
    if torch.compiler.is_compiling() or not (torch.is_grad_enabled() and a.requires_grad):
        return factorized.code_histogram(a, weights, torch_namespace, product, subcode_probs)
    return _CodeHistogram.apply(a, weights, product)[0]


def subcode_probs(a: torch.Tensor) -> torch.Tensor:
    """`[..., k]` bit logits -> `[..., 2**k]` sub-code probabilities, with the analytic gradient."""
    if not (torch.is_grad_enabled() and a.requires_grad):
        return factorized.subcode_probs(a, torch_namespace, not torch.compiler.is_compiling())
    return _SubcodeProbs.apply(a)[0]


_AUTOCAST_DEVICES = ("cpu", "cuda")


def no_autocast(device_type: str):
    """A context that switches autocast off on `device_type` (a no-op context elsewhere).

    Half inputs are computed in float32 by the shared code; without this an
    enclosing `torch.autocast` would silently run its matmuls in half again.
    """
    if device_type in _AUTOCAST_DEVICES:
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()
