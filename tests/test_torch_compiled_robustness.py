"""Compiled torch (`be.compiled()`) across the classes of input of issue 14.

* many shapes, ranks, dtypes, masks and empty batches in one process: a bounded
  number of compiled programs, no recompile, results equal to eager's;
* masked-out NaN / inf tokens reach no loss gradient (activations, spherical);
* float32 batch entropy at D = 16..20 at eager's precision (the sum over 2**D terms);
* the commitment loss at D = 63 (no batch entropy, so no `max_exact_bits`).

Compile counts come from dynamo's `unique_graphs` counter (one per traced graph,
recompiles included). The configs are small (few bits), so each program compiles
in a few seconds on a CPU; docs/torch.md gives the measured numbers.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lfq  # noqa: E402
from lfq import factorized, reference  # noqa: E402

BE = lfq.get("torch")
COMPILED = BE.compiled()
CFG = lfq.Config(codebook_dim=3, num_codebooks=2, inv_temperature=5.0)
LOSSES = ("aux_loss", "per_sample_entropy", "batch_entropy", "commitment_loss")
TOL = {torch.float32: 2e-6, torch.float64: 1e-12}


def graphs() -> int:
    """Graphs dynamo has traced in this process (each compile and recompile counts one)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def random_tokens(rng, count: int) -> list[tuple]:
    """`count` token shapes of ranks 0..3 (z ranks 1..4), sizes 0..6, empties included."""
    shapes = [(), (0,), (1,), (2, 0, 3)]
    while len(shapes) < count:
        rank = int(rng.integers(1, 4))
        shapes.append(tuple(int(s) for s in rng.integers(1, 7, size=rank)))
    return shapes


def make(rng, tokens, cfg, dtype, masked, spread=0.4):
    zn = rng.standard_normal(tuple(tokens) + (cfg.num_features,)) * spread
    z = torch.tensor(zn, dtype=dtype)
    mask = torch.tensor(rng.random(tokens) > 0.4) if masked else None
    return z, mask


def assert_close(got, want, rtol, what):
    got, want = float(got), float(want)
    assert abs(got - want) <= rtol * max(1.0, abs(want)), f"{what}: {got!r} vs {want!r}"


def assert_grad_close(got, want, rtol=2e-6, what="grad"):
    """max |got - want| <= rtol * max |want|: gradients relative to their scale."""
    assert got.shape == want.shape and got.dtype == want.dtype, what
    scale = max(float(want.abs().max()), 1e-30) if want.numel() else 1.0
    err = float((got - want).abs().max()) if want.numel() else 0.0
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol:g} * {scale:.3g}"


def assert_same_output(got, want, dtype, what):
    assert got.codes.shape == want.codes.shape and got.codes.dtype == want.codes.dtype, what
    assert torch.equal(got.codes, want.codes), f"{what}: codes differ"
    assert got.indices.shape == want.indices.shape and torch.equal(got.indices, want.indices), what
    for term in LOSSES:
        assert_close(getattr(got, term), getattr(want, term), TOL[dtype], f"{what} {term}")


def test_fifty_shapes_two_dtypes_masks_compile_a_bounded_number_of_programs():
    """The failure of issue 14: a recompile per new rank/dtype until FailOnRecompileLimitHit.
    Flattened tokens with a dynamic count: per dtype at most three programs (losses with
    and without a mask, the codes), whatever the shapes."""
    rng = np.random.default_rng(14)
    before, start = graphs(), time.perf_counter()
    for i, tokens in enumerate(random_tokens(rng, 50)):
        for dtype in (torch.float32, torch.float64):
            z, mask = make(rng, tokens, CFG, dtype, masked=i % 3 == 1)
            got, want = COMPILED.lfq(z, CFG, mask), BE.lfq(z, CFG, mask)
            assert_same_output(got, want, dtype, f"shape {tuple(z.shape)} {dtype}")
            if dtype == torch.float64 and i % 10 == 0:
                ref = reference.lfq(z.numpy(), CFG, None if mask is None else mask.numpy())
                for term in LOSSES:
                    assert_close(getattr(got, term), getattr(ref, term), 1e-12, f"reference {term}")
                assert np.array_equal(got.indices.numpy(), ref.indices)
    compiled = graphs() - before
    print(f"\n50 shapes x 2 dtypes: {compiled} graphs in {time.perf_counter() - start:.1f} s")
    assert compiled <= 6, compiled


