"""The TensorFlow backend against the NumPy reference (`lfq.reference`), eager and compiled.

float64 inputs run the same float64 math as the reference (only the order of
sums differs), so values and gradients agree to ~1e-12. Lower precisions are
compared with the reference evaluated on the very same (rounded) input values;
the tolerances are stated where they are used.
"""

from __future__ import annotations

import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")

import lfq  # noqa: E402
from lfq import reference  # noqa: E402
from lfq.array_backend import ArrayBackend  # noqa: E402
from lfq.validation import numpy_dtype  # noqa: E402

BE = lfq.get("tensorflow")
LOSSES = ("aux_loss", "per_sample_entropy", "batch_entropy", "commitment_loss")

# (config, input scale): inputs are scale * N(0, 1), chosen so that tau * m * |z| is
# O(1) and no bit saturates (saturated bits would make the checks trivial).
CONFIGS = {
    "plain": (lfq.Config(codebook_dim=5), 0.01),
    "codebooks": (lfq.Config(codebook_dim=4, num_codebooks=3, inv_temperature=2.0), 0.5),
    "spherical": (lfq.Config(codebook_dim=6, spherical=True, inv_temperature=1.5, scale=2.0), 1.0),
    "soft_clamp_tanh": (lfq.Config(codebook_dim=4, soft_clamp=0.7, activation="tanh", inv_temperature=1.0), 1.0),
    "lsb_groups": (
        lfq.Config(
            codebook_dim=7,
            bit_order="lsb",
            batch_entropy="groups:2",
            inv_temperature=2.0,
            diversity_gamma=0.7,
            scale=0.5,
        ),
        0.5,
    ),
    "odd_bits": (lfq.Config(codebook_dim=1, num_codebooks=2, inv_temperature=1.0), 1.0),
    "feature_axis": (lfq.Config(codebook_dim=3, num_codebooks=2, feature_axis=1, inv_temperature=2.0), 0.5),
    "default_precision": (lfq.Config(codebook_dim=5, num_codebooks=2, precision="default", inv_temperature=2.0), 0.5),
}


@pytest.fixture(params=["eager", "compiled"])
def be(request):
    return BE if request.param == "eager" else BE.compiled()


def _inputs(cfg, scale, seed=0, tokens=(4, 3), dtype="float64"):
    """z with the features on cfg.feature_axis, and a mask with some False tokens."""
    rng = np.random.default_rng(seed)
    shape = list(tokens)
    shape.insert(cfg.feature_axis % (len(tokens) + 1), cfg.num_features)
    z = (rng.standard_normal(shape) * scale).astype(numpy_dtype(dtype))
    mask = rng.random(tokens) > 0.3
    return z, mask


def _close(actual, expected, rtol, atol=0.0):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale)


