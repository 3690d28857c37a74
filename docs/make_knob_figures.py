"""The sweep behind docs/knobs.md: `python docs/make_knob_figures.py [--out docs/figures]`.

It trains the digits autoencoder of `examples/digits_autoencoder/` (PyTorch, the
example's model, data, optimizer and 2000 steps) once per setting and seed, and
records after training, over all 1797 images: the codes used (of 1024), the
perplexity of the index histogram, the test reconstruction error, the
per-sample and batch entropy, the commitment loss, and how many of the 10 bits
are in use (both signs on at least 1% of the images); and every 100 steps the
same numbers, for the curves. One knob moves at a time from the example's
setting (inverse temperature 10, entropy weight 0.1, commitment weight 0.25):

* the inverse temperature: 1, 10, 30, 100 (100 is the library's default);
* the entropy weight: 0, 0.03, 0.1, 0.3;
* the commitment weight: 0 or 0.25, with the entropy loss (0.1) and without (0);
* three annealing schedules (geometric over the 2000 steps): the inverse
  temperature from 1 to 100 and from 10 to 100, and the entropy weight from 0.3
  to 0.03.

It writes `knobs_temperature.png`, `knobs_entropy_weight.png`,
`knobs_commitment.png`, `knobs_annealing.png` and `knobs_results.json` (every
number, the settings, the versions and the run time). Needs torch, scikit-learn
and matplotlib; one CPU thread; about 6 minutes for the default 2 seeds on the
project's 2-core machine. `--quick` is a seconds-long smoke run for the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "digits_autoencoder"
sys.path.insert(0, str(EXAMPLE))

from spec import Spec, batches, load_digits_data  # noqa: E402

BASE = {"inv_temperature": 10.0, "entropy_weight": 0.1, "commitment_weight": 0.25}


def settings() -> list[dict]:
    """Every run: a name, the knob it belongs to, its constant values and an optional schedule."""
    runs = []

    def add(group, name, schedule=None, **changes):
        if any(r["name"] == name for r in runs):
            runs[[r["name"] for r in runs].index(name)]["groups"].append(group)
            return
        runs.append({"name": name, "groups": [group], "values": dict(BASE, **changes), "schedule": schedule})

    for tau in (1.0, 10.0, 30.0, 100.0):
        add("temperature", f"tau={tau:g}", inv_temperature=tau)
    for weight in (0.0, 0.03, 0.1, 0.3):
        add("entropy_weight", "tau=10" if weight == 0.1 else f"entropy={weight:g}", entropy_weight=weight)
    add("commitment", "tau=10")
    add("commitment", "commitment=0", commitment_weight=0.0)
    add("commitment", "entropy=0")
    add("commitment", "entropy=0,commitment=0", entropy_weight=0.0, commitment_weight=0.0)
    add("annealing", "tau=10")
    add("annealing", "tau=100")
    add("annealing", "tau 1->100", schedule={"inv_temperature": (1.0, 100.0)}, inv_temperature=1.0)
    add("annealing", "tau 10->100", schedule={"inv_temperature": (10.0, 100.0)})
    add("annealing", "entropy 0.3->0.03", schedule={"entropy_weight": (0.3, 0.03)}, entropy_weight=0.3)
    return runs


def geometric(start: float, end: float, fraction: float) -> float:
    return float(start * (end / start) ** fraction)


#: the layer's name of each knob that a schedule moves
LAYER_NAMES = {
    "inv_temperature": "inv_temperature",
    "entropy_weight": "entropy_loss_weight",
    "commitment_weight": "commitment_loss_weight",
}


def set_knob(layer, field: str, value: float) -> None:
    """Change one loss knob of a torch `LFQ` layer between steps."""
    name = LAYER_NAMES[field]
    if isinstance(getattr(type(layer), name, None), property):
        setattr(layer, name, value)  # the layer's own setter
    else:
        layer.cfg = layer.cfg.replace(**{field: value})
    assert getattr(layer.cfg, field) == value, f"could not set {field} on the layer"


def train_one(run: dict, seed: int, steps: int, eval_every: int) -> dict:
    """The example's torch training loop, with an evaluation every `eval_every` steps."""
    import torch
    from torch_model import Autoencoder

    import lfq

    spec = dataclasses.replace(Spec(), steps=steps, seed=seed, **run["values"])
    data = load_digits_data(spec)
    every_image = torch.from_numpy(np.concatenate([data.train, data.test]))
    test = torch.from_numpy(data.test)
    torch.manual_seed(spec.seed)
    model = Autoencoder(spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.learning_rate)
    stream = batches(data, spec)
    history = []

    def evaluate(step: int) -> dict:
        model.eval()
        with torch.no_grad():
            recon, _, _ = model(test)
            encoded = torch.relu(model.encoder(every_image))
            (_, indices, _), parts = model.quantizer(encoded, return_loss_breakdown=True, compute_loss=True)
        model.train()
        usage = lfq.reference.code_usage(indices.numpy().reshape(-1, 1), lfq.Config(codebook_dim=spec.codebook_dim))
        bits = (indices.numpy().reshape(-1, 1) >> np.arange(spec.codebook_dim - 1, -1, -1)) & 1  # MSB first
        ones = bits.mean(axis=0)
        return {
            "step": step,
            "test_mse": float(torch.mean((recon - test) ** 2)),
            "bits_used": int(np.sum((ones >= 0.01) & (ones <= 0.99))),
            "bit_ones": [round(float(f), 4) for f in ones],
            "codes_used": int(round(usage.fraction_used[0] * 2**spec.codebook_dim)),
            "perplexity": float(usage.perplexity[0]),
            "per_sample_entropy": float(parts.per_sample_entropy),
            "batch_entropy": float(parts.batch_entropy),
            "commitment": float(parts.commitment),
        }

    start = time.perf_counter()
    for step in range(steps):
        if run["schedule"]:
            for field, (a, b) in run["schedule"].items():
                set_knob(model.quantizer, field, geometric(a, b, step / max(steps - 1, 1)))
        if step % eval_every == 0:
            history.append(evaluate(step))
        x = torch.from_numpy(next(stream))
        recon, _, aux_loss = model(x)
        loss = torch.mean((recon - x) ** 2) + aux_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = evaluate(steps)
    history.append(final)
    return dict(final, seed=seed, seconds=time.perf_counter() - start, history=history)


