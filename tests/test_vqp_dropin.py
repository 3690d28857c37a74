"""lfq's torch layers as a drop-in for vector-quantize-pytorch's `LFQ`, `ResidualLFQ`, `GroupedResidualLFQ`.

The tests use the layers the way vector-quantize-pytorch's README, tests and
magvit2-pytorch do: its constructor arguments, per-call temperature, masks of
each shape, return fields, attributes, checkpoints. Where the package is
installed (the `bench` extra) they also run it beside lfq on the same inputs;
otherwise its checkpoints come from tests/data/vqp_checkpoints.pt, written by
tests/data/make_vqp_checkpoints.py with the real package.
"""

from __future__ import annotations

import importlib.util
import inspect
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lfq  # noqa: E402
from lfq.compat.vector_quantize_pytorch import LFQ, GroupedResidualLFQ, ResidualLFQ  # noqa: E402

HAVE_VQP = importlib.util.find_spec("vector_quantize_pytorch") is not None
needs_vqp = pytest.mark.skipif(not HAVE_VQP, reason="vector-quantize-pytorch is not installed (lfq[bench])")
CHECKPOINTS = pathlib.Path(__file__).with_name("data") / "vqp_checkpoints.pt"

#: vector-quantize-pytorch 1.32.0's `LFQ.__init__` arguments and defaults (checked against the
#: installed package when there is one).
VQP_LFQ_ARGUMENTS = {
    "dim": None,
    "codebook_size": None,
    "entropy_loss_weight": 0.1,
    "commitment_loss_weight": 0.0,
    "diversity_gamma": 1.0,
    "straight_through_activation": torch.nn.Identity(),
    "num_codebooks": 1,
    "keep_num_codebooks_dim": None,
    "codebook_scale": 1.0,
    "frac_per_sample_entropy": 1.0,
    "has_projections": None,
    "projection_has_bias": True,
    "soft_clamp_input_value": None,
    "cosine_sim_project_in": False,
    "cosine_sim_project_in_scale": None,
    "channel_first": None,
    "experimental_softplus_entropy_loss": False,
    "entropy_loss_offset": 5.0,
    "spherical": False,
    "force_quantization_f32": True,
    "orthogonal_rotation": False,
}


def theirs():
    import vector_quantize_pytorch

    return vector_quantize_pytorch


def reference(layer, h, mask=None, **changes):
    """The float64 reference on the layer's (projected, channel-last) features `h`."""
    cfg = layer.cfg.replace(**changes)
    return lfq.reference.lfq(h.detach().double().numpy(), cfg, None if mask is None else mask.numpy())


# ------------------------------------------------------------------ arguments


def test_every_vqp_constructor_argument_is_accepted():
    ours = [n for n in inspect.signature(LFQ).parameters]
    assert ours[: len(VQP_LFQ_ARGUMENTS)] == list(VQP_LFQ_ARGUMENTS)  # their order first, then lfq's
    if HAVE_VQP:
        params = inspect.signature(theirs().LFQ.__init__).parameters
        names = [n for n in params if n != "self"]
        assert names == list(VQP_LFQ_ARGUMENTS) and set(names) <= set(ours), set(names) - set(ours)
    defaults = dict(VQP_LFQ_ARGUMENTS, codebook_size=256)
    layer = LFQ(**defaults)
    assert (layer.codebook_size, layer.dim, layer.has_projections) == (256, 8, False)
    for name, value in [
        ("frac_per_sample_entropy", 0.25),
        ("force_quantization_f32", False),
        ("experimental_softplus_entropy_loss", True),
        ("entropy_loss_offset", 3.0),
        ("cosine_sim_project_in", True),
        ("orthogonal_rotation", True),
        ("straight_through_activation", torch.nn.SiLU()),
        ("soft_clamp_input_value", 2.0),
    ]:
        LFQ(codebook_size=16, dim=6, **{name: value})(torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match="frac_per_sample_entropy=0"):
        LFQ(codebook_size=16, frac_per_sample_entropy=0)


