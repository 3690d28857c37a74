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
import hashlib
import math
import types
from typing import final

import array_api_compat.torch as torch_namespace
import numpy as np
import torch

from lfq import validation
from lfq.array_backend import ArrayBackend
from lfq.config import Config
from lfq.factorized import SCHEDULE_FIELDS
from lfq.interface import GRAD_TERMS, CodeUsage, LFQOutput

from . import distributed as _dist
from . import ops
from .ops import device_constant, no_autocast, straight_through, subcode_probs

__all__ = ["TorchBackend"]


def _require_tensor(x, name: str) -> None:
    validation.check_array(x, name, "torch", torch.Tensor, "torch.Tensor", "torch.as_tensor(...)")


def _require_same_device(x, z, name: str) -> None:
    if x.device != z.device:
        raise ValueError(f"{name} is on {x.device} but z is on {z.device}: move it with .to(z.device)")


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

    def __init__(self, device=None, mode: str = "eager", compile_mode: str | None = None):
        if mode not in self.modes:
            raise ValueError(f"mode={mode!r} is not one of {list(self.modes)}")
        _check_compile_mode(compile_mode)
        if compile_mode is not None and mode != "compiled":
            raise ValueError(f"compile_mode={compile_mode!r} needs mode='compiled'")
        self.device = torch.device(device) if device is not None else None
        self.mode = mode
        self.compile_mode = compile_mode
        self._compiled_backends: dict = {}
        self._compiled_ops: dict = {}

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
        return subcode_probs(a, cfg.precision == "highest")

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

    def all_reduce(self, sums, options: dict, cfg: Config | None = None):
        enabled, group = _dist.parse_options(options)
        if not enabled:
            return sums
        if cfg is not None and _dist.has_tiled_groups(sums):  # past the tile threshold: no histogram moves
            return _dist.all_reduce_tiled(
                sums,
                group,
                cfg,
                lambda a: self.subcode_probs(a, cfg),
                lambda pa, pb, count, rows: self.tiled_entropy(pa, pb, count, rows, cfg),
            )
        return _dist.all_reduce_sums(sums, group)

    # --------------------------------------------------------------- interface

    def _run(self, op: str, first, cfg: Config, *args, **kwargs):
        """Check the arguments eagerly, then run `op` in this backend's mode."""
        validation.check_config(cfg)
        if self.mode == "compiled":
            self._check_eagerly(op, first, cfg, *args, **kwargs)
            return self._run_compiled(op, first, cfg, *args, **kwargs)
        with no_autocast(first.device.type if isinstance(first, torch.Tensor) else "cpu"):
            # The shared implementation, named explicitly (torch.compile traces it).
            return getattr(ArrayBackend, op)(self, first, cfg, *args, **kwargs)

    def _run_compiled(self, op: str, first, cfg: Config, *args, **options):
        """`op` through the compiled programs, on tokens flattened outside the graph.

        Every input is brought to `[N, C*D]` (feature axis last, token axes
        flattened; a mask to `[N]`) before the compiled call and the outputs are
        reshaped back after it, so one compiled program per (program, config,
        dtype, mask presence, device, gradient) serves every shape and rank, with
        N dynamic from its first trace. A batch of N < 2 tokens (which torch would
        specialize) is padded to 2 with masked-out zero tokens and sliced back.
        `lfq` runs two programs: the losses (with the indices) and the
        straight-through codes, so the codes' backward runs only when the codes
        receive a gradient (a masked-out NaN never meets the loss gradient).
        """
        if op == "indices_to_codes":
            (dtype,) = args
            flat, tokens = _flatten(first, -1)
            codes = self._call("indices_to_codes", cfg, _pad(flat, None)[0], extra=(dtype,))[: flat.shape[0]]
            return _unflatten(codes, tokens, cfg)
        z, tokens = _flatten(first, cfg.feature_axis)
        n = z.shape[0]
        if op in ("quantize", "straight_through", "codes_to_indices"):
            out = self._call(op, cfg, _pad(z, None)[0])[:n]
            if op == "codes_to_indices":
                return out.reshape(tokens + (cfg.num_codebooks,))
            return _unflatten(out, tokens, cfg)
        mask = args[0] if args else None
        if mask is not None:
            mask = mask.reshape(n)
        z_in, mask_in = _pad(z, mask)
        if op == "commitment_loss":
            return self._call("commitment_loss", cfg, z_in, mask_in, options)
        per_sample, batch, commit, aux, indices = values = self._call("losses", cfg, z_in, mask_in, options)
        if op == "losses":
            return values
        if op == "entropy":
            return per_sample, batch
        codes = _unflatten(self._call("straight_through", cfg, _pad(z, None)[0])[:n], tokens, cfg)
        return LFQOutput(codes, indices[:n].reshape(tokens + (cfg.num_codebooks,)), aux, per_sample, batch, commit)

    def _call(self, program: str, cfg: Config, z, mask=None, options=None, extra=()):
        """Run compiled `program` on `[N, F]` input `z` (and `[N]` mask): get or compile it."""
        if cfg.feature_axis != -1:  # the programs see features last: configs that differ only here share them
            cfg = cfg.replace(feature_axis=-1)
        # The schedule fields are run-time inputs (the losses program) or unused (the others):
        # configs that differ only in their values share one program.
        cfg, scalars, options = _runtime_schedule(cfg, options or {}, z.device)
        inputs = (scalars,) if program == "losses" else ()
        grad = torch.is_grad_enabled() and z.requires_grad
        signature = (
            program,
            cfg,
            extra,
            str(z.dtype),
            mask is not None,
            z.device.type,
            grad,
            tuple(sorted(options)),
            bool(options.get("distributed", False)),
        )
        key = (signature, z.device)
        fn = self._compiled_ops.get(key)
        if fn is None:
            fn = self._compiled_ops[key] = torch.compile(
                _program(program, cfg, extra, signature), fullgraph=True, mode=self.compile_mode
            )
        torch._dynamo.mark_dynamic(z, 0)  # any N >= 2 reuses this trace
        if mask is None:
            return fn(z, *inputs, **options)
        torch._dynamo.mark_dynamic(mask, 0)
        return fn(z, *inputs, mask, **options)

    def _check_eagerly(self, op, first, cfg, *args, **kwargs):
        """The checks that would raise inside the compiled graph, made before it is traced."""
        if op == "indices_to_codes":
            _require_tensor(first, "indices")
            validation.check_indices(first.shape, first.dtype, cfg)
            if first.numel():
                validation.check_index_range(int(first.min()), int(first.max()), cfg)
            return
        self._check(first, cfg)
        mask = kwargs.get("mask", args[0] if args else None)
        if mask is not None:
            _require_tensor(mask, "mask")
            _require_same_device(mask, first, "mask")
            validation.check_mask(mask.shape, mask.dtype, first.shape, cfg)
        if op in ("entropy", "commitment_loss", "lfq"):
            if op != "commitment_loss":  # the commitment loss needs no batch entropy: any D
                validation.check_exact_batch_entropy(cfg)
            _, options = validation.split_schedule({k: v for k, v in kwargs.items() if k != "mask"})
            _dist.parse_options(options)

    def _check(self, z, cfg: Config):
        _require_tensor(z, "z")
        return ArrayBackend._check(self, z, cfg)

    def _features(self, z, cfg: Config, mask):
        if mask is not None:
            _require_tensor(mask, "mask")
            _require_same_device(mask, z, "mask")
        return ArrayBackend._features(self, z, cfg, mask)

    def quantize(self, z, cfg: Config):
        return self._run("quantize", z, cfg)

    def codes_to_indices(self, z, cfg: Config):
        return self._run("codes_to_indices", z, cfg)

    def indices_to_codes(self, indices, cfg: Config, dtype: str = "float32"):
        _require_tensor(indices, "indices")
        if not isinstance(dtype, str) or dtype not in validation.FLOAT_DTYPES:
            raise ValueError(f"dtype={dtype!r} must be one of {list(validation.FLOAT_DTYPES)}")
        if not (indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool):
            indices = indices.to(torch.int64)  # bit weights up to 2**62 need int64 arithmetic
        return self._run("indices_to_codes", indices, cfg, dtype)

    def entropy(self, z, cfg: Config, mask=None, **options):
        return self._run("entropy", z, cfg, mask, **options)

    def commitment_loss(self, z, cfg: Config, mask=None, **options):
        return self._run("commitment_loss", z, cfg, mask, **options)

    def lfq(self, z, cfg: Config, mask=None, **options) -> LFQOutput:
        return self._run("lfq", z, cfg, mask, **options)

    def straight_through(self, z, cfg: Config):
        """Codes of `z` whose value is exactly `quantize(z)` and whose gradient follows the rule."""
        return self._run("straight_through", z, cfg)

    def code_usage(self, indices, cfg: Config, mask=None) -> CodeUsage:
        validation.check_config(cfg)
        _require_tensor(indices, "indices")
        if mask is not None:
            _require_tensor(mask, "mask")
        return super().code_usage(indices, cfg, mask)

    def vjp(self, term: str, z, cfg: Config, cotangent=None, mask=None, **options):
        """Gradient of `term` (one of `lfq.GRAD_TERMS`) w.r.t. `z` by torch.autograd, z's dtype.

        A scalar term's cotangent defaults to 1; "codes" needs a cotangent of z's shape.
        """
        if term not in GRAD_TERMS:
            raise ValueError(f"term={term!r} is not one of {list(GRAD_TERMS)}")
        _require_tensor(z, "z")
        self._check(z, cfg)  # an integer z must fail here, not in requires_grad_
        if term == "codes" and cotangent is None:
            raise ValueError("vjp('codes', ...) needs a cotangent of z's shape (the upstream gradient)")
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self._term(term, z, cfg, mask, options)
        if cotangent is None:
            cotangent = torch.ones_like(out)
        else:
            cotangent = torch.as_tensor(cotangent, dtype=out.dtype, device=out.device)
            if cotangent.shape != out.shape:
                raise ValueError(
                    f"cotangent has shape {tuple(cotangent.shape)}, expected {tuple(out.shape)} (the shape of {term})"
                )
        (grad,) = torch.autograd.grad(out, z, cotangent, allow_unused=True)
        return torch.zeros_like(z) if grad is None else grad

    def _term(self, term: str, z, cfg: Config, mask, options):
        """The value of `term` computed with only what it needs (so only its gradient runs)."""
        if term == "codes":
            return self.straight_through(z, cfg)
        if term == "commitment_loss":  # no batch entropy: any D
            return self.commitment_loss(z, cfg, mask, **options)
        if self.mode == "compiled":  # the loss program alone, without the codes' program
            self._check_eagerly("lfq", z, cfg, mask, **options)
            values = self._run_compiled("losses", z, cfg, mask, **options)
            return values[("per_sample_entropy", "batch_entropy", "commitment_loss", "aux_loss").index(term)]
        return getattr(self.lfq(z, cfg, mask, **options), term)

    def compiled(self, mode: str | None = None) -> TorchBackend:
        """This backend with every operation run by `torch.compile(fullgraph=True)` (inductor).

        Arguments are checked eagerly first, so errors are the same as in eager
        mode. Inputs are flattened to `[tokens, C*D]` outside the compiled graph
        and the token count is dynamic, so one compiled program per (operation,
        config, dtype, mask presence, device, gradient) serves every shape, rank
        and batch size, empty batches included (see `_run_compiled`).

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


#: `torch.compile` modes (`torch._inductor.list_mode_options()`), besides None.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _check_compile_mode(mode) -> None:
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"compile mode={mode!r} is not one of {[None, *COMPILE_MODES]} (torch.compile's modes)")


_EAGER = TorchBackend()


def _flatten(x, axis: int):
    """`x` with `axis` moved last and the other axes flattened: `([N, F], token shape)`.

    A fresh contiguous tensor object (never the caller's own, which `mark_dynamic`
    would mark), differentiable through the reshape.
    """
    axis %= x.ndim
    if axis != x.ndim - 1:
        x = torch.movedim(x, axis, -1)
    tokens = tuple(x.shape[:-1])
    flat = x.reshape(math.prod(tokens), x.shape[-1]).contiguous()
    return (flat.view(flat.shape) if flat is x else flat), tokens


def _unflatten(flat, tokens: tuple, cfg: Config):
    """Inverse of `_flatten` for `[N, C*D]` features: back to `tokens` with the feature axis in place."""
    x = flat.reshape(tokens + (flat.shape[-1],))
    axis = cfg.feature_axis % x.ndim
    return x if axis == x.ndim - 1 else torch.movedim(x, -1, axis)


_MIN_TOKENS = 2  # torch specializes sizes 0 and 1; below 2 tokens, pad


def _pad(z, mask):
    """`(z, mask)` with at least 2 rows: pad rows are zeros and masked out.

    Without padding `mask` stays as given (None for no mask); a padded batch
    always gets a mask, so the pad rows count in no loss.
    """
    n = z.shape[0]
    if n >= _MIN_TOKENS:
        return z, mask
    extra = _MIN_TOKENS - n
    padded = torch.cat([z, z.new_zeros((extra,) + tuple(z.shape[1:]))])
    valid = torch.ones(n, dtype=torch.bool, device=z.device) if mask is None else mask
    return padded, torch.cat([valid, torch.zeros(extra, dtype=torch.bool, device=z.device)])


_SCHEDULE_PLACEHOLDERS = 64  # per-device scalars tensors kept for repeated schedule values
_schedule_tensors: collections.OrderedDict = collections.OrderedDict()


def _runtime_schedule(cfg: Config, options: dict, device):
    """`(program config, [4] float64 schedule tensor, other options)` for a compiled call
    (`validation.program_schedule`): the values travel in the tensor, so the compiled
    program reads them at run time. Repeated float values reuse one tensor on the
    device (no host-to-device copy per call).
    """
    program_cfg, values, options = validation.program_schedule(cfg, options)
    values = [values[name] for name in SCHEDULE_FIELDS]
    if all(isinstance(v, float) for v in values):
        key = (tuple(values), device)
        scalars = _schedule_tensors.get(key)
        if scalars is None:
            with torch.inference_mode(False):
                scalars = torch.tensor(values, dtype=torch.float64, device=device)
            _schedule_tensors[key] = scalars
            if len(_schedule_tensors) > _SCHEDULE_PLACEHOLDERS:
                _schedule_tensors.popitem(last=False)
        else:
            _schedule_tensors.move_to_end(key)
    else:
        scalars = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
    return program_cfg, scalars, options


def _loss_program(z, scalars, cfg, mask, options):
    schedule = dict(zip(SCHEDULE_FIELDS, torch.unbind(scalars)))
    with no_autocast(z.device.type):
        losses = ArrayBackend._losses(_EAGER, z, cfg, mask, {**options, **schedule})[2]
        return (*losses, ArrayBackend.codes_to_indices(_EAGER, z, cfg))


_PROGRAMS = {
    "quantize": lambda z, cfg, extra, **options: _EAGER.quantize(z, cfg),
    "codes_to_indices": lambda z, cfg, extra, **options: _EAGER.codes_to_indices(z, cfg),
    "straight_through": lambda z, cfg, extra, **options: _EAGER.straight_through(z, cfg),
    "indices_to_codes": lambda i, cfg, extra, **options: _EAGER.indices_to_codes(i, cfg, *extra),
    "commitment_loss": lambda z, cfg, extra, mask=None, **options: _EAGER.commitment_loss(z, cfg, mask, **options),
    # (per_sample, batch, commitment, aux, indices): lfq without its codes
    "losses": lambda z, cfg, extra, scalars, mask=None, **options: _loss_program(z, scalars, cfg, mask, options),
}


def _program(program: str, cfg: Config, extra: tuple, signature: tuple):
    """A new function running `program` on `[N, F]` inputs, for `torch.compile` to own.

    `torch.compile` keeps its cache and recompile budget (8 by default, a hard
    error under fullgraph=True) per code object, and its automatic-dynamic-shape
    profile per (file, line, function name). A code object of its own per
    `signature` (program, config, dtype, mask presence, ...), named after it
    stably across processes, keeps every variant apart on both counts: each one
    compiles once (its N is marked dynamic), and no variant spends another's budget.
    """
    body = _PROGRAMS[program]

    def run(z, *args, **kwargs):
        return body(z, cfg, extra, *args, **kwargs)

    tag = hashlib.sha1(repr(signature).encode()).hexdigest()[:12]
    code = run.__code__.replace(co_name=f"{program}_{tag}")
    return types.FunctionType(code, run.__globals__, code.co_name, run.__defaults__, run.__closure__)
