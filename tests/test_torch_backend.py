"""The torch backend against the NumPy reference (`lfq.reference`), op by op.

Tolerances. float64 inputs run the same float64 math as the reference, in another
order: values agree to ~1e-13 relative, gradients to ~1e-11 (sums over up to
2**D codes). float32 / float16 / bfloat16 inputs are computed in float32: the
losses carry float32 rounding (~1e-6 relative on these sizes), then one rounding
to the input dtype (half an ulp: 2**-9 relative for bfloat16, 2**-12 for
float16). Codes and indices are exact in every dtype.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lfq.backends.torch_backend import TorchBackend  # noqa: E402
from lfq.backends.torch_backend.ops import full_float32_matmuls, matmul_highest  # noqa: E402

import lfq  # noqa: E402
from lfq import reference  # noqa: E402
from lfq.array_backend import ArrayBackend  # noqa: E402
from lfq.validation import numpy_dtype  # noqa: E402

BE = lfq.get("torch")
# CUDA variants run where a GPU is present (the same tests, nothing skipped without one).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
_ON_DEVICE = {device: TorchBackend(device=device) for device in DEVICES}


@pytest.fixture(params=DEVICES)
def be(request):
    """The backend whose `asarray` puts tensors on the parametrized device."""
    return _ON_DEVICE[request.param]


LOSSES = ("aux_loss", "per_sample_entropy", "batch_entropy", "commitment_loss")

CONFIGS = {
    "default": lfq.Config(codebook_dim=6),
    "codebooks": lfq.Config(codebook_dim=4, num_codebooks=3, inv_temperature=10.0),
    "spherical": lfq.Config(codebook_dim=5, num_codebooks=2, spherical=True, scale=2.0),
    "clamp_tanh_lsb": lfq.Config(
        codebook_dim=5, soft_clamp=0.5, activation="tanh", bit_order="lsb", scale=0.5, inv_temperature=3.0
    ),
    "groups": lfq.Config(
        codebook_dim=7, batch_entropy="groups:2", diversity_gamma=0.7, entropy_weight=0.3, commitment_weight=0.1
    ),
    "odd_dim": lfq.Config(codebook_dim=1, num_codebooks=2),
    "feature_axis": lfq.Config(codebook_dim=3, num_codebooks=2, feature_axis=1),
}


def make_input(cfg, rng, tokens=(3, 7), spread=0.05, dtype="float64"):
    """`[*tokens, C*D]` features (`[t0, C*D, t1]` when feature_axis == 1) and a mask."""
    shape = list(tokens)
    shape.insert(len(shape) if cfg.feature_axis == -1 else cfg.feature_axis, cfg.num_features)
    z = (rng.standard_normal(shape) * spread).astype(numpy_dtype(dtype))
    mask = rng.random(tokens) > 0.3
    mask.flat[0] = True
    return z, mask


def assert_close(actual, expected, rtol, what=""):
    """max |a - e| <= rtol * max(|e|, tiny): relative to the array's scale."""
    actual = np.asarray(BE.to_numpy(actual), dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-300)
    err = float(np.max(np.abs(actual - expected), initial=0.0))
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol:.1g} * {scale:.3g}"


def test_registry_and_protocol():
    assert isinstance(BE, TorchBackend) and isinstance(BE, ArrayBackend)
    assert isinstance(BE, lfq.LFQBackend)
    assert BE.name == "torch" and BE.modes == ("eager", "compiled")
    assert set(BE.dtypes) == {"float16", "bfloat16", "float32", "float64"}
    assert BE.compiled().mode == "compiled" and BE.compiled() is BE.compiled()
    with pytest.raises(ValueError, match="mode="):
        TorchBackend(mode="jit")


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_float64_values_and_gradients_match_reference(name, masked, be):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(len(name))
    zn, mn = make_input(cfg, rng)
    mn = mn if masked else None
    z, m = be.asarray(zn), None if mn is None else be.asarray(mn)
    out, ref = be.lfq(z, cfg, m), reference.lfq(zn, cfg, mn)
    assert out.codes.dtype == torch.float64 and out.indices.dtype == torch.int64
    assert np.array_equal(be.to_numpy(out.codes), ref.codes)
    assert np.array_equal(be.to_numpy(out.indices), ref.indices)
    for term in LOSSES:
        assert_close(getattr(out, term), getattr(ref, term), 1e-12, term)
    per_sample, batch = be.entropy(z, cfg, m)
    assert_close(per_sample, ref.per_sample_entropy, 1e-12, "entropy()[0]")
    assert_close(batch, ref.batch_entropy, 1e-12, "entropy()[1]")
    assert_close(be.commitment_loss(z, cfg, m), ref.commitment_loss, 1e-12, "commitment_loss()")
    assert np.array_equal(be.to_numpy(be.quantize(z, cfg)), reference.quantize(zn, cfg))
    for term in lfq.GRAD_TERMS:
        if term == "codes":
            cot = rng.standard_normal(zn.shape)
            got = be.vjp(term, z, cfg, be.asarray(cot))
            want = reference.vjp(term, zn, cfg, cot)
        else:
            got = be.vjp(term, z, cfg, mask=m, cotangent=torch.tensor(0.5, dtype=torch.float64))
            want = reference.vjp(term, zn, cfg, 0.5, mn)
        assert_close(got, want, 1e-10, f"vjp {term}")