def test_dim_alone_means_codebook_size_two_to_the_dim():
    layer = LFQ(dim=8)
    assert (layer.codebook_size, layer.codebook_dim, layer.has_projections) == (256, 8, False)
    two = LFQ(dim=6, num_codebooks=2)  # 2**6 codes per codebook, projected 6 -> 12
    assert two.codebook_size == 64 and two.project_in.weight.shape == (12, 6)


def test_attributes_code_reads():
    layer = LFQ(
        codebook_size=64,
        dim=12,
        num_codebooks=2,
        spherical=True,
        codebook_scale=0.5,
        commitment_loss_weight=0.0,
        diversity_gamma=2.0,
    )
    assert (layer.codebook_dim, layer.codebook_size, layer.num_codebooks, layer.dim) == (6, 64, 2, 12)
    assert layer.spherical and layer.codebook_scale == 0.5 and layer.diversity_gamma == 2.0
    assert layer.entropy_loss_weight == 0.1 and layer.commitment_loss_weight == 0.0
    assert layer.keep_num_codebooks_dim and not layer.has_projections and layer.dtype == torch.float32
    assert layer.codebook.shape == (64, 6) and set(layer.codebook.unique().tolist()) == {-0.5, 0.5}
    assert torch.equal(layer.mask, 2 ** torch.arange(5, -1, -1))
    assert layer.double().dtype == torch.float64 and layer.codebook.dtype == torch.float64
    # A schedule that assigns the attributes changes the next call's losses.
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    before = layer(x, return_loss_breakdown=True)
    layer.entropy_loss_weight = 0.3
    after, parts = layer(x, return_loss_breakdown=True)
    expected = 0.3 * (parts.per_sample_entropy - 2.0 * parts.batch_entropy)
    assert torch.allclose(after.aux_loss, expected, rtol=1e-12) and not torch.equal(after.aux_loss, before[0].aux_loss)


# ------------------------------------------------------------------- README


def test_readme_image_sequence_video_and_codebooks():
    quantizer = LFQ(codebook_size=65536, dim=16, entropy_loss_weight=0.1, diversity_gamma=1.0)
    image_feats = torch.randn(1, 16, 32, 32)
    quantized, indices, entropy_aux_loss = quantizer(image_feats, inv_temperature=100.0)
    assert quantized.shape == (1, 16, 32, 32) and indices.shape == (1, 32, 32) and entropy_aux_loss.shape == ()
    assert (quantized == quantizer.indices_to_codes(indices)).all()
    seq = torch.randn(1, 32, 16)
    assert quantizer(seq)[0].shape == seq.shape
    video = torch.randn(1, 16, 10, 8, 8)
    assert quantizer(video)[0].shape == video.shape
    multi = LFQ(codebook_size=4096, dim=16, num_codebooks=4)
    quantized, indices, _ = multi(image_feats)
    assert quantized.shape == image_feats.shape and indices.shape == (1, 32, 32, 4)
    assert (quantized == multi.indices_to_codes(indices)).all()


def test_return_answers_to_entropy_aux_loss_and_breakdown():
    layer = LFQ(codebook_size=16)
    ret, breakdown = layer(torch.randn(2, 6, 4), inv_temperature=10.0, return_loss_breakdown=True)
    assert ret.entropy_aux_loss is ret.aux_loss and ret._fields == ("quantized", "indices", "aux_loss")
    assert breakdown._fields == ("per_sample_entropy", "batch_entropy", "commitment")
    q, i, loss = layer(torch.randn(2, 6, 4), 10.0)  # their positional order: x, inv_temperature
    assert loss.ndim == 0


# ------------------------------------------------------- per-call schedule


