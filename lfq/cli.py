"""The `lfq` command: backend information and the conformance suite.

    lfq info                                   # registered backends, availability, dtypes, modes, versions
    lfq conformance                            # every available backend against the reference
    lfq conformance --backend torch --dtype float32 --json report.json
    lfq conformance --register mine=my_pkg.backend:MyBackend --backend mine
    lfq conformance --cross                    # installed backends pairwise, same inputs
    lfq conformance --write-golden             # regenerate the golden vectors
    lfq conformance --check-golden             # check that they reproduce (float64 results within a tolerance)

`lfq conformance` exits with status 1 when any check fails (2 on a usage error)
and prints a reproducer (config, seed, Python snippet) for each failure.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys

import lfq

__all__ = ["main"]


def _framework_version(name: str) -> str:
    """Version of the framework a registered backend needs ("-" when it needs none)."""
    from lfq import registry

    requires = registry.framework(name)
    if requires is None:
        return "-"
    module = sys.modules.get(requires)
    version = getattr(module, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version(requires)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
    return f"{requires} {version}"


def cmd_info(args) -> int:
    import numpy as np

    print(f"lfq {lfq.__version__} (spec {lfq.SPEC_VERSION}), numpy {np.__version__}, "
          f"Python {platform.python_version()}")
    rows = [("backend", "available", "dtypes", "modes", "framework")]
    notes = []
    for name in lfq.list_backends():
        try:
            be = lfq.get(name)
        except lfq.BackendUnavailable as err:
            rows.append((name, "no", "-", "-", "-"))
            notes.append(f"{name}: {err}")
            continue
        except Exception as err:  # a registered backend that fails to import: say why
            rows.append((name, "error", "-", "-", "-"))
            notes.append(f"{name}: {type(err).__name__}: {err}")
            continue
        rows.append((name, "yes", ",".join(be.dtypes), ",".join(be.modes), _framework_version(name)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for note in notes:
        print(note)
    return 0


def _register(items) -> None:
    for item in items or []:
        name, sep, target = item.partition("=")
        if not sep or not name or target.count(":") != 1:
            raise SystemExit(f"lfq conformance: --register {item!r}: use NAME=module.path:ClassName")
        lfq.register(name, target)


def _backends(args) -> list[str]:
    if args.backend:
        for name in args.backend:
            try:
                lfq.get(name)
            except (ValueError, lfq.BackendUnavailable) as err:
                print(f"lfq conformance: --backend {name}: {err}", file=sys.stderr)
                raise SystemExit(2) from err
        return list(dict.fromkeys(args.backend))
    names = []
    for name in lfq.list_backends():
        if lfq.is_available(name):
            names.append(name)
        else:
            try:
                lfq.get(name)
            except lfq.BackendUnavailable as err:
                print(f"skipping {name}: {err}", file=sys.stderr)
    return names


def cmd_conformance(args) -> int:
    from lfq import conformance
    from lfq.conformance import golden

    if args.write_golden is not None:
        for path in golden.write(args.write_golden or None):
            print(path)
        return 0
    if args.check_golden is not None:
        result = golden.check(args.check_golden or None)
        for problem in result.problems:
            print(problem)
        print(result.summary())
        return 0 if result.ok else 1
    _register(args.register)
    names = _backends(args)
    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if args.verbose else None
    options = dict(dtypes=args.dtype or None, full=args.full, device=args.device, cases=args.case or None,
                   progress=progress)
    if args.cross:
        if len(names) < 2:
            print(f"lfq conformance --cross needs two or more available backends, got {names}", file=sys.stderr)
            return 2
        report = conformance.cross(names, **options)
    else:
        report = conformance.run(names, **options)
    print(report.table())
    if report.failures:
        print()
        print(report.failure_details(args.max_failures))
    if args.json:
        report.write_json(args.json)
        print(f"wrote {args.json}")
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    from lfq.validation import FLOAT_DTYPES

    parser = argparse.ArgumentParser(prog="lfq", description="Lookup-free quantization: backends and conformance.")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="registered backends: availability, dtypes, modes, versions")
    info.set_defaults(run=cmd_info)
    conf = commands.add_parser("conformance", help="check backends against the reference (exit 1 on failure)")
    conf.add_argument("--backend", action="append", metavar="NAME",
                      help="backend to check (repeatable; default: every available one)")
    conf.add_argument("--register", action="append", metavar="NAME=MODULE:CLASS",
                      help="register a backend first, as lfq.register(NAME, 'MODULE:CLASS')")
    conf.add_argument("--device", metavar="DEVICE",
                      help="device given to asarray(..., device=DEVICE), e.g. cpu or cuda (default: none given)")
    conf.add_argument("--dtype", action="append", choices=FLOAT_DTYPES,
                      help="input dtype to run (repeatable; default: each case's own, all with --full)")
    conf.add_argument("--case", action="append", metavar="NAME", help="run only this case (repeatable)")
    conf.add_argument("--full", action="store_true",
                      help="every case in every dtype, all gradients, more compiled checks (slow)")
    conf.add_argument("--cross", action="store_true", help="compare the backends pairwise instead")
    conf.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    conf.add_argument("--max-failures", type=int, default=10, metavar="N",
                      help="failures printed with their reproducers (default 10)")
    conf.add_argument("-v", "--verbose", action="store_true", help="print each (backend, case, dtype) as it runs")
    conf.add_argument("--write-golden", nargs="?", const="", default=None, metavar="DIR",
                      help="regenerate the golden vectors (into DIR, default the package's) and exit")
    conf.add_argument("--check-golden", nargs="?", const="", default=None, metavar="DIR",
                      help="check that the golden vectors (in DIR, default the package's) regenerate: integers, "
                           "inputs and codes bit for bit, float64 results within "
                           "lfq.conformance.golden.REGENERATION_TOLERANCE; exit 1 on a difference")
    conf.set_defaults(run=cmd_conformance)
    return parser


def main(argv=None) -> int:
    """Entry point of the `lfq` console script."""
    # TensorFlow's C++ start-up chatter would drown the tables (set before it loads).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # the output went into `head` or a closed pager
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
