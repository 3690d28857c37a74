"""The Keras 3 layer `LFQLayer`: layouts, projections, losses, metrics, training, saving."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "tensorflow":  # pragma: no cover - depends on the environment
    pytest.skip("LFQLayer needs KERAS_BACKEND=tensorflow", allow_module_level=True)

from lfq.backends.tf_backend import LFQLayer, LFQLayerOutput, LossBreakdown  # noqa: E402
from lfq.backends.tf_backend.layer import batch_code_usage  # noqa: E402

import lfq  # noqa: E402
from lfq import reference  # noqa: E402

BE = lfq.get("tensorflow")


def _z(shape, scale=0.5, seed=0, dtype="float32"):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def _same_loss(actual, expected, rtol=1e-6):
    np.testing.assert_allclose(np.float64(actual), np.float64(expected), rtol=rtol, atol=1e-7)


def test_sequence_layer_is_the_functional_lfq():
    layer = LFQLayer(codebook_dim=4, num_codebooks=2, inv_temperature=2.0, entropy_loss_weight=0.3)
    x = _z((3, 5, 8))
    mask = np.random.default_rng(1).random((3, 5)) > 0.3
    out = layer(x, mask=tf.constant(mask), training=True)
    assert isinstance(out, LFQLayerOutput)
    cfg = lfq.Config(codebook_dim=4, num_codebooks=2, inv_temperature=2.0, entropy_weight=0.3)
    ref = reference.lfq(x, cfg, mask)
    np.testing.assert_array_equal(out.quantized.numpy(), ref.codes)
    np.testing.assert_array_equal(out.indices.numpy(), ref.indices)  # [b, n, C]: C > 1 kept
    _same_loss(out.aux_loss.numpy(), reference.lfq(x.astype(np.float64), cfg, mask).aux_loss)
    assert len(layer.losses) == 1
    _same_loss(layer.losses[0].numpy(), out.aux_loss.numpy(), rtol=0)


@pytest.fixture(params=["channels_last", "channels_first"])
def image_data_format(request):
    """Keras's global image data format, set for the test and restored after it."""
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format(request.param)
    yield request.param
    keras.config.set_image_data_format(previous)


@pytest.mark.parametrize("ndim", [3, 4, 5])
@pytest.mark.parametrize("channel_first", [None, True, False])
def test_layouts(image_data_format, ndim, channel_first):
    # None follows keras.config.image_data_format() for every rank, as Keras's convolutions do.
    first = image_data_format == "channels_first" if channel_first is None else channel_first
    feature_axis = 1 if first else -1
    tokens = (2, 3, 2, 5)[: ndim - 1]
    shape = tokens[:1] + (4,) + tokens[1:] if first else tokens + (4,)
    layer = LFQLayer(codebook_size=16, channel_first=channel_first, inv_temperature=3.0)
    assert layer.get_config()["channel_first"] is first  # recorded, so a reload keeps the layout
    x = _z(shape)
    out, breakdown = layer(x, training=True, return_loss_breakdown=True)
    cfg = lfq.Config(codebook_dim=4, inv_temperature=3.0, feature_axis=feature_axis)
    ref = reference.lfq(x.astype(np.float64), cfg)
    assert out.quantized.shape == shape
    np.testing.assert_array_equal(out.quantized.numpy(), ref.codes)
    np.testing.assert_array_equal(out.indices.numpy(), ref.indices[..., 0])  # C == 1: axis dropped
    _same_loss(out.aux_loss.numpy(), ref.aux_loss)
    assert isinstance(breakdown, LossBreakdown)
    _same_loss(breakdown.per_sample_entropy.numpy(), ref.per_sample_entropy)
    _same_loss(breakdown.batch_entropy.numpy(), ref.batch_entropy)
    _same_loss(breakdown.commitment.numpy(), ref.commitment_loss)
    np.testing.assert_array_equal(layer.indices_to_codes(out.indices).numpy(), ref.codes)


def test_projections_and_indices_to_codes():
    layer = LFQLayer(dim=6, codebook_dim=2, num_codebooks=2, keep_num_codebooks_dim=True, channel_first=True)
    x = _z((2, 6, 4, 4))  # image, channel-first, 6 channels -> 2*2 features
    out = layer(x, training=True)
    assert layer.has_projections and out.quantized.shape == x.shape
    assert out.indices.shape == (2, 4, 4, 2)
    np.testing.assert_allclose(layer.indices_to_codes(out.indices).numpy(), out.quantized.numpy(), rtol=1e-6)
    codes = layer.indices_to_codes(out.indices, project_out=False)
    assert codes.shape == (2, 4, 4, 4) and set(np.unique(codes.numpy())) <= {-1.0, 1.0}
    with tf.GradientTape() as tape:
        layer(x, training=True)
        loss = tf.add_n(layer.losses)
    grads = tape.gradient(loss, layer.project_in.trainable_variables)
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)  # the aux loss trains project_in


