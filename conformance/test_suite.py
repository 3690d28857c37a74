"""The conformance suite as pytest tests: one test per (backend, case, dtype), plus the contract.

Run it on any registered backend, from anywhere:

    pytest --pyargs lfq.conformance --lfq-backend NAME [--lfq-full] [--lfq-dtype float32]

Each failing test lists the failing checks with the reproducer of the first one.
"""

from __future__ import annotations

import pytest
from lfq.conformance import runner
from lfq.conformance.target import Target

import lfq


def _backend_names(config) -> list[str]:
    names = config.getoption("--lfq-backend", default=[]) or []
    if names:
        for name in names:  # asked for by name: a missing framework is an error, not a skip
            try:
                lfq.get(name)
            except (ValueError, lfq.BackendUnavailable) as err:
                raise pytest.UsageError(f"--lfq-backend {name}: {err}") from err
        return list(dict.fromkeys(names))
    return [name for name in lfq.list_backends() if lfq.is_available(name)]


def _options(config) -> dict:
    return {
        "dtypes": config.getoption("--lfq-dtype", default=[]) or None,
        "full": bool(config.getoption("--lfq-full", default=False)),
    }


def pytest_generate_tests(metafunc):
    config = metafunc.config
    names = _backend_names(config)
    if "case_run" in metafunc.fixturenames:
        params = [
            pytest.param((name, case.name, dtype), id=f"{name}-{case.name}-{dtype}")
            for name in names
            for case, dtype in runner.plan(name, **_options(config))
        ]
        metafunc.parametrize("case_run", params)
    elif "backend_name" in metafunc.fixturenames:
        metafunc.parametrize("backend_name", names)


@pytest.fixture(scope="session")
def oracles():
    return runner.OracleCache()


@pytest.fixture(scope="session")
def targets(request):
    """name -> (eager Target, compiled Target or None, failures of compiled())."""
    device = request.config.getoption("--lfq-device", default=None)
    cache = {}

    def get(name):
        if name not in cache:
            target = Target(name, device)
            cache[name] = (target, *runner.compiled_of(target))
        return cache[name]

    return get


def _fail_on(results):
    failures = [r for r in results if r.status == "fail"]
    if failures:
        lines = [f"{r.check} [{r.where}]: {r.message}" for r in failures]
        first = next((r for r in failures if r.reproducer), None)
        if first is not None:
            lines.append(f"reproducer of {first.check} [{first.where}]:\n{first.reproducer}")
        pytest.fail("\n".join(lines), pytrace=False)


def test_case(case_run, targets, oracles, request):
    """Codes, indices, losses, code usage, gradients (and compiled mode) of one case vs the reference."""
    from lfq.conformance import cases

    name, case_name, dtype = case_run
    target, compiled, _ = targets(name)
    _fail_on(
        runner.run_case(
            target,
            cases.get(case_name),
            dtype,
            compiled=compiled,
            full=_options(request.config)["full"],
            oracles=oracles,
        )
    )


def test_contract(backend_name, targets):
    """Bad-input errors (docs/spec.md section 9), declared dtypes, and compiled() when declared."""
    target, _, compile_failures = targets(backend_name)
    _fail_on(compile_failures + runner.run_contract(target))
