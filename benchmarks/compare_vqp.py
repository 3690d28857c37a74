"""How far vector-quantize-pytorch's LFQ is from the exact losses, measured (docs/migration.md).

    pip install 'lfq[bench]'
    OMP_NUM_THREADS=1 python benchmarks/compare_vqp.py

Both layers get the same float64 inputs (so that float32 rounding plays no part)
and the same weights. For each setting the table gives the relative difference
of their aux loss from lfq's exact one, the relative size of the difference of
their gradient w.r.t. the input (||g_theirs - g_exact|| / ||g_exact||), the
cosine between the two gradients, and, with a token mask, their batch entropy
against the true one: their masked path averages no tokens, so it equals their
per-sample entropy and the diversity term is lost.
"""

from __future__ import annotations

import argparse
import platform

import torch
from lfq.backends.torch_backend import LFQ


def run(bits: int, tau: float, sigma: float, tokens: int, seed: int = 0, masked: bool = False) -> dict:
    from vector_quantize_pytorch import LFQ as TheirLFQ

    torch.manual_seed(seed)
    kwargs = dict(codebook_size=2**bits, commitment_loss_weight=0.25, entropy_loss_weight=0.1)
    ours, theirs = LFQ(**kwargs).double(), TheirLFQ(**kwargs).double()
    x = (sigma * torch.randn(1, tokens, bits, dtype=torch.float64)).requires_grad_()
    mask = torch.ones(1, tokens, dtype=torch.bool) if masked else None
    grads, losses, parts = [], [], []
    for layer, name in ((ours, "aux_loss"), (theirs, "entropy_aux_loss")):
        ret, breakdown = layer(x, inv_temperature=tau, mask=mask, return_loss_breakdown=True)
        loss = getattr(ret, name)
        (grad,) = torch.autograd.grad(loss, x)
        grads.append(grad)
        losses.append(loss.item())
        parts.append(breakdown)
    exact, theirs_grad = grads
    return {
        "D": bits,
        "tau": tau,
        "sigma": sigma,
        "mask": masked,
        "aux_rel": abs(losses[1] - losses[0]) / abs(losses[0]),
        "grad_rel": float((theirs_grad - exact).norm() / exact.norm()),
        "cosine": float(torch.nn.functional.cosine_similarity(theirs_grad.flatten(), exact.flatten(), dim=0)),
        "H_batch": float(parts[0].batch_entropy),
        "their_H_batch": float(parts[1].batch_entropy),
        "their_H_sample": float(parts[1].per_sample_entropy),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    args = parser.parse_args(argv)
    from importlib.metadata import version

    print(
        f"vector-quantize-pytorch {version('vector-quantize-pytorch')}, torch {torch.__version__}, "
        f"{platform.machine()}, N = {args.tokens} tokens, float64"
    )
    print("| D | tau | sigma | mask | aux loss rel. diff | gradient rel. diff | cosine | H_batch exact | theirs |")
    print("|---|---|---|---|---|---|---|---|---|")
    settings = [(bits, tau, sigma, False) for bits in (8, 12, 16) for tau in (1.0, 10.0, 100.0) for sigma in (1.0, 0.1)]
    settings += [(12, 100.0, 1.0, True), (12, 10.0, 0.1, True)]
    for bits, tau, sigma, masked in settings:
        r = run(bits, tau, sigma, args.tokens, masked=masked)
        print(
            f"| {r['D']} | {r['tau']:g} | {r['sigma']:g} | {'all True' if masked else '-'} | "
            f"{r['aux_rel']:.2%} | {r['grad_rel']:.2%} | {r['cosine']:.4f} | {r['H_batch']:.4f} | "
            f"{r['their_H_batch']:.4f}" + (f" (= their H_sample {r['their_H_sample']:.4f})" if masked else "") + " |"
        )


if __name__ == "__main__":
    main()
