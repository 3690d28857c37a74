"""TensorFlow rows: the factorized exact path against the usual N x 2^D implementation.

Every row times one training step of the aux loss, forward and backward
(the gradient w.r.t. z), float32, C = 1:

* "factorized-compiled": `lfq.get("tensorflow").compiled().vjp("aux_loss", ...)`,
  one `tf.function(jit_compile=True)`; its first call (trace + XLA compile) is
  reported separately as compile_ms.
* "factorized-eager": the same through the eager backend.
* "naive-compiled": the implementation found in public LFQ code, written here in
  TensorFlow under `tf.function(jit_compile=True)`: logits against all 2^D codes
  (N x 2^D), softmax, per-sample and batch entropies, commitment. Skipped where
  its N x 2^D tensors would not fit in `MAX_NAIVE_GIB`.

GPU peak memory comes from `tf.config.experimental.get_memory_info`; on the CPU
the harness measures the process's peak resident memory.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
from harness import time_ms  # noqa: E402

import lfq  # noqa: E402
from lfq import reference  # noqa: E402

MAX_NAIVE_GIB = 12.0
#: float32 N x 2^D arrays alive at the naive step's peak (logits, log p, p, their gradients)
_NAIVE_ARRAYS = 6
_STATE: dict = {}


def cases(dims, tokens, device):
    out = []
    for d in dims:
        for algorithm in ("factorized-compiled", "factorized-eager", "naive-compiled"):
            case = {
                "backend": "tensorflow",
                "algorithm": algorithm,
                "D": d,
                "N": tokens,
                "device": device,
                "dtype": "float32",
            }
            need = _NAIVE_ARRAYS * tokens * 2**d * 4 / 2**30
            if algorithm.startswith("naive") and need > MAX_NAIVE_GIB:
                case["skip"] = f"skipped: naive needs ~{need:.0f} GiB"
            out.append(case)
    return out


def naive_aux_loss(z, cfg: lfq.Config, codes):
    """The N x 2^D aux loss of public LFQ code (eps-clamped batch entropy), `z` `[N, D]`."""
    import tensorflow as tf

    logits = 2.0 * cfg.inv_temperature * tf.matmul(z, codes, transpose_b=True)  # [N, 2^D]
    log_p = tf.nn.log_softmax(logits, axis=-1)
    p = tf.exp(log_p)
    per_sample = -tf.reduce_mean(tf.reduce_sum(p * log_p, axis=-1))
    mean_p = tf.reduce_mean(p, axis=0)
    batch = -tf.reduce_sum(mean_p * tf.math.log(tf.maximum(mean_p, 1e-5)))
    q = tf.where(z > 0, cfg.scale, -cfg.scale)
    commitment = tf.reduce_mean(tf.square(z - q))
    return cfg.entropy_weight * (per_sample - cfg.diversity_gamma * batch) + cfg.commitment_weight * commitment


def prepare(case):
    import tensorflow as tf

    device = "/GPU:0" if case["device"] == "cuda" else "/CPU:0"
    if case["device"] == "cuda" and not tf.config.list_physical_devices("GPU"):
        raise RuntimeError("TensorFlow sees no GPU")
    cfg = lfq.Config(codebook_dim=case["D"])
    rng = np.random.default_rng(0)
    with tf.device(device):
        z = tf.constant(rng.standard_normal((case["N"], case["D"])).astype(np.float32))
    be = lfq.get("tensorflow")
    if case["algorithm"] == "factorized-compiled":
        step = lambda: be.compiled().vjp("aux_loss", z, cfg)  # noqa: E731
    elif case["algorithm"] == "factorized-eager":
        step = lambda: be.vjp("aux_loss", z, cfg)  # noqa: E731
    else:
        with tf.device(device):
            codes = tf.constant(reference.all_codes(cfg).astype(np.float32))

        @tf.function(jit_compile=True)
        def naive_grad(z):
            with tf.GradientTape() as tape:
                tape.watch(z)
                loss = naive_aux_loss(z, cfg, codes)
            return tape.gradient(loss, z)

        step = lambda: naive_grad(z)  # noqa: E731
    _STATE.update(tf=tf, device=device, step=step)


def run_case(case, repeat):
    tf, device, step = _STATE["tf"], _STATE["device"], _STATE["step"]
    gpu = device.startswith("/GPU")
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    # .numpy() waits for the device, so every time covers the whole step
    with tf.device(device):
        start = time.perf_counter()
        step().numpy()
        first_ms = (time.perf_counter() - start) * 1e3
        # a few warm-up steps: XLA:CPU's thread pool and allocator settle after the first calls
        ms = time_ms(lambda: step().numpy(), repeat, warmup=5)
    result = {"ms": ms}
    if case["algorithm"].endswith("compiled"):
        result["compile_ms"] = first_ms
    if gpu:
        result["peak_mib"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return result
