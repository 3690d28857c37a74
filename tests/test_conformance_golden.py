"""Golden vectors: regenerating them reproduces the stored files.

Integer and bool arrays, the inputs and the codes reproduce bit for bit; the other
float64 results (losses, gradients, usage) within `golden.REGENERATION_TOLERANCE`,
since BLAS products differ in their last bits between CPUs (OpenBLAS kernels).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest
from lfq.conformance import compare, golden
from lfq.conformance.cases import Tolerance

import lfq

FILE = "ragged-d8-c2.float32.npz"


def test_regenerating_reproduces_the_stored_files(tmp_path):
    golden.write(str(tmp_path))
    stored_manifest, stored = golden.load()
    fresh_manifest, fresh = golden.load(str(tmp_path))
    assert fresh_manifest == stored_manifest
    with (
        open(os.path.join(golden.golden_dir(), "manifest.json"), "rb") as a,
        open(tmp_path / "manifest.json", "rb") as b,
    ):
        assert a.read() == b.read()  # no BLAS result in it: the same bytes everywhere
    assert sorted(fresh) == sorted(stored)
    for file, arrays in stored.items():
        assert sorted(fresh[file]) == sorted(arrays), file
        for key, array in arrays.items():
            again = fresh[file][key]
            assert (again.dtype, again.shape) == (array.dtype, array.shape), f"{file}:{key}"
            if array.dtype.kind != "f" or key in ("z", "cotangent", "codes"):
                assert again.tobytes() == array.tobytes(), f"{file}:{key} differs bitwise"
    result = golden.check()
    assert result.ok, result.problems
    assert result.worst_ratio <= 1.0 and result.arrays == sum(len(a) for a in stored.values())
    assert golden.verify() == []


def test_the_tolerance_is_stated_in_the_manifest():
    manifest, _ = golden.load()
    t = golden.REGENERATION_TOLERANCE
    assert manifest["regeneration"]["tolerance"] == {"rtol": t.rtol, "atol": t.atol}
    assert t.rtol <= 1e-12 and t.atol <= 1e-12  # far below the float64 conformance tolerances
    assert "BLAS" in manifest["regeneration"]["reason"]


def test_writing_twice_gives_the_same_bytes(tmp_path):
    golden.write(str(tmp_path / "a"))
    golden.write(str(tmp_path / "b"))
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == sorted(os.listdir(tmp_path / "b")) and "manifest.json" in names
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def _stored_copy(tmp_path, change):
    """A copy of the stored golden folder with `change(arrays)` applied to FILE's arrays."""
    folder = tmp_path / "golden"
    shutil.copytree(golden.golden_dir(), folder)
    with np.load(folder / FILE) as data:
        arrays = {key: data[key].copy() for key in data.files}
    change(arrays)
    (folder / FILE).write_bytes(golden._npz_bytes(arrays))
    return str(folder)


def _nudge_largest(key, relative):
    """Move the largest |entry| of a gradient by `relative` x max|gradient|."""

    def change(arrays):
        grad = arrays[key]
        at = np.unravel_index(int(np.argmax(np.abs(grad))), grad.shape)
        grad[at] += relative * np.abs(grad).max()

    return change


def test_a_gradient_perturbed_beyond_the_tolerance_is_reported(tmp_path):
    folder = _stored_copy(tmp_path, _nudge_largest("grad_aux_loss", 1e-10))
    result = golden.check(folder)
    assert len(result.problems) == 1, result.problems
    problem = result.problems[0]
    assert problem.startswith(f"{FILE}:grad_aux_loss: 1 of ")
    assert "x the allowed error" in problem and "max difference 1e-10 of max|stored|" in problem
    assert result.worst == f"{FILE}:grad_aux_loss" and 40 < result.worst_ratio < 60  # 1e-10 / 2e-12
    assert "1 golden differences" in result.summary()