def test_every_operation_reuses_its_program_across_shapes_and_layouts():
    """quantize, indices, decoding, entropy, commitment: one program each per dtype, also
    for a channel-first config (the programs see features last) and strided views."""
    rng = np.random.default_rng(1)
    first = lfq.Config(codebook_dim=3, num_codebooks=2, inv_temperature=5.0, feature_axis=1)
    before = graphs()
    for tokens in [(5,), (3, 4), (2, 3, 2), (7,), (0,), (1, 1), (6, 2)]:
        z, mask = make(rng, tokens, CFG, torch.float32, masked=True)
        for cfg, x in [(CFG, z), (first, torch.movedim(z, -1, 1) if z.ndim > 1 else z)]:
            if cfg is first and x.ndim < 2:
                continue
            assert torch.equal(COMPILED.quantize(x, cfg), BE.quantize(x, cfg))
            idx = COMPILED.codes_to_indices(x, cfg)
            assert torch.equal(idx, BE.codes_to_indices(x, cfg))
            assert torch.equal(COMPILED.indices_to_codes(idx, cfg), BE.indices_to_codes(idx, cfg))
            assert torch.equal(COMPILED.indices_to_codes(idx, cfg, "float64"), BE.indices_to_codes(idx, cfg, "float64"))
            for got, want in zip(COMPILED.entropy(x, cfg, mask), BE.entropy(x, cfg, mask)):
                assert_close(got, want, 2e-6, "entropy")
            assert_close(COMPILED.commitment_loss(x, cfg), BE.commitment_loss(x, cfg), 2e-6, "commitment")
            assert_same_output(COMPILED.lfq(x, cfg, mask), BE.lfq(x, cfg, mask), torch.float32, str(tokens))
        view = torch.randn(9, 2 * CFG.num_features)[2:, ::2]  # a strided, offset view
        assert torch.equal(COMPILED.quantize(view, CFG), BE.quantize(view, CFG))
    # quantize, codes_to_indices, indices_to_codes (x2 dtypes), entropy (the masked losses
    # program, shared with lfq), commitment (unmasked, and masked: N < 2 is padded), lfq's
    # codes; the first test's programs are reused where it ran before
    assert graphs() - before <= 8


def test_empty_and_single_token_batches():
    """N = 0 and N = 1 (sizes torch specializes) run the padded program: eager's values,
    losses 0 for no token, gradients of z's shape."""
    for tokens in [(0,), (2, 0), (0, 3, 2), (), (1,), (1, 1, 1)]:
        for masked in (False, True):
            z, mask = make(np.random.default_rng(len(tokens)), tokens, CFG, torch.float32, masked)
            got, want = COMPILED.lfq(z, CFG, mask), BE.lfq(z, CFG, mask)
            assert_same_output(got, want, torch.float32, f"{tokens} masked={masked}")
            if z.numel() == 0:
                assert all(float(getattr(got, t)) == 0.0 for t in LOSSES)
            zg = z.clone().requires_grad_(True)
            out = COMPILED.lfq(zg, CFG, mask)
            (out.aux_loss + out.codes.sum()).backward()
            zr = z.clone().requires_grad_(True)
            out = BE.lfq(zr, CFG, mask)
            (out.aux_loss + out.codes.sum()).backward()
            assert zg.grad.shape == z.shape
            assert_grad_close(zg.grad, zr.grad)


def test_training_loop_with_variable_batches_and_validation_shapes():
    """Training steps of varying batch and length with gradients, and a validation pass of
    another shape under no_grad; every vjp term too. A fixed number of programs."""
    rng = np.random.default_rng(7)
    before = graphs()
    for step, tokens in enumerate([(4, 9), (3, 5), (4, 17), (2, 3, 3), (1, 6), (5,)]):
        z, mask = make(rng, tokens, CFG, torch.float32, masked=step % 2 == 0)
        grads = []
        for backend in (COMPILED, BE):
            zg = z.clone().requires_grad_(True)
            out = backend.lfq(zg, CFG, mask)
            (out.aux_loss + (out.codes * torch.linspace(-1, 1, CFG.num_features)).sum()).backward()
            grads.append(zg.grad)
        assert_grad_close(grads[0], grads[1])
        with torch.no_grad():
            val, _ = make(rng, (3, 11), CFG, torch.float32, masked=False)
            assert_same_output(COMPILED.lfq(val, CFG), BE.lfq(val, CFG), torch.float32, "validation")
        cot = torch.randn(z.shape)
        for term in ("aux_loss", "batch_entropy", "per_sample_entropy", "commitment_loss", "codes"):
            c = cot if term == "codes" else None
            assert_grad_close(COMPILED.vjp(term, z, CFG, c, mask), BE.vjp(term, z, CFG, c, mask), what=term)
    # with gradients: losses with and without mask, codes, commitment with and without mask;
    # without: losses and codes (may exist from the first test)
    assert graphs() - before <= 8


