"""The study behind docs/large-codebooks.md: `python docs/make_large_codebook_figures.py [--out docs/figures]`.

How far is each batch-entropy estimator the field uses from the exact value
$H(\\bar p)$, $\\bar p$ the mean over tokens of the $2^D$-code distributions?
Every estimator is written here from its definition in a few NumPy lines
(float64, no framework), on the bit logits $a = 4\\tau x$ of plain LFQ
(codes $\\pm 1$):

* ``exact``: $H(\\bar p)$, computed tile by tile (``exact_entropies``): the bits
  split into halves A and B, $\\bar p = P_A^T P_B / N$ made one block of rows at a
  time, its $-\\sum p\\log p$ accumulated in float64 and the block dropped, so
  D = 28 needs $N\\,2^{14}$ numbers, never $2^{28}$ per token;
* ``per_bit`` (Infinity's BitVAE): the sum over bits of the entropy of the
  bit's mean probability;
* ``groups:2`` and ``groups:9-bit`` (bsq-vit, QLIP, lfq's ``batch_entropy="groups:G"``):
  the sum of the exact entropies of G groups of consecutive bits (two groups,
  and groups of at most 9 bits, bsq-vit's group size);
* ``pooled`` (FlowMo's 9-bit sub-codes, BitDance's mixture over groups): the D
  bits cut into sub-codes of w bits (w the largest divisor of D not above 9),
  every token's sub-code distributions pooled into one $2^w$ histogram, its
  entropy times D/w (the number of sub-codes, so that uniform codes give
  $D\\log 2$ as the exact value does);
* ``eps_clamp`` (vector-quantize-pytorch's LFQ: $\\log\\max(p, 10^{-5})$) and
  ``eps_add`` (Open-MAGVIT2: $\\log(p + 10^{-5})$) applied to the full $\\bar p$;
* ``subsample``: the exact value over a random quarter of the tokens.

Token features ("like a tokenizer's encoder output"): N tokens drawn from a
mixture of N/8 clusters with Zipf weights (a few clusters dominate, so a few
codes carry much of the mass), centres correlated across dimensions through a
rank-2 mixing (bits are not independent), and a per-dimension scale spread over
a decade (some bits confident, some near zero). See ``tokenizer_like_features``.

Writes ``large_codebooks.png`` (relative error against D, one panel per tau)
and ``large_codebooks.json`` (every value, the settings, the run time). The
default run (D = 8..28, tau = 1, 10, 100) takes about a minute or two on one
core; ``--quick`` is a seconds-long smoke run for the tests.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import numpy as np

EPS = 1e-5  # the eps of vector-quantize-pytorch's and Open-MAGVIT2's batch entropy
TILE_ENTRIES = 2**22  # entries of pbar made at once (32 MiB of float64)


# --------------------------------------------------------------------------- data


def tokenizer_like_features(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """`[n, d]` features with an encoder output's structure.

    Clusters with Zipf weights (a few dominant codes), centres mixed by a
    rank-2 map (correlated bits), a per-dimension scale log-uniform over
    [0.05, 0.5] (bits from confident to undecided), and within-cluster noise at
    a third of the scale.
    """
    k = max(4, n // 8)
    weights = 1.0 / np.arange(1, k + 1) ** 1.1
    cluster = rng.choice(k, size=n, p=weights / weights.sum())
    mixing = np.eye(d) + 0.7 * rng.normal(size=(d, 2)) @ rng.normal(size=(2, d)) / np.sqrt(2)
    centres = rng.normal(size=(k, d)) @ mixing
    centres /= centres.std(axis=0)  # unit spread per dimension before the scale
    scale = np.exp(rng.uniform(np.log(0.05), np.log(0.5), size=d))
    return (centres[cluster] + rng.normal(size=(n, d)) / 3.0) * scale


# --------------------------------------------------------------------------- estimators


def log_bit_probs(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(log P(bit = -1), log P(bit = +1))` of bit logits `a`, exact for large |a|."""
    return -np.logaddexp(0.0, a), -np.logaddexp(0.0, -a)


