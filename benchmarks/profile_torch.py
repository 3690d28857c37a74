"""Where a torch LFQ training step spends its time: launch-bound or kernel-bound?

    python benchmarks/profile_torch.py [--device cuda] [--dims 14 16 18] [--tokens 16384]

For each D and each way of running (eager, `compiled()`, and on a GPU
`compiled("reduce-overhead")`, i.e. CUDA graphs) it profiles a few forward +
backward steps of the aux loss (float32, one codebook) with `torch.profiler` and
prints one row per run:

* wall ms: the step's median wall time (synchronised), as the benchmark measures it;
* busy ms: the time the device (the CPU's operators on a CPU run) spent in
  kernels per step; wall >> busy means the step is bound by launches and Python,
  wall ~ busy means the kernels themselves are the cost;
* kernels: kernel launches per step (on a CPU run: outermost operator calls,
  forward and backward; inductor's fused C++ kernels are not profiled there);
* same: whether the variant's loss and gradient equal eager mode's (relative
  1e-5), so that a fast variant is also a correct one on this device;
* top kernels: the three largest by time, with their share of busy time.

This is the first thing to run on a GPU when a timing target is missed; the
numbers go into benchmarks/RESULTS.md with the card's name.
"""

from __future__ import annotations

import argparse
import collections

import torch
from harness import time_ms
from torch.profiler import ProfilerActivity, profile

import lfq

STEPS = 5


def _variants(device: str):
    be = lfq.get("torch")
    out = [("eager", be), ("compiled", be.compiled())]
    if device == "cuda":
        out.append(("cudagraphs", be.compiled("reduce-overhead")))
    return out


def _step_fn(be, cfg, z):
    def step():
        z.grad = None
        be.lfq(z, cfg).aux_loss.backward()

    return step


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _kernel_events(prof, device: str):
    """(name, microseconds) of every kernel (GPU) or top-level operator (CPU)."""
    events = []
    for event in prof.events():
        if device == "cuda":
            if event.device_type == torch.autograd.DeviceType.CUDA:
                events.append((event.name, event.device_time))
        elif _is_op(event) and not _has_op_ancestor(event):
            events.append((event.name, event.cpu_time_total))
    return events


def _is_op(event) -> bool:
    return event.name.startswith(("aten::", "lfq::"))


def _has_op_ancestor(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if _is_op(parent):
            return True
        parent = parent.cpu_parent
    return False


def _matches_eager(be, cfg, z) -> bool:
    """Loss and gradient of `be` against the eager backend, to float32 accuracy."""
    eager = lfq.get("torch")
    got, want = [], []
    for backend, out in ((be, got), (eager, want)):
        loss = backend.lfq(z, cfg).aux_loss
        (grad,) = torch.autograd.grad(loss, z)
        out.extend([loss.detach().clone(), grad.clone()])  # clone: CUDA graphs reuse outputs
    return all(torch.allclose(g, w, rtol=1e-5, atol=1e-7) for g, w in zip(got, want))


def profile_case(name: str, be, d: int, tokens: int, device: str) -> dict:
    cfg = lfq.Config(codebook_dim=d)
    z = (torch.randn(tokens, d, generator=torch.Generator().manual_seed(0)) * 0.1).to(device)
    z.requires_grad_(True)
    step = _step_fn(be, cfg, z)
    for _ in range(4):  # compile, and let CUDA graph trees record
        step()
    _sync(device)
    same = _matches_eager(be, cfg, z)
    wall_ms = time_ms(step, STEPS, warmup=0, sync=lambda: _sync(device))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(STEPS):
            step()
        _sync(device)
    events = _kernel_events(prof, device)
    busy_us = sum(us for _, us in events) / STEPS
    by_name = collections.Counter()
    for kernel, us in events:
        by_name[kernel[:48]] += us
    top = ", ".join(f"{kernel} {100 * us / max(busy_us * STEPS, 1e-9):.0f}%" for kernel, us in by_name.most_common(3))
    return {
        "variant": name,
        "D": d,
        "N": tokens,
        "wall_ms": wall_ms,
        "busy_ms": busy_us / 1e3,
        "kernels": len(events) / STEPS,
        "same": "yes" if same else "NO",
        "top": top,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dims", nargs="+", type=int, default=[14, 16, 18])
    parser.add_argument("--tokens", type=int, default=16384)
    args = parser.parse_args(argv)
    print(f"{'variant':>10} {'D':>3} {'N':>6} {'wall ms':>8} {'busy ms':>8} {'kernels':>8} {'same':>4}  top kernels")
    for d in args.dims:
        for name, be in _variants(args.device):
            row = profile_case(name, be, d, args.tokens, args.device)
            print(
                f"{row['variant']:>10} {row['D']:>3} {row['N']:>6} {row['wall_ms']:>8.3f} {row['busy_ms']:>8.3f} "
                f"{row['kernels']:>8.0f} {row['same']:>4}  {row['top']}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