def test_per_call_schedule_equals_a_layer_built_with_it():
    x = torch.randn(2, 7, 10, dtype=torch.float64)
    base = LFQ(codebook_size=32, dim=10).double()
    for tau, weight, commit, gamma in [(1.0, 0.1, 0.25, 1.0), (30.0, 0.0, 0.5, 1.0), (7.5, 0.2, 0.0, 0.5)]:
        built = LFQ(
            codebook_size=32,
            dim=10,
            inv_temperature=tau,
            entropy_loss_weight=weight,
            commitment_loss_weight=commit,
            diversity_gamma=gamma,
        ).double()
        built.load_state_dict(base.state_dict())
        a = base(
            x, inv_temperature=tau, entropy_loss_weight=weight, commitment_loss_weight=commit, diversity_gamma=gamma
        )
        b = built(x)
        assert torch.equal(a.aux_loss, b.aux_loss) and torch.equal(a.indices, b.indices)
        ref = reference(
            base,
            base.project_in(x),
            inv_temperature=tau,
            entropy_weight=weight,
            commitment_weight=commit,
            diversity_gamma=gamma,
        )
        np.testing.assert_allclose(a.aux_loss.item(), ref.aux_loss, rtol=1e-10, atol=1e-12)
    tensor_tau = base(
        x,
        inv_temperature=torch.tensor(7.5, dtype=torch.float64),
        diversity_gamma=0.5,
        entropy_loss_weight=0.2,
        commitment_loss_weight=0.0,
    )
    assert torch.allclose(tensor_tau.aux_loss, a.aux_loss, rtol=1e-14)
    with pytest.raises(ValueError, match="inv_temperature=-1.0 must be a finite number > 0"):
        base(x, inv_temperature=-1.0)


def test_compiled_step_does_not_recompile_for_a_changing_temperature():
    """50 temperatures (and entropy weights) through torch.compile of the layer: at most one recompile."""
    import torch._dynamo.utils as dynamo_utils

    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    layer = LFQ(codebook_size=16)
    compiled = torch.compile(layer)
    x = torch.randn(2, 8, 4)
    for step in range(50):
        tau, weight = 100.0 * 0.9**step, 0.1 + 0.01 * step
        a = compiled(x, inv_temperature=tau, entropy_loss_weight=weight)
        b = layer(x, inv_temperature=tau, entropy_loss_weight=weight)
        torch.testing.assert_close(a.aux_loss, b.aux_loss, rtol=1e-6, atol=1e-7)
    assert dynamo_utils.counters["stats"]["unique_graphs"] <= 2  # the first trace, then one dynamic one


def test_compiled_backend_takes_the_schedule_as_program_inputs():
    import torch._dynamo.utils as dynamo_utils

    be = lfq.backends.torch_backend.TorchBackend().compiled()
    cfg = lfq.Config(codebook_dim=5, num_codebooks=2)
    z = torch.randn(3, 4, 10)
    dynamo_utils.counters.clear()
    for step in range(50):
        tau = 1.0 + 2.0 * step
        out = be.lfq(z, cfg, inv_temperature=tau, commitment_weight=0.01 * (step + 1))
        ref = lfq.reference.lfq(
            z.double().numpy(), cfg.replace(inv_temperature=tau, commitment_weight=0.01 * (step + 1))
        )
        np.testing.assert_allclose(out.aux_loss.item(), ref.aux_loss, rtol=2e-5, atol=1e-6)
    # one losses program and one straight-through program, whatever the values
    assert dynamo_utils.counters["stats"]["unique_graphs"] <= 2


# --------------------------------------------------------------------- masks


@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (2, 6, 2, 3, 4)], ids=["image", "video"])
def test_masks_of_every_shape_mean_the_same_tokens(shape):
    layer = LFQ(codebook_size=64).double()
    x = torch.randn(shape, dtype=torch.float64)
    tokens = (shape[0],) + shape[2:]
    own = torch.rand(tokens) > 0.4
    flat = own.reshape(shape[0], -1)
    a, b = layer(x, mask=own, return_loss_breakdown=True), layer(x, mask=flat, return_loss_breakdown=True)
    assert all(torch.equal(u, v) for u, v in zip(a[1], b[1]))
    ref = reference(layer, x.movedim(1, -1), own)
    np.testing.assert_allclose(a[1].batch_entropy.item(), ref.batch_entropy, rtol=1e-10)
    per_sample = torch.tensor([True, False])
    c = layer(x, mask=per_sample, return_loss_breakdown=True)
    expanded = per_sample.reshape((2,) + (1,) * (len(tokens) - 1)).expand(tokens)
    d = layer(x, mask=expanded, return_loss_breakdown=True)
    assert all(torch.equal(u, v) for u, v in zip(c[1], d[1]))
    with pytest.raises(ValueError, match=r"per sample\), .*flattened after the batch axis"):
        layer(x, mask=torch.ones(2, 5, dtype=torch.bool))