# ----------------------------------------------------------------------- values


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("masked", [False, True])
def test_values_float64_match_reference(be, name, masked):
    cfg, scale = CONFIGS[name]
    z, mask = _inputs(cfg, scale)
    mask = mask if masked else None
    out = be.lfq(tf.constant(z), cfg, None if mask is None else tf.constant(mask))
    ref = reference.lfq(z, cfg, mask)
    assert out.codes.dtype == tf.float64 and out.indices.dtype == tf.int64
    np.testing.assert_array_equal(out.codes.numpy(), ref.codes)  # bitwise
    np.testing.assert_array_equal(out.indices.numpy(), ref.indices)
    for term in LOSSES:
        _close(getattr(out, term).numpy(), getattr(ref, term), rtol=1e-12, atol=1e-14)
    if be is not BE and name not in ("plain", "feature_axis"):
        return  # the compiled entry points below each compile: a few configurations suffice
    per_sample, batch = be.entropy(tf.constant(z), cfg, None if mask is None else tf.constant(mask))
    _close(per_sample.numpy(), ref.per_sample_entropy, rtol=1e-12, atol=1e-14)
    _close(batch.numpy(), ref.batch_entropy, rtol=1e-12, atol=1e-14)
    commit = be.commitment_loss(tf.constant(z), cfg, None if mask is None else tf.constant(mask))
    _close(commit.numpy(), reference.commitment_loss(z, cfg, mask), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(be.quantize(tf.constant(z), cfg).numpy(), reference.quantize(z, cfg))


def test_batch_entropy_matches_literal_enumeration_at_d12():
    cfg = lfq.Config(codebook_dim=12, inv_temperature=1.0)
    z, _ = _inputs(cfg, 0.3, tokens=(64,))
    _, batch = BE.entropy(tf.constant(z), cfg)
    _, literal = reference.entropy(z, cfg, method="literal")
    _close(batch.numpy(), literal, rtol=1e-12)


@pytest.mark.parametrize(
    "dtype, rtol",
    [
        # float32 math throughout; entropies of a few hundred terms: ~1e-6 relative
        ("float32", 2e-5),
        # computed in float32, returned in the input dtype: the final rounding dominates,
        # half an ulp = 2**-9 (bfloat16) and 2**-12 (float16) relative
        ("bfloat16", 2.0**-8),
        ("float16", 2.0**-10),
    ],
)
@pytest.mark.parametrize("name", ["plain", "codebooks", "spherical", "soft_clamp_tanh"])
def test_low_precision_values(be, dtype, rtol, name):
    cfg, scale = CONFIGS[name]
    z, mask = _inputs(cfg, scale, dtype=dtype)
    z64 = z.astype(np.float64)  # the exact values the backend sees
    out = be.lfq(be.asarray(z), cfg, tf.constant(mask))
    ref = reference.lfq(z64, cfg, mask)
    assert out.codes.dtype.name == dtype and out.aux_loss.dtype.name == dtype
    np.testing.assert_array_equal(be.to_numpy(out.codes), reference.quantize(z, cfg))  # bitwise, in dtype
    np.testing.assert_array_equal(out.indices.numpy(), ref.indices)
    for term in LOSSES:
        _close(be.to_numpy(getattr(out, term)), getattr(ref, term), rtol=rtol, atol=rtol)


def test_float32_batch_entropy_at_d14_is_full_precision():
    # 4096 tokens x 2**14 codes: the histogram product sums 4096 terms per entry; in
    # full float32 the entropy stays within ~1e-6 relative (TF32 would give ~1e-3).
    cfg = lfq.Config(codebook_dim=14, inv_temperature=1.0)
    z, _ = _inputs(cfg, 0.5, tokens=(4096,), dtype="float32")
    _, batch = BE.entropy(tf.constant(z), cfg)
    _, want = reference.entropy(z.astype(np.float64), cfg)
    _close(batch.numpy(), want, rtol=1e-5)


# -------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("masked", [False, True])
def test_gradients_float64_match_reference_vjp(name, masked):
    cfg, scale = CONFIGS[name]
    z, mask = _inputs(cfg, scale, seed=1)
    mask = mask if masked else None
    cot = np.random.default_rng(2).standard_normal(z.shape)
    for term in lfq.GRAD_TERMS:
        cotangent = cot if term == "codes" else 0.7
        got = BE.vjp(term, tf.constant(z), cfg, cotangent, None if mask is None else tf.constant(mask))
        want = reference.vjp(term, z, cfg, cotangent, mask)
        assert got.dtype == tf.float64
        _close(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["codebooks", "feature_axis", "spherical"])
def test_gradients_compiled(name):
    cfg, scale = CONFIGS[name]
    z, mask = _inputs(cfg, scale, seed=3)
    compiled = BE.compiled()
    for term in ("aux_loss", "batch_entropy"):
        got = compiled.vjp(term, tf.constant(z), cfg, mask=tf.constant(mask))
        _close(got.numpy(), reference.vjp(term, z, cfg, mask=mask), rtol=1e-10, atol=1e-12)
    cot = np.random.default_rng(4).standard_normal(z.shape)
    got = compiled.vjp("codes", tf.constant(z), cfg, tf.constant(cot))
    _close(got.numpy(), reference.vjp("codes", z, cfg, cot), rtol=1e-12)


@pytest.mark.parametrize(
    "dtype, atol",
    [
        # relative to the largest gradient entry: float32 math ~1e-6; bf16/f16 results are
        # rounded to the input dtype (2**-9, 2**-12) after float32 math
        ("float32", 1e-5),
        ("bfloat16", 2.0**-7),
        ("float16", 2.0**-10),
    ],
)
def test_low_precision_gradients(dtype, atol):
    cfg, scale = CONFIGS["codebooks"]
    z, mask = _inputs(cfg, scale, dtype=dtype)
    for term in ("aux_loss", "batch_entropy", "per_sample_entropy", "commitment_loss"):
        got = BE.vjp(term, BE.asarray(z), cfg, mask=tf.constant(mask))
        assert got.dtype.name == dtype
        _close(BE.to_numpy(got), reference.vjp(term, z.astype(np.float64), cfg, mask=mask), rtol=0, atol=atol)


def test_straight_through_value_is_bitwise_the_codes_for_large_inputs():
    # f(z) + (q - f(z)) would round for |z| >> 1; the custom gradient keeps q exactly.
    cfg = lfq.Config(codebook_dim=4, scale=0.3)
    for dtype in ("float32", "bfloat16", "float16"):
        z = BE.asarray(np.array([[3e4, -7e3, 1e-3, -2.5e4]]), dtype)
        with tf.GradientTape() as tape:
            tape.watch(z)
            codes = BE.lfq(z, cfg).codes
        np.testing.assert_array_equal(BE.to_numpy(codes), reference.quantize(BE.to_numpy(z), cfg))
        grad = tape.gradient(codes, z, output_gradients=tf.ones_like(codes) * 3)
        np.testing.assert_array_equal(BE.to_numpy(grad).astype(np.float64), 3.0)


# ------------------------------------------------------------ ties, NaN, masks


def test_ties_and_nan_give_negative_code_and_bit_zero(be):
    cfg = lfq.Config(codebook_dim=4, scale=0.5)
    z = np.array([[0.0, -0.0, np.nan, 1.0], [-0.0, 2.0, 0.0, np.nan]])
    for dtype in ("float64", "float32", "bfloat16", "float16"):
        zt = be.asarray(z, dtype)
        np.testing.assert_array_equal(
            be.to_numpy(be.quantize(zt, cfg)).astype(np.float64), [[-0.5, -0.5, -0.5, 0.5], [-0.5, 0.5, -0.5, -0.5]]
        )
        np.testing.assert_array_equal(be.codes_to_indices(zt, cfg).numpy(), [[1], [4]])


@pytest.mark.parametrize(
    "dtype, tiny", [("float64", 5e-324), ("float32", 1e-40), ("bfloat16", 1e-39), ("float16", 1e-7)]
)
def test_subnormal_inputs_keep_their_sign(be, dtype, tiny):
    # TensorFlow's CPU kernels and XLA treat subnormals as zero in comparisons; the
    # backend decides on the bit pattern instead, as the spec asks.
    cfg = lfq.Config(codebook_dim=4)
    z = be.asarray(np.array([[tiny, -tiny, 1.0, -tiny]]), dtype)
    assert float(be.to_numpy(z)[0, 0]) > 0  # still a (subnormal) positive number in dtype
    np.testing.assert_array_equal(be.to_numpy(be.quantize(z, cfg)).astype(np.float64), [[1, -1, 1, -1]])
    np.testing.assert_array_equal(be.codes_to_indices(z, cfg).numpy(), [[10]])
    np.testing.assert_array_equal(be.to_numpy(be.lfq(z, cfg).codes).astype(np.float64), [[1, -1, 1, -1]])


def test_nan_in_masked_token_reaches_no_loss_or_gradient(be):
    cfg, scale = CONFIGS["codebooks"]
    z, mask = _inputs(cfg, scale)
    z[~mask] = np.nan
    out = be.lfq(tf.constant(z), cfg, tf.constant(mask))
    ref = reference.lfq(z, cfg, mask)
    for term in LOSSES:
        _close(getattr(out, term).numpy(), getattr(ref, term), rtol=1e-12, atol=1e-14)
    grad = be.vjp("aux_loss", tf.constant(z), cfg, mask=tf.constant(mask)).numpy()
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[~mask], 0.0)


