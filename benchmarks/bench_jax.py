"""JAX rows: the factorized exact aux loss against the naive N x 2^D algorithm.

Each row times one jitted forward+backward of the aux loss (float32 input `[N, D]`,
one codebook, default Config): `jax.value_and_grad` of the loss w.r.t. z.

* "factorized": `lfq.get("jax").lfq(z, cfg).aux_loss`, the library itself.
* "naive": the usual implementation, written here as the baseline: logits
  against all 2^D codes (`[N, 2^D]`), log-softmax, per-sample and batch entropy
  from the full probability table.

"/default" rows use `jax.lax.Precision.DEFAULT` for the matrix products (TF32 on
NVIDIA GPUs; on the CPU the same float32 arithmetic as HIGHEST). Compilation
(`lower().compile()`) is timed separately as "compile_ms" and happens in
`prepare`, outside the measured peak memory. On a GPU the step is synchronised
with `block_until_ready` and the peak is XLA's `peak_bytes_in_use`.
"""

from __future__ import annotations

import time

import numpy as np
from harness import time_ms

#: Naive rows are skipped past this estimate of their memory (several N x 2^D float32 arrays).
MAX_NAIVE_GIB = {"cpu": 12.0, "cuda": 48.0}
#: float32 N x 2^D arrays alive at the naive step's peak (logits, log p, p and their cotangents).
NAIVE_ARRAYS = 6
_STATE: dict = {}


def cases(dims, tokens, device):
    out = []
    for d in dims:
        for algorithm in ("factorized", "naive"):
            for precision in ("highest", "default"):
                name = algorithm if precision == "highest" else f"{algorithm}/default"
                case = {
                    "backend": "jax",
                    "algorithm": name,
                    "D": d,
                    "N": tokens,
                    "device": device,
                    "dtype": "float32",
                    "precision": precision,
                }
                need = NAIVE_ARRAYS * tokens * 2**d * 4 / 2**30
                if algorithm == "naive" and need > MAX_NAIVE_GIB[device]:
                    case["skip"] = f"skipped: naive needs ~{need:.0f} GiB"
                out.append(case)
    return out


def naive_aux_loss(z, cfg, precision):
    """The N x 2^D aux loss of `z` `[N, D]` (one codebook), the baseline algorithm.

    Plain JAX: enumerate the codes, softmax the logits `2 tau z . c_j` over all of
    them, and take the entropies of the per-token and the mean distributions.
    """
    import jax
    import jax.numpy as jnp

    d, m = cfg.codebook_dim, cfg.code_magnitude
    bits = (np.arange(2**d)[:, None] >> np.arange(d - 1, -1, -1)) & 1
    codes = jnp.asarray(np.where(bits == 1, m, -m), dtype=z.dtype)  # [2^D, D]
    logits = (2.0 * cfg.inv_temperature) * jnp.matmul(z, codes.T, precision=precision)
    log_p = jax.nn.log_softmax(logits, axis=-1)  # [N, 2^D]
    p = jnp.exp(log_p)
    per_sample = -jnp.mean(jnp.sum(p * log_p, axis=-1))
    pbar = jnp.mean(p, axis=0)
    batch = -jnp.sum(jnp.where(pbar > 0, pbar * jnp.log(jnp.where(pbar > 0, pbar, 1.0)), 0.0))
    q = jax.lax.stop_gradient(jnp.where(z > 0, m, -m).astype(z.dtype))
    commit = jnp.mean((z - q) ** 2)
    return cfg.entropy_weight * (per_sample - cfg.diversity_gamma * batch) + cfg.commitment_weight * commit


def _step_fn(case):
    import jax

    import lfq

    cfg = lfq.Config(codebook_dim=case["D"], precision=case["precision"])
    if case["algorithm"].startswith("naive"):
        precision = jax.lax.Precision.HIGHEST if case["precision"] == "highest" else jax.lax.Precision.DEFAULT
        loss = lambda z: naive_aux_loss(z, cfg, precision)  # noqa: E731
    else:
        backend = lfq.get("jax")
        loss = lambda z: backend.lfq(z, cfg).aux_loss  # noqa: E731
    return jax.jit(jax.value_and_grad(loss))


def prepare(case):
    """Inputs on the case's device and the compiled step (timed as compile_ms)."""
    import jax

    device = jax.devices("cpu" if case["device"] == "cpu" else "gpu")[0]
    z = np.random.default_rng(0).standard_normal((case["N"], case["D"])).astype(np.float32)
    z = jax.device_put(z, device)
    start = time.perf_counter()
    compiled = _step_fn(case).lower(z).compile()
    _STATE.update(z=z, step=compiled, device=device, compile_ms=(time.perf_counter() - start) * 1e3)


def run_case(case, repeat):
    import jax

    z, step = _STATE["z"], _STATE["step"]
    result = {"ms": time_ms(lambda: jax.block_until_ready(step(z)), repeat), "compile_ms": _STATE["compile_ms"]}
    if case["device"] != "cpu":
        stats = _STATE["device"].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            result["peak_mib"] = stats["peak_bytes_in_use"] / 2**20
    return result
