"""The `lfq` command, and the conformance suite run the ways a user runs it.

Every installed backend goes through `lfq conformance` here (a backend is skipped
only when its framework is not installed). The pytest entry is run from a folder
outside the repository, on the reference and on backends registered from outside
the package.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

import lfq

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0", PYTHONUNBUFFERED="1")
FRAMEWORKS = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}


def run(args, cwd=None, extra_env=None, timeout=600):
    env = dict(ENV, **(extra_env or {}))
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def lfq_cli(*args, **kwargs):
    return run([sys.executable, "-m", "lfq.cli", *args], **kwargs)


def explain(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-3000:]}"


OUTSIDE_MODULE = textwrap.dedent('''
    """A third party's backend: the reference behind a wrapper, and one with a bug."""
    import numpy as np
    from lfq.backends.numpy_backend import NumPyBackend


    class Wrapped:
        name = "outside"
        dtypes = NumPyBackend.dtypes
        modes = NumPyBackend.modes

        def __init__(self):
            self._inner = NumPyBackend()

        def __getattr__(self, attr):
            return getattr(self._inner, attr)


    class TiesUp(Wrapped):
        """Bug: z >= 0 gives +s."""

        def quantize(self, z, cfg):
            out = self._inner.quantize(z, cfg)
            return np.where(np.asarray(z) == 0, -out, out)
