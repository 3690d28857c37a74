"""`JaxBackend`: LFQ on `jax.Array`, pure and traceable.

Every operation is a pure function of its arrays, so it works eagerly and under
`jax.jit`, `jax.grad`, `jax.vmap` and `jax.shard_map`, on CPU and GPU unchanged.
Both modes run each operation as one jitted program (`lfq.program`), checked
eagerly first: op by op, XLA would compile every primitive for each new shape.
The math is the shared `lfq.array_backend.ArrayBackend` over `jax.numpy`; this
module supplies only the JAX hooks:

* straight-through codes via `jax.custom_jvp` (value bitwise the codes, tangent
  and hence gradient the carrier's; reverse mode is its transpose, and forward
  mode `jax.jvp` works too);
* code-histogram matrix products at `jax.lax.Precision.HIGHEST` unless
  `Config.precision == "default"` (TF32 on NVIDIA GPUs, ~1e-3 relative error);
* int64 indices with 64-bit mode (`jax_enable_x64`), int32 otherwise (then
  codebook_dim <= 31);
* the distributed reduction `axis_name=...`: `jax.lax.psum` of the loss sums over
  a named mesh axis (inside `jax.shard_map`) or a named `vmap` axis.

Config objects are frozen dataclasses, hence hashable: pass them to `jax.jit`
as static arguments (`static_argnames="cfg"`) or close over them.

Array arguments (z, mask, indices) are `jax.Array`s (tracers included) or NumPy
arrays, as for `jax.numpy`; Python lists and other frameworks' tensors are
refused with the shared message of `lfq.validation.foreign_array_error`. Every
check, `cfg` included, runs before `jax.jit` in compiled mode.
"""

from __future__ import annotations

import functools
from typing import final

import jax
import jax.numpy as jnp
import numpy as np

from lfq import factorized, histogram_grad, validation
from lfq.array_backend import ArrayBackend
from lfq.config import Config

from . import distributed as _distributed

__all__ = ["JaxBackend", "positive", "x64_enabled"]

_X64_FIX = "enable 64-bit mode first: jax.config.update('jax_enable_x64', True) (or the jax.enable_x64() context)"
_OPTIONS = ("axis_name",)


def x64_enabled() -> bool:
    """Whether JAX's 64-bit mode is on (globally or by a `jax.enable_x64` context)."""
    return bool(jax.config.jax_enable_x64)


@jax.custom_jvp
def _straight_through(value, carrier):
    """`value`, with the derivative of `carrier` (the identity on its tangent)."""
    return value


@_straight_through.defjvp
def _straight_through_jvp(primals, tangents):
    value, _ = primals
    _, carrier_dot = tangents
    # The tangent of `value` is dropped: the codes are piecewise constant.
    return value, carrier_dot


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _subcode_probs(a, precision):
    """`factorized.subcode_probs(a)` with an analytic derivative (same values, bitwise).

    Autodiff through the product form's stack/reshape loop compiles, on XLA:CPU, to
    one strided fusion per bit and dominates the step (about 4x the rest at
    D = 14); the analytic rule is one matrix product with the constant bit matrix.
    It is given as a JVP, linear in the tangent, so that forward mode works and
    JAX transposes it into `factorized.subcode_probs_vjp` for reverse mode.
    """
    return factorized.subcode_probs(a, jnp)


@_subcode_probs.defjvp
def _subcode_probs_jvp(precision, primals, tangents):
    # dp_j = p_j * sum_i (bit_i(j) - sigmoid(a_i)) da_i
    (a,), (a_dot,) = primals, tangents
    probs = factorized.subcode_probs(a, jnp)
    bits = jnp.asarray(factorized.subcode_bits(a.shape[-1]).T, dtype=probs.dtype)  # [k, 2^k]
    sigmoid = jnp.exp(factorized.bit_log_probs(a, jnp)[0])
    on = jnp.matmul(a_dot, bits, precision=precision)
    return probs, probs * (on - jnp.sum(sigmoid * a_dot, axis=-1, keepdims=True))


