"""tf.distribute: the losses of `MirroredStrategy` replicas are the global batch's.

TensorFlow's logical devices must be configured before it initializes, so the
checks run in one fresh subprocess (this file run as a script) with the CPU
split into two logical devices; the test compares what it reports.

Gradient convention under test: each replica differentiates its loss scaled by
`1 / num_replicas_in_sync` (what Keras does for `add_loss` and compiled losses);
MirroredStrategy sums the replicas' gradients. Then a replica's gradient w.r.t.
its own inputs equals the single-replica gradient of the global-batch loss
w.r.t. those inputs, and the summed parameter gradients equal the
single-replica parameter gradients.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("tensorflow")

REPLICAS = 2
TERMS = ("aux_loss", "per_sample_entropy", "batch_entropy", "commitment_loss")


def _worker() -> dict:
    """Runs in the subprocess: returns the largest deviations from the single-replica results."""
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)
    import keras
    from lfq.backends.tf_backend import LFQLayer

    import lfq
    from lfq import reference

    be = lfq.get("tensorflow")
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)])
    report = {"replicas": strategy.num_replicas_in_sync}
    rng = np.random.default_rng(0)
    cfg = lfq.Config(codebook_dim=5, num_codebooks=2, inv_temperature=3.0)
    z = rng.standard_normal((8, 3, cfg.num_features)) * 0.5
    mask = rng.random((8, 3)) > 0.4
    mask[:4] = False  # replica 0 has no valid token at all: its sums are 0

    def distribute(array):
        parts = np.split(array, REPLICAS)
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(parts[ctx.replica_id_in_sync_group])
        )

    def step(z_local, m_local, context_arg):
        context = tf.distribute.get_replica_context()
        option = context if context_arg == "object" else "auto"
        results = {}
        for term in TERMS:
            with tf.GradientTape() as tape:
                tape.watch(z_local)
                value = getattr(be.lfq(z_local, cfg, m_local, replica_context=option), term)
                scaled = value / context.num_replicas_in_sync
            results[term] = (value, tape.gradient(scaled, z_local))
        return results

    for masked in (False, True):
        for context_arg, eager in (("object", False), ("auto", True)):
            m = mask if masked else np.ones(mask.shape, bool)
            run = lambda: strategy.run(step, args=(distribute(z), distribute(m), context_arg))  # noqa: E731
            per_replica = run() if eager else tf.function(run)()
            worst_value = worst_grad = 0.0
            for term in TERMS:
                values = [v.numpy() for v in strategy.experimental_local_results(per_replica[term][0])]
                grads = np.concatenate([g.numpy() for g in strategy.experimental_local_results(per_replica[term][1])])
                want = getattr(reference.lfq(z, cfg, m), term)
                worst_value = max(worst_value, *(abs(float(v) - float(want)) for v in values))
                worst_grad = max(worst_grad, float(np.max(np.abs(grads - reference.vjp(term, z, cfg, mask=m)))))
            key = f"{'masked' if masked else 'full'}_{context_arg}_{'eager' if eager else 'function'}"
            report[key] = {"value": worst_value, "grad": worst_grad}

    # Keras: one SGD step of a model with LFQLayer under MirroredStrategy (global
    # batch split over the replicas) equals the same step on one device.
    x = rng.standard_normal((8, 4, 6)).astype("float32")

    def build(sync=True):
        inputs = keras.Input((4, 6))
        hidden = keras.layers.Dense(6)(inputs)
        out = LFQLayer(
            dim=6,
            codebook_dim=3,
            num_codebooks=2,
            inv_temperature=2.0,
            entropy_loss_weight=1.0,
            sync_replicas=sync,
            name="lfq",
        )(hidden)
        model = keras.Model(inputs, keras.layers.Dense(6)(out.quantized))
        model.compile(keras.optimizers.SGD(0.5), "mse")
        return model

    keras.utils.set_random_seed(0)
    single = build()
    initial = single.get_weights()
    single.fit(x, x, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for sync in (True, False):
        with strategy.scope():
            mirrored = build(sync)
        mirrored.set_weights(initial)
        history = mirrored.fit(x, x, batch_size=8, epochs=1, shuffle=False, verbose=0)
        report[f"keras_weights_sync_{sync}"] = max(
            float(np.max(np.abs(a - b))) for a, b in zip(single.get_weights(), mirrored.get_weights())
        )
    report["keras_changed"] = max(float(np.max(np.abs(a - b))) for a, b in zip(initial, single.get_weights()))
    report["keras_metrics"] = sorted(history.history)
    return report


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0", KERAS_BACKEND="tensorflow")
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_two_replicas(report):
    assert report["replicas"] == REPLICAS


@pytest.mark.parametrize(
    "case", ["full_object_function", "full_auto_eager", "masked_object_function", "masked_auto_eager"]
)
def test_values_and_gradients_equal_single_replica_over_global_batch(report, case):
    # float64 throughout: the all-reduced sums differ from one sum by rounding only
    assert report[case]["value"] < 1e-12
    assert report[case]["grad"] < 1e-12


def test_keras_training_step_equals_single_device(report):
    assert report["keras_changed"] > 1e-3  # the step did move the weights
    assert report["keras_weights_sync_True"] < 1e-5  # float32: the same terms summed in another order
    # Without the all-reduce each replica's batch entropy is its half-batch's: a different step.
    assert report["keras_weights_sync_False"] > 1e-3
    assert "lfq_code_usage" in report["keras_metrics"]


if __name__ == "__main__":
    print(json.dumps(_worker()))
