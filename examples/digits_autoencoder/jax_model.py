"""The digits autoencoder in JAX, with `lfq.backends.jax_backend.LFQ` (init/apply)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from lfq.backends.jax_backend import LFQ
from spec import Data, Spec, batches


def dense_init(key, fan_in, fan_out):
    bound = 1.0 / np.sqrt(fan_in)  # the PyTorch / Keras-like uniform fan-in init
    wkey, bkey = jax.random.split(key)
    return {
        "kernel": jax.random.uniform(wkey, (fan_in, fan_out), minval=-bound, maxval=bound),
        "bias": jax.random.uniform(bkey, (fan_out,), minval=-bound, maxval=bound),
    }


def dense(p, x):
    return x @ p["kernel"] + p["bias"]


def train(spec: Spec, data: Data, progress) -> dict:
    quantizer = LFQ(
        dim=spec.hidden,
        codebook_size=2**spec.codebook_dim,
        entropy_loss_weight=spec.entropy_weight,
        commitment_loss_weight=spec.commitment_weight,
        inv_temperature=spec.inv_temperature,
    )
    k_enc, k_q, k_dec = jax.random.split(jax.random.key(spec.seed), 3)
    params = {
        "encoder": dense_init(k_enc, 64, spec.hidden),
        "quantizer": quantizer.init(k_q),
        "decoder": dense_init(k_dec, spec.hidden, 64),
    }

    def forward(params, x, train):
        out = quantizer.apply(params["quantizer"], jax.nn.relu(dense(params["encoder"], x)), train=train)
        return jax.nn.sigmoid(dense(params["decoder"], jax.nn.relu(out.quantized))), out.indices, out.aux_loss

    def loss_fn(params, x):
        recon, _, aux_loss = forward(params, x, True)
        mse = jnp.mean((recon - x) ** 2)
        return mse + aux_loss, (mse, aux_loss)

    # Adam, written out (no optimizer library needed)
    b1, b2, eps = 0.9, 0.999, 1e-8
    moments = jax.tree.map(lambda p: (jnp.zeros_like(p), jnp.zeros_like(p)), params)

    @jax.jit
    def step(params, moments, t, x):
        (_, (mse, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x)
        moments = jax.tree.map(
            lambda g, m: (b1 * m[0] + (1 - b1) * g, b2 * m[1] + (1 - b2) * g * g),
            grads,
            moments,
            is_leaf=lambda v: isinstance(v, jax.Array),
        )
        scale = spec.learning_rate * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        params = jax.tree.map(
            lambda p, m: p - scale * m[0] / (jnp.sqrt(m[1]) + eps),
            params,
            moments,
            is_leaf=lambda v: isinstance(v, jax.Array),
        )
        return params, moments, mse, aux

    stream = batches(data, spec)
    for t in range(1, spec.steps + 1):
        params, moments, mse, aux = step(params, moments, t, jnp.asarray(next(stream)))
        progress(float(mse), float(aux))
    recon, _, _ = forward(params, jnp.asarray(data.test), False)
    _, indices, _ = forward(params, jnp.asarray(np.concatenate([data.train, data.test])), False)
    return {"recon": np.asarray(recon), "indices": np.asarray(indices)}
