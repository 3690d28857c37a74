"""What the torch backend does beyond the interface: devices, autocast, TF32, the
compiled modes (torch.compile, CUDA graphs), graph breaks and host syncs.

Its values and gradients against the reference, every dtype and the spec's corners
are tested with every backend's in tests/test_backends.py; comparisons use the
conformance suite's tolerances (tests/conftest.py, `assert_close`).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import assert_close, make_inputs  # noqa: E402
from lfq.backends.torch_backend import TorchBackend  # noqa: E402
from lfq.backends.torch_backend.ops import full_float32_matmuls, matmul_highest  # noqa: E402

import lfq  # noqa: E402
from lfq import reference  # noqa: E402
from lfq.array_backend import ArrayBackend  # noqa: E402

BE = lfq.get("torch")
# CUDA variants run where a GPU is present (the same tests, nothing skipped without one).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
_ON_DEVICE = {device: TorchBackend(device=device) for device in DEVICES}


@pytest.fixture(params=DEVICES)
def be(request):
    """The backend whose `asarray` puts tensors on the parametrized device."""
    return _ON_DEVICE[request.param]


def _np(tensor):
    return BE.to_numpy(tensor.detach())


def test_shared_array_backend_and_mode_check():
    assert isinstance(BE, TorchBackend) and isinstance(BE, ArrayBackend)
    assert BE.compiled().mode == "compiled"
    with pytest.raises(ValueError, match="mode="):
        TorchBackend(mode="jit")


def test_autocast_does_not_lower_precision(be):
    cfg = lfq.Config(codebook_dim=8, num_codebooks=2, inv_temperature=10.0)
    z = be.asarray(make_inputs(cfg, seed=6, tokens=(64,), spread=0.2, dtype="float32")[0])
    plain = be.lfq(z, cfg)
    with torch.autocast(z.device.type, dtype=torch.bfloat16):
        under = be.lfq(z, cfg)
    for term in lfq.LOSS_TERMS:
        assert getattr(under, term).dtype == torch.float32
        assert torch.equal(getattr(under, term), getattr(plain, term)), term


def _enable_tf32():
    """Turn TF32 on for CUDA float32 matmuls; returns a function that restores the setting."""
    cuda = torch.backends.cuda.matmul
    attr, value = ("fp32_precision", "tf32") if hasattr(cuda, "fp32_precision") else ("allow_tf32", True)
    before = getattr(cuda, attr)
    setattr(cuda, attr, value)
    return lambda: setattr(cuda, attr, before)


def test_highest_precision_holds_under_tf32_and_restores_settings(be):
    """precision="highest" matches the reference to float32 rounding even with TF32 enabled
    (on a CPU "default" is full float32 too); the TF32 switch is restored afterwards."""
    cfg = lfq.Config(codebook_dim=8, inv_temperature=10.0)
    zn = make_inputs(cfg, seed=7, tokens=(512,), spread=0.2, dtype="float32")[0]
    z = be.asarray(zn)
    want = reference.entropy(zn.astype(np.float64), cfg)[1]
    restore = _enable_tf32()
    try:
        cuda = torch.backends.cuda.matmul
        setting = cuda.fp32_precision if hasattr(cuda, "fp32_precision") else cuda.allow_tf32
        highest = be.lfq(z, cfg).batch_entropy
        default = be.lfq(z, cfg.replace(precision="default")).batch_entropy
        assert (cuda.fp32_precision if hasattr(cuda, "fp32_precision") else cuda.allow_tf32) == setting
        with full_float32_matmuls("cuda"):
            assert (cuda.fp32_precision == "ieee") if hasattr(cuda, "fp32_precision") else not cuda.allow_tf32
    finally:
        restore()
    assert_close(_np(highest), want, "float32", what="highest under TF32")
    if z.device.type == "cpu":
        assert_close(_np(default), want, "float32", what="default on a CPU")
    else:  # the documented TF32 bound
        assert abs(float(default) - float(want)) <= 2.0**-10 * (1 + float(want))
    a, b = torch.rand(2, 8, 5, device=z.device), torch.rand(2, 5, 3, device=z.device)
    assert torch.allclose(matmul_highest(a, b), (a.double() @ b.double()).float(), rtol=1e-6)


def test_torch_specific_refusals():
    """Refusals only torch has (the shared ones: tests/test_errors.py, every backend and mode)."""
    cfg = lfq.Config(codebook_dim=4, num_codebooks=2)
    z = torch.zeros(3, 8)
    cases = [
        (lambda: BE.lfq(z, cfg, torch.ones(3, dtype=torch.bool, device="meta")), ValueError, "mask is on meta"),
        (lambda: BE.lfq(z, cfg, axis_name="x"), TypeError, "distributed, process_group"),
        (lambda: BE.lfq(z, cfg, distributed=True), RuntimeError, "init_process_group"),
    ]
    for fn, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            fn()


COMPILE_CFG = lfq.Config(codebook_dim=6, num_codebooks=2, inv_temperature=10.0, soft_clamp=2.0)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_whole_lfq_traces_as_one_graph(masked):
    """`torch.compile(fullgraph=True)` of user code around the eager backend: no graph break."""
    zn, mn = make_inputs(COMPILE_CFG, seed=8, spread=0.05, dtype="float32")
    z, m = BE.asarray(zn).requires_grad_(True), BE.asarray(mn) if masked else None

    def step(z, m):
        out = BE.lfq(z, COMPILE_CFG, m)
        return out.codes, out.indices, out.aux_loss

    explained = torch._dynamo.explain(step)(z, m)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    for fn, args in [
        (BE.quantize, (z.detach(), COMPILE_CFG)),
        (BE.codes_to_indices, (z.detach(), COMPILE_CFG)),
        (BE.entropy, (z, COMPILE_CFG, m)),
        (BE.commitment_loss, (z, COMPILE_CFG, m)),
        (BE.indices_to_codes, (BE.codes_to_indices(z.detach(), COMPILE_CFG), COMPILE_CFG)),
    ]:
        explained = torch._dynamo.explain(fn)(*args)
        assert explained.graph_break_count == 0, (fn.__name__, explained.break_reasons)


@pytest.mark.parametrize("compile_mode", [None, "reduce-overhead"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_compiled_backend_matches_eager(masked, compile_mode, be):
    """`compiled()` (inductor, fullgraph; CUDA graphs on a GPU with "reduce-overhead")
    against eager: forward and backward, float32."""
    zn, mn = make_inputs(COMPILE_CFG, seed=9, tokens=(4, 16), spread=0.3, dtype="float32")
    m = be.asarray(mn) if masked else None
    results = []
    for backend in (BE, be.compiled(compile_mode)):
        z = be.asarray(zn).requires_grad_(True)
        out = backend.lfq(z, COMPILE_CFG, m)
        (out.aux_loss + (out.codes * torch.linspace(-1, 1, 12, device=z.device)).sum()).backward()
        results.append((out, z.grad))
    (eager, eager_grad), (compiled, compiled_grad) = results
    assert torch.equal(compiled.codes, eager.codes) and torch.equal(compiled.indices, eager.indices)
    for term in lfq.LOSS_TERMS:
        assert_close(_np(getattr(compiled, term)), _np(getattr(eager, term)), "float32", what=term)
    assert_close(_np(compiled_grad), _np(eager_grad), "float32", "grad")
    ref = reference.lfq(zn.astype(np.float64), COMPILE_CFG, mn if masked else None)
    assert_close(_np(compiled.aux_loss), ref.aux_loss, "float32", what="compiled vs reference")


def test_compiled_modes_are_cached_and_checked():
    assert BE.compiled() is BE.compiled() is BE.compiled().compiled()
    graphs = BE.compiled("reduce-overhead")
    assert graphs is BE.compiled("reduce-overhead") and graphs.compile_mode == "reduce-overhead"
    assert graphs is not BE.compiled() and graphs.compiled() is BE.compiled().compiled() is not graphs
    with pytest.raises(ValueError, match="compile mode='fast' is not one of"):
        BE.compiled("fast")
    with pytest.raises(ValueError, match="needs mode='compiled'"):
        TorchBackend(compile_mode="reduce-overhead")


def test_compiled_index_ops_match_eager(be):
    compiled = be.compiled()
    zn, _ = make_inputs(COMPILE_CFG, seed=10, spread=0.05, dtype="float32")
    zn[0, 0, :3] = [0.0, -0.0, np.nan]
    z = be.asarray(zn)
    assert torch.equal(compiled.quantize(z, COMPILE_CFG), be.quantize(z, COMPILE_CFG))
    idx = compiled.codes_to_indices(z, COMPILE_CFG)
    assert torch.equal(idx, be.codes_to_indices(z, COMPILE_CFG))
    assert torch.equal(compiled.indices_to_codes(idx, COMPILE_CFG), be.indices_to_codes(idx, COMPILE_CFG))


def test_compiled_mode_takes_many_configs():
    """More configs than torch.compile's recompile budget (8) per function: no hard failure."""
    compiled = BE.compiled()
    for i in range(9):
        cfg = lfq.Config(codebook_dim=2 + i % 3, num_codebooks=1 + i % 2, scale=1.0 + i)
        z = torch.randn(3 + i, cfg.num_features, dtype=torch.float64)
        assert torch.equal(compiled.quantize(z, cfg), BE.quantize(z, cfg))


