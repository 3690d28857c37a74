"""Benchmark LFQ's loss computation: every backend, naive versus factorized.

    python benchmarks/run.py                       # numpy rows, D = 8..14, N = 4096
    python benchmarks/run.py --backends numpy torch --dims 10 14 18 --tokens 16384

Prints a table (backend, algorithm, D, N, milliseconds per step, compile time
where there is one, peak memory) and optionally writes JSON. Results measured
so far, with machine and date, are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

BACKEND_MODULES = {"numpy": "numpy", "torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["numpy"], choices=sorted(BACKEND_MODULES))
    parser.add_argument("--dims", nargs="+", type=int, default=[8, 10, 12, 14], help="codebook_dim values")
    parser.add_argument("--tokens", type=int, default=4096, help="N, tokens per batch")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every case in this process (faster; on a GPU the peak comes from the "
        "framework's counters, on the CPU it is then only an upper bound)",
    )
    parser.add_argument("--_case", help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    if args._case:  # child process: one case
        print(json.dumps(harness.run_in_this_process(json.loads(args._case), args.repeat)))
        return 0

    rows = []
    for backend in args.backends:
        try:
            module = importlib.import_module(f"bench_{BACKEND_MODULES[backend]}")
        except ImportError as err:
            rows.append({"backend": backend, "note": f"skipped: {err}"})
            continue
        for case in module.cases(args.dims, args.tokens, args.device):
            case = dict(case, module=BACKEND_MODULES[backend])
            result = case.pop("skip", None)
            if result:
                result = {"note": result}
            elif args.in_process:
                result = harness.run_guarded(case, args.repeat)
            else:
                result = harness.run_isolated(case, args.repeat, args.timeout)
            rows.append({**case, **result})
            print(harness.format_table([rows[-1]]).splitlines()[-1], flush=True)
    print()
    print(harness.format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