_INT_OF_SIZE = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}


def positive(x):
    """`x > 0` decided on the bit pattern, so that positive subnormals count as positive.

    XLA treats subnormal float32/bfloat16 inputs as zero (denormals-are-zero on CPU,
    flush-to-zero on GPU), so `x > 0` is False for them, against the spec. As signed
    integers, exactly the floats in (0, +inf] have a bit pattern in (0, bits(+inf)]:
    +0.0 is 0, negative values and -0.0 are negative, NaNs lie above +inf.
    """
    itype = _INT_OF_SIZE[jnp.dtype(x.dtype).itemsize]
    bits = jax.lax.bitcast_convert_type(x, itype)
    inf = jax.lax.bitcast_convert_type(jnp.asarray(jnp.inf, x.dtype), itype)
    return (bits > 0) & (bits <= inf)


def _contracted_out_sharding(a, b):
    """The output sharding of `a @ b` when the contracted axis is explicitly sharded, else None.

    Under sharding in types (a mesh with `AxisType.Explicit` axes, the default of
    `jax.make_mesh`), a product that contracts a sharded axis (here: the token axis
    of the code histograms) must name its output sharding. The histogram is a sum
    over all tokens, so its token axis is reduced away and the other axes keep the
    inputs' sharding: `[..., M, K] @ [..., K, P]` -> `a`'s spec on `[..., M]`, `b`'s on P.
    """
    (mesh, spec_a), (_, spec_b) = _explicit_spec(a), _explicit_spec(b)
    if spec_a is None or spec_b is None or (spec_a[-1] is None and spec_b[-2] is None):
        return None
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec_a[:-1], spec_b[-1]))


