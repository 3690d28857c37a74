"""The digits autoencoder in TensorFlow / Keras 3, with `lfq.backends.tf_backend.LFQLayer`."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from lfq.backends.tf_backend import LFQLayer
from spec import Data, Spec, batches


def train(spec: Spec, data: Data, progress) -> dict:
    keras.utils.set_random_seed(spec.seed)
    encoder = keras.layers.Dense(spec.hidden, activation="relu")
    quantizer = LFQLayer(
        dim=spec.hidden,
        codebook_size=2**spec.codebook_dim,
        entropy_loss_weight=spec.entropy_weight,
        commitment_loss_weight=spec.commitment_weight,
        inv_temperature=spec.inv_temperature,
    )
    decoder = keras.layers.Dense(64, activation="sigmoid")

    def forward(x, training):
        out = quantizer(encoder(x), training=training)
        return decoder(tf.nn.relu(out.quantized)), out.indices, out.aux_loss

    forward(tf.zeros((1, 64)), False)  # build the layers
    variables = encoder.trainable_variables + quantizer.trainable_variables + decoder.trainable_variables
    optimizer = keras.optimizers.Adam(learning_rate=spec.learning_rate)
    optimizer.build(variables)  # create the slots outside the compiled step

    @tf.function(jit_compile=True)
    def step(x):
        with tf.GradientTape() as tape:
            recon, _, aux_loss = forward(x, True)
            mse = tf.reduce_mean((recon - x) ** 2)
            loss = mse + aux_loss
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return mse, aux_loss

    stream = batches(data, spec)
    for _ in range(spec.steps):
        mse, aux = step(tf.constant(next(stream)))
        progress(float(mse), float(aux))
    recon, _, _ = forward(tf.constant(data.test), False)
    _, indices, _ = forward(tf.constant(np.concatenate([data.train, data.test])), False)
    return {"recon": recon.numpy(), "indices": indices.numpy()}
