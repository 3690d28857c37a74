"""The `lfq` command: backend information and the conformance suite.

    lfq info                                   # registered backends, availability, dtypes, modes, versions
    lfq conformance                            # every available backend against the reference
    lfq conformance --backend torch --dtype float32 --json report.json
    lfq conformance --register mine=my_pkg.backend:MyBackend --backend mine
    lfq conformance --list-cases               # the case table: name, dtypes, compiled, what it exercises
    lfq conformance --cross                    # installed backends pairwise, same inputs
    lfq conformance --write-golden             # regenerate the golden vectors
    lfq conformance --check-golden             # check that they reproduce (float64 results within a tolerance)

`lfq conformance` exits with status 1 when any check fails (2 on a usage error)
and prints a reproducer (config, seed, Python snippet) for each failure. Two or
more backends are checked side by side, each in a process of its own
(`lfq.cli_parallel`; `--jobs N` at most N at once, `--jobs 1` one after the other
in this process). Progress goes to stderr (`lfq.cli_progress`: a running counter
on a terminal, a line per backend and one at least every 15 s otherwise; every
step with -v, nothing with -q), the report to stdout. `--register` imports the named module, which runs its code.

`lfq info` imports no framework: it lists the built-in backends from the
registry's static metadata and the installed packages' metadata (it takes a
fraction of a second); a backend registered with --register is imported to ask it.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import platform
import sys
import time

import lfq
from lfq.cli_progress import Progress, progress_mode

__all__ = ["main"]


class UsageError(Exception):
    """A bad command line: `main` prints the message as one line and exits with status 2."""


# ------------------------------------------------------------------ lfq info


def _distribution_version(module: str, candidates=()) -> str:
    """Version of the installed distribution providing top-level `module`, without importing it."""
    loaded = sys.modules.get(module)
    version = getattr(loaded, "__version__", None)
    if isinstance(version, str):
        return version
    for dist in tuple(candidates) or (module,):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    # the slow way (every installed distribution's file list): a framework under another name
    for dist in importlib.metadata.packages_distributions().get(module, ()):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "?"


def _framework_version(name: str) -> str:
    """Version of the framework a registered backend needs ("-" when it needs none)."""
    from lfq import registry

    requires = registry.framework(name)
    if requires is None:
        return "-"
    static = registry.static_info(name)
    top = requires.partition(".")[0]
    return f"{requires} {_distribution_version(top, static.distributions if static else ())}"


def _info_row(name: str, notes: list[str]) -> tuple[str, ...]:
    from lfq import registry

    reason = registry.unavailable_reason(name)
    if reason is not None:
        notes.append(f"{name}: {reason}")
        return (name, "no", "-", "-", "-")
    static = registry.static_info(name)
    if static is not None:  # built in: metadata only, no import
        return (name, "yes", ",".join(static.current_dtypes()), ",".join(static.modes), _framework_version(name))
    try:  # registered from outside: only the class knows its dtypes and modes
        be = lfq.get(name)
        dtypes, modes = ",".join(be.dtypes), ",".join(be.modes)
    except Exception as err:  # a registered backend that fails to import: say why
        notes.append(f"{name}: {_load_problem(name, err)}")
        return (name, "error", "-", "-", "-")
    return (name, "yes", dtypes, modes, _framework_version(name))


def cmd_info(args) -> int:
    import numpy as np

    _register(args.register)
    print(
        f"lfq {lfq.__version__} (spec {lfq.SPEC_VERSION}), numpy {np.__version__}, Python {platform.python_version()}"
    )
    rows = [("backend", "available", "dtypes", "modes", "framework")]
    notes: list[str] = []
    for name in lfq.list_backends():
        rows.append(_info_row(name, notes))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for note in notes:
        print(note)
    return 0


# ------------------------------------------------------------------ backends by name

_REGISTERED: dict[str, str] = {}  # name -> the --register item that registered it


def _register(items) -> None:
    for item in items or []:
        name, sep, target = item.partition("=")
        module, colon, attr = target.partition(":")
        if not sep or not name or not colon or not module or not attr or ":" in attr:
            raise UsageError(f"--register {item!r}: use NAME=MODULE:CLASS, e.g. mine=my_pkg.backend:MyBackend")
        if os.getcwd() not in sys.path and "" not in sys.path:
            # as `python -m` does; the `lfq` script's path starts at its own folder instead
            sys.path.append(os.getcwd())
        lfq.register(name, target)
        _REGISTERED[name] = item


def _load_problem(name: str, err: Exception) -> str:
    """Why registered backend `name` failed to load, as one line with the fix."""
    from lfq import registry

    target = registry._REGISTRY[registry._resolve(name)][0]
    module, _, attr = target.partition(":")
    if isinstance(err, ModuleNotFoundError) and err.name and (module == err.name or module.startswith(err.name + ".")):
        return (
            f"cannot import module {module!r} (no module named {err.name!r}): check the spelling, "
            "install it, or put its folder on PYTHONPATH"
        )
    if isinstance(err, AttributeError) and attr in str(err) and isinstance(sys.modules.get(module), type(sys)):
        found = [a for a in dir(sys.modules[module]) if not a.startswith("_")]
        close = difflib.get_close_matches(attr, found, n=3)
        hint = f": did you mean {', '.join(close)}?" if close else ""
        return f"module {module!r} has no attribute {attr!r}{hint}"
    where = "importing" if module not in sys.modules else f"creating {attr}()"
    return f"{type(err).__name__} while {where} {target!r}: {err}"


def _load(name: str, asked: bool, status, device: str | None = None) -> bool:
    """Load backend `name`: True when it can run; False (said why) when it is skipped.

    Raises `UsageError` for a backend asked for by name (or registered here) that cannot
    load, or cannot use `device` (`--device cuda` where there is no CUDA).
    """
    flag = f"--register {_REGISTERED[name]}" if name in _REGISTERED else f"--backend {name}"
    start = time.perf_counter()
    status(f"loading {name}", "live")
    try:
        lfq.get(name)
    except ValueError as err:  # unknown name
        raise UsageError(f"--backend {name}: {err}") from None
    except lfq.BackendUnavailable as err:
        if asked:
            raise UsageError(f"--backend {name}: {err}") from None
        status(f"skipping {name}: {err}")
        return False
    except Exception as err:  # a backend that fails to import or to start
        problem = _load_problem(name, err) if name in _REGISTERED or asked else f"{type(err).__name__}: {err}"
        if asked or name in _REGISTERED:
            raise UsageError(f"{flag}: {problem}") from None
        status(f"skipping {name}: it failed to load: {problem}")
        return False
    device_problem = None if device is None else _device_problem(name, device)
    if device_problem is not None:
        problem = device_problem
        if asked or name in _REGISTERED:
            raise UsageError(f"--device {device}: {problem}")
        status(f"skipping {name}: --device {device}: {problem}")
        return False
    status(f"loaded {name} ({time.perf_counter() - start:.1f} s)", "log")
    return True


def _backends(args, status) -> list[str]:
    if args.backend:
        for name in args.backend:
            _load(name, True, status, args.device)
        return list(dict.fromkeys(args.backend))
    # the backends registered here first: a mistake in --register shows before any framework loads
    names = sorted(lfq.list_backends(), key=lambda name: name not in _REGISTERED)
    loaded = {name for name in names if _load(name, False, status, args.device)}
    if not loaded and args.device is not None:
        raise UsageError(f"--device {args.device}: no available backend can use it")
    return [name for name in lfq.list_backends() if name in loaded]


def _candidates(args, status) -> list[str]:
    """The backends a run would check, found without importing a framework (a parallel run's
    children load them): the asked ones, or every registered one whose framework is installed
    (the others skipped with the reason, as `_backends` says it). Backends registered here
    are loaded at once, so that a mistake in --register shows before anything starts."""
    from lfq import registry

    for name in _REGISTERED:
        _load(name, True, status, args.device)
    if args.backend:
        for name in args.backend:
            try:
                reason = registry.unavailable_reason(name)
            except ValueError as err:  # unknown name
                raise UsageError(f"--backend {name}: {err}") from None
            if reason is not None:
                raise UsageError(f"--backend {name}: {reason}")
        return list(dict.fromkeys(args.backend))
    names = []
    for name in lfq.list_backends():
        reason = registry.unavailable_reason(name)
        if reason is None:
            names.append(name)
        else:
            status(f"skipping {name}: {reason}")
    return names


def _run_in_processes(args, names: list[str], progress):
    """The run of `names` with each backend in a process of its own (`lfq.cli_parallel`)."""
    from lfq.cli_parallel import run_in_processes

    options = dict(dtypes=args.dtype or None, full=args.full, device=args.device, case_names=args.case or None)
    jobs = args.jobs or len(names)
    report, ran = run_in_processes(names, bool(args.backend), options, progress, jobs, progress.mode == "verbose")
    if not ran and args.device is not None:
        raise UsageError(f"--device {args.device}: no available backend can use it")
    return report


def _device_problem(name: str, device: str) -> str | None:
    """Why backend `name` cannot make an array on `device` (one small `asarray`), or None.

    A backend whose `asarray` takes no `device` keyword gives None: the run reports that.
    """
    import numpy as np

    from lfq.conformance.target import DeviceUnsupported, Target

    try:
        target = Target(name, device, registry_name=name)
        target.get(target.put(np.zeros(2, np.float32), "float32"))
    except DeviceUnsupported:
        return None
    except Exception as err:
        return f"backend {name} cannot use it: {type(err).__name__}: {err}".rstrip()
    return None


# ------------------------------------------------------------------ progress

_Progress = Progress  # the names the tests and older callers use


def _progress_mode(args) -> str:
    return progress_mode(args.quiet, args.verbose)


# ------------------------------------------------------------------ lfq conformance


def _case_table(cases) -> str:
    rows = [("case", "default run", "compiled", "what it checks")]
    for case in cases:
        runs = ",".join(case.dtypes) + ("" if case.grads_in_default or not case.dtypes else " (no grads)")
        rows.append((case.name, runs or "full run only", case.compiled, case.note))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row[:3], widths)) + "  " + row[3] for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len(rows[0][3]))
    return "\n".join(lines)


def _check_cases(names) -> None:
    from lfq.conformance import cases

    known = [c.name for c in cases.CASES]
    for name in names or []:
        if name in known:
            continue
        close = list(
            dict.fromkeys(
                [k for k in known if name.lower() in k] + difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            )
        )[:3]
        hint = f"did you mean {', '.join(close)}?" if close else f"known cases: {', '.join(known)}"
        raise UsageError(f"--case {name!r}: no such case; {hint} (lfq conformance --list-cases describes them)")


def _check_paths(args) -> None:
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        if os.path.isdir(args.json):
            raise UsageError(f"--json {args.json!r}: is a folder; give a file name, e.g. {args.json}/report.json")
        if not os.path.isdir(folder):
            raise UsageError(f"--json {args.json!r}: folder {folder!r} does not exist; create it first")
    if args.check_golden:
        if not os.path.isfile(os.path.join(args.check_golden, "manifest.json")):
            raise UsageError(
                f"--check-golden {args.check_golden!r}: no manifest.json there; give a folder "
                "written by --write-golden, or no folder for the package's own"
            )
    if args.max_failures < 0:
        raise UsageError(f"--max-failures {args.max_failures}: give 0 or more")
    if args.jobs < 0:
        raise UsageError(f"--jobs {args.jobs}: give 1 or more (0: every backend at once)")


def cmd_conformance(args) -> int:
    if args.list_cases:
        from lfq.conformance import cases

        print(_case_table(cases.CASES))
        return 0
    _check_paths(args)
    _check_cases(args.case)
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
    from lfq.conformance.cases import NO_BFLOAT16, input_dtypes

    if "bfloat16" in (args.dtype or ()) and "bfloat16" not in input_dtypes():
        raise UsageError(f"--dtype bfloat16: {NO_BFLOAT16}")
    if args.cross and args.backend and len(dict.fromkeys(args.backend)) < 2:
        raise UsageError(f"--cross needs two or more backends, got --backend {' '.join(args.backend)}")
    progress = _Progress(_progress_mode(args))
    # The shape checks retrace compiled TensorFlow on purpose: its retracing warnings are noise
    # here (shown with -v; a level set by the caller is kept).
    tf_logger = logging.getLogger("tensorflow")
    tf_level = tf_logger.level
    if progress.mode != "verbose" and tf_level == logging.NOTSET:
        tf_logger.setLevel(logging.ERROR)
    try:
        candidates = None if args.cross or args.jobs == 1 else _candidates(args, progress.status)
        if candidates is not None and len(candidates) > 1:
            report = _run_in_processes(args, candidates, progress)
        else:
            names = _backends(args, progress.status)
            if args.cross and len(names) < 2:
                raise UsageError(f"--cross needs two or more available backends, got {names}")
            options = dict(
                dtypes=args.dtype or None,
                full=args.full,
                device=args.device,
                cases=args.case or None,
                progress=progress,
            )
            report = (conformance.cross if args.cross else conformance.run)(names, **options)
    finally:
        progress.finish()
        tf_logger.setLevel(tf_level)
    print(report.table())
    if report.failures:
        print()
        print(report.failure_details(args.max_failures))
    if args.json:
        report.write_json(args.json)
        print(f"wrote {args.json}")
    return 0 if report.ok else 1


# ------------------------------------------------------------------ the parser


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (`lfq conformance: ...`) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from lfq.validation import FLOAT_DTYPES

    parser = _Parser(prog="lfq", description="Lookup-free quantization: backends and conformance.")
    commands = parser.add_subparsers(dest="command", required=True)
    register_help = (
        "register a backend first, as lfq.register(NAME, 'MODULE:CLASS') (repeatable; MODULE is "
        "looked up on sys.path, then in the current folder, and importing it runs its code)"
    )
    info = commands.add_parser(
        "info", help="registered backends: availability, dtypes, modes, versions (no framework is imported)"
    )
    info.add_argument("--register", action="append", metavar="NAME=MODULE:CLASS", help=register_help)
    info.set_defaults(run=cmd_info)
    conf = commands.add_parser("conformance", help="check backends against the reference (exit 1 on failure)")
    conf.add_argument(
        "--backend", action="append", metavar="NAME", help="backend to check (repeatable; default: every available one)"
    )
    conf.add_argument("--register", action="append", metavar="NAME=MODULE:CLASS", help=register_help)
    conf.add_argument(
        "--device",
        metavar="DEVICE",
        help="device given to asarray(..., device=DEVICE), e.g. cpu or cuda (default: none given)",
    )
    conf.add_argument(
        "--dtype",
        action="append",
        choices=FLOAT_DTYPES,
        help="input dtype to run (repeatable; default: each case's own, all with --full)",
    )
    conf.add_argument(
        "--case", action="append", metavar="NAME", help="run only this case (repeatable; --list-cases lists them)"
    )
    conf.add_argument("--list-cases", action="store_true", help="list the cases with what each checks, and exit")
    conf.add_argument(
        "--full", action="store_true", help="every case in every dtype, all gradients, more compiled checks (slow)"
    )
    conf.add_argument("--cross", action="store_true", help="compare the backends pairwise instead")
    conf.add_argument("--json", metavar="FILE", help="also write the full report as JSON (raw errors included)")
    conf.add_argument(
        "--max-failures", type=int, default=10, metavar="N", help="failures printed with their reproducers (default 10)"
    )
    chatter = conf.add_mutually_exclusive_group()
    chatter.add_argument(
        "-v", "--verbose", action="store_true", help="print each step (backend, case, dtype) with its time on stderr"
    )
    chatter.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    conf.add_argument(
        "--jobs",
        type=int,
        default=0,
        metavar="N",
        help="check up to N backends at once, each in a process of its own (default: all of them; "
        "1: one after the other, in this process)",
    )
    conf.add_argument(
        "--write-golden",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="regenerate the golden vectors (into DIR, default the package's) and exit",
    )
    conf.add_argument(
        "--check-golden",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="check that the golden vectors (in DIR, default the package's) regenerate: integers, "
        "inputs and codes bit for bit, float64 results within "
        "lfq.conformance.golden.REGENERATION_TOLERANCE; exit 1 on a difference",
    )
    conf.set_defaults(run=cmd_conformance)
    return parser


def main(argv=None) -> int:
    """Entry point of the `lfq` console script."""
    # TensorFlow's C++ start-up chatter would drown the tables (set before it loads).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # named after the subcommand they were given to, in one line
        print(
            f"lfq {args.command}: unrecognized arguments: {' '.join(unknown)} (see lfq {args.command} --help)",
            file=sys.stderr,
        )
        return 2
    try:
        return args.run(args)
    except UsageError as err:
        print(f"lfq {args.command}: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the output went into `head` or a closed pager
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