def test_keras_mask_from_embedding_excludes_padding():
    tokens = np.array([[3, 1, 0, 0], [2, 2, 5, 0]])
    embedded = keras.layers.Embedding(6, 4, mask_zero=True)(tokens)
    out = LFQLayer(codebook_dim=4, inv_temperature=2.0)(embedded, training=True)
    cfg = lfq.Config(codebook_dim=4, inv_temperature=2.0)
    _same_loss(out.aux_loss.numpy(), reference.lfq(embedded.numpy().astype(np.float64), cfg, tokens != 0).aux_loss)
    np.testing.assert_array_equal(out.quantized._keras_mask.numpy(), tokens != 0)  # passed on downstream


def test_inference_computes_no_loss_unless_asked():
    layer = LFQLayer(codebook_dim=5)
    x = _z((4, 5))
    out = layer(x)  # training=None: inference
    assert float(out.aux_loss) == 0.0 and not layer.losses
    np.testing.assert_array_equal(out.quantized.numpy(), reference.quantize(x, lfq.Config(codebook_dim=5)))
    out = layer(x, training=False, compute_loss=True)
    _same_loss(out.aux_loss.numpy(), reference.lfq(x.astype(np.float64), lfq.Config(codebook_dim=5)).aux_loss)
    assert len(layer.losses) == 1
    result, breakdown = LFQLayer(codebook_dim=5, return_loss_breakdown=True)(x)
    assert float(breakdown.batch_entropy) == 0.0


def test_bfloat16_layer_codes_are_bitwise_and_loss_float32():
    layer = LFQLayer(codebook_dim=4, codebook_scale=0.3, spherical=True, dtype="mixed_bfloat16")
    x = _z((3, 7, 4))
    with tf.GradientTape() as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        out = layer(xt, training=True)
    assert out.quantized.dtype == tf.bfloat16 and out.aux_loss.dtype == tf.float32
    x16 = tf.cast(x, tf.bfloat16)
    cfg = lfq.Config(codebook_dim=4, scale=0.3, spherical=True)
    np.testing.assert_array_equal(BE.to_numpy(out.quantized), BE.to_numpy(BE.quantize(x16, cfg)))
    # float32 loss of the bf16-rounded inputs, not a bf16-rounded loss
    _same_loss(out.aux_loss.numpy(), reference.lfq(BE.to_numpy(x16).astype(np.float64), cfg).aux_loss, rtol=1e-5)
    assert tape.gradient(out.aux_loss, xt) is not None


def test_in_graph_code_usage_matches_reference():
    cfg = lfq.Config(codebook_dim=20, num_codebooks=2)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 6, (5, 7, 2)) * 100_000  # few distinct codes of a 2**20 codebook
    mask = rng.random((5, 7)) > 0.4
    for m in (None, mask, np.zeros_like(mask)):
        used, perplexity = tf.function(lambda i, m=m: batch_code_usage(i, cfg, m), jit_compile=True)(idx)
        want = reference.code_usage(idx, cfg, m)
        np.testing.assert_allclose(used.numpy(), want.fraction_used, rtol=1e-6)
        np.testing.assert_allclose(perplexity.numpy(), want.perplexity, rtol=1e-5)


def _model(policy="float32"):
    inputs = keras.Input((8, 6))
    hidden = keras.layers.Dense(6)(inputs)
    out = LFQLayer(dim=6, codebook_dim=3, num_codebooks=2, inv_temperature=5.0, name="lfq")(hidden)
    outputs = keras.layers.Dense(6, dtype="float32")(out.quantized)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize(
    "policy, jit_compile, samples",
    [
        ("float32", True, 32),  # XLA-compiled train step (Keras's "auto" on GPU)
        ("mixed_bfloat16", False, 40),  # 40 = 16 + 16 + 8: the last batch retraces with an unknown size
    ],
)
def test_model_fit(policy, jit_compile, samples):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = _model()
        model.compile(keras.optimizers.Adam(0.01), "mse", jit_compile=jit_compile)
        x = _z((samples, 8, 6), scale=1.0)
        before = [w.copy() for w in model.get_weights()]
        history = model.fit(x, x, batch_size=16, epochs=3, verbose=0)
        assert model.get_layer("lfq").compute_dtype == policy.replace("mixed_", "")
    finally:
        keras.mixed_precision.set_global_policy(previous)
    losses = history.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert all(0 < u <= 1 for u in history.history["lfq_code_usage"])
    assert all(1 <= p <= 8 for p in history.history["lfq_perplexity"])
    assert any(np.max(np.abs(a - b)) > 0 for a, b in zip(before, model.get_weights()))
    # The training loss is the compiled loss plus the layer's aux loss (add_loss).
    prediction = model(x, training=True)
    aux = float(tf.add_n(model.losses))
    total = float(model.compute_loss(x, x, prediction, training=True))
    mse = float(np.mean((np.asarray(prediction, np.float64) - x) ** 2))
    assert abs(aux) > 1e-4
    np.testing.assert_allclose(total, mse + aux, rtol=1e-5)


