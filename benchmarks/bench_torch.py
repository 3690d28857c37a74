"""PyTorch rows: the factorized exact LFQ (eager, compiled) against the usual N x 2^D algorithm.

Training rows time one forward + backward of the aux loss, float32, input `[N, D]`
(one codebook):

* "factorized-eager" / "factorized-compiled": `lfq.get("torch").lfq(...)` and its
  `compiled()` twin (inductor, fullgraph); the compile time is "compile_ms".
* "factorized-cudagraphs" (CUDA only): `compiled("reduce-overhead")`, the compiled
  kernels replayed as CUDA graphs (no per-kernel launch cost).
* "naive": the usual algorithm, written here in torch: logits against all 2^D
  codes, softmax, entropies of the N x 2^D probabilities.
* "vqtorch": vector-quantize-pytorch's `LFQ` (its own N x 2^D algorithm), when
  that package is importable (`pip install 'lfq[bench]'`).

N x 2^D rows are skipped, with a note, where their tensors would not fit.

Inference rows (CUDA; also runnable on the CPU): quantize + indices of `[N, D]`
under `no_grad`, as achieved GB/s (bytes read + written) beside a device-to-device
copy of the same input measured in the same process.

Peak memory is the step's own: on CUDA `max_memory_allocated` over what was
allocated before the step (inputs excluded); on the CPU the growth of the resident
set's high-water mark, reset after the warm-up (which also holds the compile).
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import time

import torch
from harness import time_ms

import lfq

#: Budget for the N x 2^D tensors of the naive rows, GiB.
MAX_NAIVE_GIB = {"cpu": 8.0, "cuda": 60.0}
#: float32 N x 2^D arrays alive at the naive step's peak (logits, log p, p, p log p
#: and their gradients), measured on the CPU at D=14.
NAIVE_ARRAYS = 6
#: Tokens of the inference rows: enough bytes to reach a GPU's bandwidth.
INFERENCE_TOKENS = 1 << 22

_STATE: dict = {}


def has_vqtorch() -> bool:
    return importlib.util.find_spec("vector_quantize_pytorch") is not None


def cases(dims, tokens, device):
    out = []
    algorithms = ["naive", "factorized-eager", "factorized-compiled", "vqtorch"]
    if device == "cuda":  # on a CPU the CUDA-graph mode compiles as the default one
        algorithms.insert(3, "factorized-cudagraphs")
    for d in dims:
        for algorithm in algorithms:
            case = {
                "backend": "torch",
                "algorithm": algorithm,
                "D": d,
                "N": tokens,
                "device": device,
                "dtype": "float32",
            }
            need = NAIVE_ARRAYS * tokens * 2**d * 4 / 2**30
            if algorithm in ("naive", "vqtorch") and need > MAX_NAIVE_GIB[device]:
                case["skip"] = f"skipped: N x 2^D needs ~{need:.0f} GiB"
            elif algorithm == "vqtorch" and not has_vqtorch():
                case["skip"] = "skipped: pip install vector-quantize-pytorch"
            out.append(case)
        if device == "cuda":
            for algorithm in ("inference-eager", "inference-compiled"):
                out.append(
                    {
                        "backend": "torch",
                        "algorithm": algorithm,
                        "D": d,
                        "N": max(tokens, INFERENCE_TOKENS),
                        "device": device,
                        "dtype": "float32",
                    }
                )
    return out


def naive_aux_loss(z, codebook, cfg: lfq.Config):
    """The usual LFQ loss: softmax over all 2^D codes. `z` `[N, D]`, `codebook` `[2^D, D]`."""
    logits = (2.0 * cfg.inv_temperature) * (z @ codebook.T)  # [N, 2^D]
    log_p = torch.log_softmax(logits, dim=-1)
    p = log_p.exp()
    per_sample = -(p * log_p).sum(-1).mean()
    pbar = p.mean(0)
    # The clamp keeps log finite where a code's mean probability underflows to 0.
    batch = -(pbar * pbar.clamp_min(torch.finfo(pbar.dtype).tiny).log()).sum()
    codes = torch.where(z > 0, cfg.scale, -cfg.scale)
    commitment = (z - codes).square().mean()
    return cfg.entropy_weight * (per_sample - cfg.diversity_gamma * batch) + cfg.commitment_weight * commitment


def all_codes(cfg: lfq.Config, device, dtype=torch.float32) -> torch.Tensor:
    """`[2^D, D]` every code, row j = code of index j (MSB first)."""
    j = torch.arange(cfg.codebook_size, device=device)[:, None]
    bits = (j >> torch.arange(cfg.codebook_dim - 1, -1, -1, device=device)) & 1
    return torch.where(bits == 1, cfg.scale, -cfg.scale).to(dtype)


def _sync(device):
    return torch.cuda.synchronize if device == "cuda" else None


def _training_step(case, z, cfg):
    algorithm, device = case["algorithm"], case["device"]
    if algorithm == "naive":
        codebook = all_codes(cfg, device)
        return lambda: naive_aux_loss(z, codebook, cfg).backward()
    if algorithm == "vqtorch":
        from vector_quantize_pytorch import LFQ as VQLFQ

        layer = (
            VQLFQ(
                codebook_size=cfg.codebook_size,
                dim=cfg.codebook_dim,
                entropy_loss_weight=cfg.entropy_weight,
                commitment_loss_weight=cfg.commitment_weight,
                diversity_gamma=cfg.diversity_gamma,
            )
            .to(device)
            .train()
        )
        x = z[None]  # [1, N, D]
        return lambda: layer(x, inv_temperature=cfg.inv_temperature).entropy_aux_loss.backward()
    be = lfq.get("torch")
    if algorithm == "factorized-compiled":
        be = be.compiled()
    elif algorithm == "factorized-cudagraphs":
        be = be.compiled("reduce-overhead")
    return lambda: be.lfq(z, cfg).aux_loss.backward()


def _inference_step(case, z, cfg):
    be = lfq.get("torch")

    def quantize_and_index(z):
        return be.quantize(z, cfg), be.codes_to_indices(z, cfg)

    fn = (
        torch.compile(quantize_and_index, fullgraph=True)
        if case["algorithm"] == "inference-compiled"
        else quantize_and_index
    )

    def step():
        with torch.no_grad():
            return fn(z)

    return step


def prepare(case):
    device = case["device"]
    cfg = lfq.Config(codebook_dim=case["D"])
    gen = torch.Generator(device="cpu").manual_seed(0)
    z = (torch.randn(case["N"], case["D"], generator=gen) * 0.1).to(device)
    inference = case["algorithm"].startswith("inference")
    if not inference:
        z.requires_grad_(True)
    step = (_inference_step if inference else _training_step)(case, z, cfg)
    start = time.perf_counter()
    step()  # warm-up: compiles where there is something to compile
    if device == "cuda":
        torch.cuda.synchronize()
    first_ms = (time.perf_counter() - start) * 1e3
    if case["algorithm"] == "factorized-cudagraphs":
        for _ in range(3):  # CUDA graph trees warm up, then record, then replay
            step()
    _STATE.update(z=z, step=step, first_ms=first_ms)


def _reset_cpu_peak() -> bool:
    """Return freed heap to the OS and reset the resident high-water mark (Linux)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _copy_gbps(z, repeat) -> float:
    dst = torch.empty_like(z)
    ms = time_ms(lambda: dst.copy_(z), repeat, sync=_sync(z.device.type))
    return 2 * z.numel() * z.element_size() / (ms * 1e6)


def run_case(case, repeat):
    device, step, z = case["device"], _STATE["step"], _STATE["z"]
    result = {}
    if case["algorithm"] in ("factorized-compiled", "factorized-cudagraphs"):
        result["compile_ms"] = _STATE["first_ms"]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        result["ms"] = time_ms(step, repeat, sync=torch.cuda.synchronize)
        result["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        measured = _reset_cpu_peak()
        before = _rss_kib("VmRSS")
        result["ms"] = time_ms(step, repeat)
        if measured:
            result["peak_mib"] = max(0.0, (_rss_kib("VmHWM") - before) / 1024)
    if case["algorithm"].startswith("inference"):
        # Bytes: read z, write the codes (z's size) and the int64 indices.
        moved = 2 * z.numel() * z.element_size() + z.shape[0] * 8
        gbps, copy = moved / (result["ms"] * 1e6), _copy_gbps(z, repeat)
        result.update(gbps=gbps, copy_gbps=copy, note=f"{gbps:.0f} GB/s; copy {copy:.0f} GB/s")
    return result