''')


@pytest.fixture
def outside(tmp_path):
    (tmp_path / "outside_lfq.py").write_text(OUTSIDE_MODULE)
    return tmp_path


def test_console_script_and_info():
    script = os.path.join(os.path.dirname(sys.executable), "lfq")
    proc = run([script, "info"] if os.path.exists(script) else [sys.executable, "-m", "lfq.cli", "info"])
    assert proc.returncode == 0, explain(proc)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"lfq {lfq.__version__} (spec {lfq.SPEC_VERSION})")
    for name in lfq.list_backends():
        row = next(line for line in lines if line.split()[:1] == [name])
        available = importlib.util.find_spec(FRAMEWORKS[name]) is not None if name in FRAMEWORKS else True
        assert row.split()[1] == ("yes" if available else "no"), row
        if available:
            assert "float32" in row and "eager" in row


def test_conformance_numpy_with_json(tmp_path):
    path = tmp_path / "report.json"
    proc = lfq_cli("conformance", "--backend", "numpy", "--json", str(path))
    assert proc.returncode == 0, explain(proc)
    assert re.search(r"^numpy\s+entropy\.batch_entropy\s+pass\s", proc.stdout, re.M)
    report = json.loads(path.read_text())
    assert report["ok"] and all(r["status"] in ("pass", "skip") for r in report["results"])


@pytest.mark.parametrize("name", sorted(FRAMEWORKS))
def test_conformance_framework_backend(name):
    if importlib.util.find_spec(FRAMEWORKS[name]) is None:
        pytest.skip(f"{FRAMEWORKS[name]} is not installed")
    proc = lfq_cli("conformance", "--backend", name)
    assert proc.returncode == 0, explain(proc)
    assert f"{name}: " in proc.stdout and " 0 failed" in proc.stdout


def test_failure_exits_nonzero_with_a_runnable_reproducer():
    proc = lfq_cli(
        "conformance", "--register", "lsb=lfq.conformance.broken:LsbAsMsb", "--backend", "lsb", "--case", "ragged-d8-c2"
    )
    assert proc.returncode == 1, explain(proc)
    assert re.search(r"^lsb\s+codes_to_indices\s+FAIL\s", proc.stdout, re.M), explain(proc)
    block = proc.stdout.split("FAIL lsb codes_to_indices")[1].split("  reproducer:\n")[1]
    snippet = "\n".join(line[4:] for line in block.splitlines() if line.startswith("    "))
    assert "seed 3" in snippet and "Config(codebook_dim=8, num_codebooks=2" in snippet
    again = run([sys.executable, "-c", snippet])
    assert again.returncode == 0, explain(again)
    assert float(again.stdout.split("=")[-1]) > 0


def test_cross_mode():
    proc = lfq_cli(
        "conformance",
        "--cross",
        "--backend",
        "numpy",
        "--register",
        "arr=lfq.conformance.broken:NumPyArrayBackend",
        "--backend",
        "arr",
    )
    assert proc.returncode == 0, explain(proc)
    assert re.search(r"^numpy~arr\s+cross\.lfq\.aux_loss\s+pass", proc.stdout, re.M)


def test_usage_errors_exit_2():
    proc = lfq_cli("conformance", "--backend", "no-such-backend")
    assert proc.returncode == 2 and "known backends are" in proc.stderr
    proc = lfq_cli("conformance", "--cross", "--backend", "numpy")
    assert proc.returncode == 2 and "two or more" in proc.stderr


def test_device_goes_to_asarray_and_an_unusable_one_is_a_usage_error():
    proc = lfq_cli("conformance", "--backend", "numpy", "--device", "cpu", "--case", "single-token-d1")
    assert proc.returncode == 0, explain(proc)
    proc = lfq_cli("conformance", "--backend", "numpy", "--device", "cuda")
    assert proc.returncode == 2 and proc.stdout == "", explain(proc)
    assert proc.stderr.splitlines() == [
        "lfq conformance: --device cuda: backend numpy cannot use it: ValueError: device='cuda': "
        "NumPy arrays live on the host; use device=None or 'cpu'"
    ], explain(proc)


def test_write_and_check_golden(tmp_path):
    proc = lfq_cli("conformance", "--write-golden", str(tmp_path))
    assert proc.returncode == 0, explain(proc)
    assert (tmp_path / "manifest.json").exists() and len(list(tmp_path.glob("*.npz"))) >= 5
    proc = lfq_cli("conformance", "--check-golden", str(tmp_path))
    assert proc.returncode == 0 and "golden files reproduce" in proc.stdout, explain(proc)
    # the package's files were written on another machine: float64 results within the tolerance
    for proc in (
        lfq_cli("conformance", "--check-golden"),
        run([sys.executable, "-m", "lfq.conformance.golden", "--check"]),
    ):
        assert proc.returncode == 0, explain(proc)
        assert re.search(
            r"golden files reproduce \(\d+ arrays\): integer arrays, inputs and codes bit for bit; "
            r"float64 results within rtol 1e-12",
            proc.stdout,
        ), explain(proc)


def test_check_golden_reports_a_gradient_beyond_the_tolerance(tmp_path):
    import numpy as np
    from lfq.conformance import golden

    golden.write(str(tmp_path))
    path = tmp_path / "ragged-d8-c2.float32.npz"
    with np.load(path) as data:
        arrays = {key: data[key].copy() for key in data.files}
    arrays["grad_aux_loss"].flat[0] += 1e-9 * np.abs(arrays["grad_aux_loss"]).max()
    path.write_bytes(golden._npz_bytes(arrays))
    for proc in (
        lfq_cli("conformance", "--check-golden", str(tmp_path)),
        run([sys.executable, "-m", "lfq.conformance.golden", "--check", "--dir", str(tmp_path)]),
    ):
        assert proc.returncode == 1, explain(proc)
        assert re.search(
            r"^ragged-d8-c2\.float32\.npz:grad_aux_loss: 1 of 1024 outside .*"
            r"\(\d+ x the allowed error\); max difference 1e-09 of max\|stored\|$",
            proc.stdout,
            re.M,
        ), explain(proc)
        assert "1 golden differences" in proc.stdout, explain(proc)


def test_pytest_entry_from_outside_the_repository(tmp_path):
    proc = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--pyargs",
            "lfq.conformance",
            "--lfq-backend",
            "numpy",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, explain(proc)
    assert re.search(r"\d+ passed", proc.stdout)


def test_backend_registered_from_outside_the_package(outside):
    env = {"PYTHONPATH": str(outside)}
    code = (
        "import lfq, lfq.conformance as c; lfq.register('outside', 'outside_lfq:Wrapped'); "
        "r = c.run('outside'); print(r.ok, len(r.results))"
    )
    proc = run([sys.executable, "-c", code], cwd=outside, extra_env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("True"), explain(proc)
    for target, expected in (("outside_lfq:Wrapped", 0), ("outside_lfq:TiesUp", 1)):
        # -p names the plugin explicitly, as in a checkout without the entry point: harmless here
        proc = run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "lfq.conformance.plugin",
                "--pyargs",
                "lfq.conformance",
                "-q",
                "-p",
                "no:cacheprovider",
                "--lfq-register",
                f"outside={target}",
                "--lfq-backend",
                "outside",
            ],
            cwd=outside,
            extra_env=env,
        )
        assert proc.returncode == expected, explain(proc)
        if expected:
            assert "quantize [edges-large-nan-masked@float32]" in proc.stdout, explain(proc)
    proc = lfq_cli(
        "conformance", "--register", "outside=outside_lfq:TiesUp", "--backend", "outside", cwd=outside, extra_env=env
    )
    assert proc.returncode == 1 and re.search(r"^outside\s+quantize\s+FAIL", proc.stdout, re.M), explain(proc)


# ------------------------------------------------------------------ lfq info: metadata only

INFO_SCRIPT = textwrap.dedent('''
    import json, sys, time
    start = time.perf_counter()
    import lfq.cli
    rc = lfq.cli.main(["info"])
    seconds = time.perf_counter() - start
    loaded = sorted(m for m in ("torch", "jax", "jaxlib", "tensorflow", "keras") if m in sys.modules)
    print("RESULT", json.dumps({"rc": rc, "seconds": seconds, "loaded": loaded}))