def summary(runs: list[dict]) -> dict:
    """Mean and per-seed values of the final metrics of each setting."""
    out = {}
    for run in runs:
        keys = (
            "codes_used",
            "bits_used",
            "perplexity",
            "test_mse",
            "per_sample_entropy",
            "batch_entropy",
            "commitment",
        )
        out[run["name"]] = {
            k: {"mean": float(np.mean([r[k] for r in run["results"]])), "per_seed": [r[k] for r in run["results"]]}
            for k in keys
        }
    return out


def _runs_of(runs, group):
    return [r for r in runs if group in r["groups"]]


def _mean(run, key):
    return float(np.mean([r[key] for r in run["results"]]))


def _scatter_seeds(ax, x, run, key, color):
    ax.plot([x] * len(run["results"]), [r[key] for r in run["results"]], "o", color=color, alpha=0.35, ms=4)


def plot_sweep(runs, group, knob, xlabel, path):
    chosen = sorted(_runs_of(runs, group), key=lambda r: r["values"][knob])
    xs = range(len(chosen))
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.3))
    for ax, key, label in zip(
        axes,
        ("codes_used", "bits_used", "test_mse", "per_sample_entropy"),
        ("codes used (of 1024)", "bits in use (of 10)", "test reconstruction MSE", "per-sample entropy (nats)"),
    ):
        ax.plot(xs, [_mean(r, key) for r in chosen], "-", color="C0")
        for x, r in zip(xs, chosen):
            _scatter_seeds(ax, x, r, key, "C0")
        ax.set_xticks(xs, [f"{r['values'][knob]:g}" for r in chosen])
        ax.set_xlabel(xlabel)
        ax.set_title(label, fontsize=10)
    axes[1].set_ylim(-0.5, 10.5)
    seeds = len(chosen[0]["results"])
    fig.suptitle(
        f"digits autoencoder, {chosen[0]['results'][0]['step']} steps: line = mean of {seeds} seeds, "
        "dots = each seed (the other knobs at tau 10, entropy weight 0.1, commitment weight 0.25)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_commitment(runs, path):
    chosen = _runs_of(runs, "commitment")
    labels = [
        f"entropy {r['values']['entropy_weight']:g}\ncommitment {r['values']['commitment_weight']:g}" for r in chosen
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
    panels = (
        ("codes_used", "codes used (of 1024)", "{:.0f}"),
        ("test_mse", "test reconstruction MSE", "{:.4f}"),
        ("commitment", "commitment loss mean (x - q)^2: feature scale", "{:.2g}"),
    )
    for ax, (key, label, fmt) in zip(axes, panels):
        means = [_mean(r, key) for r in chosen]
        ax.bar(range(len(chosen)), means, color=["C0", "C1", "C3", "C2"])
        for i, r in enumerate(chosen):
            _scatter_seeds(ax, i, r, key, "k")
            ax.annotate(
                fmt.format(means[i]),
                (i, means[i]),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.set_xticks(range(len(chosen)), labels, fontsize=8)
        ax.set_title(label, fontsize=10)
    axes[0].set_yscale("log")
    axes[0].set_ylim(0.7, 2000)
    axes[2].set_yscale("log")
    axes[2].set_ylim(top=100 * max(_mean(r, "commitment") for r in chosen))
    axes[1].set_ylim(top=1.15 * max(_mean(r, "test_mse") for r in chosen))
    fig.suptitle(
        "the commitment weight, with and without the entropy loss (tau 10; bars and labels = mean, dots = seeds)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_annealing(runs, path):
    chosen = _runs_of(runs, "annealing")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for color, run in zip(("C0", "C3", "C2", "C4", "C1"), chosen):
        history = run["results"][0]["history"]
        steps = [h["step"] for h in history]
        axes[0].plot(steps, [h["codes_used"] for h in history], color=color, label=run["name"])
        axes[1].plot(steps, [h["test_mse"] for h in history], color=color, label=run["name"])
    axes[0].set_title("codes used (of 1024) during training", fontsize=10)
    axes[1].set_title("test reconstruction MSE during training", fontsize=10)
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "constant inverse temperature 10 or 100, and three annealing schedules (seed "
        f"{chosen[0]['results'][0]['seed']})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_all(runs: list[dict], out: pathlib.Path) -> None:
    plot_sweep(runs, "temperature", "inv_temperature", "inverse temperature tau", out / "knobs_temperature.png")
    plot_sweep(runs, "entropy_weight", "entropy_weight", "entropy weight", out / "knobs_entropy_weight.png")
    plot_commitment(runs, out / "knobs_commitment.png")
    plot_annealing(runs, out / "knobs_annealing.png")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "figures")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=Spec.steps)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="20 steps, one seed (a smoke run for the tests)")
    parser.add_argument(
        "--replot", action="store_true", help="only redraw the figures from the knobs_results.json in --out"
    )
    args = parser.parse_args(argv)
    if args.replot:
        report = json.loads((args.out / "knobs_results.json").read_text())
        plot_all(report["runs"], args.out)
        return report
    if args.quick:
        args.seeds, args.steps, args.eval_every = [0], 20, 10
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = settings()
    start = time.perf_counter()
    for run in runs:
        run["results"] = []
        for seed in args.seeds:
            result = train_one(run, seed, args.steps, args.eval_every)
            run["results"].append(result)
            print(
                f"{run['name']:>24} seed {seed}: {result['codes_used']:4d} codes, perplexity "
                f"{result['perplexity']:6.1f}, {result['bits_used']:2d} bits, test MSE {result['test_mse']:.4f}, H_sample "
                f"{result['per_sample_entropy']:.3f}, H_batch {result['batch_entropy']:.3f} "
                f"({result['seconds']:.1f} s)",
                flush=True,
            )
    seconds = time.perf_counter() - start
    plot_all(runs, args.out)
    import sklearn

    report = {
        "command": "python docs/make_knob_figures.py" + (" --quick" if args.quick else ""),
        "settings": {
            "steps": args.steps,
            "seeds": args.seeds,
            "eval_every": args.eval_every,
            "threads": args.threads,
            "base": BASE,
            "spec": dataclasses.asdict(dataclasses.replace(Spec(), steps=args.steps)),
        },
        "seconds": round(seconds, 1),
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sklearn": sklearn.__version__,
            "processor": platform.machine(),
        },
        "summary": summary(runs),
        "runs": [{k: v for k, v in run.items()} for run in runs],
    }
    (args.out / "knobs_results.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{len(runs)} settings x {len(args.seeds)} seeds in {seconds:.0f} s; wrote {args.out}/knobs_*")
    return report


if __name__ == "__main__":
    main()