def subcode_probs(a: np.ndarray) -> np.ndarray:
    """`[N, 2^w]` probabilities of the sub-codes of `w` bits, MSB first: the index of
    a code is `sum_i [b_i = +1] 2^(w-1-i)`."""
    log_minus, log_plus = log_bit_probs(a)
    log_p = np.zeros((a.shape[0], 1))
    for i in range(a.shape[1]):
        log_p = (log_p[:, :, None] + np.stack([log_minus[:, i], log_plus[:, i]], -1)[:, None, :]).reshape(
            a.shape[0], -1
        )
    return np.exp(log_p)


def entropy_of(p: np.ndarray) -> float:
    """$-\\sum p \\log p$ with $0 \\log 0 = 0$."""
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def exact_entropies(a: np.ndarray) -> dict[str, float]:
    """The exact $H(\\bar p)$ and the two eps variants over the full $\\bar p$, by tiles.

    `a` is `[N, D]`. `P_A` (first D//2 bits) and `P_B` (the others) are
    `[N, 2^(D/2)]`; a tile is `P_A[:, rows]^T P_B / N`, `rows` a block of A's
    sub-codes: every entry of $\\bar p$ is made once, used, and dropped.
    """
    n, d = a.shape
    half = d // 2
    p_a, p_b = subcode_probs(a[:, :half]), subcode_probs(a[:, half:])
    rows = max(1, TILE_ENTRIES // p_b.shape[1])
    exact = clamp = add = 0.0
    for start in range(0, p_a.shape[1], rows):
        tile = (p_a[:, start : start + rows].T @ p_b).ravel() / n
        positive = tile[tile > 0]
        exact -= float(np.sum(positive * np.log(positive)))
        clamp -= float(np.sum(tile * np.log(np.maximum(tile, EPS))))
        add -= float(np.sum(tile * np.log(tile + EPS)))
    return {"exact": exact, "eps_clamp": clamp, "eps_add": add}


def per_bit(a: np.ndarray) -> float:
    """Sum over bits of the binary entropy of the bit's mean probability (Infinity's BitVAE)."""
    q = np.mean(np.exp(log_bit_probs(a)[1]), axis=0)
    return float(sum(entropy_of(np.array([1 - qi, qi])) for qi in q))


def bit_groups(d: int, groups: int) -> list[tuple[int, int]]:
    """`groups` runs of consecutive bits, sizes as equal as possible, larger first (as lfq's groups:G)."""
    base, extra = divmod(d, groups)
    bounds, start = [], 0
    for g in range(groups):
        stop = start + base + (1 if g < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def grouped(a: np.ndarray, groups: int) -> float:
    """Sum of the exact entropies of the groups' marginals (bsq-vit, QLIP, lfq's groups:G): an upper bound."""
    return sum(entropy_of(subcode_probs(a[:, lo:hi]).mean(0)) for lo, hi in bit_groups(a.shape[1], groups))


def pooled_width(d: int) -> int:
    """The largest divisor of `d` not above 9 (FlowMo's sub-code width)."""
    return max(w for w in range(1, min(d, 9) + 1) if d % w == 0)


def pooled(a: np.ndarray, width: int) -> float:
    """Entropy of the one histogram that pools every sub-code of `width` bits, times D/width."""
    d = a.shape[1]
    mixture = np.mean([subcode_probs(a[:, lo : lo + width]).mean(0) for lo in range(0, d, width)], axis=0)
    return d // width * entropy_of(mixture)


def estimate_all(a: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """Every estimator of one batch of bit logits `a` `[N, D]`."""
    d = a.shape[1]
    values = exact_entropies(a)
    values["per_bit"] = per_bit(a)
    values["groups:2"] = grouped(a, 2)
    values["groups:9-bit"] = grouped(a, -(-d // 9))
    values["pooled"] = pooled(a, pooled_width(d))
    sample = rng.choice(a.shape[0], size=a.shape[0] // 4, replace=False)
    values["subsample"] = exact_entropies(a[sample])["exact"]
    return values


ESTIMATORS = ("per_bit", "groups:2", "groups:9-bit", "pooled", "eps_clamp", "eps_add", "subsample")


# --------------------------------------------------------------------------- cost


def cost_table(dims=(24, 28, 32), n: int = 16384) -> list[dict]:
    """Flops and memory (float32 numbers) per step of the exact value and of each estimator.

    Exact by tiles: forward `2 N 2^D` (the tile products) and the backward's
    recomputation `2 N 2^D` plus the two gradient products `4 N 2^D`: about
    `6 N 2^D`; memory `2 N 2^(D/2)` for P_A, P_B and one tile. The literal
    `N x 2^D` table that the eps-clamped implementations build needs `N 2^D`
    numbers (about `8 N 2^D` flops forward and backward).
    """
    rows = []
    for d in dims:
        w = pooled_width(d)
        rows.append(
            {
                "D": d,
                "N": n,
                "exact_flops": 6.0 * n * 2**d,
                "exact_memory": 2.0 * n * 2 ** -(-d // 2) + TILE_ENTRIES,
                "histogram_memory": 2.0**d,
                "literal_table_memory": float(n) * 2**d,
                "per_bit_flops": 10.0 * n * d,
                "groups2_flops": 6.0 * n * 2 * 2 ** -(-d // 2),
                "groups2_memory": 2.0 * n * 2 ** -(-d // 2),
                "groups9_flops": 6.0 * n * -(-d // 9) * 2**9,
                "pooled_flops": 6.0 * n * (d // w) * 2**w,
            }
        )
    return rows


def communication(dims=(16, 20, 24, 28, 32), n_global: int = 16384, codebooks: int = 1) -> list[dict]:
    """Bytes moved per step across replicas (float32): the histogram all-reduce
    against the tiled scheme's all-gather of the bit logits, scalar all-reduce and
    reduce-scatter of their gradient."""
    return [
        {
            "D": d,
            "histogram_allreduce": 4 * codebooks * 2**d,
            "tiled_allgather": 4 * n_global * codebooks * d,
            "tiled_reduce_scatter": 4 * n_global * codebooks * d,
            "tiled_scalar_allreduce": 4 * codebooks,
        }
        for d in dims
    ]


# --------------------------------------------------------------------------- run


def run(dims, taus, tokens, seed: int = 0) -> list[dict]:
    """One row per (D, tau): the features are drawn once per D and shared by the taus."""
    rows = []
    for d in dims:
        rng = np.random.default_rng(seed + d)
        n = tokens(d)
        x = tokenizer_like_features(rng, n, d)
        for tau in taus:
            start = time.perf_counter()
            values = estimate_all(4.0 * tau * x, rng)
            rows.append({"D": d, "tau": tau, "N": n, "seconds": time.perf_counter() - start, **values})
            errors = "  ".join(f"{k} {(values[k] - values['exact']) / values['exact']:+.3f}" for k in ESTIMATORS)
            print(f"D={d:2d} tau={tau:5g} N={n}: exact {values['exact']:.4f}  {errors}", file=sys.stderr)
    return rows


def plot(rows: list[dict], taus, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(taus), figsize=(4.2 * len(taus), 3.8), sharey=True)
    for ax, tau in zip(np.atleast_1d(axes), taus):
        sub = [r for r in rows if r["tau"] == tau]
        dims = [r["D"] for r in sub]
        for name in ESTIMATORS:
            ax.plot(dims, [100 * (r[name] - r["exact"]) / r["exact"] for r in sub], marker="o", ms=3, label=name)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_title(f"inverse temperature {tau:g}")
        ax.set_xlabel("bits per codebook D")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("(estimate - exact) / exact, %")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    fig.suptitle("Batch-entropy estimators against the exact value (tokenizer-like features)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "figures")
    parser.add_argument("--quick", action="store_true", help="D = 8, 10 on 128 tokens (a smoke run)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    taus = (1.0, 10.0, 100.0)
    if args.quick:
        dims, tokens = (8, 10), (lambda d: 128)
    else:
        # 1024 tokens up to D = 24; 256 at D = 28 keeps the exact value's 2 N 2^D flops a few seconds.
        dims, tokens = (8, 12, 16, 20, 24, 28), (lambda d: 1024 if d <= 24 else 256)
    start = time.perf_counter()
    rows = run(dims, taus, tokens)
    result = {
        "command": "python docs/make_large_codebook_figures.py" + (" --quick" if args.quick else ""),
        "features": tokenizer_like_features.__doc__.split("\n\n")[0].strip(),
        "eps": EPS,
        "rows": rows,
        "cost": cost_table(),
        "communication": communication(),
        "seconds": time.perf_counter() - start,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "large_codebooks.json").write_text(json.dumps(result, indent=1) + "\n")
    if not args.no_plot:
        plot(rows, taus, args.out / "large_codebooks.png")
    return result


if __name__ == "__main__":
    main()