''')


def test_info_imports_no_framework(record_property):
    proc = run([sys.executable, "-c", INFO_SCRIPT])
    assert proc.returncode == 0, explain(proc)
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    record_property("lfq_info_seconds", round(result["seconds"], 3))
    print(f"lfq info in-process: {result['seconds']:.2f} s")
    assert result["rc"] == 0 and result["loaded"] == [], result
    # 0.3 s measured on a 2-core CPU (13-20 s when it imported every framework); generous for a busy machine
    assert result["seconds"] < 10, result
    for name in FRAMEWORKS:
        if importlib.util.find_spec(FRAMEWORKS[name]) is not None:
            row = next(line for line in proc.stdout.splitlines() if line.split()[:1] == [name])
            assert re.search(rf"{FRAMEWORKS[name]} \d+\.\d+", row), row  # the version, from the package metadata


@pytest.mark.parametrize("name", ["numpy", *sorted(FRAMEWORKS)])
def test_static_metadata_matches_the_backend_classes(name):
    """`lfq info` shows the registry's static dtypes and modes: they must be the classes' own."""
    from lfq import registry

    if name in FRAMEWORKS and importlib.util.find_spec(FRAMEWORKS[name]) is None:
        pytest.skip(f"{FRAMEWORKS[name]} is not installed")
    static = registry.static_info(name)
    be = lfq.get(name)
    assert tuple(be.modes) == static.modes
    allowed = {static.dtypes, static.dtypes + ("float64",)} if static.float64_env else {static.dtypes}
    assert tuple(be.dtypes) in allowed
    if not static.float64_env:
        assert tuple(be.dtypes) == static.current_dtypes()


@pytest.fixture
def registry_snapshot(monkeypatch):
    """Registrations made by a test (in-process `lfq.cli.main`) are undone after it."""
    from lfq import cli, registry

    for attr in ("_REGISTRY", "_INSTANCES", "_STATIC"):
        monkeypatch.setattr(registry, attr, dict(getattr(registry, attr)))
    monkeypatch.setattr(cli, "_REGISTERED", {})
    monkeypatch.setattr(sys, "path", list(sys.path))


def test_info_asks_a_registered_backend_and_explains_a_broken_one(capsys, registry_snapshot):
    from lfq import cli

    rc = cli.main(["info", "--register", "lsb=lfq.conformance.broken:LsbAsMsb", "--register", "gone=nosuch.module:X"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert re.search(r"^lsb\s+yes\s+\S*float32\S*\s+eager", out, re.M), out
    assert re.search(r"^gone\s+error\s", out, re.M), out
    assert "gone: cannot import module 'nosuch.module' (no module named 'nosuch')" in out


# ------------------------------------------------------------------ usage errors: one line, exit 2

USAGE_ERRORS = [
    (["--case", "nosuch"], "--case 'nosuch': no such case; known cases: single-token-d1, ragged-d8-c2"),
    (["--case", "ragged"], "--case 'ragged': no such case; did you mean ragged-d8-c2, d3-c3-ragged"),
    (
        ["--register", "mine=nosuch.module:X"],
        "--register mine=nosuch.module:X: cannot import module 'nosuch.module' (no module named 'nosuch')",
    ),
    (
        ["--register", "mine=lfq.conformance.broken:LsbAsMs", "--backend", "mine"],
        "module 'lfq.conformance.broken' has no attribute 'LsbAsMs': did you mean LsbAsMsb?",
    ),
    (["--register", "mine=lfq.conformance.broken"], "--register 'mine=lfq.conformance.broken': use NAME=MODULE:CLASS"),
    (["--backend", "no-such-backend"], "--backend no-such-backend: unknown backend 'no-such-backend'"),
    (["--backend", "numpy", "--json", "/no/such/folder/report.json"], "folder '/no/such/folder' does not exist"),
    (["--check-golden", "/"], "--check-golden '/': no manifest.json there"),
    (["--backend", "numpy", "--max-failures", "-1"], "--max-failures -1: give 0 or more"),
    (["--cross", "--backend", "numpy"], "--cross needs two or more backends, got --backend numpy"),
]


@pytest.mark.parametrize("argv, message", USAGE_ERRORS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_usage_error_is_one_line_and_exit_2(argv, message, capsys, registry_snapshot):
    from lfq import cli

    rc = cli.main(["conformance", *argv])
    captured = capsys.readouterr()
    assert rc == 2, captured
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lfq conformance: "), captured.err
    assert message in lines[0], lines[0]
    assert captured.out == ""


def test_usage_error_from_the_console_script_has_no_traceback():
    proc = lfq_cli("conformance", "--register", "mine=nosuch.module:X")
    assert proc.returncode == 2, explain(proc)
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, explain(proc)


def test_argparse_errors_exit_2_in_one_line(capsys):
    from lfq import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["conformance", "--dtype", "float8"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("lfq conformance: argument --dtype: invalid choice: 'float8'"), err
    assert cli.main(["conformance", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err == "lfq conformance: unrecognized arguments: --bogus (see lfq conformance --help)\n", err
    assert cli.main(["info", "--bogus", "x"]) == 2
    assert capsys.readouterr().err.startswith("lfq info: unrecognized arguments: --bogus x")


def test_lines_progress_is_never_silent_for_long():
    import io
    import types

    from lfq import cli

    stream = io.StringIO()
    progress = cli._Progress("lines", stream)
    for done, seconds in [(0, 0.0), (1, 5.0), (2, 16.0), (3, 20.0), (4, 40.0)]:
        progress(types.SimpleNamespace(backend="jax", done=done, total=9, what=f"case{done} float32", seconds=seconds))
    assert stream.getvalue().splitlines() == [
        "jax: checking, 9 steps ...",
        "jax: 2/9 steps (16 s), case2 float32",
        "jax: 4/9 steps (40 s), case4 float32",
    ]


NO_ML_DTYPES = textwrap.dedent("""
    import sys
    sys.modules["ml_dtypes"] = None  # as if not installed: find_spec gives None, import fails
    from lfq import cli
    sys.exit(cli.main(sys.argv[1:]))
""")


def test_without_ml_dtypes_bfloat16_is_left_out_cleanly(tmp_path):
    """Issue 18: a wheel without extras, then `lfq conformance`: TypeError 'bfloat16 NumPy arrays
    need ml_dtypes', also with torch installed; `lfq info` listed bfloat16 for NumPy regardless."""
    script = tmp_path / "no_ml_dtypes.py"
    script.write_text(NO_ML_DTYPES)
    proc = run([sys.executable, str(script), "info"])
    assert proc.returncode == 0, explain(proc)
    assert re.search(r"^numpy\s+yes\s+float16,float32,float64\s", proc.stdout, re.M), explain(proc)
    backends = ["--backend", "numpy"] + (["--backend", "torch"] if importlib.util.find_spec("torch") else [])
    # --jobs 1: ml_dtypes is hidden in this process only; parallel children would import it
    argv = ["conformance", *backends, "--case", "image-d10", "--case", "single-token-d1", "--jobs", "1"]
    proc = run([sys.executable, str(script), *argv, "--json", str(tmp_path / "r.json")])
    assert proc.returncode == 0, explain(proc)
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    bf16 = [r for r in results if r["dtype"] == "bfloat16"]
    assert bf16 and all(r["status"] == "skip" and "pip install ml_dtypes" in r["message"] for r in bf16), bf16
    assert not [r for r in results if r["status"] == "fail"]
    assert {r["case"] for r in results if r["status"] == "pass"} >= {"single-token-d1"}
    proc = run([sys.executable, str(script), "conformance", "--backend", "numpy", "--dtype", "bfloat16"])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "pip install ml_dtypes" in proc.stderr, explain(
        proc
    )


def test_exit_0_on_a_pass_and_1_on_a_failure(capsys, registry_snapshot):
    from lfq import cli

    assert cli.main(["conformance", "--backend", "numpy", "--case", "single-token-d1", "-q"]) == 0
    assert (
        cli.main(
            [
                "conformance",
                "--register",
                "lsb=lfq.conformance.broken:LsbAsMsb",
                "--backend",
                "lsb",
                "--case",
                "ragged-d8-c2",
                "-q",
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert re.search(r"^lsb\s+codes_to_indices\s+FAIL\s+0/1\s+-\s+ragged-d8-c2@float32$", out, re.M), out


# ------------------------------------------------------------------ the case listing


def test_list_cases(capsys):
    from lfq.conformance import cases

    from lfq import cli

    assert cli.main(["conformance", "--list-cases"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["case", "default", "run", "compiled", "what", "it", "checks"]
    body = lines[2:]
    assert len(body) == len(cases.CASES)
    for case, line in zip(cases.CASES, body):
        assert line.startswith(case.name + " ") and line.endswith(case.note), line
        assert (",".join(case.dtypes) if case.dtypes else "full run only") in line


# ------------------------------------------------------------------ the report: err/tol


def test_table_shows_error_over_tolerance_and_json_keeps_raw_errors(tmp_path, capsys):
    from lfq import cli

    path = tmp_path / "report.json"
    rc = cli.main(
        [
            "conformance",
            "--backend",
            "numpy",
            "--case",
            "edges-large-nan-masked",
            "--case",
            "ragged-d8-c2",
            "--json",
            str(path),
            "-q",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    header = out.splitlines()[0].split()
    assert header == ["backend", "check", "status", "passed", "err/tol", "worst", "case"], header
    assert "max abs err" not in out and "max rel err" not in out
    rows = {line.split()[1]: line.split() for line in out.splitlines()[2:] if line.startswith("numpy ")}
    assert rows["quantize"][4] == "exact" and rows["errors.feature_size"][4] == "-"
    report = json.loads(path.read_text())
    summary = {row["check"]: row for row in report["summary"]}
    for check in ("entropy.batch_entropy", "commitment_loss", "vjp.aux_loss"):
        ratio = float(rows[check][4])
        assert 0 < ratio <= 1 and ratio == pytest.approx(summary[check]["max_ratio"], rel=0.05)
        assert {"max_abs", "max_rel", "max_ratio"} <= set(summary[check])
    # the raw errors stay in the JSON: a commitment loss of 1e16 (|z| = 1e8) in bfloat16 passes with an
    # absolute error of 2e11, a fifth of its tolerance
    assert summary["commitment_loss"]["max_abs"] > 1e9 and summary["commitment_loss"]["max_ratio"] < 0.5
    assert all({"max_abs", "max_rel", "ratio"} <= set(r) for r in report["results"])


# ------------------------------------------------------------------ progress on stderr


def test_progress_goes_to_stderr_and_leaves_the_report_alone(tmp_path, capsys):
    from lfq import cli

    argv = ["conformance", "--backend", "numpy", "--case", "single-token-d1", "--case", "ragged-d8-c2"]
    assert cli.main(argv) == 0
    plain = capsys.readouterr()
    lines = plain.err.splitlines()
    assert re.fullmatch(r"loaded numpy \(\d+\.\d s\)", lines[0]), plain.err
    assert lines[1] == "numpy: checking, 3 steps ..."  # 2 cases, errors and dtypes (no compiled mode)
    assert re.fullmatch(r"numpy: done, 3 steps in \d+\.\d s", lines[2]) and len(lines) == 3, plain.err
    assert plain.out.startswith("backend ")
    path = tmp_path / "r.json"
    assert cli.main([*argv, "-v", "--json", str(path)]) == 0
    verbose = capsys.readouterr()
    assert re.search(r"^numpy \[1/3, \d+\.\d s\]: single-token-d1 float32$", verbose.err, re.M), verbose.err
    assert re.search(r"^numpy \[3/3, \d+\.\d s\]: errors and dtypes$", verbose.err, re.M), verbose.err
    assert verbose.out.startswith("backend ") and verbose.out.endswith(f"wrote {path}\n")
    assert json.loads(path.read_text())["ok"]
    assert cli.main([*argv, "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_progress_counter_on_a_terminal():
    import io

    from lfq.conformance import runner

    from lfq import cli

    stream = io.StringIO()
    progress = cli._Progress("counter", stream)
    progress.status("loading torch", "live")
    report = runner.run("numpy", cases=["single-token-d1"], progress=progress)
    progress.finish()
    text = stream.getvalue()
    assert report.ok
    assert "loading torch ...\r\x1b[K" in text and "numpy: 0/2 single-token-d1 float32 (0 s)\r\x1b[K" in text
    assert re.search(r"\r\x1b\[Knumpy: done, 2 steps in \d+\.\d s\n$", text), repr(text)


def test_runner_progress_steps_are_lines_with_counts():
    from lfq import conformance

    steps = []
    conformance.run("numpy", cases=["ragged-d8-c2", "single-token-d1"], progress=steps.append)
    assert [str(s) for s in steps] == [
        "numpy: single-token-d1 float32",
        "numpy: ragged-d8-c2 float32",
        "numpy: errors and dtypes",
        "numpy: done",
    ]
    assert [(s.done, s.total) for s in steps] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert all(s.backend == "numpy" and s.seconds >= 0 for s in steps)
