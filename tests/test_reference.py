"""The NumPy reference against the rules: an independent enumeration, the literal
definition, finite differences, and the edge cases of docs/spec.md (sections 2 to 4)."""

from __future__ import annotations

import math

import independent
import numpy as np
import pytest

import lfq
from lfq import reference

RTOL = 1e-12


def _random_config(rng, **overrides):
    d = int(rng.integers(1, 8))
    kw = dict(
        codebook_dim=d,
        num_codebooks=int(rng.integers(1, 4)),
        scale=float(rng.choice([1.0, 0.5, 2.0])),
        spherical=bool(rng.random() < 0.4),
        inv_temperature=float(10 ** rng.uniform(-1, 2)),
        diversity_gamma=float(rng.choice([1.0, 0.5])),
        bit_order=str(rng.choice(["msb", "lsb"])),
        soft_clamp=None if rng.random() < 0.6 else float(rng.uniform(0.5, 3)),
    )
    kw.update(overrides)
    return lfq.Config(**kw)


def _cfg_kwargs(cfg):
    return dict(
        d=cfg.codebook_dim,
        c=cfg.num_codebooks,
        scale=cfg.scale,
        spherical=cfg.spherical,
        tau=cfg.inv_temperature,
        gamma=cfg.diversity_gamma,
        w_ent=cfg.entropy_weight,
        w_commit=cfg.commitment_weight,
        bit_order=cfg.bit_order,
        soft_clamp=cfg.soft_clamp,
        feature_axis=cfg.feature_axis,
    )


@pytest.mark.parametrize("seed", range(40))
def test_reference_matches_independent_enumeration(seed):
    rng = np.random.default_rng(seed)
    cfg = _random_config(rng, feature_axis=int(rng.choice([-1, 1])))
    shape = [int(rng.integers(1, 4)), int(rng.integers(1, 4))]
    shape.insert(cfg.feature_axis % 3, cfg.num_features)
    z = rng.standard_normal(shape)
    # sprinkle exact ties and NaN: they must give -m and bit 0
    z.flat[rng.integers(0, z.size, 3)] = [0.0, -0.0, np.nan]
    token_shape = tuple(s for i, s in enumerate(shape) if i != cfg.feature_axis % 3)
    mask = None if seed % 3 == 0 else rng.random(token_shape) < 0.7
    if mask is not None:
        # a NaN in a valid token makes its losses NaN (honestly); keep NaN to masked-out tokens
        nan_tokens = np.isnan(np.moveaxis(z, cfg.feature_axis, -1)).any(-1)
        mask &= ~nan_tokens
    else:
        z[np.isnan(z)] = 0.5
    want = independent.lfq_outputs(z, mask=mask, **_cfg_kwargs(cfg))
    got = reference.lfq(z, cfg, mask)
    np.testing.assert_array_equal(got.codes, want["codes"])
    assert got.codes.dtype == z.dtype
    np.testing.assert_array_equal(got.indices, want["indices"])
    assert got.indices.dtype == np.int64
    for term in ("per_sample_entropy", "batch_entropy", "commitment_loss", "aux_loss"):
        np.testing.assert_allclose(getattr(got, term), want[term], rtol=RTOL, atol=1e-15, err_msg=term)


def test_ties_and_nan_give_minus_scale_and_bit_zero():
    cfg = lfq.Config(codebook_dim=4, scale=2.0)
    z = np.array([0.0, -0.0, np.nan, 5e-324])  # +0, -0, NaN, the smallest subnormal
    np.testing.assert_array_equal(reference.quantize(z, cfg), [-2.0, -2.0, -2.0, 2.0])
    assert reference.codes_to_indices(z, cfg).tolist() == [0b0001]
    lsb = cfg.replace(bit_order="lsb")
    assert reference.codes_to_indices(z, lsb).tolist() == [0b1000]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_precision_rule_keeps_dtype(dtype):
    cfg = lfq.Config(codebook_dim=3, num_codebooks=2)
    z = np.random.default_rng(0).standard_normal((5, 6)).astype(dtype)
    out = reference.lfq(z, cfg)
    assert out.codes.dtype == z.dtype and out.aux_loss.dtype == z.dtype
    exact = reference.lfq(z.astype(np.float64), cfg)
    np.testing.assert_allclose(out.aux_loss, exact.aux_loss, rtol=np.finfo(dtype).eps * 4)


