"""pytest plugin of the conformance suite (entry point `pytest11`, loaded by every pytest run).

It only adds options; the tests are in `lfq.conformance.test_suite` and run with

    pytest --pyargs lfq.conformance --lfq-backend NAME
    pytest --pyargs lfq.conformance --lfq-register mine=my_pkg.backend:MyBackend --lfq-backend mine

An entry point, not a conftest.py: with `--pyargs` pytest parses the command
line before it loads a package's conftest.py, so options declared there are
"unrecognized". Where the entry point is not installed (a source checkout on
PYTHONPATH), load the plugin by hand: `pytest -p lfq.conformance.plugin ...`; the
entry point has the module's name, so `-p` is harmless where it is installed.
`lfq` is imported only when an option needs it.
"""

from __future__ import annotations


def pytest_addoption(parser):
    group = parser.getgroup("lfq", "LFQ conformance suite (pytest --pyargs lfq.conformance)")
    group.addoption(
        "--lfq-backend",
        action="append",
        default=[],
        metavar="NAME",
        help="registered backend to check (repeatable; default: every available one)",
    )
    group.addoption(
        "--lfq-register",
        action="append",
        default=[],
        metavar="NAME=MODULE:CLASS",
        help="register a backend first, as lfq.register(NAME, 'MODULE:CLASS') (repeatable)",
    )
    group.addoption(
        "--lfq-dtype",
        action="append",
        default=[],
        metavar="DTYPE",
        help="input dtype to run (repeatable; default: each case's own)",
    )
    group.addoption(
        "--lfq-device",
        default=None,
        metavar="DEVICE",
        help="device given to the backend's asarray(..., device=DEVICE), e.g. cuda",
    )
    group.addoption(
        "--lfq-full",
        action="store_true",
        help="the full run: every case in every dtype, all gradients, more compiled checks",
    )
    group.addoption(
        "--lfq-examples",
        type=int,
        default=None,
        metavar="N",
        help="examples per backend, mode and dtype of the generated differential test "
        "(tests/test_differential.py; default 50; a release check: 2000)",
    )
    group.addoption(
        "--lfq-pool-seed",
        type=int,
        default=0,
        metavar="SEED",
        help="seed of the run's pool of token shapes in the generated differential test (default 0)",
    )
    group.addoption(
        "--lfq-pool-size",
        type=int,
        default=None,
        metavar="N",
        help="token shapes in that pool, an empty batch included (default 2; 4 with --lfq-examples)",
    )


def pytest_configure(config):
    registrations = config.getoption("--lfq-register", default=[]) or []
    if not registrations:
        return
    import lfq

    for item in registrations:
        name, sep, target = item.partition("=")
        if not sep or not name or target.count(":") != 1:
            raise ValueError(f"--lfq-register {item!r}: use NAME=module.path:ClassName")
        lfq.register(name, target)