def test_a_perturbation_within_the_tolerance_passes(tmp_path):
    # a small entry moved by 1e-13 x max|gradient|: far off relative to itself, fine normalized
    def change(arrays):
        _nudge_largest("grad_aux_loss", 1e-13)(arrays)
        grad = arrays["grad_batch_entropy"]
        small = np.unravel_index(int(np.argmin(np.where(grad != 0, np.abs(grad), np.inf))), grad.shape)
        grad[small] += 1e-13 * np.abs(grad).max()
        arrays["aux_loss"] = arrays["aux_loss"] * (1 + 1e-13)

    folder = _stored_copy(tmp_path, change)
    result = golden.check(folder)
    assert result.ok, result.problems
    assert result.inexact >= 3 and 0 < result.worst_ratio <= 1.0
    assert "golden files reproduce" in result.summary() and "not bit for bit" in result.summary()


@pytest.mark.parametrize(
    "key, change",
    [
        ("aux_loss", lambda a: a * (1 + 1e-10)),
        ("fraction_used", lambda a: a * (1 + 1e-10)),
        ("z", lambda a: np.nextafter(a, np.inf)),  # one ulp: bitwise arrays allow none
        ("codes", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.nextafter(a, 0), a)),
        ("indices", lambda a: a + (np.arange(a.size).reshape(a.shape) == 0)),
        ("mask", lambda a: ~a),
    ],
)
def test_other_changes_are_reported(tmp_path, key, change):
    folder = _stored_copy(tmp_path, lambda arrays: arrays.__setitem__(key, change(arrays[key])))
    problems = golden.verify(folder)
    assert len(problems) == 1 and problems[0].startswith(f"{FILE}:{key}: "), problems
    if key in ("aux_loss", "fraction_used"):
        assert "x the allowed error" in problems[0] and "max difference" in problems[0]
    else:
        assert "differ bitwise" in problems[0]


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="OPENBLAS_CORETYPE names x86 kernels")
@pytest.mark.parametrize("coretype", ["Sandybridge", "Prescott"])
def test_the_stored_files_check_out_under_other_blas_kernels(coretype):
    """NumPy's OpenBLAS picks kernels by CPU; the variable forces others (ignored by other BLAS)."""
    env = dict(os.environ, OPENBLAS_CORETYPE=coretype, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", "lfq.conformance.golden", "--check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "golden files reproduce" in proc.stdout


def test_golden_files_are_small_and_versioned():
    directory = golden.golden_dir()
    total = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
    assert total < 1 << 20
    with open(os.path.join(directory, "manifest.json")) as handle:
        manifest = json.load(handle)
    assert manifest["spec_version"] == lfq.SPEC_VERSION
    assert manifest["format_version"] == golden.FORMAT_VERSION
    assert {e["file"] for e in manifest["cases"]} | {"manifest.json"} == set(os.listdir(directory))


def test_golden_values_check_an_implementation_with_only_numpy():
    """What another language does: read the files, rebuild the config, compare within the tolerances."""
    manifest, files = golden.load()
    for entry in manifest["cases"]:
        arrays = files[entry["file"]]
        cfg = lfq.Config(**entry["config"])
        z, mask = arrays["z"], arrays.get("mask")
        with np.errstate(all="ignore"):  # the extremes case holds NaN and inf
            out = lfq.reference.lfq(z, cfg, mask)
        assert np.array_equal(out.indices, arrays["indices"])
        assert np.array_equal(out.codes, arrays["codes"])
        if "aux_loss" in arrays:
            # float64 results of BLAS products: within the stated tolerance, not bit for bit
            # (small gradient entries differ by up to 9e-10 relative between OpenBLAS kernels)
            tol = Tolerance(**manifest["regeneration"]["tolerance"])
            loss = compare.close(out.aux_loss, arrays["aux_loss"], tol, what="aux_loss")
            assert loss.passed, loss.message
            grad = lfq.reference.vjp("batch_entropy", z, cfg, None, mask)
            outcome = compare.close(grad, arrays["grad_batch_entropy"], tol, normalize=True, what="grad")
            assert outcome.passed, outcome.message
