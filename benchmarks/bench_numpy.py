"""NumPy reference rows: the literal enumeration against the factorized exact path.

Both compute the per-sample and batch entropies of float64 inputs (forward only:
the reference's gradients are analytic functions, not autodiff). The literal
rows run the naive N x 2^D algorithm in float64 (`literal_dtype=np.float64`);
they are skipped where their N x 2^D tensors would not fit in `MAX_NAIVE_GIB`.
"""

from __future__ import annotations

import numpy as np
from harness import time_ms

import lfq
from lfq import reference

MAX_NAIVE_GIB = 12.0
_INPUTS: dict = {}


def cases(dims, tokens, device):
    if device != "cpu":
        return []
    out = []
    for d in dims:
        for algorithm in ("literal", "factorized"):
            case = {
                "backend": "numpy",
                "algorithm": algorithm,
                "D": d,
                "N": tokens,
                "device": "cpu",
                "dtype": "float64",
            }
            # logits, log p, p, p log p: about four float64 N x 2^D arrays
            need = 4 * tokens * 2**d * 8 / 2**30
            if algorithm == "literal" and (d > 16 or need > MAX_NAIVE_GIB):
                case["skip"] = f"skipped: literal needs ~{need:.0f} GiB"
            out.append(case)
    return out


def prepare(case):
    rng = np.random.default_rng(0)
    _INPUTS["cfg"] = lfq.Config(codebook_dim=case["D"])
    _INPUTS["z"] = rng.standard_normal((case["N"], case["D"]))


def run_case(case, repeat):
    cfg, z = _INPUTS["cfg"], _INPUTS["z"]
    if case["algorithm"] == "literal":
        step = lambda: reference.entropy(z, cfg, method="literal", literal_dtype=np.float64)  # noqa: E731
    else:
        step = lambda: reference.entropy(z, cfg)  # noqa: E731
    return {"ms": time_ms(step, repeat)}