def test_sequence_masks():
    layer = LFQ(codebook_size=16).double()
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    mask = torch.rand(3, 5) > 0.5
    out = layer(x, mask=mask, return_loss_breakdown=True)[1]
    ref = reference(layer, x, mask)
    np.testing.assert_allclose(out.per_sample_entropy.item(), ref.per_sample_entropy, rtol=1e-10)
    np.testing.assert_allclose(out.batch_entropy.item(), ref.batch_entropy, rtol=1e-10)
    assert layer(x, mask=torch.tensor([True, True, False])).aux_loss.ndim == 0


# ------------------------------------------------------ activations, extras


def test_any_straight_through_activation():
    x = torch.randn(2, 5, 4, requires_grad=True)
    upstream = torch.randn(2, 5, 4)

    def run(act):
        x.grad = None
        layer = LFQ(
            codebook_size=16,
            straight_through_activation=act,
            entropy_loss_weight=0.0,
            commitment_loss_weight=0.0,
            soft_clamp_input_value=3.0,
        )
        out = layer(x)
        (out.quantized * upstream).sum().backward()
        assert torch.equal(out.quantized, torch.where(x > 0, 1.0, -1.0))  # the value is the code
        return x.grad.clone()

    clamped = 3.0 * torch.tanh(x.detach() / 3.0)
    clamp_grad = 1 - torch.tanh(x.detach() / 3.0) ** 2
    silu_grad = torch.autograd.functional.vjp(torch.nn.functional.silu, clamped, upstream)[1]
    torch.testing.assert_close(run(torch.nn.SiLU()), silu_grad * clamp_grad)
    torch.testing.assert_close(run(lambda t: 2.0 * t), 2.0 * upstream * clamp_grad)
    torch.testing.assert_close(run(torch.nn.Tanh()), run("tanh"))
    assert isinstance(LFQ(codebook_size=16).activation, torch.nn.Identity)


def test_frac_per_sample_entropy_is_exact():
    x = torch.randn(2, 16, 4, 4)
    a = LFQ(codebook_size=65536, dim=16, frac_per_sample_entropy=0.1)(x, return_loss_breakdown=True)[1]
    b = LFQ(codebook_size=65536, dim=16)(x, return_loss_breakdown=True)[1]
    assert all(torch.equal(u, v) for u, v in zip(a, b))  # no sampling: the exact entropy, always


def test_softplus_entropy_loss():
    layer = LFQ(
        codebook_size=32, experimental_softplus_entropy_loss=True, entropy_loss_offset=2.0, commitment_loss_weight=0.5
    ).double()
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    ret, parts = layer(x, return_loss_breakdown=True)
    entropy = parts.per_sample_entropy - parts.batch_entropy
    expected = 0.1 * torch.nn.functional.softplus(entropy + 2.0) + 0.5 * parts.commitment
    torch.testing.assert_close(ret.aux_loss, expected, rtol=1e-14, atol=0)


