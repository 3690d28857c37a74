"""Compiled programs: the one mechanism behind every backend's compiled mode.

An `lfq.array_backend.ArrayBackend` whose `compiles` is true runs each operation
through a program built by its framework's compiler (`torch.compile`, `jax.jit`,
`tf.function(jit_compile=True)`). Everything but the compiler call is here:

* the inputs were checked eagerly once, by the public operation, before any
  tracing (so errors are eager mode's, and a program checks nothing again);
* tokens are flattened to `[N, C*D]` (features last, a mask to `[N]`) where the
  backend asks for it (`flat_programs`), and batches of fewer than
  `min_program_tokens` tokens are padded with masked-out zero tokens, so one
  program with a dynamic N serves every shape and rank;
* the per-call schedule (`lfq.factorized.Schedule`) is packed into the program's
  run-time inputs only here, at the program boundary; the program's config has
  the schedule fields replaced by placeholders that keep only which ones are zero
  (`lfq.validation.program_schedule`), so an annealed temperature never recompiles;
* programs are keyed by `Signature` (operation, program config, dtype, mask
  presence, options and the backend's own part, e.g. device and gradient) and
  cached per backend object in a `ProgramCache`, which drops its compiled
  functions when the backend is pickled or deep-copied (they are rebuilt lazily).

A backend supplies only its hooks: `compile_program` (the framework's compiler),
`pack_schedule` (the schedule as run-time arrays), `program_key` (what else
selects a program), `compute_context` (e.g. torch's autocast switched off) and the
math hooks the program body uses (custom gradients, distributed reductions).

`lfq` runs two programs, the losses (with the indices) and the straight-through
codes, so that the codes' backward runs only when the codes receive a gradient:
a masked-out NaN token then never meets the loss gradient through the codes'.

Nothing here imports a framework.
"""

from __future__ import annotations

import hashlib
import threading
import types
from collections.abc import Callable
from typing import NamedTuple

from lfq import validation
from lfq.config import Config
from lfq.factorized import SCHEDULE_FIELDS, Schedule
from lfq.interface import LFQOutput

__all__ = ["ProgramCache", "Signature", "run"]

#: Operations with loss outputs: their programs take the schedule as a run-time input.
_SCHEDULED = ("losses", "commitment_loss", "vjp")


class Signature(NamedTuple):
    """What selects a compiled program; equal signatures share one.

    Attributes:
        op: the program: "quantize", "codes_to_indices", "indices_to_codes",
            "straight_through", "losses" (`(per_sample, batch, commitment, aux,
            indices)`) or "commitment_loss".
        cfg: the program config (schedule placeholders; features last when flat).
        extra: the operation's static arguments (the codes' dtype name; a vjp's
            term and whether a cotangent is an input).
        dtype: the input's dtype name.
        masked: whether a mask is an input.
        options: the distributed options, sorted `(name, value)` pairs (an unhashable
            value by its identity).
        backend: the backend's own part (`ArrayBackend.program_key`).
    """

    op: str
    cfg: Config
    extra: tuple
    dtype: str
    masked: bool
    options: tuple
    backend: tuple

    def name(self) -> str:
        """A name stable across processes: the op and a hash of the signature."""
        return f"{self.op}_{hashlib.sha1(repr(self).encode()).hexdigest()[:12]}"


class ProgramCache:
    """A backend's compiled programs by `Signature`, built on first use.

    Thread-safe (one build per signature). Pickling or deep-copying keeps no
    compiled function (they hold framework state: traced graphs, locks, local
    functions); the copy starts empty and compiles again when used.
    """

    def __init__(self):
        self._programs: dict = {}
        self._lock = threading.Lock()

    def get(self, signature: Signature, build: Callable[[], Callable]) -> Callable:
        """The program of `signature`, built by `build()` if it is new."""
        with self._lock:
            program = self._programs.get(signature)
            if program is None:
                program = self._programs[signature] = build()
            return program

    def signatures(self) -> list[Signature]:
        """The signatures compiled so far, oldest first."""
        with self._lock:
            return list(self._programs)

    def __len__(self) -> int:
        return len(self._programs)

    def __reduce__(self):
        return ProgramCache, ()  # an empty cache: pickle and deepcopy rebuild programs lazily