def test_save_and_load_keras_format(tmp_path):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 3, 3))
    out = LFQLayer(dim=6, codebook_size=8, num_codebooks=2, spherical=True, channel_first=True, name="lfq")(inputs)
    model = keras.Model(inputs, [out.quantized, out.indices])
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = loaded.get_layer("lfq")
    assert isinstance(layer, LFQLayer) and layer.get_config() == model.get_layer("lfq").get_config()
    x = _z((2, 6, 3, 3))
    for a, b in zip(model.predict(x, verbose=0), loaded.predict(x, verbose=0)):
        np.testing.assert_array_equal(a, b)


def test_saved_model_of_a_module_with_the_default_layer(tmp_path):
    """tf.saved_model.save of a tf.Module holding the layer (code-usage metrics on, the default),
    traced in training and in inference: the reloaded functions give the same outputs."""

    class Holder(tf.Module):
        def __init__(self):
            super().__init__()
            self.layer = LFQLayer(dim=6, codebook_dim=2, num_codebooks=2)
            spec = [tf.TensorSpec([None, 5, 6], tf.float32)]
            self.train = tf.function(lambda x: tuple(self.layer(x, training=True)), input_signature=spec)
            self.infer = tf.function(lambda x: tuple(self.layer(x, training=False)), input_signature=spec)

    keras.utils.set_random_seed(3)
    holder = Holder()
    x = tf.constant(_z((3, 5, 6)))
    want = {"train": holder.train(x), "infer": holder.infer(x)}
    tf.saved_model.save(holder, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    for name, expected in want.items():
        for a, b in zip(getattr(loaded, name)(x), expected):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert float(want["train"][2]) > 0 and float(want["infer"][2]) == 0


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(), ValueError, "give exactly one"),
        (dict(codebook_size=16, codebook_dim=5), ValueError, "pass only one"),
        (dict(codebook_dim=4, num_codebooks=2, keep_num_codebooks_dim=False), ValueError, "num_codebooks == 1"),
        (dict(codebook_dim=4, dim=6, has_projections=False), ValueError, "has_projections=False"),
        (dict(codebook_size=12), ValueError, "power of two"),
        (dict(codebook_dim=4, channel_first="yes"), TypeError, "channel_first"),
        (dict(codebook_dim=4, dim=0), ValueError, "dim=0"),
        (dict(codebook_dim=4, straight_through_activation="relu"), ValueError, "activation"),
    ],
)
def test_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        LFQLayer(**kwargs)


def test_wrong_input_size_names_dim_and_axis():
    with pytest.raises(ValueError, match=r"expected dim=8 features on axis 1 \(channel-first\)"):
        LFQLayer(codebook_dim=4, num_codebooks=2, channel_first=True)(_z((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"expected dim=8 features on axis -1 \(channel-last\)"):
        LFQLayer(codebook_dim=4, num_codebooks=2)(_z((2, 8, 4, 4)))  # Keras's default: channels-last


def test_per_call_schedule_and_vqp_mask_layouts():
    layer = LFQLayer(codebook_dim=4, commitment_loss_weight=0.5, channel_first=True)
    x = tf.constant(np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32))
    own = np.random.default_rng(1).random((2, 3, 3)) > 0.3
    tau = tf.Variable(5.0)
    for value in (5.0, 20.0):
        tau.assign(value)
        out = layer(x, mask=own, training=True, inv_temperature=tau, entropy_loss_weight=0.2)
        cfg = layer.cfg.replace(inv_temperature=value, entropy_weight=0.2, feature_axis=1)
        want = lfq.reference.lfq(x.numpy().astype(np.float64), cfg, own).aux_loss
        np.testing.assert_allclose(float(out.aux_loss), float(want), rtol=2e-5, atol=1e-6)
        flat = layer(x, mask=own.reshape(2, 9), training=True, inv_temperature=value, entropy_loss_weight=0.2)
        np.testing.assert_allclose(float(flat.aux_loss), float(out.aux_loss), rtol=1e-6)
    per_sample = layer(x, mask=np.array([True, False]), training=True)
    expanded = np.broadcast_to(np.array([True, False])[:, None, None], (2, 3, 3))
    assert float(per_sample.aux_loss) == float(layer(x, mask=expanded, training=True).aux_loss)