def test_orthogonal_rotation_and_cosine_projection():
    layer = LFQ(
        codebook_size=16,
        dim=6,
        num_codebooks=2,
        orthogonal_rotation=True,
        cosine_sim_project_in=True,
        cosine_sim_project_in_scale=2.0,
    ).double()
    rot = layer.orthogonal_rot
    torch.testing.assert_close(rot @ rot.T, torch.eye(4, dtype=rot.dtype), rtol=0, atol=1e-6)
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    ret = layer(x)
    h = layer.project_in(x)
    cosines = torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(layer.project_in.weight, dim=0)
    torch.testing.assert_close(h, 2.0 * cosines, rtol=1e-14, atol=0)  # cosine similarities, scaled
    assert float(cosines.abs().max()) <= 1.0
    rotated = (h.unflatten(-1, (2, 4)) @ rot).flatten(-2)
    assert torch.equal(ret.indices, lfq.get("torch").codes_to_indices(rotated, layer.cfg))
    assert torch.equal(
        layer.indices_to_codes(ret.indices, project_out=False),
        (torch.where(rotated > 0, 1.0, -1.0).double().unflatten(-1, (2, 4)) @ rot.T).flatten(-2),
    )
    assert set(layer.state_dict()) == {
        "mask",
        "orthogonal_rot",
        "project_in.weight",
        "project_out.weight",
        "project_out.bias",
    }


# ---------------------------------------------------------- decoder layout


def test_indices_to_codes_has_the_forward_memory_layout():
    torch.manual_seed(0)
    decoder = torch.nn.Conv2d(12, 3, 3, padding=1).double()
    for layer in (LFQ(codebook_size=64, dim=12, num_codebooks=2).double(), LFQ(codebook_size=2**12).double()):
        layer.eval()
        x = torch.randn(2, 12, 5, 6, dtype=torch.float64)
        quantized, indices, _ = layer(x)
        codes = layer.indices_to_codes(indices)
        assert codes.stride() == quantized.stride() and torch.equal(codes, quantized)
        assert torch.equal(decoder(codes), decoder(quantized))


# -------------------------------------------------------------- checkpoints


def _their_checkpoints() -> dict:
    """Written now by the installed package, else the stored ones (its 1.32.0)."""
    if HAVE_VQP:
        spec = importlib.util.spec_from_file_location(
            "make_vqp_checkpoints", CHECKPOINTS.with_name("make_vqp_checkpoints.py")
        )
        maker = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(maker)
        return maker.their_checkpoints(theirs())
    stored = torch.load(CHECKPOINTS, weights_only=True)
    assert stored.pop("version") == "1.32.0"
    return stored


def test_their_checkpoints_load_strictly_and_give_their_outputs():
    for name, case in _their_checkpoints().items():
        cls = ResidualLFQ if name == "residual" else LFQ
        ours = cls(**case["kwargs"]).eval()
        ours.load_state_dict(case["state_dict"], strict=True)
        quantized, indices, _ = ours(case["x"])
        assert torch.equal(indices, case["indices"]), name
        # Theirs: x + (q - x).detach() rounds; ours is the code itself, then the same projection.
        torch.testing.assert_close(quantized, case["quantized"], rtol=1e-6, atol=1e-6, msg=name)


def test_a_model_that_embeds_the_quantizer_loads_and_legacy_buffers_are_accepted():
    class Tokenizer(torch.nn.Module):  # magvit2-pytorch's VideoTokenizer keeps `quantizers`
        def __init__(self, quantizer):
            super().__init__()
            self.encode = torch.nn.Linear(4, 10)
            self.quantizers = quantizer

    saved = Tokenizer(LFQ(codebook_size=1024)).state_dict()
    assert "quantizers.mask" in saved
    legacy = dict(saved, **{"quantizers.codebook": torch.zeros(1024, 10), "quantizers.zero": torch.tensor(0.0)})
    Tokenizer(LFQ(codebook_size=1024)).load_state_dict(legacy, strict=True)
    without_mask = {k: v for k, v in saved.items() if k != "quantizers.mask"}  # lfq before the buffer
    Tokenizer(LFQ(codebook_size=1024)).load_state_dict(without_mask, strict=True)
    with pytest.raises(RuntimeError, match="bit_order='msb'.*'lsb' for weights 1, 2, 4"):
        Tokenizer(LFQ(codebook_size=1024)).load_state_dict(
            Tokenizer(LFQ(codebook_size=1024, bit_order="lsb")).state_dict()
        )