def test_compiled_entropy_with_two_feature_sizes_and_varying_tokens():
    """A second config's feature size is not mistaken for a dynamic shape (it once failed to
    trace), and a new token count reuses the compiled function with a dynamic batch."""
    compiled = BE.compiled()
    for d, n in [(4, 16), (6, 16), (6, 40)]:
        cfg = lfq.Config(codebook_dim=d, inv_temperature=3.0)
        zn = np.random.default_rng(d + n).standard_normal((n, d))
        got = compiled.entropy(BE.asarray(zn), cfg)
        want = reference.entropy(zn, cfg)
        for g, w in zip(got, want):
            assert_close(_np(g), w, "float64", what=f"D={d} N={n}")


def test_tf32_error_stays_within_the_documented_bound(monkeypatch):
    """docs/torch.md: with TF32 products (precision="default" on a GPU with TF32 on) the
    batch entropy moves by at most 2**-10 * (1 + H) nats; TF32 is emulated here by
    rounding the matmul inputs to 10 mantissa bits (round to nearest)."""
    cfg = lfq.Config(codebook_dim=10, inv_temperature=1.0, precision="default")
    z = torch.randn(1024, 10, generator=torch.Generator().manual_seed(0))
    exact = float(BE.entropy(z, cfg)[1])

    def tf32(x):
        bits = x.detach().view(torch.int32)
        rounded = ((bits + 0x1000) & ~0x1FFF).view(torch.float32)
        return x + (rounded - x).detach()

    monkeypatch.setattr(TorchBackend, "matmul", lambda self, a, b, cfg: torch.matmul(tf32(a), tf32(b)))
    emulated = float(BE.entropy(z, cfg)[1])
    assert 0 < abs(emulated - exact) <= 2.0**-10 * (1 + exact)


