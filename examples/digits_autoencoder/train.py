"""Train the digits autoencoder with an LFQ bottleneck in PyTorch, JAX or TensorFlow.

    python examples/digits_autoencoder/train.py --backend torch
    python examples/digits_autoencoder/train.py --backend jax --steps 2000 --entropy-weight 0.0
    python examples/digits_autoencoder/train.py --backend tensorflow --out digits_tf.png

One description (spec.py) of the model, the data and the optimizer; each
framework file builds exactly that with its own LFQ layer. At the end it prints
the test reconstruction error, the code usage and the perplexity of the indices
over all 1797 images, and writes a PNG of test originals above their
reconstructions (digits_<backend>.png in the current directory unless --out).

The example's inverse temperature is 10, not the library's default of 100
(--inv-temperature changes it; docs/knobs.md compares them). It runs on one CPU
thread by default (--threads): the model is tiny, and more threads only add
contention, which on a busy 2-core machine makes a run several times slower.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from spec import Spec, load_digits_data  # noqa: E402

MODELS = {"torch": "torch_model", "jax": "jax_model", "tensorflow": "tf_model", "tf": "tf_model"}


def report(spec: Spec, data, result: dict) -> dict:
    """Reconstruction error, code usage and perplexity, from the reference's metrics."""
    import lfq

    cfg = lfq.Config(codebook_dim=spec.codebook_dim)
    usage = lfq.reference.code_usage(np.asarray(result["indices"]).reshape(-1, 1), cfg)
    return {
        "test_mse": float(np.mean((result["recon"] - data.test) ** 2)),
        "codes_used": int(round(usage.fraction_used[0] * cfg.codebook_size)),
        "code_usage": float(usage.fraction_used[0]),
        "perplexity": float(usage.perplexity[0]),
    }


def save_png(path: str, originals: np.ndarray, recon: np.ndarray, title: str, count: int = 12) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, count, figsize=(count * 0.9, 2.2))
    for i in range(count):
        for row, images in enumerate((originals, recon)):
            axes[row, i].imshow(images[i].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
            axes[row, i].axis("off")
    axes[0, 0].set_title("original", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def set_threads(backend: str, threads: int) -> None:
    """Limit the framework to `threads` CPU threads (0: leave its default)."""
    if threads <= 0:
        return
    if backend == "jax":  # read when jax initializes its CPU client
        flags = os.environ.get("XLA_FLAGS", "")
        if "intra_op_parallelism_threads" not in flags:
            eigen = " --xla_cpu_multi_thread_eigen=false" if threads == 1 else ""
            os.environ["XLA_FLAGS"] = f"{flags}{eigen} intra_op_parallelism_threads={threads}".strip()
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)
    else:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=sorted(MODELS), default="torch")
    parser.add_argument("--steps", type=int, default=Spec.steps)
    parser.add_argument("--entropy-weight", type=float, default=Spec.entropy_weight)
    parser.add_argument("--commitment-weight", type=float, default=Spec.commitment_weight)
    parser.add_argument(
        "--inv-temperature",
        type=float,
        default=Spec.inv_temperature,
        help="tau of the soft assignment (default %(default)s; the library's default is 100)",
    )
    parser.add_argument("--seed", type=int, default=Spec.seed)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for the framework (default 1; 0: the framework's own default)",
    )
    parser.add_argument("--out", default=None, help="PNG path (default: digits_<backend>.png in the current directory)")
    parser.add_argument("--json", default=None, help="also write the report to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    spec = dataclasses.replace(
        Spec(),
        steps=args.steps,
        entropy_weight=args.entropy_weight,
        seed=args.seed,
        commitment_weight=args.commitment_weight,
        inv_temperature=args.inv_temperature,
    )
    backend = "tensorflow" if args.backend == "tf" else args.backend
    if backend == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    set_threads(backend, args.threads)
    model = importlib.import_module(MODELS[args.backend])
    data = load_digits_data(spec)

    from tqdm import tqdm

    bar = tqdm(total=spec.steps, desc=f"{args.backend} LFQ autoencoder", disable=args.no_progress, mininterval=0.5)

    def progress(mse: float, aux: float) -> None:
        bar.update(1)
        bar.set_postfix(mse=f"{mse:.4f}", aux=f"{aux:+.3f}", refresh=False)

    result = model.train(spec, data, progress)
    bar.close()
    metrics = report(spec, data, result)
    out = args.out or f"digits_{args.backend}.png"
    save_png(
        out,
        data.test,
        result["recon"],
        f"{args.backend}: test MSE {metrics['test_mse']:.4f}, {metrics['codes_used']}/"
        f"{2**spec.codebook_dim} codes used, perplexity {metrics['perplexity']:.1f}",
    )
    print(
        f"backend={args.backend} steps={spec.steps} entropy_weight={spec.entropy_weight} "
        f"commitment_weight={spec.commitment_weight} inv_temperature={spec.inv_temperature} seed={spec.seed}"
    )
    print(f"test reconstruction MSE: {metrics['test_mse']:.4f}")
    print(
        f"codes used: {metrics['codes_used']} of {2**spec.codebook_dim} "
        f"({100 * metrics['code_usage']:.1f}%), perplexity {metrics['perplexity']:.1f}"
    )
    print(f"wrote {out}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                dict(
                    metrics,
                    backend=args.backend,
                    steps=spec.steps,
                    entropy_weight=spec.entropy_weight,
                    commitment_weight=spec.commitment_weight,
                    inv_temperature=spec.inv_temperature,
                    seed=spec.seed,
                    threads=args.threads,
                ),
                f,
                indent=1,
            )
    return metrics


if __name__ == "__main__":
    main()