def test_literal_enumeration_agrees():
    """The backend's factorized entropy equals the definition by enumeration (D = 10)."""
    cfg = lfq.Config(codebook_dim=10, inv_temperature=30.0)
    zn, mn = make_input(cfg, np.random.default_rng(5), tokens=(64,), spread=0.1)
    ps, batch = BE.entropy(BE.asarray(zn), cfg, BE.asarray(mn))
    lit_ps, lit_batch = reference.entropy(zn, cfg, mn, method="literal")
    assert_close(ps, lit_ps, 1e-12, "per-sample")
    assert_close(batch, lit_batch, 1e-12, "batch")


# Float32 math for every non-float64 dtype, then one rounding to the dtype.
LOWP_RTOL = {"float32": 2e-6, "float16": 2.0**-11 + 2e-6, "bfloat16": 2.0**-8 + 2e-6}


@pytest.mark.parametrize("dtype", sorted(LOWP_RTOL))
def test_low_precision_dtypes(dtype, be):
    cfg = lfq.Config(codebook_dim=8, num_codebooks=2, inv_temperature=10.0)
    zn, mn = make_input(cfg, np.random.default_rng(1), tokens=(4, 32), spread=0.2, dtype=dtype)
    z, m = be.asarray(zn), be.asarray(mn)
    assert validation_name(z.dtype) == dtype
    out = be.lfq(z, cfg, m)
    z64 = zn.astype(np.float64)  # the exact values the backend saw
    ref = reference.lfq(z64, cfg, mn)
    assert out.codes.dtype == z.dtype and out.aux_loss.dtype == z.dtype
    # Codes bitwise: the reference's codes in the same dtype.
    assert np.array_equal(be.to_numpy(out.codes).view(np.uint8), reference.quantize(zn, cfg).view(np.uint8))
    assert np.array_equal(be.to_numpy(out.indices), ref.indices)
    for term in LOSSES:
        assert_close(getattr(out, term), getattr(ref, term), LOWP_RTOL[dtype], f"{dtype} {term}")
    # Gradients: float32 math, rounded to the dtype (relative to the largest entry).
    grad = be.vjp("aux_loss", z, cfg, mask=m)
    assert grad.dtype == z.dtype
    assert_close(grad, reference.vjp("aux_loss", z64, cfg, mask=mn), 4 * LOWP_RTOL[dtype] + 1e-5, "grad")


def validation_name(dtype):
    return str(dtype).replace("torch.", "")


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_ties_nan_and_straight_through_are_exact(dtype, be):
    cfg = lfq.Config(codebook_dim=4, scale=0.75)
    zn = np.array([[0.0, -0.0, np.nan, 1e-30], [-3e4, 3e4, -1e-8, 7.0]]).astype(numpy_dtype(dtype))
    z = be.asarray(zn)
    codes = be.quantize(z, cfg)
    with np.errstate(invalid="ignore"):  # ml_dtypes warns when comparing NaN
        want = reference.quantize(zn, cfg)
        want_indices = reference.codes_to_indices(zn, cfg)
    assert np.array_equal(be.to_numpy(codes).view(np.uint8), want.view(np.uint8))
    # +0.0, -0.0 and NaN give -s; 1e-30 (0 in half dtypes) follows its rounded sign.
    assert be.to_numpy(codes)[0, :3].astype(np.float64).tolist() == [-0.75] * 3
    assert np.array_equal(be.to_numpy(be.codes_to_indices(z, cfg)), want_indices)
    # Straight-through value is bitwise the code even for huge inputs, with gradient 1.
    zg = z.clone().requires_grad_(True)
    st = be.lfq(zg, cfg, be.asarray(np.array([False, True]))).codes
    assert torch.equal(st.detach(), codes)  # +-0.75 only: equality is bitwise here
    st.sum().backward()
    assert torch.all(zg.grad == 1)