def test_all_false_mask_gives_zero_losses_and_gradients(be):
    cfg, scale = CONFIGS["spherical"]
    z, mask = _inputs(cfg, scale)
    none = tf.zeros(mask.shape, tf.bool)
    out = be.lfq(tf.constant(z), cfg, none)
    for term in LOSSES:
        assert getattr(out, term).numpy() == 0.0
    for term in LOSSES:
        np.testing.assert_array_equal(be.vjp(term, tf.constant(z), cfg, mask=none).numpy(), 0.0)


# ---------------------------------------------------------------------- indices


@pytest.mark.parametrize("bit_order", ["msb", "lsb"])
def test_indices_round_trip_up_to_63_bits(be, bit_order):
    for d, c in ((1, 1), (9, 2), (31, 1), (40, 2), (63, 1)):
        cfg = lfq.Config(
            codebook_dim=d, num_codebooks=c, bit_order=bit_order, max_exact_bits=1, batch_entropy=f"groups:{d}"
        )
        z = np.random.default_rng(d).standard_normal((5, c * d))
        z[0] = 1.0  # every bit set: the largest index, 2**d - 1, never negative
        idx = be.codes_to_indices(tf.constant(z), cfg)
        np.testing.assert_array_equal(idx.numpy(), reference.codes_to_indices(z, cfg))
        assert idx.dtype == tf.int64 and int(tf.reduce_min(idx)) >= 0
        for dtype in ("float32", "bfloat16"):
            codes = be.indices_to_codes(idx, cfg, dtype)
            assert codes.dtype.name == dtype
            np.testing.assert_array_equal(be.to_numpy(codes), reference.quantize(z.astype(numpy_dtype(dtype)), cfg))