# ----------------------------------------------------------------- residual


def test_residual_readme_and_exact_stages():
    residual_lfq = ResidualLFQ(dim=256, codebook_size=256, num_quantizers=8)
    x = torch.randn(1, 1024, 256)
    residual_lfq.eval()
    quantized, indices, commit_loss = residual_lfq(x)
    assert quantized.shape == (1, 1024, 256) and indices.shape == (1, 1024, 8) and commit_loss.shape == (8,)
    assert torch.all(quantized == residual_lfq.get_output_from_indices(indices))
    # Each stage is an exact LFQ of what the earlier stages left.
    residual = residual_lfq.project_in(x)
    be = lfq.get("torch")
    for i, layer in enumerate(residual_lfq.layers):
        assert layer.codebook_scale == 2.0**-i
        assert torch.equal(indices[..., i : i + 1], be.codes_to_indices(residual, layer.cfg))
        residual = residual - be.quantize(residual, layer.cfg)
    residual_lfq.train()
    _, _, losses = residual_lfq(x[:, :64])
    assert losses.shape == (8,) and bool((losses != 0).all())


def test_residual_quantize_dropout_and_all_codes():
    layer = ResidualLFQ(dim=16, codebook_size=16, num_quantizers=4, quantize_dropout=True).train()
    x = torch.randn(2, 7, 16)
    quantized, indices, losses, codes = layer(x, return_all_codes=True, rand_quantize_dropout_fixed_seed=3)
    kept = int((indices[0, 0] >= 0).sum())
    assert 1 <= kept <= 4 and bool((indices[..., kept:] == -1).all()) and bool((losses[kept:] == 0).all())
    assert codes.shape == (4, 2, 7, 4) and bool((codes[kept:] == 0).all())
    coarse = layer.get_output_from_indices(indices[..., :kept])
    assert torch.equal(coarse, quantized)
    with pytest.raises(ValueError, match="quantize_dropout=True"):
        ResidualLFQ(dim=16, codebook_size=16, num_quantizers=4).get_codes_from_indices(indices[..., :2])


def test_grouped_residual_sequences_and_images():
    grouped = GroupedResidualLFQ(dim=32, groups=2, codebook_size=16, num_quantizers=3).eval()
    x = torch.randn(2, 9, 32)
    quantized, indices, losses, codes = grouped(x, return_all_codes=True)
    assert indices.shape == (2, 2, 9, 3) and losses.shape == (2, 3)
    assert isinstance(codes, tuple) and [c.shape for c in codes] == [(3, 2, 9, 4)] * 2  # one per group
    assert torch.equal(grouped.get_output_from_indices(indices), quantized)
    images = GroupedResidualLFQ(dim=8, groups=2, codebook_size=16, num_quantizers=2, accept_image_fmap=True).eval()
    fmap = torch.randn(2, 8, 3, 3)
    quantized, indices, _ = images(fmap)
    assert quantized.shape == fmap.shape and indices.shape == (2, 2, 3, 3, 2)
    assert torch.equal(images.get_output_from_indices(indices), quantized)


# ------------------------------------------------------- beside the package


