"""Regenerate every figure of the docs: `python docs/make_figures.py [--out docs/figures]`.

All figures come from the NumPy reference (no framework needed), with fixed seeds:

* `sharpening.png` — the soft assignment over the 8 codes of a D = 3 codebook for
  one input, as the inverse temperature grows.
* `training_entropies.png` — per-sample and batch entropy while free latents are
  trained by gradient descent on the aux loss, using the reference's analytic
  gradients.
* `code_usage.png` — code-usage histograms after that training, with and without
  the entropy loss, from the same collapsed start.
* `scaling.png` — time and peak memory of the exact entropy against D, literal
  enumeration versus factorized, measured here (float64, N = 1024 tokens).
"""

from __future__ import annotations

import argparse
import pathlib
import time
import tracemalloc

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import lfq  # noqa: E402
from lfq import reference  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


def sharpening(out: pathlib.Path) -> None:
    cfg = lfq.Config(codebook_dim=3)
    x = np.array([0.30, -0.05, 0.12])
    codes = reference.all_codes(cfg)
    labels = [format(j, "03b") for j in range(8)]
    fig, axes = plt.subplots(1, 4, figsize=(12, 2.8), sharey=True)
    for ax, tau in zip(axes, [0.3, 1.0, 3.0, 30.0]):
        logits = 2 * tau * codes @ x
        p = np.exp(logits - logits.max())
        p /= p.sum()
        ax.bar(labels, p, color=["C3" if j == reference.codes_to_indices(x, cfg)[0] else "C0" for j in range(8)])
        ax.set_title(rf"$\tau$ = {tau}: $H$ = {-(p * np.log(p)).sum():.2f} nats")
        ax.tick_params(axis="x", rotation=90)
    axes[0].set_ylabel("p(code | x)")
    fig.suptitle("x = (0.30, -0.05, 0.12): the soft assignment sharpens onto its code (red) as tau grows")
    fig.tight_layout()
    fig.savefig(out / "sharpening.png", dpi=110)
    plt.close(fig)


def _train(entropy_weight: float, steps: int, seed: int = 0):
    """Gradient descent on free latents z [N, D] under the aux loss; returns history and z."""
    rng = np.random.default_rng(seed)
    cfg = lfq.Config(codebook_dim=6, inv_temperature=10.0, entropy_weight=entropy_weight, commitment_weight=0.25)
    # a collapsed start: every latent close to the same code (all bits positive)
    z = 0.05 + 0.03 * rng.standard_normal((512, cfg.codebook_dim))
    history = []
    for _ in range(steps):
        h_sample, h_batch = reference.entropy(z, cfg)
        history.append((float(h_sample), float(h_batch)))
        # the loss is a mean over tokens: scale by N for a per-token step size
        z = z - 0.1 * z.shape[0] * reference.vjp("aux_loss", z, cfg)
    return cfg, z, np.array(history)


def training(out: pathlib.Path, steps: int) -> None:
    cfg, _, hist = _train(entropy_weight=0.1, steps=steps)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(hist[:, 0], label="per-sample entropy (want low)")
    ax.plot(hist[:, 1], label="batch entropy (want high)")
    ax.axhline(cfg.codebook_dim * np.log(2), ls="--", c="gray", lw=1, label=r"maximum $D \log 2$")
    ax.set_xlabel("gradient step")
    ax.set_ylabel("nats")
    ax.set_title("Training free latents on the aux loss (D = 6, 512 tokens)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "training_entropies.png", dpi=110)
    plt.close(fig)


def code_usage(out: pathlib.Path, steps: int) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3), sharey=True)
    for ax, weight in zip(axes, [0.0, 0.1]):
        cfg, z, _ = _train(entropy_weight=weight, steps=steps)
        idx = reference.codes_to_indices(z, cfg)[:, 0]
        counts = np.bincount(idx, minlength=cfg.codebook_size)
        usage = reference.code_usage(idx[:, None], cfg)
        ax.bar(np.arange(cfg.codebook_size), counts, width=1.0)
        ax.set_title(
            f"entropy_weight = {weight}: {int((counts > 0).sum())}/64 codes used, perplexity {usage.perplexity[0]:.1f}",
            fontsize=9,
        )
        ax.set_xlabel("code index")
    axes[0].set_ylabel("tokens")
    fig.tight_layout()
    fig.savefig(out / "code_usage.png", dpi=110)
    plt.close(fig)


def _measure(fn):
    tracemalloc.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds * 1e3, peak / 2**20


def scaling(out: pathlib.Path, max_literal: int, max_factorized: int) -> None:
    z_all = np.random.default_rng(0).standard_normal((1024, max_factorized))
    rows = {"literal": [], "factorized": []}
    for d in range(4, max_factorized + 1, 2):
        cfg = lfq.Config(codebook_dim=d)
        z = z_all[:, :d]
        if d <= max_literal:
            rows["literal"].append(
                (d, *_measure(lambda: reference.entropy(z, cfg, method="literal", literal_dtype=np.float64)))
            )
        rows["factorized"].append((d, *_measure(lambda: reference.entropy(z, cfg))))
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, data in rows.items():
        data = np.array(data)
        ax_t.semilogy(data[:, 0], data[:, 1], "o-", label=name)
        ax_m.semilogy(data[:, 0], data[:, 2], "o-", label=name)
    ax_t.set(xlabel="D (bits per codebook)", ylabel="ms", title="time, exact entropies, N = 1024")
    ax_m.set(xlabel="D (bits per codebook)", ylabel="MiB", title="peak memory (tracemalloc)")
    for ax in (ax_t, ax_m):
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "figures")
    parser.add_argument("--quick", action="store_true", help="fewer steps and smaller D (for tests)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    steps = 40 if args.quick else 150
    sharpening(args.out)
    training(args.out, steps)
    code_usage(args.out, steps)
    scaling(args.out, max_literal=10 if args.quick else 14, max_factorized=12 if args.quick else 20)
    print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