def test_indices_of_any_integer_dtype(be):
    cfg = lfq.Config(codebook_dim=6, num_codebooks=2)
    idx = np.array([[0, 63], [17, 40]])
    want = reference.indices_to_codes(idx, cfg)
    for dtype in (tf.uint8, tf.int16, tf.int32, tf.int64):
        np.testing.assert_array_equal(be.indices_to_codes(tf.constant(idx, dtype), cfg).numpy(), want)


@pytest.mark.parametrize("bad", [16, -1])
def test_out_of_range_index_raises(be, bad):
    with pytest.raises(ValueError, match=rf"indices contains {bad}, outside \[0, 15\]"):
        be.indices_to_codes(tf.constant([[3], [bad]]), lfq.Config(codebook_dim=4))


def test_out_of_range_index_inside_tf_function_decodes_low_bits():
    # Documented: inside a user's tf.function the values are unknown at trace time
    # (concrete_bounds returns None), nothing raises, and the low D bits are decoded.
    cfg = lfq.Config(codebook_dim=4)
    decode = tf.function(lambda i: BE.indices_to_codes(i, cfg))
    got = decode(tf.constant([[16], [-1], [21]], tf.int64)).numpy()
    np.testing.assert_array_equal(got, reference.indices_to_codes(np.array([[0], [15], [5]]), cfg))


def test_code_usage_matches_reference():
    cfg = lfq.Config(codebook_dim=3, num_codebooks=2)
    idx = np.random.default_rng(0).integers(0, 8, (6, 5, 2))
    mask = np.random.default_rng(1).random((6, 5)) > 0.5
    got = BE.code_usage(tf.constant(idx), cfg, tf.constant(mask))
    want = reference.code_usage(idx, cfg, mask)
    np.testing.assert_allclose(got.fraction_used, want.fraction_used)
    np.testing.assert_allclose(got.perplexity, want.perplexity)