def named(fn: Callable, name: str) -> Callable:
    """A copy of function `fn` with a code object of its own, named `name`.

    `torch.compile` keeps its cache and recompile budget (8 by default, a hard
    error under fullgraph=True) per code object, and its automatic-dynamic-shape
    profile per (file, line, function name); TensorFlow counts retracings per
    code object. Every program body is the same closure code, so each signature
    gets its own copy, named stably across processes: every variant compiles
    once, and no variant spends another's budget.
    """
    code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def run(
    backend,
    op: str,
    cfg: Config,
    x,
    mask=None,
    schedule: Schedule | None = None,
    options=None,
    extra=(),
    cotangent=None,
):
    """Operation `op` of `backend` on checked inputs, through its compiled programs.

    Args:
        backend: an `ArrayBackend` (its `programs`, hooks and `evaluate`).
        op: "quantize", "codes_to_indices", "straight_through", "indices_to_codes"
            (`extra = (dtype,)`), "losses", "entropy", "commitment_loss", "lfq", or
            "vjp" (`extra = (term,)`; backends with `vjp_programs`, not flat ones).
        cfg: the call's config (checked).
        x: `z` (`[..., C*D]` on `cfg.feature_axis`) or, for indices_to_codes, `[..., C]`.
        mask: optional `[...]` boolean token mask (loss operations).
        schedule: the call's `Schedule` (loss operations).
        options: the call's distributed options (checked).
        cotangent: the upstream gradient of "vjp" (None: 1).

    Returns:
        What the public operation of that name returns ("losses": `(per_sample,
        batch, commitment, aux, indices)`).
    """
    schedule = Schedule() if schedule is None else schedule
    options = options or {}
    if op == "lfq":
        per_sample, batch, commit, aux, indices = run(backend, "losses", cfg, x, mask, schedule, options)
        codes = run(backend, "straight_through", cfg, x)
        return LFQOutput(codes, indices, aux, per_sample, batch, commit)
    if op == "entropy":  # the losses program, shared with lfq
        return tuple(run(backend, "losses", cfg, x, mask, schedule, options)[:2])
    xp = backend.namespace(x)
    flat = backend.flat_programs
    if flat and op == "vjp":
        raise NotImplementedError("vjp programs need the input's own layout (flat_programs=False)")
    if flat:
        x, tokens = _flatten(x, -1 if op == "indices_to_codes" else cfg.feature_axis, xp)
        n = x.shape[0]
        mask = None if mask is None else xp.reshape(mask, (n,))
        x, mask = _pad(backend, x, mask, op in _SCHEDULED, xp, backend.program_rows(n, options))
    if flat and cfg.feature_axis != -1:  # the programs see features last: layouts share them
        cfg_in = cfg.replace(feature_axis=-1)
    else:
        cfg_in = cfg
    program_cfg, values = validation.program_schedule(cfg_in, schedule)
    inputs = (x,)
    if op in _SCHEDULED:
        inputs += (backend.pack_schedule(values, x),) + (() if mask is None else (mask,))
    if op == "vjp":
        extra = tuple(extra) + (cotangent is not None,)
        inputs += () if cotangent is None else (cotangent,)
    signature = Signature(
        op,
        program_cfg,
        tuple(extra),
        validation.dtype_name(x.dtype),
        mask is not None,
        tuple(sorted((name, _hashable(value)) for name, value in options.items())),
        tuple(backend.program_key(x)),
    )
    program = backend.programs.get(signature, lambda: _build(backend, signature, options))
    out = program(*inputs)
    if not flat:
        return out
    if op == "losses":
        *losses, indices = out
        return (*losses, xp.reshape(indices[:n], tokens + (cfg.num_codebooks,)))
    if op == "commitment_loss":
        return out
    if op == "codes_to_indices":
        return xp.reshape(out[:n], tokens + (cfg.num_codebooks,))
    features = xp.reshape(out[:n], tokens + (cfg.num_features,))  # quantize, straight-through, decoded codes
    axis = cfg.feature_axis % features.ndim
    return features if axis == features.ndim - 1 else xp.moveaxis(features, -1, axis)


def _hashable(value):
    """`value` as a key: itself if hashable, else its identity (e.g. a process group)."""
    try:
        hash(value)
    except TypeError:
        return ("object", id(value))
    return value


def _build(backend, signature: Signature, options: dict) -> Callable:
    """Compile the body of `signature` (whose options are `options`) with the backend's compiler."""
    op, cfg, extra, masked = signature.op, signature.cfg, signature.extra, signature.masked
    term, has_cotangent = extra if op == "vjp" else (None, False)

    def vjp_body(x, packed, *rest):  # rest: (mask?, cotangent?)
        schedule = Schedule(*(packed[i] for i in range(len(SCHEDULE_FIELDS))))
        mask = rest[0] if masked else None
        cotangent = rest[-1] if has_cotangent else None
        with backend.compute_context(x):
            return backend.evaluate(op, cfg, x, mask, schedule, options, (term,), cotangent)

    def loss_body(x, packed, mask=None):
        schedule = Schedule(*(packed[i] for i in range(len(SCHEDULE_FIELDS))))
        with backend.compute_context(x):
            return backend.evaluate(op, cfg, x, mask, schedule, options)

    def body(x):
        with backend.compute_context(x):
            return backend.evaluate(op, cfg, x, extra=extra)

    chosen = vjp_body if op == "vjp" else loss_body if op in _SCHEDULED else body
    return backend.compile_program(named(chosen, signature.name()), signature)


def _flatten(x, axis: int, xp):
    """`x` with `axis` moved last and the other axes flattened: `([N, F], token shape)`."""
    axis %= x.ndim
    if axis != x.ndim - 1:
        x = xp.moveaxis(x, axis, -1)
    tokens = tuple(x.shape[:-1])
    n = 1
    for size in tokens:
        n *= size
    return xp.reshape(x, (n, x.shape[-1])), tokens


def _pad(backend, x, mask, losses: bool, xp, least: int):
    """`(x, mask)` with at least `least` rows (`backend.program_rows`): pad rows are zeros, masked out.

    Without padding `mask` stays as given (None for no mask); a padded loss batch
    always gets a mask, so the pad rows count in no loss.
    """
    n = x.shape[0]
    if n >= least:
        return x, mask
    device = backend.device_of(x)
    x = xp.concat([x, xp.zeros((least - n,) + tuple(x.shape[1:]), dtype=x.dtype, device=device)])
    if not losses:
        return x, mask
    valid = xp.ones((n,), dtype=xp.bool, device=device) if mask is None else mask
    return x, xp.concat([valid, xp.zeros((least - n,), dtype=xp.bool, device=device)])
