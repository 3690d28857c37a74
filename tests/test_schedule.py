"""Per-call schedule values (`inv_temperature=`, the weights) in every backend and mode.

`be.lfq(z, cfg, inv_temperature=t, ...)` must mean `cfg.replace(inv_temperature=t, ...)`,
for values and gradients, with floats and with the backend's 0-d arrays; compiled
modes must take them as run-time inputs (tested per backend where the compiled
programs can be counted: tests/test_vqp_dropin.py, test_jax_module.py).
"""

from __future__ import annotations

import numpy as np
import pytest

import lfq

CFG = lfq.Config(codebook_dim=5, num_codebooks=2, commitment_weight=0.3)
SCHEDULES = [
    dict(inv_temperature=2.5),
    dict(inv_temperature=40.0, entropy_weight=0.0),
    dict(diversity_gamma=0.5, commitment_weight=0.0, entropy_weight=0.2),
]


def _backends():
    out = [("numpy", "eager")]
    for name in ("torch", "jax", "tensorflow"):
        if lfq.registry.framework(name) is None or lfq.is_available(name):
            out += [(name, "eager"), (name, "compiled")]
    return out


def _backend(name, mode):
    be = lfq.get(name)
    return be.compiled() if mode == "compiled" else be


@pytest.mark.parametrize("name,mode", _backends(), ids=lambda v: v)
def test_schedule_values_mean_the_config_with_them(name, mode):
    be = _backend(name, mode)
    rng = np.random.default_rng(0)
    z64 = rng.standard_normal((6, 10)) * 0.5
    mask64 = rng.random(6) > 0.3
    z, mask = be.asarray(z64, "float32"), be.asarray(mask64)
    exact = np.asarray(be.to_numpy(z), np.float64)
    for schedule in SCHEDULES:
        cfg = CFG.replace(**schedule)
        want = lfq.reference.lfq(exact, cfg, mask64)
        got = be.lfq(z, CFG, mask, **schedule)
        for field in ("aux_loss", "per_sample_entropy", "batch_entropy", "commitment_loss"):
            np.testing.assert_allclose(
                float(be.to_numpy(getattr(got, field))),
                float(getattr(want, field)),
                rtol=3e-6,
                atol=1e-6,
                err_msg=f"{name} {mode} {schedule} {field}",
            )
        grad = be.to_numpy(be.vjp("aux_loss", z, CFG, mask=mask, **schedule))
        want_grad = lfq.reference.vjp("aux_loss", exact, cfg, mask=mask64)
        np.testing.assert_allclose(
            grad, want_grad, rtol=1e-4, atol=1e-6 * np.abs(want_grad).max(), err_msg=f"{name} {mode} {schedule}"
        )
    if name != "numpy":  # a 0-d array of the backend: the same numbers
        tau = be.asarray(np.array(2.5), "float32")
        got = be.lfq(z, CFG, mask, inv_temperature=tau)
        want = lfq.reference.lfq(exact, CFG.replace(inv_temperature=2.5), mask64)
        np.testing.assert_allclose(float(be.to_numpy(got.aux_loss)), want.aux_loss, rtol=3e-6, atol=1e-6)


@pytest.mark.parametrize("name", [n for n, m in _backends() if m == "eager"])
def test_bad_schedule_values_are_refused(name):
    be = lfq.get(name)
    z = be.asarray(np.zeros((2, 10)), "float32")
    with pytest.raises(ValueError, match="inv_temperature=0.0 must be a finite number > 0"):
        be.lfq(z, CFG, inv_temperature=0.0)
    with pytest.raises(ValueError, match="entropy_weight=nan must be a finite number"):
        be.entropy(z, CFG, entropy_weight=float("nan"))
    if name != "numpy":
        with pytest.raises(TypeError, match="inv_temperature must be a Python number or a 0-d floating array"):
            be.lfq(z, CFG, inv_temperature=be.asarray(np.ones(3), "float32"))


@pytest.mark.parametrize("name,mode", [c for c in _backends() if c[0] != "numpy"], ids=lambda v: v)
def test_schedule_is_split_once_per_call_and_reuses_the_programs(name, mode, monkeypatch):
    """The public operation splits the options once (`validation.split_schedule`) and hands
    the `Schedule` down; a compiled mode keeps its programs for a new temperature."""
    be = _backend(name, mode)
    rng = np.random.default_rng(1)
    z, mask = be.asarray(rng.standard_normal((6, 10)), "float32"), be.asarray(rng.random(6) > 0.3)
    be.lfq(z, CFG, mask, inv_temperature=2.5)
    programs = len(be.programs) if be.compiles else 0
    split = lfq.validation.split_schedule
    calls = []
    monkeypatch.setattr(lfq.validation, "split_schedule", lambda options: calls.append(dict(options)) or split(options))
    for tau in (3.0, 4.5, 7.25):
        got = be.lfq(z, CFG, mask, inv_temperature=tau)
        want = lfq.reference.lfq(
            np.asarray(be.to_numpy(z), np.float64), CFG.replace(inv_temperature=tau), be.to_numpy(mask)
        )
        np.testing.assert_allclose(float(be.to_numpy(got.aux_loss)), want.aux_loss, rtol=3e-6, atol=1e-6)
    assert calls == [{"inv_temperature": tau} for tau in (3.0, 4.5, 7.25)], calls
    assert (len(be.programs) if be.compiles else 0) == programs, "a new temperature compiled a new program"
