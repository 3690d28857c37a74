"""`lfq conformance` with backends in processes of their own (`lfq.cli_parallel`), and its progress."""

from __future__ import annotations

import io
import re
import types

import pytest

from lfq import cli, registry
from lfq.cli_progress import Progress

TWIN = "twin=lfq.backends.numpy_backend:NumPyBackend"


@pytest.fixture
def registry_snapshot():
    saved, registered = dict(registry._REGISTRY), dict(cli._REGISTERED)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)
    cli._REGISTERED.clear()
    cli._REGISTERED.update(registered)


def test_parallel_run_matches_the_serial_one(capsys, registry_snapshot):
    # a backend registered here (--register) must reach its child process too
    argv = ["conformance", "--register", TWIN, "--backend", "numpy", "--backend", "twin", "--case", "single-token-d1"]
    assert cli.main(argv) == 0
    parallel = capsys.readouterr()
    assert cli.main([*argv, "--jobs", "1"]) == 0
    serial = capsys.readouterr()
    strip = re.compile(r"\(\d+\.\d s\)")  # the times differ
    assert strip.sub("", parallel.out) == strip.sub("", serial.out)
    assert "twin: " in parallel.out and "numpy: " in parallel.out
    for name in ("numpy", "twin"):  # each backend's progress, in either order
        assert re.search(rf"^loaded {name} \(\d+\.\d s\)$", parallel.err, re.M), parallel.err
        assert re.search(rf"^{name}: checking, 2 steps \.\.\.$", parallel.err, re.M), parallel.err
        assert re.search(rf"^{name}: done, 2 steps in \d+\.\d s$", parallel.err, re.M), parallel.err


def test_parallel_run_reports_a_failure_and_a_usage_error(capsys, registry_snapshot):
    argv = ["conformance", "--backend", "numpy", "--backend", "nosuch"]
    assert cli.main(argv) == 2
    assert "--backend nosuch: unknown backend 'nosuch'" in capsys.readouterr().err
    # a module that does not import, registered here: a usage error before any child starts
    assert cli.main(["conformance", "--register", "bad=no_such_module:X", "--backend", "numpy"]) == 2
    assert "no_such_module" in capsys.readouterr().err
    assert cli.main(["conformance", "--jobs", "-1"]) == 2
    assert "--jobs -1" in capsys.readouterr().err


def test_lines_progress_ticks_through_a_long_step(monkeypatch):
    stream = io.StringIO()
    progress = Progress("lines", stream)
    clock = [100.0]
    monkeypatch.setattr("lfq.cli_progress.time.monotonic", lambda: clock[0])
    step = types.SimpleNamespace(backend="torch", done=2, total=26, what="ragged-d8-c2 float32 compiled", seconds=1.0)
    progress(types.SimpleNamespace(backend="torch", done=0, total=26, what="first float32", seconds=0.0))
    progress(step)
    for now in (105.0, 110.0, 116.5, 120.0, 131.5):
        clock[0] = now
        progress.tick()
    assert stream.getvalue().splitlines() == [
        "torch: checking, 26 steps ...",
        "torch: 2/26 steps (18 s), ragged-d8-c2 float32 compiled",
        "torch: 2/26 steps (32 s), ragged-d8-c2 float32 compiled",
    ]


def test_counter_shows_every_backend_at_work():
    stream = io.StringIO()
    progress = Progress("counter", stream)
    progress(types.SimpleNamespace(backend="jax", done=3, total=22, what="d16 float32", seconds=4.0))
    progress(types.SimpleNamespace(backend="torch", done=2, total=26, what="d16 float32", seconds=9.0))
    assert stream.getvalue().endswith("jax: 3/22 d16 float32 (4 s) | torch: 2/26 d16 float32 (9 s)")
    progress(types.SimpleNamespace(backend="jax", done=22, total=22, what="done", seconds=30.0))
    assert stream.getvalue().endswith("jax: done, 22 steps in 30.0 s\ntorch: 2/26 d16 float32 (9 s)")