def test_bfloat16_input():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    cfg = lfq.Config(codebook_dim=4)
    z = np.random.default_rng(0).standard_normal((8, 4)).astype(ml_dtypes.bfloat16)
    out = reference.lfq(z, cfg)
    assert out.codes.dtype == z.dtype and out.batch_entropy.dtype == z.dtype
    np.testing.assert_array_equal(out.indices, reference.codes_to_indices(z.astype(np.float64), cfg))


@pytest.mark.parametrize("seed", range(30))
def test_factorized_equals_literal_definition(seed):
    """The exact factorized path and the enumeration agree to 1e-12 relative."""
    rng = np.random.default_rng(1000 + seed)
    d = [1, 2, 3, 5, 7, 9, 11][seed % 7]
    cfg = lfq.Config(
        codebook_dim=d,
        num_codebooks=int(rng.integers(1, 4)),
        spherical=bool(seed % 4 == 1),
        soft_clamp=1.5 if seed % 5 == 2 else None,
        inv_temperature=float(10 ** rng.uniform(-3, 4)),
        batch_entropy="groups:2" if (seed % 6 == 3 and d >= 2) else "exact",
    )
    z = rng.standard_normal((int(rng.integers(1, 40)), cfg.num_features)) * rng.choice([0.01, 1.0, 10.0])
    mask = None if seed % 2 else rng.random(z.shape[0]) < 0.6
    fact = reference.entropy(z, cfg, mask)
    lit = reference.entropy(z, cfg, mask, method="literal")
    for a, b in zip(fact, lit):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=0)


def test_mask_equals_dropping_tokens():
    rng = np.random.default_rng(3)
    cfg = lfq.Config(codebook_dim=6, num_codebooks=2, inv_temperature=2.0)
    z = rng.standard_normal((50, 12))
    mask = rng.random(50) < 0.5
    z[~mask] = np.inf  # garbage in masked tokens changes nothing
    a = reference.lfq(z, cfg, mask)
    b = reference.lfq(z[mask], cfg)
    for term in lfq.LOSS_TERMS:
        np.testing.assert_allclose(getattr(a, term), getattr(b, term), rtol=1e-13)


def test_masked_batch_entropy_is_not_mean_of_token_entropies():
    """The bug this project exists to avoid: with a mask, H_batch stays a batch statistic."""
    cfg = lfq.Config(codebook_dim=4, inv_temperature=100.0)
    z = np.random.default_rng(0).standard_normal((64, 4))
    h_sample, h_batch = reference.entropy(z, cfg, np.ones(64, dtype=bool))
    assert h_batch > 2.0 > 0.1 > h_sample  # confident tokens, diverse batch


def test_indices_round_trip_every_layout():
    rng = np.random.default_rng(1)
    for cfg in [
        lfq.Config(codebook_dim=7, num_codebooks=3),
        lfq.Config(codebook_dim=5, bit_order="lsb", spherical=True, scale=3.0),
        lfq.Config(codebook_dim=4, num_codebooks=2, feature_axis=1),
    ]:
        shape = (2, cfg.num_features, 3) if cfg.feature_axis == 1 else (2, 3, cfg.num_features)
        z = rng.standard_normal(shape)
        idx = reference.codes_to_indices(z, cfg)
        assert idx.shape == (2, 3, cfg.num_codebooks)
        back = reference.indices_to_codes(idx, cfg, dtype="float64")
        np.testing.assert_array_equal(back, reference.quantize(z, cfg))


def test_sixty_three_bit_indices_never_wrap():
    cfg = lfq.Config(codebook_dim=63)
    z = np.ones((1, 63))
    idx = reference.codes_to_indices(z, cfg)
    assert idx.dtype == np.int64 and int(idx[0, 0]) == 2**63 - 1
    np.testing.assert_array_equal(reference.indices_to_codes(idx, cfg), np.ones((1, 63), np.float32))


