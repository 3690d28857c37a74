"""`TorchBackend`: LFQ on `torch.Tensor`s (CPU or CUDA), eager or under `torch.compile`.

The math is the shared `lfq.array_backend.ArrayBackend` (written once over an
Array-API namespace); this adapter supplies torch's pieces:

* the namespace (`array_api_compat.torch`) and constants on the input's device;
* straight-through by a custom autograd function (value bitwise the codes);
* the sub-code probabilities' analytic gradient (`ops.subcode_probs`);
* the entropy's matrix products at full float32 precision (`precision="highest"`,
  default) through the `lfq::matmul_highest` custom op, or torch's own settings
  (`precision="default"`: TF32 where the user enabled it);
* half inputs computed in float32 with autocast switched off inside;
* the distributed all-reduce of the loss sums (`distributed=True`);
* `vjp` by `torch.autograd`, `compiled()` by `torch.compile(fullgraph=True)`.

Every operation is traceable by `torch.compile(fullgraph=True)` without graph
breaks, so users may also compile their own code around the eager backend. Under
such a compile the index range check of `indices_to_codes` (a data-dependent
read) is skipped; `compiled()` keeps it, running the checks eagerly first.
"""

from __future__ import annotations

import collections
import contextlib
from typing import final

import array_api_compat.torch as torch_namespace
import numpy as np
import torch

from lfq import validation
from lfq.array_backend import ArrayBackend
from lfq.config import Config

from . import distributed as _dist
from . import ops
from .ops import _AUTOCAST_DEVICES, device_constant, no_autocast, straight_through, subcode_probs

__all__ = ["TorchBackend"]


def _require_tensor(x, name: str) -> None:
    validation.check_array(x, name, "torch", torch.Tensor, "torch.Tensor", "torch.as_tensor(...)")


