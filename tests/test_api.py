"""Config, registry, lazy loading and the bad-input contract (docs/spec.md section 9)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lfq
from lfq import reference, registry


@pytest.fixture(autouse=True)
def _private_registry(monkeypatch):
    """Backends registered by a test stay in that test."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_INSTANCES", dict(registry._INSTANCES))


def test_import_lfq_loads_no_framework():
    code = textwrap.dedent("""
        import sys, lfq, lfq.reference, lfq.array_backend
        be = lfq.get("numpy")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "jax", "tensorflow", "keras"))
        print(repr(loaded))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_default_backend_is_the_reference():
    be = lfq.get()
    assert be is lfq.get("numpy") is lfq.get("reference")
    assert isinstance(be, lfq.LFQBackend)
    assert set(lfq.list_backends()) >= {"numpy", "torch", "jax", "tensorflow"}


def test_unknown_backend_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown backend 'mxnet'.*numpy.*torch"):
        lfq.get("mxnet")


def test_missing_framework_names_the_pip_extra():
    lfq.register("needs_missing", "nonexistent_pkg.backend:Backend", extra="missing", requires="nonexistent_pkg")
    with pytest.raises(lfq.BackendUnavailable, match=r"pip install 'lfq\[missing\]'"):
        lfq.get("needs_missing")
    assert not lfq.is_available("needs_missing")


def test_register_third_party_backend(tmp_path, monkeypatch):
    (tmp_path / "my_lfq_backend.py").write_text(
        textwrap.dedent("""
        from lfq.backends.numpy_backend import NumPyBackend
        class Wrapped:
            name = "wrapped"
            def __getattr__(self, item):
                return getattr(NumPyBackend(), item)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    lfq.register("wrapped", "my_lfq_backend:Wrapped")
    be = lfq.get("wrapped")
    assert be.codes_to_indices(np.array([1.0, -1.0]), lfq.Config(codebook_dim=2)).tolist() == [2]


def test_register_rejects_bad_import_string():
    with pytest.raises(ValueError, match="import string"):
        lfq.register("bad", "no_colon_here")


# ----------------------------------------------------------------- Config validation


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"codebook_dim": 0}, r"codebook_dim=0 must be in \[1, 63\]"),
        ({"codebook_dim": 64}, r"codebook_dim=64 .*int64"),
        ({"codebook_dim": 2.5}, r"codebook_dim=2.5 must be an int"),
        ({"codebook_dim": 4, "num_codebooks": 0}, r"num_codebooks=0"),
        ({"codebook_dim": 4, "scale": 0.0}, r"scale=0.0 must be > 0"),
        ({"codebook_dim": 4, "inv_temperature": -1.0}, r"inv_temperature=-1.0"),
        ({"codebook_dim": 4, "entropy_weight": float("nan")}, r"entropy_weight=nan must be a finite"),
        ({"codebook_dim": 4, "bit_order": "little"}, r"bit_order='little' is not one of \['msb', 'lsb'\]"),
        ({"codebook_dim": 4, "activation": "relu"}, r"activation='relu'"),
        ({"codebook_dim": 4, "soft_clamp": 0}, r"soft_clamp=0 must be > 0"),
        ({"codebook_dim": 4, "batch_entropy": "approx"}, r"batch_entropy='approx' .*'groups:G'"),
        ({"codebook_dim": 4, "batch_entropy": "groups:5"}, r"5 groups .*at most 4"),
        ({"codebook_dim": 4, "spherical": 1}, r"spherical=1 must be a bool"),
    ],
)
def test_config_rejects_bad_options(kwargs, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        lfq.Config(**kwargs)


def test_codebook_size_must_be_power_of_two():
    assert lfq.Config.from_codebook_size(1024).codebook_dim == 10
    with pytest.raises(ValueError, match=r"codebook_size=1000 must be a power of two.*512 or 1024"):
        lfq.Config.from_codebook_size(1000)


def test_config_is_frozen_and_hashable():
    cfg = lfq.Config(codebook_dim=4)
    with pytest.raises(AttributeError):
        cfg.codebook_dim = 5
    assert hash(cfg) == hash(lfq.Config(codebook_dim=4))


# ------------------------------------------------------------------------- bad input
# (the refusals every backend shares, the numpy backend's being the reference's: tests/test_errors.py)

CFG = lfq.Config(codebook_dim=10, num_codebooks=2)


def test_codebook_too_large_for_exact_batch_entropy():
    cfg = lfq.Config(codebook_dim=30)
    z = np.zeros((2, 30))
    with pytest.raises(ValueError, match=r"needs 2\*\*30 .*max_exact_bits=24.*groups:2"):
        reference.entropy(z, cfg)
    # quantization and indices work at any D; so does the explicit approximation
    assert reference.codes_to_indices(z, cfg).shape == (2, 1)
    assert np.isfinite(reference.entropy(z, cfg.replace(batch_entropy="groups:2"))[1])


def test_feature_axis_out_of_range():
    with pytest.raises(ValueError, match=r"feature_axis=3 is out of range for z with 2 dimensions"):
        reference.quantize(np.zeros((3, 20)), CFG.replace(feature_axis=3))