def test_groups_is_an_upper_bound():
    rng = np.random.default_rng(5)
    z = rng.standard_normal((200, 8)) * 0.05
    exact = reference.entropy(z, lfq.Config(codebook_dim=8, inv_temperature=10.0))[1]
    for g in (2, 4, 8):
        approx = reference.entropy(z, lfq.Config(codebook_dim=8, inv_temperature=10.0, batch_entropy=f"groups:{g}"))[1]
        assert approx >= exact - 1e-12


def _finite_difference(f, z, h=1e-6):
    grad = np.zeros_like(z)
    for i in np.ndindex(z.shape):
        up, down = z.copy(), z.copy()
        up[i] += h
        down[i] -= h
        grad[i] = (float(f(up)) - float(f(down))) / (2 * h)
    return grad


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"spherical": True},
        {"soft_clamp": 0.7},
        {"num_codebooks": 2, "batch_entropy": "groups:2"},
        {"spherical": True, "soft_clamp": 2.0, "bit_order": "lsb", "diversity_gamma": 0.3},
    ],
)
def test_analytic_vjps_match_finite_differences(kw):
    rng = np.random.default_rng(7)
    cfg = lfq.Config(codebook_dim=5, inv_temperature=1.3, **kw)
    z = rng.standard_normal((3, 4, cfg.num_features))
    mask = rng.random((3, 4)) > 0.3
    losses = {
        "per_sample_entropy": lambda v: reference.entropy(v, cfg, mask)[0],
        "batch_entropy": lambda v: reference.entropy(v, cfg, mask)[1],
        "commitment_loss": lambda v: reference.commitment_loss(v, cfg, mask),
        "aux_loss": lambda v: reference.lfq(v, cfg, mask).aux_loss,
    }
    for term, f in losses.items():
        numeric = _finite_difference(f, z)
        np.testing.assert_allclose(reference.vjp(term, z, cfg, mask=mask), numeric, atol=2e-9, err_msg=term)


@pytest.mark.parametrize("activation", ["identity", "tanh"])
def test_straight_through_vjp_is_activation_derivative(activation):
    rng = np.random.default_rng(8)
    cfg = lfq.Config(codebook_dim=3, num_codebooks=2, activation=activation, soft_clamp=1.5, spherical=True)
    z = rng.standard_normal((4, 6))
    cot = rng.standard_normal((4, 6))
    f = np.tanh if activation == "tanh" else (lambda v: v)
    from lfq import features

    smooth = lambda v: np.sum(cot.reshape(4, 2, 3) * f(features.transform_groups(v.reshape(4, 2, 3), cfg, np)))  # noqa: E731
    np.testing.assert_allclose(reference.vjp("codes", z, cfg, cot), _finite_difference(smooth, z), atol=1e-9)


def test_code_usage():
    cfg = lfq.Config(codebook_dim=3, num_codebooks=2)
    idx = np.array([[0, 1], [0, 2], [7, 3], [7, 4]])
    usage = reference.code_usage(idx, cfg)
    np.testing.assert_allclose(usage.fraction_used, [2 / 8, 4 / 8])
    np.testing.assert_allclose(usage.perplexity, [2.0, 4.0])
    masked = reference.code_usage(idx, cfg, mask=np.array([True, True, False, False]))
    np.testing.assert_allclose(masked.perplexity, [1.0, 2.0])
    empty = reference.code_usage(idx, cfg, mask=np.zeros(4, dtype=bool))
    np.testing.assert_allclose(empty.fraction_used, [0.0, 0.0])