@needs_vqp
def test_beside_vector_quantize_pytorch():
    """Same inputs and weights: indices equal; losses equal where their eps clamp does not bite."""
    vqp = theirs()
    torch.manual_seed(0)
    for kwargs in [
        dict(codebook_size=16),
        dict(codebook_size=64, dim=10, num_codebooks=2),
        dict(codebook_size=32, spherical=True),
        dict(codebook_size=16, soft_clamp_input_value=2.0),
        dict(codebook_size=16, experimental_softplus_entropy_loss=True),
    ]:
        kwargs = dict(kwargs, commitment_loss_weight=0.25)
        ours, them = LFQ(**kwargs), vqp.LFQ(**kwargs)
        ours.load_state_dict(them.state_dict(), strict=True)
        x = torch.randn(4, ours.dim, 6, 6)
        a, pa = ours(x, inv_temperature=0.5, return_loss_breakdown=True)
        b, pb = them(x, inv_temperature=0.5, return_loss_breakdown=True)
        assert torch.equal(a.indices, b.indices), kwargs
        torch.testing.assert_close(a.quantized, b.quantized, rtol=1e-6, atol=1e-6)
        for u, v in zip((a.aux_loss, *pa), (b.entropy_aux_loss, *pb)):
            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6, msg=str(kwargs))
    # Their masked batch entropy equals their per-sample one (docs/migration.md); ours is the batch's.
    layer, them = LFQ(codebook_size=16), vqp.LFQ(codebook_size=16)
    x, mask = torch.randn(2, 6, 4), torch.ones(2, 6, dtype=torch.bool)
    theirs_masked = them(x, inv_temperature=0.5, mask=mask, return_loss_breakdown=True)[1]
    ours_masked = layer(x, inv_temperature=0.5, mask=mask, return_loss_breakdown=True)[1]
    torch.testing.assert_close(theirs_masked.batch_entropy, theirs_masked.per_sample_entropy)
    torch.testing.assert_close(
        ours_masked.batch_entropy,
        them(x, inv_temperature=0.5, return_loss_breakdown=True)[1].batch_entropy,
        rtol=1e-5,
        atol=1e-6,
    )


@needs_vqp
def test_beside_vector_quantize_pytorch_residual():
    vqp = theirs()
    torch.manual_seed(1)
    them = vqp.ResidualLFQ(dim=20, codebook_size=32, num_quantizers=4, commitment_loss_weight=0.25)
    ours = ResidualLFQ(dim=20, codebook_size=32, num_quantizers=4)
    ours.load_state_dict(them.state_dict(), strict=True)
    x = torch.randn(3, 11, 20)
    a, b = ours(x), them(x)
    assert torch.equal(a[1], b[1])
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    ours.eval(), them.eval()
    assert torch.equal(ours.get_output_from_indices(a[1]), them.get_output_from_indices(b[1]))


def test_a_positional_mask_is_explained():
    layer = LFQ(codebook_size=16)
    with pytest.raises(TypeError, match="second positional argument of forward is inv_temperature"):
        layer(torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))


@needs_vqp
@pytest.mark.parametrize("accept_image_fmap", [False, True])
def test_beside_vector_quantize_pytorch_grouped_residual(accept_image_fmap):
    vqp = theirs()
    torch.manual_seed(2)
    # Their image-fmap groups have no channel-first projection (their ResidualLFQ projects the
    # last axis): images with dim/groups = D, sequences with projections.
    dim = 8 if accept_image_fmap else 24
    kwargs = dict(dim=dim, groups=2, codebook_size=16, num_quantizers=3, accept_image_fmap=accept_image_fmap)
    them = vqp.GroupedResidualLFQ(**kwargs, commitment_loss_weight=0.25)
    ours = GroupedResidualLFQ(**kwargs)
    ours.load_state_dict(them.state_dict(), strict=True)
    them.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(3, dim, 4, 5) if accept_image_fmap else torch.randn(3, 11, dim)
    for training in (True, False):
        ours.train(training), them.train(training)
        a, b = ours(x, return_all_codes=True), them(x, return_all_codes=True)
        assert a[1].shape == b[1].shape and torch.equal(a[1], b[1])
        assert a[0].shape == b[0].shape == x.shape
        torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
        assert a[2].shape == b[2].shape  # the losses: exact here, eps-clamped there
        assert type(a[3]) is type(b[3]) and len(a[3]) == len(b[3]) == 2  # the codes: one tensor per group
        for u, v in zip(a[3], b[3]):
            assert torch.equal(u, v)
    assert torch.equal(ours.get_output_from_indices(a[1]), a[0])
    if not accept_image_fmap:  # theirs concatenates the groups' channel-last image codes on axis 1: [b, G*h, w, D]
        assert torch.equal(ours.get_output_from_indices(a[1]), them.get_output_from_indices(b[1]))
