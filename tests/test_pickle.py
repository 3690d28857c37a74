"""Every backend object, compiled or not, pickles and deep-copies, and works after it.

Multiprocessing, data-loader workers and config snapshots pickle or copy whatever
holds a backend. A backend's compiled programs (`lfq.program.ProgramCache`) hold
framework state (traced graphs, locks, local functions): a copy drops them and
compiles again on first use. Generated over every registered backend and mode.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import lfq
from lfq import registry

CFG = lfq.Config(codebook_dim=3, num_codebooks=2, inv_temperature=4.0, commitment_weight=0.5)
TERMS = ("aux_loss", "per_sample_entropy", "batch_entropy", "commitment_loss")


def _cases():
    out = []
    for name in registry.list_backends():
        info = registry.static_info(name)
        modes = info.modes if info is not None else ("eager",)
        out += [(name, mode) for mode in modes]
    return out


def _backend(name: str, mode: str):
    if not lfq.is_available(name):
        pytest.skip(f"{name} is not installed")
    be = lfq.get(name)
    return be.compiled() if mode == "compiled" else be


def _outputs(be, z, mask):
    out = be.lfq(z, CFG, mask, inv_temperature=2.0)
    return {field: np.asarray(be.to_numpy(getattr(out, field))) for field in ("codes", "indices", *TERMS)}


def test_every_registered_backend_and_mode_is_covered():
    cases = _cases()
    assert {name for name, _ in cases} >= {"numpy", "torch", "jax", "tensorflow"}
    assert ("torch", "compiled") in cases and ("tensorflow", "compiled") in cases


@pytest.mark.parametrize("name,mode", _cases(), ids=lambda v: v)
def test_pickle_and_deepcopy_keep_a_working_backend(name, mode):
    be = _backend(name, mode)
    rng = np.random.default_rng(18)
    z64 = rng.standard_normal((3, 4, CFG.num_features))
    mask64 = rng.random((3, 4)) > 0.3
    z, mask = be.asarray(z64, "float32"), be.asarray(mask64)
    want = _outputs(be, z, mask)  # compiled backends now hold compiled programs
    copies = {"pickle": pickle.loads(pickle.dumps(be)), "deepcopy": copy.deepcopy(be)}
    for how, other in copies.items():
        assert other is not be and type(other) is type(be), how
        assert other.name == be.name and getattr(other, "modes", None) == be.modes, how
        if hasattr(be, "programs"):
            assert len(other.programs) == 0, f"{how} copied compiled programs"
        got = _outputs(other, z, mask)
        for field, value in want.items():
            if field in ("codes", "indices"):
                np.testing.assert_array_equal(got[field], value, err_msg=f"{name} {mode} {how} {field}")
            else:
                np.testing.assert_allclose(got[field], value, rtol=1e-6, atol=1e-7, err_msg=f"{name} {mode} {how}")
        if mode == "compiled":
            assert other.compiled() is other, how
    again = _outputs(be, z, mask)  # the original still works, with its programs
    for field, value in want.items():
        np.testing.assert_array_equal(again[field], value, err_msg=f"{name} {mode} after pickling: {field}")