@pytest.mark.parametrize("spherical", [False, True])
def test_eager_step_touches_no_host_tensor_and_reads_no_value(spherical, monkeypatch):
    """A GPU step must not copy host data to the device (pageable copies block the
    host until the GPU's queue drains) nor read a value back (a sync). Proxy on any
    machine: on the `meta` device no value can be read; once the cached constants
    exist, no tensor is made from host data and no operation sees a host tensor.
    (`indices_to_codes` is left out: its eager index range check reads min and max
    on purpose.)"""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class HostTensors(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if any(
                isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in tree_flatten((args, kwargs, out))[0]
            ):
                self.ops.append(str(func))
            return out

    cfg = lfq.Config(codebook_dim=8, num_codebooks=2, spherical=spherical)
    z = torch.empty(3, 5, 16, device="meta").requires_grad_(True)
    mask = torch.ones(3, 5, dtype=torch.bool, device="meta")

    from lfq.backends.torch_backend import LFQ

    layer = LFQ(dim=16, codebook_size=256, num_codebooks=2, spherical=spherical, channel_first=True).to("meta")
    images = torch.empty(2, 16, 3, 3, device="meta").requires_grad_(True)

    def step():
        for m in (None, mask):
            out = BE.lfq(z, cfg, m)
            (out.aux_loss + out.codes.sum()).backward()
        BE.quantize(z, cfg), BE.codes_to_indices(z, cfg)
        ret = layer(images)  # the nn.Module, with projections, channel-first
        (ret.aux_loss + ret.quantized.sum()).backward()

    step()  # makes the per-device constants once

    def from_host_data(*args, **kwargs):
        raise AssertionError("a tensor was made from host data inside the step")

    for name in ("as_tensor", "asarray", "tensor", "from_numpy"):
        monkeypatch.setattr(torch, name, from_host_data)
    with HostTensors() as seen:
        step()
    assert seen.ops == []


def test_eager_calls_do_not_import_the_compiler():
    """An eager user does not pay for torch._dynamo (1.5-5 s on the first call when imported)."""
    import subprocess
    import sys

    script = (
        "import sys, torch, lfq\n"
        "from lfq.backends.torch_backend import LFQ\n"
        "be = lfq.get('torch')\n"
        "z = torch.randn(8, 4, 10, requires_grad=True)\n"
        "out = be.lfq(z, lfq.Config(codebook_dim=10))\n"
        "(out.aux_loss + out.codes.sum()).backward()\n"
        "be.vjp('batch_entropy', z.detach(), lfq.Config(codebook_dim=10))\n"
        "LFQ(codebook_size=16, dim=6)(torch.randn(2, 6, 3, 3)).aux_loss.backward()\n"
        "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]", proc.stdout