def test_all_false_mask_gives_zero_losses_and_gradients(be):
    cfg = lfq.Config(codebook_dim=5, num_codebooks=2)
    zn, _ = make_input(cfg, np.random.default_rng(2))
    zn[0, 0, :] = np.nan  # masked-out NaN reaches no loss
    mask = be.asarray(np.zeros(zn.shape[:-1], dtype=bool))
    out = be.lfq(be.asarray(zn), cfg, mask)
    for term in LOSSES:
        assert float(getattr(out, term)) == 0.0, term
    grad = be.vjp("aux_loss", be.asarray(zn), cfg, mask=mask)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_masked_nan_token_is_ignored_and_spherical_zero_group_is_finite(be):
    cfg = lfq.Config(codebook_dim=4, num_codebooks=2, spherical=True)
    zn, mn = make_input(cfg, np.random.default_rng(3))
    zn[0, 1] = np.nan
    mn[0, 1] = False
    zn[1, 2, :4] = 0.0  # a zero group projects to u = 0
    z, m = be.asarray(zn), be.asarray(mn)
    out, ref = be.lfq(z, cfg, m), reference.lfq(zn, cfg, mn)
    assert_close(out.aux_loss, ref.aux_loss, 1e-12, "aux")
    grad = be.vjp("aux_loss", z, cfg, mask=m)
    assert torch.isfinite(grad).all()
    assert_close(grad, reference.vjp("aux_loss", zn, cfg, mask=mn), 1e-10, "grad")


@pytest.mark.parametrize("bits,codebooks", [(12, 2), (62, 1), (63, 1)])
def test_indices_round_trip_up_to_63_bits(bits, codebooks, be):
    cfg = lfq.Config(codebook_dim=bits, num_codebooks=codebooks)
    zn = np.random.default_rng(bits).standard_normal((5, cfg.num_features))
    zn[0] = 1.0  # the largest index, 2**D - 1
    idx = be.codes_to_indices(be.asarray(zn), cfg)
    assert idx.dtype == torch.int64
    assert np.array_equal(be.to_numpy(idx), reference.codes_to_indices(zn, cfg))
    assert int(idx.min()) >= 0
    back = be.indices_to_codes(idx, cfg, dtype="float64")
    assert np.array_equal(be.to_numpy(back), reference.quantize(zn, cfg))
    if bits < 31:  # int32 indices are accepted and widened
        assert torch.equal(be.indices_to_codes(idx.to(torch.int32), cfg, dtype="float64"), back)


def test_code_usage_matches_reference():
    cfg = lfq.Config(codebook_dim=3, num_codebooks=2)
    idx = np.random.default_rng(4).integers(0, 8, size=(50, 2))
    mask = np.arange(50) % 3 > 0
    got = BE.code_usage(BE.asarray(idx), cfg, BE.asarray(mask))
    want = reference.code_usage(idx, cfg, mask)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-15)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_asarray_to_numpy_round_trip_is_bitwise(dtype):
    x = (np.random.default_rng(0).standard_normal(17) * 3).astype(numpy_dtype(dtype))
    t = BE.asarray(x)
    assert validation_name(t.dtype) == dtype
    back = BE.to_numpy(t)
    assert back.dtype == x.dtype and np.array_equal(back.view(np.uint8), x.view(np.uint8))
    # A dtype cast happens in NumPy, so its rounding is NumPy's (ml_dtypes for bfloat16).
    wide = np.random.default_rng(1).standard_normal(33)
    assert np.array_equal(
        BE.to_numpy(BE.asarray(wide, dtype)).astype(np.float64), wide.astype(numpy_dtype(dtype)).astype(np.float64)
    )


def test_autocast_does_not_lower_precision(be):
    cfg = lfq.Config(codebook_dim=8, num_codebooks=2, inv_temperature=10.0)
    z = be.asarray(make_input(cfg, np.random.default_rng(6), tokens=(64,), spread=0.2, dtype="float32")[0])
    plain = be.lfq(z, cfg)
    with torch.autocast(z.device.type, dtype=torch.bfloat16):
        under = be.lfq(z, cfg)
    for term in LOSSES:
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
    zn = make_input(cfg, np.random.default_rng(7), tokens=(512,), spread=0.2, dtype="float32")[0]
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
    assert_close(highest, want, 2e-6, "highest under TF32")
    if z.device.type == "cpu":
        assert_close(default, want, 2e-6, "default on a CPU")
    else:  # the documented TF32 bound
        assert abs(float(default) - float(want)) <= 2.0**-10 * (1 + float(want))
    a, b = torch.rand(2, 8, 5, device=z.device), torch.rand(2, 5, 3, device=z.device)
    assert torch.allclose(matmul_highest(a, b), (a.double() @ b.double()).float(), rtol=1e-6)