@final
class TorchBackend(ArrayBackend):
    """LFQ on torch tensors; see `lfq.interface.LFQBackend` for every operation.

    Args:
        device: where `asarray` puts new tensors (default: torch's default
            device). Operations always run on their inputs' device.
        mode: "eager" (default) or "compiled" (every operation through
            `torch.compile(fullgraph=True)`; get it with `compiled()`).
        compile_mode: `torch.compile`'s `mode` in compiled mode (None: its
            default; "reduce-overhead": CUDA graphs; see `compiled`).

    Extra keyword arguments of `lfq`, `entropy`, `commitment_loss` and `vjp`:
        distributed: True sums the loss sums over `process_group` (see
            `lfq.backends.torch_backend.distributed`); default False.
        process_group: the `torch.distributed` group; default the world.
        inv_temperature, diversity_gamma, entropy_weight, commitment_weight:
            per-call values overriding the config's (a float or a 0-d tensor),
            for annealing schedules. In compiled mode they are inputs of the
            compiled program, not constants: changing them never recompiles
            (only a weight that becomes 0, or stops being 0, selects another
            program; see `lfq.factorized.Schedule`).
    """

    name = "torch"
    dtypes = validation.FLOAT_DTYPES
    modes = ("eager", "compiled")
    # ATen's and inductor's CPU kernels vectorize float sums, not int64 ones: the int64
    # index sum over 16 bits took 216 ms for 2^22 tokens compiled, the float32 runs 21 ms.
    float_index_sums = True

    def __init__(self, device=None, mode: str = "eager", compile_mode: str | None = None):
        if mode not in self.modes:
            raise ValueError(f"mode={mode!r} is not one of {list(self.modes)}")
        _check_compile_mode(compile_mode)
        if compile_mode is not None and mode != "compiled":
            raise ValueError(f"compile_mode={compile_mode!r} needs mode='compiled'")
        self.device = torch.device(device) if device is not None else None
        self.mode = mode
        self.compiles = mode == "compiled"  # the shared program mechanism runs this backend's operations
        self.compile_mode = compile_mode
        self._compiled_backends: dict = {}

    def __repr__(self) -> str:
        extra = "" if self.compile_mode is None else f", compile_mode={self.compile_mode!r}"
        return f"TorchBackend(device={self.device}, mode={self.mode!r}{extra})"

    # ------------------------------------------------------------------ hooks

    def namespace(self, x):
        return torch_namespace

    def pass_gradient(self, value, carrier):
        return straight_through(value, carrier)

    def stop_gradient(self, x):
        return x.detach()

    def matmul(self, a, b, cfg: Config):
        return ops.matmul(a, b, cfg.precision == "highest")  # "default" obeys torch's settings

    def subcode_probs(self, a, cfg: Config):
        return subcode_probs(a)

    def code_histogram(self, a, weights, cfg: Config):
        return ops.code_histogram(a, weights, lambda p, q: self.matmul(p, q, cfg))

    def tiled_entropy(self, probs_a, probs_b, count, rows: int, cfg: Config):
        from .tiled import tiled_entropy  # the recomputing gradient; a custom op under torch.compile

        return tiled_entropy(probs_a, probs_b, count, rows, cfg.precision == "highest")

    def index_dtype(self, xp, cfg: Config):
        return torch.int64

    def constant(self, values, dtype, like):
        key = tuple(values) if isinstance(values, (list, tuple)) else values
        return device_constant(("values", key), lambda: values, dtype, like.device)

    def concrete_bounds(self, indices):
        if torch.compiler.is_compiling() or indices.numel() == 0:
            return None  # a traced graph cannot read values; compiled() checks before tracing
        return int(indices.min()), int(indices.max())

    def replica_group(self, options: dict):
        enabled, group = _dist.parse_options(options)
        if not enabled:
            return None
        return torch.distributed.group.WORLD if group is None else group

    def collectives(self):
        return _dist.EQUAL_ROWS if self.compiles else _dist

    def program_rows(self, n: int, options: dict) -> int:
        rows = super().program_rows(n, options)
        enabled, group = _dist.parse_options(options)
        # One small eager all-reduce before the program: inside it every replica then has the
        # same number of rows, and the tiled groups' all-gather reads no size from the data.
        return _dist.largest_rows(rows, group) if enabled else rows

    def check_options(self, options: dict) -> None:
        _dist.parse_options(options)

    def check_array(self, x, name: str) -> None:
        _require_tensor(x, name)

    def check_placement(self, x, z, name: str) -> None:
        if x.device != z.device:
            raise ValueError(f"{name} is on {x.device} but z is on {z.device}: move it with .to(z.device)")

    def compute_context(self, x):
        device_type = x.device.type if isinstance(x, torch.Tensor) else "cpu"
        # Enter the autocast-off context only where autocast is on: traced, the context is
        # an _enter_autocast node, which makes AOT autograd's cache refuse the whole graph
        # (every restarted process would then re-trace the joint graph: seconds per program).
        # Dynamo reads the flag at trace time and guards on it, so both states stay correct.
        if device_type in _AUTOCAST_DEVICES and not torch.is_autocast_enabled(device_type):
            return contextlib.nullcontext()
        return no_autocast(device_type)

    def gradient(self, fn, z, cotangent):
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            out = fn(z)
        cot = (
            torch.ones_like(out)
            if cotangent is None
            else torch.as_tensor(cotangent, dtype=out.dtype, device=out.device)
        )
        (grad,) = torch.autograd.grad(out, z, cot, allow_unused=True)
        return torch.zeros_like(z) if grad is None else grad

    # ------------------------------------------------------- compiled programs

    flat_programs = True  # one program, N dynamic, for every shape and rank
    min_program_tokens = 2  # torch specializes sizes 0 and 1: pad below 2 tokens
    vjp_programs = False  # fullgraph=True cannot trace torch.autograd.grad: vjp differentiates the programs

    def compile_program(self, fn, signature):
        """`torch.compile(fullgraph=True)`, the token axis of `[N, F]` inputs marked dynamic
        (any N >= 2 reuses the trace); inputs contiguous, as fresh tensor objects (never
        the caller's own, which `mark_dynamic` would mark)."""
        compiled = torch.compile(fn, fullgraph=True, mode=self.compile_mode)
        first_call = [True]

        def call(x, *rest):
            x = x.contiguous().view(x.shape)
            torch._dynamo.mark_dynamic(x, 0)
            if len(rest) == 2:  # (schedule, mask)
                mask = rest[1].view(rest[1].shape)
                torch._dynamo.mark_dynamic(mask, 0)
                rest = (rest[0], mask)
            if first_call and _AOT_CACHEABLE is not None:  # it compiles: let AOT autograd cache it
                with _AOT_CACHEABLE():
                    out = compiled(x, *rest)
                first_call.clear()  # N is dynamic: later calls run the compiled code (no 35 us patch)
                return out
            return compiled(x, *rest)

        return call

    def pack_schedule(self, values: tuple, like):
        return _schedule_tensor(values, like.device)

    def program_key(self, x) -> tuple:
        return (x.device, torch.is_grad_enabled() and x.requires_grad)

    # --------------------------------------------------------------- interface

    def indices_to_codes(self, indices, cfg: Config, dtype: str = "float32"):
        _require_tensor(indices, "indices")
        if not isinstance(dtype, str) or dtype not in validation.FLOAT_DTYPES:
            raise ValueError(f"dtype={dtype!r} must be one of {list(validation.FLOAT_DTYPES)}")
        if not (indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool):
            indices = indices.to(torch.int64)  # bit weights up to 2**62 need int64 arithmetic
        return super().indices_to_codes(indices, cfg, dtype)

    def compiled(self, mode: str | None = None) -> TorchBackend:
        """This backend with every operation run by `torch.compile(fullgraph=True)` (inductor).

        Arguments are checked eagerly first, so errors are the same as in eager
        mode. Inputs are flattened to `[tokens, C*D]` outside the compiled graph
        and the token count is dynamic, so one compiled program per (operation,
        config, dtype, mask presence, device, gradient) serves every shape, rank
        and batch size, empty batches included (see `lfq.program`).

        Args:
            mode: `torch.compile`'s mode. None (its default) launches the compiled
                kernels one by one. "reduce-overhead" replays them as CUDA graphs
                on a GPU, removing the launch cost that dominates a step of small
                kernels; the outputs then live in memory that the next call
                overwrites (torch raises if an overwritten output is read: clone
                what you keep, and call `torch.compiler.cudagraph_mark_step_begin()`
                between calls of one step). "max-autotune" and
                "max-autotune-no-cudagraphs" also search kernel configurations.
                On a CPU the CUDA-graph modes compile as the default one.
        """
        _check_compile_mode(mode)
        if self.mode == "compiled" and mode == self.compile_mode:
            return self
        backend = self._compiled_backends.get(mode)
        if backend is None:
            backend = self._compiled_backends[mode] = TorchBackend(self.device, mode="compiled", compile_mode=mode)
            backend._compiled_backends = self._compiled_backends  # one family, one instance per mode
        return backend

    # ------------------------------------------------------------ conversions

    def asarray(self, array, dtype: str | None = None, device=None):
        """A NumPy array (or anything `np.asarray` takes) as a tensor on `device`
        (default: `self.device`, else torch's default device).

        The dtype cast happens in NumPy first (bfloat16 through ml_dtypes), so the
        values are exactly NumPy's; bfloat16 crosses as float32, which holds every
        bfloat16 value exactly.
        """
        if isinstance(array, torch.Tensor):
            array = self.to_numpy(array)
        array = np.asarray(array)
        if dtype is not None:
            array = array.astype(validation.numpy_dtype(dtype))
        if validation.dtype_name(array.dtype) == "bfloat16":
            tensor = torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
        else:
            # reshape: np.ascontiguousarray turns a 0-d array into shape (1,)
            tensor = torch.from_numpy(np.ascontiguousarray(array).reshape(array.shape))
        if device is None:
            device = self.device if self.device is not None else torch.get_default_device()
        return tensor.to(device)

    def to_numpy(self, array):
        """A tensor as a NumPy array on the host (bfloat16 via ml_dtypes, exactly)."""
        if not isinstance(array, torch.Tensor):
            return np.asarray(array)
        array = array.detach().cpu()
        if array.dtype == torch.bfloat16:
            return array.to(torch.float32).numpy().astype(validation.numpy_dtype("bfloat16"))
        return array.numpy()


