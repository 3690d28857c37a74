"""What the TensorFlow backend does beyond the interface: integer index dtypes,
tf.function and XLA (traces, unknown shapes, HLO precision), devices, variables,
second-order gradients and its error messages outside traces.

Its values and gradients against the reference, every dtype, both modes and the
spec's corners are tested with every backend's in tests/test_backends.py;
comparisons use the conformance suite's tolerances (tests/conftest.py, `assert_close`).
"""

from __future__ import annotations

import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")

from conftest import assert_close, make_inputs  # noqa: E402
from lfq.conformance.cases import Tolerance  # noqa: E402

import lfq  # noqa: E402
from lfq import reference  # noqa: E402
from lfq.array_backend import ArrayBackend  # noqa: E402

BE = lfq.get("tensorflow")


@pytest.fixture(params=["eager", "compiled"])
def be(request):
    return BE if request.param == "eager" else BE.compiled()


def test_float32_batch_entropy_at_d14_is_full_precision():
    # 4096 tokens x 2**14 codes: the histogram product sums 4096 terms per entry; in
    # full float32 the entropy stays within ~1e-6 relative (TF32 would give ~1e-3).
    cfg = lfq.Config(codebook_dim=14, inv_temperature=1.0)
    z, _ = make_inputs(cfg, tokens=(4096,), spread=0.5, dtype="float32")
    _, batch = BE.entropy(tf.constant(z), cfg)
    _, want = reference.entropy(z.astype(np.float64), cfg)
    assert_close(batch.numpy(), want, "float32", what="batch entropy")


# ---------------------------------------------------------------------- indices


def test_indices_of_any_integer_dtype(be):
    cfg = lfq.Config(codebook_dim=6, num_codebooks=2)
    idx = np.array([[0, 63], [17, 40]])
    want = reference.indices_to_codes(idx, cfg)
    for dtype in (tf.uint8, tf.int16, tf.int32, tf.int64):
        np.testing.assert_array_equal(be.indices_to_codes(tf.constant(idx, dtype), cfg).numpy(), want)


def test_out_of_range_index_inside_tf_function_decodes_low_bits():
    # Documented: inside a user's tf.function the values are unknown at trace time
    # (concrete_bounds returns None), nothing raises, and the low D bits are decoded.
    cfg = lfq.Config(codebook_dim=4)
    decode = tf.function(lambda i: BE.indices_to_codes(i, cfg))
    got = decode(tf.constant([[16], [-1], [21]], tf.int64)).numpy()
    np.testing.assert_array_equal(got, reference.indices_to_codes(np.array([[0], [15], [5]]), cfg))


# --------------------------------------------------------------------- bad input


# The refusals every backend shares are in tests/test_errors.py (every backend and mode).
@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (lambda be, c: be.indices_to_codes(tf.zeros([2, 1], tf.int64), c, "int8"), ValueError, r"dtype='int8'"),
        (lambda be, c: be.commitment_loss(tf.zeros([2, 4]), c, group=1), TypeError, r"group"),
        (lambda be, c: be.lfq(object(), c), TypeError, r"z of type object"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(be, call, error, pattern):
    with pytest.raises(error, match=pattern) as info:
        call(be, lfq.Config(codebook_dim=4))
    assert "in user code" not in str(info.value)  # not a TensorFlow trace


# ---------------------------------------------------------- interface and modes


def test_alias_and_shared_array_backend():
    assert lfq.get("tf") is BE and isinstance(BE, ArrayBackend)


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

    z, mask = make_inputs(cfg, tokens=(2, 3, 4), spread=0.5)
    out, aux_unmasked, idx, codes, grad = run(z, mask)
    ref = reference.lfq(z, cfg, mask)
    assert out.codes.shape == z.shape and out.indices.shape == (2, 3, 4, 2)
    np.testing.assert_array_equal(out.codes.numpy(), ref.codes)
    np.testing.assert_array_equal(out.indices.numpy(), ref.indices)
    np.testing.assert_array_equal(idx.numpy(), ref.indices)
    np.testing.assert_array_equal(codes.numpy(), ref.codes)
    for term in lfq.LOSS_TERMS:
        assert_close(getattr(out, term).numpy(), getattr(ref, term), "float64", what=term)
    assert_close(aux_unmasked.numpy(), reference.lfq(z, cfg).aux_loss, "float64", what="unmasked aux")
    assert_close(grad.numpy(), reference.vjp("aux_loss", z, cfg, mask=mask), "float64", "grad")


def test_second_order_gradient_of_the_batch_entropy():
    # The full-precision product is differentiable to any order: the Hessian-vector
    # product by nested tapes equals central differences of the reference's gradient.
    cfg = lfq.Config(codebook_dim=6, num_codebooks=2, inv_temperature=2.0)
    z, _ = make_inputs(cfg, tokens=(5,), spread=0.5)
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
    # central differences: truncation error ~eps**2 * |third derivative|, rounding ~1e-16 / eps
    assert_close(hv, fd, "float64", "grad", scale=max(1.0, float(np.abs(fd).max())), tol=Tolerance(0.0, 1e-7))


def test_variables_and_numpy_inputs():
    cfg = lfq.Config(codebook_dim=4, inv_temperature=3.0)
    z, _ = make_inputs(cfg, spread=0.5, dtype="float32")
    variable = tf.Variable(z)
    with tf.GradientTape() as tape:
        loss = BE.lfq(variable, cfg).aux_loss
    want = reference.vjp("aux_loss", z.astype(np.float64), cfg)
    assert_close(tape.gradient(loss, variable).numpy(), want, "float32", "grad")
    compiled_aux = BE.compiled().lfq(variable, cfg).aux_loss.numpy()
    assert_close(compiled_aux, reference.lfq(z.astype(np.float64), cfg).aux_loss, "float32", what="compiled aux")
    assert BE.lfq(z.astype(np.float64), cfg).aux_loss.dtype == tf.float64  # NumPy arrays keep their dtype