def test_vjp_against_the_reference():
    """Compiled gradients of masked and unmasked batches of several sizes against the analytic
    VJPs of the reference (float32 inputs: the programs of the training test, no new compile)."""
    rng = np.random.default_rng(3)
    for tokens, masked in [((6,), True), ((2, 5), False), ((0,), True), ((), False)]:
        z, mask = make(rng, tokens, CFG, torch.float32, masked)
        mnp = None if mask is None else mask.numpy()
        for term in ("aux_loss", "batch_entropy", "codes"):
            cot = np.linspace(-1, 1, z.numel()).reshape(z.shape) if term == "codes" else None
            want = reference.vjp(term, z.double().numpy(), CFG, cot, mask=mnp)
            got = COMPILED.vjp(term, z, CFG, None if cot is None else torch.tensor(cot, dtype=z.dtype), mask)
            assert_grad_close(got.double(), torch.tensor(want), rtol=1e-5, what=f"{term} {tokens}")


NAN_CONFIGS = {
    f"{activation}{'-spherical' if spherical else ''}": lfq.Config(
        codebook_dim=3, num_codebooks=2, activation=activation, spherical=spherical, inv_temperature=5.0
    )
    for activation in ("identity", "tanh")
    for spherical in (False, True)
}


@pytest.mark.parametrize("name", list(NAN_CONFIGS))
def test_masked_nonfinite_tokens_reach_no_loss_gradient(name):
    """Generated masks with NaN / +-inf in masked-out tokens: every loss gradient is finite,
    0 at those tokens, and compiled equals eager (it once multiplied tanh'(NaN) by the
    codes' zero cotangent in one joint graph)."""
    cfg = NAN_CONFIGS[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    for trial, tokens in enumerate([(7,), (3, 4), (1,), (2, 2, 3)]):
        z, mask = make(rng, tokens, cfg, torch.float32, masked=True)
        mask.view(-1)[0] = True
        if trial == 2:
            mask[:] = False
        masked_out = ~mask
        bad = torch.tensor(rng.choice([np.nan, np.inf, -np.inf], size=z.shape), dtype=z.dtype)
        hit = torch.tensor(rng.random(z.shape) < 0.6) & masked_out[..., None]
        hit.view(-1, cfg.num_features)[torch.nonzero(masked_out.view(-1))[:1].view(-1), 0] = True
        z = torch.where(hit, bad, z)
        for backend in (BE, COMPILED):
            for term in LOSSES:
                grad = backend.vjp(term, z, cfg, mask=mask)
                assert torch.isfinite(grad).all(), (backend.mode, term, tokens)
                assert torch.all(grad[masked_out] == 0), (backend.mode, term)
                if backend is COMPILED:
                    assert_grad_close(grad, BE.vjp(term, z, cfg, mask=mask), what=term)
            zg = z.clone().requires_grad_(True)
            backend.lfq(zg, cfg, mask).aux_loss.backward()  # the codes are computed but unused
            assert torch.isfinite(zg.grad).all() and torch.all(zg.grad[masked_out] == 0), backend.mode


def test_distribution_entropy_sums_accurately_when_compiled():
    """The cause of the 1e-4 error at D = 20: inductor's one-reduction sum over 2**D terms
    (serial runs of 4096 per vector lane). Uniform and random histograms, D = 16..20."""
    import array_api_compat.torch as xp

    entropy = torch.compile(lambda p: factorized.distribution_entropy(p, xp), fullgraph=True, dynamic=False)
    rng = np.random.default_rng(20)
    for d in range(16, 21):
        shape = (2, 2 ** ((d + 1) // 2), 2 ** (d // 2))
        uniform = np.full(shape, 2.0**-d)
        skewed = rng.random(shape) ** 8
        skewed /= skewed.sum(axis=(1, 2), keepdims=True)
        for p in (uniform, skewed):
            want = -(p * np.log(p)).sum(axis=(1, 2))
            got = entropy(torch.tensor(p, dtype=torch.float32)).double().numpy()
            np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"D={d}")
            eager = factorized.distribution_entropy(torch.tensor(p, dtype=torch.float32), xp).double().numpy()
            np.testing.assert_allclose(eager, want, rtol=1e-6, err_msg=f"eager D={d}")


def test_compiled_batch_entropy_at_d20_is_at_float32_precision():
    """Issue 14's case: all-zero tokens at D = 20 give 20 ln 2 (compiled was 1e-4 off)."""
    cfg = lfq.Config(codebook_dim=20)
    zeros = np.zeros((64, 20))
    noisy = np.random.default_rng(0).standard_normal((64, 20)) * 0.01
    assert abs(float(reference.entropy(zeros, cfg)[1]) / (20 * math.log(2)) - 1) < 1e-12
    for zn in (zeros, noisy):
        want = float(reference.entropy(zn, cfg)[1])
        got = float(COMPILED.entropy(torch.tensor(zn, dtype=torch.float32), cfg)[1])
        assert abs(got / want - 1) <= 1e-6, (got, want)


def test_commitment_loss_at_d63_in_every_mode():
    """The commitment loss needs no batch entropy: D = 63 works eager and compiled (value and
    vjp); the terms that need the batch entropy still refuse it, naming the fix."""
    cfg = lfq.Config(codebook_dim=63)
    rng = np.random.default_rng(63)
    zn = rng.standard_normal((2, 3, 63))
    mn = rng.random((2, 3)) > 0.3
    z, mask = torch.tensor(zn, dtype=torch.float32), torch.tensor(mn)
    z64 = z.double().numpy()
    for backend in (BE, COMPILED):
        for m, mnp in [(None, None), (mask, mn)]:
            want = float(reference.commitment_loss(z64, cfg, mnp))
            assert_close(backend.commitment_loss(z, cfg, m), want, 2e-6, backend.mode)
            if m is None:
                continue  # the gradient with a mask only: one compile less
            grad = backend.vjp("commitment_loss", z, cfg, mask=m)
            # d/dz mean((z - q)**2) over valid elements (reference.commitment_vjp refuses D = 63)
            w = np.ones(zn.shape[:-1]) if mnp is None else mnp.astype(np.float64)
            want_grad = 2 * (z64 - reference.quantize(z64, cfg)) * w[..., None] / (w.sum() * 63)
            np.testing.assert_allclose(grad.numpy(), want_grad, rtol=1e-5, atol=1e-9)
        with pytest.raises(ValueError, match="max_exact_bits"):
            backend.lfq(z, cfg)
        with pytest.raises(ValueError, match="max_exact_bits"):
            backend.vjp("aux_loss", z, cfg)


# ------------------------------------------------- conformance shape checks (lfq.conformance.shapes)


class _Flaky:
    """A third-party-like backend whose compiled mode raises from its 5th new shape on, as a
    compiler out of recompile budget does (arithmetic delegated to eager torch)."""

    name = "flaky"
    dtypes = BE.dtypes

    def __init__(self, modes=("eager", "compiled"), broken_compiled=False):
        self.modes = modes
        self.broken_compiled = broken_compiled
        self.seen: set = set()

    def lfq(self, z, cfg, mask=None, **options):
        self.seen.add((tuple(z.shape), mask is not None))
        if len(self.seen) >= 5:
            raise RuntimeError("recompile limit (4) hit")
        return BE.lfq(z, cfg, mask)

    def compiled(self):
        if self.broken_compiled:
            raise NotImplementedError("no compiler")
        return self

    def asarray(self, array, dtype=None):
        return BE.asarray(array, dtype)

    def to_numpy(self, array):
        return BE.to_numpy(array)


def test_shape_checks_pass_on_compiled_torch_quickly():
    from lfq.conformance.shapes import SHAPES, run_shape_checks
    from lfq.conformance.target import Target

    start = time.perf_counter()
    results = run_shape_checks(Target("torch"))
    print(f"\nshape checks on compiled torch: {time.perf_counter() - start:.1f} s")
    assert all(name.startswith("compiled.shapes[") for name, *_ in results)
    assert len(results) == len(SHAPES) and {r[1] for r in results} == {"float32"}
    assert all(passed for _, _, passed, _ in results), [r for r in results if not r[2]]
    assert any("x0x" in r[0] or "[0x" in r[0] for r in results)  # an empty batch is among them


def test_shape_checks_fail_on_a_backend_that_stops_at_the_fifth_shape():
    from lfq.conformance.shapes import run_shape_checks
    from lfq.conformance.target import Target

    results = run_shape_checks(Target(_Flaky()))
    assert [passed for _, _, passed, _ in results] == [True] * 4 + [False] * (len(results) - 4)
    assert all("raised RuntimeError: recompile limit" in message for *_, message in results[4:])
    assert run_shape_checks(Target(_Flaky(modes=("eager",)))) == []
    (broken,) = run_shape_checks(Target(_Flaky(broken_compiled=True)))
    assert broken[0] == "compiled" and not broken[2] and "NotImplementedError" in broken[3]


def test_shape_checks_report_wrong_values():
    """A compiled twin whose losses are off (batch entropy +1e-3) fails every shape with tokens,
    with the comparison's message."""
    from lfq.conformance.shapes import run_shape_checks
    from lfq.conformance.target import Target

    class _Off(_Flaky):
        def lfq(self, z, cfg, mask=None, **options):
            out = BE.lfq(z, cfg, mask)
            return out._replace(batch_entropy=out.batch_entropy + 1e-3)

    results = run_shape_checks(Target(_Off()))
    assert not any(passed for _, _, passed, _ in results)
    assert all("lfq.batch_entropy" in message for *_, message in results)
