"""The `LFQ` nn.Module: layouts, projections, train/eval, masks, breakdown, state_dict.

Values are checked against the NumPy reference on the layer's own quantizer
input (float64 layers: agreement to ~1e-12), so the layer adds no math of its own.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lfq.backends.torch_backend import LFQ, LossBreakdown, Return  # noqa: E402

from lfq import reference  # noqa: E402


def rand(*shape, seed=0, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def check_against_reference(layer, x_last, out, mask=None):
    """`x_last`: the quantizer input, channel-last `[..., C*D]` float64."""
    ref = reference.lfq(x_last.detach().numpy(), layer.cfg, None if mask is None else mask.numpy())
    aux = float(out.aux_loss.detach())
    assert abs(aux - float(ref.aux_loss)) <= 1e-12 * max(1.0, abs(float(ref.aux_loss)))
    indices = out.indices if layer.keep_num_codebooks_dim else out.indices.unsqueeze(-1)
    assert np.array_equal(indices.numpy(), ref.indices)
    return ref


def test_construction_resolves_codebook_and_projections():
    layer = LFQ(codebook_size=1024)
    assert (layer.codebook_dim, layer.dim, layer.has_projections) == (10, 10, False)
    assert isinstance(layer.project_in, torch.nn.Identity)
    layer = LFQ(dim=32, codebook_dim=4, num_codebooks=2)
    assert layer.has_projections and layer.project_in.weight.shape == (8, 32)
    assert layer.keep_num_codebooks_dim and layer.codebook_size == 16
    assert LFQ(codebook_dim=3, straight_through_activation=torch.nn.Tanh()).cfg.activation == "tanh"
    assert LFQ(codebook_size=8, codebook_dim=3).codebook_dim == 3
    errors = [
        (dict(codebook_size=1000), ValueError, "power of two"),
        (dict(), ValueError, "codebook_size .* or codebook_dim"),
        (dict(codebook_size=16, codebook_dim=5), ValueError, "only one"),
        (dict(codebook_dim=4, num_codebooks=2, keep_num_codebooks_dim=False), ValueError, "num_codebooks == 1"),
        (dict(codebook_dim=4, dim=6, has_projections=False), ValueError, "has_projections=False"),
        (dict(codebook_dim=4, straight_through_activation="relu"), ValueError, "activation"),
        (dict(codebook_dim=4, distributed="yes"), TypeError, "distributed="),
        (dict(codebook_dim=4, dim=0), ValueError, "dim=0"),
    ]
    for kwargs, exc, pattern in errors:
        with pytest.raises(exc, match=pattern):
            LFQ(**kwargs)


@pytest.mark.parametrize("codebooks", [1, 3])
def test_sequence_layout_matches_reference(codebooks):
    layer = LFQ(codebook_dim=4, num_codebooks=codebooks, inv_temperature=10.0).double()
    x = rand(2, 5, 4 * codebooks)
    mask = torch.rand(2, 5, generator=torch.Generator().manual_seed(1)) > 0.4
    ret, breakdown = layer(x, mask=mask, return_loss_breakdown=True)
    assert isinstance(ret, Return) and isinstance(breakdown, LossBreakdown)
    assert ret.indices.shape == ((2, 5) if codebooks == 1 else (2, 5, codebooks))
    ref = check_against_reference(layer, x, ret, mask)
    assert torch.equal(ret.quantized, torch.from_numpy(ref.codes))
    for got, want in zip(breakdown, (ref.per_sample_entropy, ref.batch_entropy, ref.commitment_loss)):
        assert abs(float(got) - float(want)) <= 1e-12 * max(1.0, abs(float(want)))


@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (1, 6, 2, 3, 2)], ids=["image", "video"])
def test_image_and_video_are_channel_first(shape):
    layer = LFQ(codebook_dim=3, num_codebooks=2, spherical=True).double()
    x = rand(*shape)
    ret = layer(x)
    assert ret.quantized.shape == x.shape
    assert ret.indices.shape == (shape[0], *shape[2:], 2)
    x_last = x.movedim(1, -1)
    ref = check_against_reference(layer, x_last, ret)
    assert torch.equal(ret.quantized, torch.from_numpy(ref.codes).movedim(-1, 1))
    # indices_to_codes returns the same layout (channel-first for image/video tokens).
    assert torch.equal(layer.indices_to_codes(ret.indices), ret.quantized)
    # Forcing channel-last treats the last axis as the features.
    last = LFQ(codebook_dim=3, num_codebooks=2, spherical=True, channel_first=False).double()
    y = rand(*shape[:-1], 6)
    assert last(y).quantized.shape == y.shape


def test_projections_gradients_and_state_dict_round_trip():
    torch.manual_seed(0)
    layer = LFQ(dim=12, codebook_dim=4, num_codebooks=2, commitment_loss_weight=0.5).double()
    x = rand(3, 4, 12, scale=1.0)
    ret = layer(x)
    h = layer.project_in(x)
    check_against_reference(layer, h, ret)
    assert torch.equal(
        ret.quantized, layer.project_out(torch.from_numpy(reference.quantize(h.detach().numpy(), layer.cfg)))
    )
    (ret.aux_loss + ret.quantized.square().mean()).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.any(p.grad != 0), name
    # Gradient w.r.t. the quantizer input is the reference's (aux loss + straight-through).
    h = h.detach().requires_grad_(True)
    cot = rand(3, 4, 8, seed=3)
    out = layer.backend.lfq(h, layer.cfg)
    (out.aux_loss + (out.codes * cot).sum()).backward()
    want = reference.vjp("aux_loss", h.detach().numpy(), layer.cfg) + reference.vjp(
        "codes", h.detach().numpy(), layer.cfg, cot.numpy()
    )
    np.testing.assert_allclose(h.grad.numpy(), want, rtol=1e-10, atol=1e-14)
    clone = LFQ(dim=12, codebook_dim=4, num_codebooks=2, commitment_loss_weight=0.5).double()
    clone.load_state_dict(layer.state_dict())
    assert sorted(layer.state_dict()) == [
        "mask",
        "project_in.bias",
        "project_in.weight",
        "project_out.bias",
        "project_out.weight",
    ]
    again = clone(x)
    assert torch.equal(again.quantized, ret.quantized) and torch.equal(again.indices, ret.indices)
    assert float(again.aux_loss) == float(ret.aux_loss)


def test_eval_mode_skips_losses_unless_asked():
    layer = LFQ(codebook_dim=5, return_loss_breakdown=True).double()
    x = rand(2, 7, 5)
    train_ret, train_bd = layer(x)
    layer.eval()
    ret, breakdown = layer(x)
    assert float(ret.aux_loss) == 0.0 and all(float(t) == 0.0 for t in breakdown)
    assert torch.equal(ret.quantized, train_ret.quantized) and torch.equal(ret.indices, train_ret.indices)
    ret, breakdown = layer(x, compute_loss=True)
    assert float(ret.aux_loss) == float(train_ret.aux_loss) != 0.0
    assert layer(x, return_loss_breakdown=False).aux_loss.ndim == 0


def test_mask_all_false_and_errors():
    layer = LFQ(codebook_dim=4).double()
    x = rand(2, 3, 4)
    ret = layer(x, mask=torch.zeros(2, 3, dtype=torch.bool))
    assert float(ret.aux_loss) == 0.0 and ret.indices.shape == (2, 3)
    with pytest.raises(ValueError, match="mask has shape"):
        layer(x, mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="expected dim=4 features on the last axis"):
        layer(rand(2, 3, 5))
    with pytest.raises(ValueError, match="axis 1 \\(channel-first\\)"):
        layer(rand(2, 3, 4, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="outside \\[0, 15\\]"):
        layer.indices_to_codes(torch.tensor([[16]]))


def test_indices_to_codes_sequence_with_and_without_projection():
    layer = LFQ(dim=6, codebook_dim=4).double()
    x = rand(2, 3, 6, scale=1.0)
    ret = layer(x)
    assert ret.indices.shape == (2, 3)
    codes = layer.indices_to_codes(ret.indices, project_out=False)
    assert codes.shape == (2, 3, 4) and codes.dtype == torch.float64
    assert torch.equal(layer.indices_to_codes(ret.indices), ret.quantized)


def test_half_precision_under_autocast_keeps_float32_losses():
    torch.manual_seed(0)
    layer = LFQ(dim=16, codebook_dim=6, num_codebooks=2)
    x = torch.randn(2, 8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ret = layer(x)
    assert ret.aux_loss.dtype == torch.float32 and ret.quantized.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = layer.project_in(x).float()  # what the quantizer saw
    assert layer.indices_to_codes(ret.indices).dtype == torch.float32  # the layer's dtype
    ref = reference.lfq(h.detach().numpy().astype(np.float64), layer.cfg)
    assert abs(float(ret.aux_loss) - float(ref.aux_loss)) <= 1e-5 * max(1.0, abs(float(ref.aux_loss)))
    assert np.array_equal(ret.indices.numpy(), ref.indices)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_module_traces_as_one_graph(masked):
    layer = LFQ(dim=10, codebook_dim=4, num_codebooks=2)
    x = torch.randn(2, 10, 3, 3)
    mask = torch.rand(2, 3, 3) > 0.5 if masked else None
    explained = torch._dynamo.explain(layer)(x, mask=mask)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


def test_distributed_auto_is_off_without_a_process_group():
    layer = LFQ(codebook_dim=4)
    assert layer.distributed is None and layer._distributed_options() == {}
    with pytest.raises(RuntimeError, match="init_process_group"):
        LFQ(codebook_dim=4, distributed=True)(rand(2, 4).float())


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_layer_on_device_trains_and_decodes(device):
    torch.manual_seed(0)
    layer = LFQ(dim=12, codebook_dim=5, num_codebooks=2).to(device)
    x = torch.randn(2, 12, 4, 4, device=device)
    mask = torch.rand(2, 4, 4, device=device) > 0.3
    ret = layer(x, mask=mask)
    assert ret.quantized.device == x.device and ret.indices.device == x.device
    (ret.aux_loss + ret.quantized.square().mean()).backward()
    assert all(p.grad is not None and p.grad.device == x.device for p in layer.parameters())
    assert torch.equal(layer.indices_to_codes(ret.indices), ret.quantized)
    h = layer.project_in(x.movedim(1, -1)).detach().double().cpu()
    ref = reference.lfq(h.numpy(), layer.cfg, mask.cpu().numpy())
    assert abs(float(ret.aux_loss.detach()) - float(ref.aux_loss)) <= 1e-5 * max(1.0, abs(float(ref.aux_loss)))