def _aot_cacheable():
    """A context in which AOT autograd's on-disk cache takes our programs' graphs.

    It refuses graphs with a custom `torch.autograd.Function` unless told otherwise
    (their Python could hide state from the cache key); ours (straight-through, the
    sub-code probabilities) are traced whole into the graph, forward and backward,
    so the key sees all of them. Scoped to the calls of our own programs (the
    compile happens inside the first call): a user's global config is left alone.
    A restarted process then skips the joint forward-backward trace (measured in
    docs/performance.md, "Compile times").
    """
    from torch._functorch import config

    if not hasattr(config, "autograd_cache_allow_custom_autograd_functions"):  # an older torch
        return contextlib.nullcontext()
    return config.patch(autograd_cache_allow_custom_autograd_functions=True)


_AOT_CACHEABLE = _aot_cacheable  # None: the programs are called without it

#: `torch.compile` modes (`torch._inductor.list_mode_options()`), besides None.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _check_compile_mode(mode) -> None:
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"compile mode={mode!r} is not one of {[None, *COMPILE_MODES]} (torch.compile's modes)")


_SCHEDULE_TENSORS = 64  # per-device schedule tensors kept for repeated values
_schedule_tensors: collections.OrderedDict = collections.OrderedDict()


def _schedule_tensor(values: tuple, device):
    """The four schedule values as a `[4]` float64 tensor on `device`, a compiled program's
    run-time input. Repeated float values reuse one tensor (no host-to-device copy per call).
    """
    if not all(isinstance(v, float) for v in values):
        return torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
    key = (values, device)
    scalars = _schedule_tensors.get(key)
    if scalars is None:
        with torch.inference_mode(False):
            scalars = torch.tensor(values, dtype=torch.float64, device=device)
        _schedule_tensors[key] = scalars
        if len(_schedule_tensors) > _SCHEDULE_TENSORS:
            _schedule_tensors.popitem(last=False)
    else:
        _schedule_tensors.move_to_end(key)
    return scalars