@pytest.mark.slow
def test_factorized_d18_runs_in_bounded_memory():
    """D=18, N=16384 exactly in float64: the literal path would need ~16 GiB per array."""
    import resource

    cfg = lfq.Config(codebook_dim=18)
    z = np.random.default_rng(0).standard_normal((16384, 18))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    h_sample, h_batch = reference.entropy(z, cfg)
    grown_gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20
    assert 0 < h_batch <= 18 * np.log(2) and np.isfinite(h_sample)
    assert grown_gib < 3.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_soft_clamp_is_correctly_rounded_near_its_linear_threshold(dtype):
    """`features.soft_clamp` returns x below 2**-30 min(v, 1) (docs/spec.md): checked against
    mpmath on generated x from subnormal up to past the threshold, for v below and above 1."""
    import mpmath

    from lfq import features

    rng = np.random.default_rng(30)
    info = np.finfo(np.dtype(dtype))
    for v in (1e-3, 0.5, 3.0, 1e6):
        low, high = math.log2(float(info.smallest_subnormal)), math.log2(v) - 20
        x = (2.0 ** rng.uniform(low, high, 400) * np.where(rng.random(400) < 0.5, -1, 1)).astype(dtype)
        got = features.soft_clamp(x, v, np)
        small = np.abs(x) < features.SOFT_CLAMP_LINEAR * min(v, 1.0)
        assert small.any() and (~small).any()
        assert np.array_equal(got[small], x[small])
        with mpmath.workdps(60):
            want = np.array([float(mpmath.mpf(v) * mpmath.tanh(mpmath.mpf(float(t)) / v)) for t in x]).astype(dtype)
        ulps = np.abs(got.astype(np.float64) - want.astype(np.float64)) / np.spacing(np.abs(want))
        assert ulps.max() <= 2.0, (v, ulps.max())


def _batch_entropy_mpmath(z, cfg):
    """Batch entropy by enumeration in mpmath, no transforms (x = z); precision past 1 - p_top."""
    import mpmath

    d, c = cfg.codebook_dim, cfg.num_codebooks
    scale = 4 * cfg.inv_temperature * cfg.scale
    digits = 40 + int(scale * float(np.max(np.abs(z))) / 2.3)  # 1 - e**-a needs a / ln 10 digits
    with mpmath.workdps(digits):
        total = mpmath.mpf(0)
        for k in range(c):
            pbar = [mpmath.mpf(0)] * 2**d
            for row in z:
                a = [scale * mpmath.mpf(float(v)) for v in row[k * d : (k + 1) * d]]
                for j in range(2**d):
                    p = mpmath.mpf(1)
                    for i in range(d):
                        sign = 1 if (j >> (d - 1 - i)) & 1 else -1
                        p /= 1 + mpmath.exp(-sign * a[i])
                    pbar[j] += p / len(z)
            total -= sum(p * mpmath.log(p) for p in pbar if p > 0)
        return float(total / c)


@pytest.mark.parametrize("method", ["factorized", "literal"])
def test_tiny_batch_entropies_are_relatively_accurate(method):
    """Issue 18, item 3: with pbar on one code the batch entropy is the tiny mass off it, and the
    reference keeps full relative accuracy (docs/spec.md 4.2): generated near-one-hot batches
    (every token on the same code, bit logits 10 to 690, one or more tokens, D 1 to 4) against
    an mpmath oracle. The plain sum erred by 2.5e-3 at 1.1e-169 (it lost the top code's term)."""
    rng = np.random.default_rng(183)
    worst = 0.0
    for _ in range(12):
        d, c, n = int(rng.integers(1, 5)), int(rng.integers(1, 3)), int(rng.integers(1, 4))
        cfg = lfq.Config(codebook_dim=d, num_codebooks=c, inv_temperature=256.0)  # 4 tau s = 2**10: a exact
        pattern = np.where(rng.random(c * d) < 0.5, -1.0, 1.0)
        magnitude = 2.0 ** rng.uniform(math.log2(10), math.log2(690), (n, c * d)) / 1024
        z = pattern * magnitude
        want = _batch_entropy_mpmath(z, cfg)
        got = float(reference.entropy(z, cfg, method=method)[1])
        assert 0 < want < 1e-3
        worst = max(worst, abs(got - want) / want)
    assert worst <= 1e-12, worst
