"""Golden vectors: regenerating them reproduces the stored files bit for bit."""

from __future__ import annotations

import json
import os

import numpy as np

import lfq
from lfq.conformance import golden


def test_regenerating_reproduces_the_stored_files_bit_for_bit(tmp_path):
    golden.write(str(tmp_path))
    stored_manifest, stored = golden.load()
    fresh_manifest, fresh = golden.load(str(tmp_path))
    assert fresh_manifest == stored_manifest
    assert sorted(fresh) == sorted(stored)
    for file, arrays in stored.items():
        assert sorted(fresh[file]) == sorted(arrays), file
        for key, array in arrays.items():
            again = fresh[file][key]
            assert (again.dtype, again.shape) == (array.dtype, array.shape), f"{file}:{key}"
            assert again.tobytes() == array.tobytes(), f"{file}:{key} differs bitwise"
    assert golden.verify() == []


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
            np.testing.assert_allclose(out.aux_loss, arrays["aux_loss"], rtol=1e-12, atol=1e-15)
            grad = lfq.reference.vjp("batch_entropy", z, cfg, None, mask)
            np.testing.assert_allclose(grad, arrays["grad_batch_entropy"], rtol=1e-9, atol=1e-15)