def _explicit_spec(x):
    """`(mesh, spec)`: `x`'s PartitionSpec padded to its rank, when its sharding is in its
    type; else `(None, None)`."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    spec = getattr(sharding, "spec", None)
    explicit = getattr(jax.sharding.AxisType, "Explicit", None)
    if spec is None or mesh is None or explicit not in tuple(getattr(mesh, "axis_types", ())):
        return None, None
    return mesh, tuple(spec) + (None,) * (x.ndim - len(spec))


def _precision(cfg: Config):
    return jax.lax.Precision.HIGHEST if cfg.precision == "highest" else jax.lax.Precision.DEFAULT


@final
class JaxBackend(ArrayBackend):
    """LFQ on JAX arrays; `lfq.get("jax")`. See the module docstring.

    Args:
        jit: the "compiled" mode (`compiled()` returns such a backend). Both modes run
            every operation as a `jax.jit` program per (operation, config, dtype, mask
            presence, options), the schedule values traced (`lfq.program`); they
            differ only in name, so eager code and jitted code compile the same way.
    """

    name = "jax"
    modes = ("eager", "compiled")

    def __init__(self, *, jit: bool = False):
        self.jit = bool(jit)

    def __repr__(self) -> str:
        return f"JaxBackend(jit={self.jit})"

    @property
    def dtypes(self) -> tuple[str, ...]:
        """Supported input dtypes; float64 only while 64-bit mode is on."""
        if x64_enabled():
            return validation.FLOAT_DTYPES
        return tuple(d for d in validation.FLOAT_DTYPES if d != "float64")

    # ------------------------------------------------------------------ hooks

    def namespace(self, x):
        return jnp

    flushes_subnormals = True  # XLA: denormals-are-zero on CPU, flush-to-zero on GPU

    def pass_gradient(self, value, carrier):
        return _straight_through(value, carrier)

    def stop_gradient(self, x):
        return jax.lax.stop_gradient(x)

    def bitcast(self, x, dtype):
        return jax.lax.bitcast_convert_type(x, dtype)

    def code_histogram(self, a, weights, cfg: Config):
        """From `histogram_grad.BLOCKS_FROM_BYTES` of `P_A` on, the histogram in blocks of
        tokens, each recomputed in the backward pass (`histogram_grad.token_block_histogram`):
        XLA:CPU keeps about 3.5 tables of `P_A + P_B`'s size alive in a step's backward,
        blocks bound them."""
        n, c, k = a.shape
        rows = histogram_grad.token_block_rows(n, c, k, a.dtype.itemsize)
        if rows is None:
            return super().code_histogram(a, weights, cfg)

        def scan(body, init, xs):
            return jax.lax.scan(jax.checkpoint(body), init, xs)

        def histogram(a_block, w_block):
            return super(JaxBackend, self).code_histogram(a_block, w_block, cfg)

        return histogram_grad.token_block_histogram(a, weights, rows, jnp, histogram, scan)

    def matmul(self, a, b, cfg: Config):
        return jnp.matmul(a, b, precision=_precision(cfg), out_sharding=_contracted_out_sharding(a, b))

    def positive(self, x):
        """`x > 0` on the bit pattern: XLA flushes subnormal inputs to zero (see `positive`)."""
        return positive(x)

    def subcode_probs(self, a, cfg: Config):
        """`lfq.factorized.subcode_probs`, with its analytic VJP as the gradient."""
        return _subcode_probs(a, _precision(cfg))

    def tiled_entropy(self, probs_a, probs_b, count, rows: int, cfg: Config):
        from .tiled import tiled_entropy  # custom_vjp over lax.scan: recomputed tiles, one XLA loop

        return tiled_entropy(probs_a, probs_b, count, rows, _precision(cfg))

    def index_dtype(self, xp, cfg: Config):
        if x64_enabled():
            return jnp.int64
        validation.check_index_dtype(32, cfg)
        return jnp.int32

    def device_of(self, x):
        # Uncommitted constants: XLA places them with the computation (under jit, and
        # next to a sharded array, whose `.device` is a sharding no constant could take).
        return None

    def check_array(self, x, name: str) -> None:
        """`jax.Array` (tracers included) or `numpy.ndarray`; anything else is refused."""
        validation.check_array(
            x, name, self.name, (jax.Array, np.ndarray), "jax.Array or numpy.ndarray", "jnp.asarray(...)"
        )

    def concrete_bounds(self, indices):
        """`(min, max)` of concrete indices; None for tracers (under jit/vmap/grad).

        NumPy inputs are read before any conversion, so an int64 value past the
        int32 range is still seen (and refused) without 64-bit mode.
        """
        if isinstance(indices, jax.core.Tracer) or indices.size == 0:
            return None
        host = np.asarray(indices)
        return int(host.min()), int(host.max())

    def replica_group(self, options: dict):
        return options.get("axis_name")  # a mesh axis (inside jax.shard_map) or a vmap axis name

    def collectives(self):
        return _distributed

    def all_reduce(self, sums: factorized.LossSums, options: dict, cfg: Config | None = None) -> factorized.LossSums:
        """The shared reduction over `options["axis_name"]`, with the fix named when the axis is unbound."""
        axis_name = options.get("axis_name")
        try:
            return super().all_reduce(sums, options, cfg)
        except NameError as err:
            raise NameError(
                f"axis_name={axis_name!r} is not a bound axis here: call lfq(..., axis_name={axis_name!r}) "
                f"inside jax.shard_map over a mesh with that axis (or jax.vmap(..., axis_name="
                f"{axis_name!r})), or drop axis_name for a single-device computation"
            ) from err

    def check_options(self, options: dict) -> None:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise TypeError(
                f"unexpected keyword argument(s) {unknown} for the jax backend: its only distributed "
                f"option is axis_name (a mesh axis name inside jax.shard_map, or a vmap axis_name); "
                f"the per-call schedule options are {list(factorized.SCHEDULE_FIELDS)}"
            )

    def unsupported_dtype(self, dtype: str) -> TypeError:
        if dtype == "float64" and not x64_enabled():
            return TypeError(f"z has dtype float64 but JAX's 64-bit mode is off: {_X64_FIX}, or cast z to float32")
        return super().unsupported_dtype(dtype)

    # ------------------------------------------------------- compiled programs

    #: Every operation runs through `jax.jit` programs, eagerly too: run op by op, XLA
    #: compiles each primitive for each new shape (28 s for a first call at D = 10), while
    #: one program per operation compiles once. Called under the user's own jit, grad,
    #: vmap or shard_map, a program is a nested jit, traced into the caller's program.
    compiles = True

    def compile_program(self, fn, signature):
        return jax.jit(fn)

    def gradient(self, fn, z, cotangent):
        out, pullback = jax.vjp(fn, z)
        cot = jnp.ones_like(out) if cotangent is None else jnp.asarray(cotangent, dtype=out.dtype)
        return pullback(cot)[0]

    # ------------------------------------------------------------ interface

    def indices_to_codes(self, indices, cfg: Config, dtype: str = "float32"):
        """Codes from indices `[..., C]` -> `[..., C*D]` of `dtype`.

        Eagerly an index outside `[0, 2**D)` raises ValueError (NumPy indices are read
        before any conversion, so an int64 past the int32 range is seen). Under jit (and
        vmap/grad tracing) it cannot: the bits above D are ignored, i.e. the index
        is taken modulo `2**D` (two's complement for negative values).
        """
        validation.check_config(cfg)
        if validation.check_codes_dtype(dtype) == "float64" and not x64_enabled():
            raise TypeError(f"indices_to_codes(dtype='float64') needs 64-bit mode: {_X64_FIX}")
        self.index_dtype(jnp, cfg)  # refuses codebook_dim > 31 without 64-bit mode
        return super().indices_to_codes(indices, cfg, dtype)

    # ------------------------------------------------------------ the rest

    def compiled(self) -> JaxBackend:
        """This backend with every operation under `jax.jit` (cfg static)."""
        return self if self.jit else _COMPILED

    def asarray(self, array, dtype: str | None = None, device=None):
        """A NumPy array (or nested list) as a `jax.Array`.

        Args:
            array: array-like.
            dtype: dtype name; without it JAX's own rule applies (float64 becomes
                float32 unless 64-bit mode is on). An explicit 64-bit dtype without
                64-bit mode raises.
            device: None (JAX's default device), a `jax.Device`, or a string such
                as "cpu", "gpu", "cuda" or "cuda:1".
        """
        host = np.asarray(array)
        if dtype is not None:
            if dtype in ("float64", "int64", "uint64") and not x64_enabled():
                raise TypeError(f"asarray(dtype={dtype!r}) needs 64-bit mode: {_X64_FIX}")
            host = host.astype(validation.numpy_dtype(dtype))
        if device is None:
            return jnp.asarray(host)
        return jax.device_put(host, _device(device))

    def to_numpy(self, array):
        return np.asarray(jax.device_get(array))


def _device(device):
    """A `jax.Device` from a device string ("cpu", "gpu", "cuda", "cuda:1") or a Device."""
    if not isinstance(device, str):
        return device
    platform, _, index = device.partition(":")
    platform = "gpu" if platform == "cuda" else platform
    try:
        devices = jax.devices(platform)
    except RuntimeError as err:
        raise ValueError(
            f"device={device!r}: JAX has no {platform!r} devices here (it has "
            f"{[str(d) for d in jax.devices()]}); install jax with that platform's plugin"
        ) from err
    if index and (not index.isdigit() or int(index) >= len(devices)):
        raise ValueError(f"device={device!r}: use an index in [0, {len(devices) - 1}]")
    return devices[int(index) if index else 0]


_COMPILED = JaxBackend(jit=True)