def test_bad_inputs_have_clear_errors():
    cfg = lfq.Config(codebook_dim=4, num_codebooks=2)
    z = torch.zeros(3, 8)
    cases = [
        (lambda: BE.lfq(np.zeros((3, 8)), cfg), TypeError, "torch.Tensor"),
        (lambda: BE.lfq(torch.zeros(3, 8, dtype=torch.int64), cfg), TypeError, "dtype int64"),
        (lambda: BE.lfq(torch.zeros(3, 8, dtype=torch.complex64), cfg), TypeError, "complex"),
        (lambda: BE.quantize(torch.zeros(3, 6), cfg), ValueError, "C\\*D = 2\\*4 = 8, got 6"),
        (lambda: BE.lfq(z, cfg, torch.ones(3, 2, dtype=torch.bool)), ValueError, "mask has shape"),
        (lambda: BE.lfq(z, cfg, torch.ones(3)), TypeError, "mask has dtype float32"),
        (lambda: BE.lfq(z, cfg, torch.ones(3, dtype=torch.bool, device="meta")), ValueError, "mask is on meta"),
        (lambda: BE.indices_to_codes(torch.tensor([[0, 16]]), cfg), ValueError, "outside \\[0, 15\\]"),
        (lambda: BE.indices_to_codes(torch.tensor([[-1, 0]]), cfg), ValueError, "contains -1"),
        (lambda: BE.indices_to_codes(torch.zeros(2, 2), cfg), TypeError, "integer array"),
        (lambda: BE.indices_to_codes(torch.zeros(2, 3, dtype=torch.int64), cfg), ValueError, "last axis"),
        (lambda: BE.lfq(torch.zeros(2, 30), lfq.Config(codebook_dim=30)), ValueError, "groups:2"),
        (lambda: BE.lfq(z, cfg, axis_name="x"), TypeError, "distributed, process_group"),
        (lambda: BE.lfq(z, cfg, distributed=True), RuntimeError, "init_process_group"),
        (lambda: BE.vjp("loss", z, cfg), ValueError, "not one of"),
        (lambda: BE.vjp("aux_loss", torch.ones(3, 8, dtype=torch.int32), cfg), TypeError, "dtype int32"),
        (lambda: BE.vjp("codes", z, cfg), ValueError, "needs a cotangent"),
        (lambda: BE.lfq(z, {"codebook_dim": 4}), TypeError, "lfq.Config"),
    ]
    for fn, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            fn()


def test_compiled_errors_are_the_eager_errors():
    cfg = lfq.Config(codebook_dim=4, num_codebooks=2)
    compiled = BE.compiled()
    with pytest.raises(ValueError, match="got 6"):
        compiled.lfq(torch.zeros(3, 6), cfg)
    with pytest.raises(ValueError, match="outside \\[0, 15\\]"):
        compiled.indices_to_codes(torch.tensor([[0, 16]]), cfg)
    with pytest.raises(ValueError, match="mask has shape"):
        compiled.entropy(torch.zeros(3, 8), cfg, torch.ones(2, dtype=torch.bool))


COMPILE_CFG = lfq.Config(codebook_dim=6, num_codebooks=2, inv_temperature=10.0, soft_clamp=2.0)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_whole_lfq_traces_as_one_graph(masked):
    """`torch.compile(fullgraph=True)` of user code around the eager backend: no graph break."""
    zn, mn = make_input(COMPILE_CFG, np.random.default_rng(8), dtype="float32")
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
    zn, mn = make_input(COMPILE_CFG, np.random.default_rng(9), tokens=(4, 16), spread=0.3, dtype="float32")
    m = be.asarray(mn) if masked else None
    results = []
    for backend in (BE, be.compiled(compile_mode)):
        z = be.asarray(zn).requires_grad_(True)
        out = backend.lfq(z, COMPILE_CFG, m)
        (out.aux_loss + (out.codes * torch.linspace(-1, 1, 12, device=z.device)).sum()).backward()
        results.append((out, z.grad))
    (eager, eager_grad), (compiled, compiled_grad) = results
    assert torch.equal(compiled.codes, eager.codes) and torch.equal(compiled.indices, eager.indices)
    for term in LOSSES:
        assert_close(getattr(compiled, term), be.to_numpy(getattr(eager, term)), 2e-6, term)
    assert_close(compiled_grad, be.to_numpy(eager_grad), 2e-6, "grad")
    ref = reference.lfq(zn.astype(np.float64), COMPILE_CFG, mn if masked else None)
    assert_close(compiled.aux_loss, ref.aux_loss, 2e-6, "compiled vs reference")


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
    zn, _ = make_input(COMPILE_CFG, np.random.default_rng(10), dtype="float32")
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
            assert_close(g, w, 1e-12, f"D={d} N={n}")


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