# --------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (lambda be, c: be.lfq(tf.zeros([2, 5]), c), ValueError, r"expected feature axis .* C\*D = 1\*4 = 4, got 5"),
        (lambda be, c: be.quantize(tf.zeros([2, 4], tf.int32), c), TypeError, r"dtype int32; .*cast it"),
        (lambda be, c: be.lfq(tf.complex(tf.zeros([2, 4]), tf.zeros([2, 4])), c), TypeError, r"complex64.*real part"),
        (lambda be, c: be.entropy(tf.zeros([]), c), ValueError, r"z is a scalar"),
        (lambda be, c: be.lfq(tf.zeros([2, 4]), c, tf.ones([3], tf.bool)), ValueError, r"mask has shape \(3,\)"),
        (lambda be, c: be.lfq(tf.zeros([2, 4]), c, tf.ones([2])), TypeError, r"mask has dtype float32"),
        (lambda be, c: be.indices_to_codes(tf.zeros([2, 1]), c), TypeError, r"indices has dtype float32"),
        (lambda be, c: be.indices_to_codes(tf.zeros([2, 3], tf.int64), c), ValueError, r"last axis must hold"),
        (lambda be, c: be.indices_to_codes(tf.zeros([2, 1], tf.int64), c, "int8"), ValueError, r"dtype='int8'"),
        (lambda be, c: be.lfq(tf.zeros([2, 30]), lfq.Config(codebook_dim=30)), ValueError, r"groups:2"),
        (lambda be, c: be.commitment_loss(tf.zeros([2, 4]), c, group=1), TypeError, r"group"),
        (lambda be, c: be.vjp("codes", tf.zeros([2, 4]), c), ValueError, r"needs a cotangent"),
        (lambda be, c: be.vjp("loss", tf.zeros([2, 4]), c), ValueError, r"term='loss'"),
        (lambda be, c: be.vjp("codes", tf.zeros([2, 4]), c, tf.zeros([4])), ValueError, r"cotangent has shape"),
        (lambda be, c: be.lfq(object(), c), TypeError, r"z of type object"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(be, call, error, pattern):
    with pytest.raises(error, match=pattern) as info:
        call(be, lfq.Config(codebook_dim=4))
    assert "in user code" not in str(info.value)  # not a TensorFlow trace


# ---------------------------------------------------------- interface and modes


def test_registry_and_interface():
    assert lfq.get("tf") is BE
    assert isinstance(BE, ArrayBackend) and isinstance(BE, lfq.LFQBackend)
    assert isinstance(BE.compiled(), lfq.LFQBackend)
    assert BE.compiled() is BE.compiled() and BE.compiled().compiled() is BE.compiled()
    assert BE.modes == ("eager", "compiled") and set(BE.dtypes) == {"float16", "bfloat16", "float32", "float64"}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_asarray_to_numpy_round_trip(dtype):
    x = np.array([[1.0 / 3.0, -2.5e-3, 7.0]])
    t = BE.asarray(x, dtype)
    assert t.dtype.name == dtype
    back = BE.to_numpy(t)
    assert back.dtype == numpy_dtype(dtype)
    np.testing.assert_array_equal(back, x.astype(numpy_dtype(dtype)))


def test_asarray_device():
    for device in ("cpu", "cpu:0", "/CPU:0"):
        t = BE.compiled().asarray(np.ones((2, 3)), "float32", device=device)
        assert t.device.endswith("CPU:0") and t.dtype == tf.float32
    if not tf.config.list_logical_devices("GPU"):
        with pytest.raises(ValueError, match="TensorFlow sees 0 GPU"):
            BE.asarray(np.ones(3), device="cuda")


def test_compiled_reuses_its_traced_functions():
    compiled = BE.compiled()
    cfg = lfq.Config(codebook_dim=3, inv_temperature=7.0)
    z = tf.random.normal([5, 3])
    compiled.lfq(z, cfg)
    program_cfg = cfg.replace(inv_temperature=1.0, entropy_weight=1.0, commitment_weight=1.0, diversity_gamma=1.0)
    (signature,) = [s for s in compiled.programs.signatures() if s.op == "losses" and s.cfg == program_cfg]
    function = compiled.programs.get(signature, None)  # the losses program of lfq (not masked)
    for tau in (7.0, 8.0, 9.0):  # the temperature is an input of the traced function, not a constant
        compiled.lfq(tf.random.normal([5, 3]), lfq.Config(codebook_dim=3, inv_temperature=tau))
        compiled.lfq(tf.random.normal([5, 3]), cfg, inv_temperature=tau + 0.5)
    assert function.experimental_get_tracing_count() == 1


def test_compiled_refuses_distributed_options():
    with pytest.raises(TypeError, match="eager backend"):
        BE.compiled().lfq(tf.zeros([2, 4]), lfq.Config(codebook_dim=4), replica_context="auto")


@pytest.mark.parametrize("precision, expected", [("highest", ["operand_precision={highest,highest}"]), ("default", [])])
def test_histogram_product_precision_in_compiled_hlo(precision, expected):
    # TF32 stays enabled globally (TensorFlow's default); the product of the
    # "highest" configuration still asks XLA for full float32 operands.
    assert tf.config.experimental.tensor_float_32_execution_enabled()
    cfg = lfq.Config(codebook_dim=8, precision=precision)
    loss = tf.function(lambda z: BE.lfq(z, cfg).aux_loss, jit_compile=True)
    hlo = loss.experimental_get_compiler_ir(tf.zeros([16, 8]))(stage="hlo")
    dots = [re.findall(r"operand_precision=\{[a-z,]+\}", line) for line in hlo.splitlines() if " dot(" in line]
    assert dots == [expected]
    assert tf.config.experimental.tensor_float_32_execution_enabled()


def test_unknown_shapes_inside_tf_function():
    # Keras traces with an unknown batch size; the loss functions count tokens by mask.
    cfg = lfq.Config(codebook_dim=3, num_codebooks=2, feature_axis=1, inv_temperature=2.0)
    spec = [tf.TensorSpec([None, 6, None, None], tf.float64), tf.TensorSpec([None, None, None], tf.bool)]

    @tf.function(input_signature=spec, jit_compile=False)
    def run(z, mask):
        return (
            BE.lfq(z, cfg, mask),
            BE.lfq(z, cfg).aux_loss,
            BE.codes_to_indices(z, cfg),
            BE.straight_through(z, cfg),
            BE.vjp("aux_loss", z, cfg, mask=mask),
        )

    z, mask = _inputs(cfg, 0.5, tokens=(2, 3, 4))
    out, aux_unmasked, idx, codes, grad = run(z, mask)
    ref = reference.lfq(z, cfg, mask)
    assert out.codes.shape == z.shape and out.indices.shape == (2, 3, 4, 2)
    np.testing.assert_array_equal(out.codes.numpy(), ref.codes)
    np.testing.assert_array_equal(out.indices.numpy(), ref.indices)
    np.testing.assert_array_equal(idx.numpy(), ref.indices)
    np.testing.assert_array_equal(codes.numpy(), ref.codes)
    for term in LOSSES:
        _close(getattr(out, term).numpy(), getattr(ref, term), rtol=1e-12, atol=1e-14)
    _close(aux_unmasked.numpy(), reference.lfq(z, cfg).aux_loss, rtol=1e-12, atol=1e-14)
    _close(grad.numpy(), reference.vjp("aux_loss", z, cfg, mask=mask), rtol=1e-10, atol=1e-12)


def test_second_order_gradient_of_the_batch_entropy():
    # The full-precision product is differentiable to any order: the Hessian-vector
    # product by nested tapes equals central differences of the reference's gradient.
    cfg = lfq.Config(codebook_dim=6, num_codebooks=2, inv_temperature=2.0)
    z, _ = _inputs(cfg, 0.5, tokens=(5,))
    v = np.random.default_rng(9).standard_normal(z.shape)
    zt = tf.constant(z)
    with tf.GradientTape() as outer:
        outer.watch(zt)
        with tf.GradientTape() as inner:
            inner.watch(zt)
            loss = BE.lfq(zt, cfg).batch_entropy
        directional = tf.reduce_sum(inner.gradient(loss, zt) * v)
    hv = outer.gradient(directional, zt).numpy()
    eps = 1e-5
    fd = (reference.vjp("batch_entropy", z + eps * v, cfg) - reference.vjp("batch_entropy", z - eps * v, cfg)) / (
        2 * eps
    )
    _close(hv, fd, rtol=0, atol=1e-7)


def test_variables_and_numpy_inputs():
    cfg = lfq.Config(codebook_dim=4, inv_temperature=3.0)
    z, _ = _inputs(cfg, 0.5, dtype="float32")
    variable = tf.Variable(z)
    with tf.GradientTape() as tape:
        loss = BE.lfq(variable, cfg).aux_loss
    want = reference.vjp("aux_loss", z.astype(np.float64), cfg)
    _close(tape.gradient(loss, variable).numpy(), want, rtol=0, atol=1e-5)
    _close(
        BE.compiled().lfq(variable, cfg).aux_loss.numpy(), reference.lfq(z.astype(np.float64), cfg).aux_loss, rtol=2e-5
    )
    assert BE.lfq(z.astype(np.float64), cfg).aux_loss.dtype == tf.float64  # NumPy arrays keep their dtype
