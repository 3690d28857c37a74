"""`lfq.compat.open_magvit2.LFQ`: Open-MAGVIT2 / SEED-Voken's interface over the torch backend.

What their tokenizer (lfqgan.py, cond_transformer*.py) uses is exercised here:
the call `quantize(h, return_loss_breakdown=True)` and its nested return,
LSB-first flattened indices (checked against an independent NumPy computation),
token factorization, `get_codebook_entry` round trips, the losses (against the
float64 `lfq.reference`), gradients, state_dict loading and a training step.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lfq  # noqa: E402
from lfq import reference  # noqa: E402
from lfq.compat.open_magvit2 import LFQ, LossBreakdown  # noqa: E402


def rand(*shape, seed=0, scale=0.1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def channel_last(x: torch.Tensor) -> np.ndarray:
    """`[b, c, ...]` -> float64 `[b, ..., c]`: the features as lfq.reference takes them."""
    return np.moveaxis(x.detach().double().numpy(), 1, -1)


def lsb_indices(x: torch.Tensor, num_codebooks: int) -> np.ndarray:
    """Independent index computation: bit i of codebook k is feature k*D + i > 0, weight 2**i."""
    last = channel_last(x)
    d = last.shape[-1] // num_codebooks
    bits = (last > 0).reshape(last.shape[:-1] + (num_codebooks, d)).astype(np.int64)
    return (bits << np.arange(d, dtype=np.int64)).sum(-1)


def channel_last_tensor(x):
    return x.movedim(1, -1)


def ref_config(layer: LFQ, tau: float = 100.0) -> lfq.Config:
    return lfq.Config(
        codebook_dim=layer.codebook_dim,
        num_codebooks=layer.num_codebooks,
        inv_temperature=tau,
        bit_order="lsb",
        entropy_weight=1.0,
        diversity_gamma=1.0,
        commitment_weight=0.0,
    )


def close(value, expected, rtol=2e-5, atol=2e-6):
    np.testing.assert_allclose(float(value.detach()), float(expected), rtol=rtol, atol=atol)


def test_importing_lfq_compat_does_not_import_torch():
    code = "import sys, lfq.compat; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_constructor_attributes_and_buffers():
    q = LFQ(dim=18, codebook_size=2**18, sample_minimization_weight=1.0, batch_maximization_weight=1.0)
    assert (q.codebook_size, q.codebook_dim, q.dim, q.num_codebooks) == (2**18, 18, 18, 1)
    assert not q.has_projections and not q.token_factorization
    assert (q.sample_minimization_weight, q.batch_maximization_weight) == (1.0, 1.0)
    assert q.dtype == torch.float32
    assert torch.equal(q.mask, 2 ** torch.arange(18))
    assert [name for name, _ in q.named_buffers()] == ["mask", "zero"]
    assert LFQ(codebook_size=16).dim == 4 and LFQ(dim=8, num_codebooks=2).codebook_size == 16
    f = LFQ(dim=18, codebook_size=2**18, token_factorization=True, factorized_bits=[6, 12])
    assert f.factorized_bits == [6, 12] and not hasattr(f, "mask")
    assert torch.equal(f.pre_mask, 2 ** torch.arange(6)) and torch.equal(f.post_mask, 2 ** torch.arange(12))
    with pytest.raises(ValueError, match="no projections"):
        LFQ(dim=16, codebook_size=2**18)
    with pytest.raises(ValueError, match="power of two"):
        LFQ(dim=10, codebook_size=1000)
    with pytest.raises(ValueError, match="summing to codebook_dim=18"):
        LFQ(dim=18, codebook_size=2**18, token_factorization=True, factorized_bits=[9, 8])
    with pytest.raises(ValueError, match="dim or codebook_size"):
        LFQ()


@pytest.mark.parametrize("shape", [(2, 18, 4, 4), (2, 18, 3, 2, 2), (3, 18, 5), (4, 18)])
def test_return_structure_image_video_sequence(shape):
    q = LFQ(dim=18, codebook_size=2**18)  # their default tokenizer: 18 bits
    x = rand(*shape, seed=1)
    (quant, emb_loss, info), breakdown = q(x, return_loss_breakdown=True)
    assert isinstance(breakdown, LossBreakdown) and breakdown._fields == (
        "per_sample_entropy",
        "codebook_entropy",
        "commitment",
        "avg_probs",
    )
    assert quant.shape == x.shape and quant.dtype == x.dtype
    assert torch.equal(quant, torch.where(x > 0, 1.0, -1.0))
    tokens = shape[0] * int(np.prod(shape[2:]))
    assert info.shape == (tokens,) and info.dtype == torch.int64
    assert np.array_equal(info.numpy(), lsb_indices(x, 1).reshape(-1))
    assert emb_loss.shape == () and float(breakdown.avg_probs) == 0.0
    plain = q(x)
    assert isinstance(plain, tuple) and len(plain) == 3 and torch.equal(plain[2], info)


def test_lsb_indices_several_codebooks_and_reference():
    q = LFQ(dim=12, codebook_size=2**6, num_codebooks=2)
    x = rand(2, 12, 3, 5, seed=2)
    _, _, indices = q(x)
    expected = lsb_indices(x, 2)  # [b, h, w, C]
    assert np.array_equal(indices.numpy(), expected.reshape(-1))
    ref = reference.codes_to_indices(channel_last(x), ref_config(q))
    assert np.array_equal(indices.numpy(), ref.reshape(-1))
    assert indices.view(2, 3, 5, 2)[0, 0, 0, 1] == expected[0, 0, 0, 1]


def test_codebook_entry_round_trip_is_bitwise():
    q = LFQ(dim=10, codebook_size=2**10)
    x = rand(3, 10, 4, 6, seed=3)
    quant, _, indices = q(x)
    b, c, h, w = x.shape
    entry = q.get_codebook_entry(indices.view(b, -1), (b, h, w, c), None)
    assert entry.shape == x.shape and entry.dtype == torch.float32
    assert torch.equal(entry, quant.detach())
    assert torch.equal(q.get_codebook_entry(indices.view(b, -1), shape=(b, h, w, c)), entry)
    # decode / bits helpers, and the codebook rows
    flat = indices.view(b, h * w, 1)
    assert torch.equal(q.decode(flat), quant.detach().flatten(2).transpose(1, 2))
    bits = q.indices_to_bits(indices)
    assert bits.dtype == torch.bool and bits.shape == (indices.numel(), 10)
    assert torch.equal(bits, (channel_last_tensor(x) > 0).reshape(-1, 10))
    assert torch.equal(q.bits_to_indices(bits), indices)
    assert torch.equal(q.bits_to_indices(bits.long()), indices)
    book = q.codebook
    assert book.shape == (1024, 10) and torch.equal(book[indices], q.decode(indices[:, None]))
    assert torch.equal(book[1], torch.tensor([1.0] + [-1.0] * 9))  # index 1 = first feature set (LSB)


def their_layout(values: torch.Tensor) -> torch.Tensor:
    """`values` (`[b, c, ...]`) in the memory layout Open-MAGVIT2's LFQ gives its output.

    Their forward rearranges `b d ... -> b ... d`, packs the tokens (`einops.pack`, which
    concatenates into a new tensor), and unpacks and rearranges back as views; the same
    einops steps, applied here to a contiguous copy of the values, give that layout.
    """
    einops = pytest.importorskip("einops")
    last = einops.rearrange(values.contiguous(), "b d ... -> b ... d")
    packed, ps = einops.pack([last], "b * d")
    return einops.rearrange(einops.unpack(packed, ps, "b * d")[0], "b ... d -> b d ...")


def _decoder(ndim: int, channels: int, seed: int):
    """A convolution over the spatial axes of a `[b, channels, ...]` input (the first layer of a decoder)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn((7, channels) + (3,) * (ndim - 2), generator=g)
    conv = getattr(torch.nn.functional, f"conv{ndim - 2}d")
    return lambda z: conv(z, weight, padding=1)


@pytest.mark.parametrize("seed", range(6))
def test_quantized_and_codebook_entries_have_their_memory_layout(seed):
    rng = np.random.default_rng(seed)
    ndim = int(rng.integers(2, 6))  # [b, dim], sequences, images, video
    num_codebooks, bits = int(rng.integers(1, 3)), int(rng.integers(2, 6))
    dim = num_codebooks * bits
    shape = (int(rng.integers(1, 4)), dim) + tuple(int(n) for n in rng.integers(1, 6, ndim - 2))
    q = LFQ(dim=dim, codebook_size=2**bits, num_codebooks=num_codebooks)
    x = rand(*shape, seed=seed)
    for training in (True, False):
        q.train(training)
        quant, _, indices = q(x)
        theirs = their_layout(quant.detach())
        assert quant.stride() == theirs.stride() and torch.equal(quant, theirs), (shape, quant.stride())
    if ndim < 3:
        return
    decode = _decoder(ndim, dim, seed)
    assert torch.equal(decode(quant.detach()), decode(theirs))  # a decoder gives their output bitwise
    if ndim == 4:  # get_codebook_entry takes image indices
        b, _, h, w = shape
        entry = q.get_codebook_entry(indices.view(b, -1), (b, h, w, dim), None)
        assert entry.stride() == quant.stride() and torch.equal(decode(entry), decode(quant.detach()))


def test_codebook_entry_several_codebooks():
    q = LFQ(dim=8, codebook_size=16, num_codebooks=2)
    x = rand(2, 8, 3, 3, seed=4)
    quant, _, indices = q(x)
    entry = q.get_codebook_entry(indices.view(2, -1), (2, 3, 3, 8), None)
    assert torch.equal(entry, quant.detach())


def test_token_factorization_indices_and_entries():
    q = LFQ(dim=18, codebook_size=2**18, token_factorization=True, factorized_bits=[6, 12])
    x = rand(2, 18, 4, 4, seed=5)
    (quant, _, (pre, post)), _ = q(x, return_loss_breakdown=True)
    full = lsb_indices(x, 1).reshape(-1)
    assert np.array_equal(pre.numpy(), full & (2**6 - 1))
    assert np.array_equal(post.numpy(), full >> 6)
    # their decode_to_img: entries of both factors, concatenated on the channel axis
    b, _, h, w = x.shape
    quant_pre = q.get_codebook_entry(pre.view(b, -1), (b, h, w, 6), order="pre")
    quant_post = q.get_codebook_entry(post.view(b, -1), (b, h, w, 12), order="post")
    assert torch.equal(torch.cat([quant_pre, quant_post], dim=1), quant.detach())
    with pytest.raises(ValueError, match="order='pre' or 'post'"):
        q.get_codebook_entry(pre.view(b, -1), (b, h, w, 6), None)
    # the losses are over all 2**18 codes, as without factorization
    plain = LFQ(dim=18, codebook_size=2**18)
    (_, loss, _), br = plain(x, return_loss_breakdown=True)
    (_, loss_f, _), br_f = q(x, return_loss_breakdown=True)
    assert torch.equal(loss, loss_f) and torch.equal(br.codebook_entropy, br_f.codebook_entropy)


@pytest.mark.parametrize("smw,bmw", [(1.0, 1.0), (0.5, 2.0), (0.0, 1.5), (1.0, 0.0), (0.0, 0.0)])
def test_losses_equal_reference(smw, bmw):
    q = LFQ(dim=8, codebook_size=16, num_codebooks=2, sample_minimization_weight=smw, batch_maximization_weight=bmw)
    x = rand(4, 8, 3, 3, seed=6, scale=0.02)  # soft assignments: every term is sizeable
    (_, loss, _), br = q(x, return_loss_breakdown=True)
    ref = reference.lfq(channel_last(x), ref_config(q))
    close(br.per_sample_entropy, ref.per_sample_entropy)
    close(br.codebook_entropy, ref.batch_entropy)
    close(br.commitment, ref.commitment_loss)
    close(loss, smw * ref.per_sample_entropy - bmw * ref.batch_entropy)
    assert loss.dtype == torch.float32


def test_weights_and_temperature_are_read_per_call():
    q = LFQ(dim=6, codebook_size=64)
    x = rand(2, 6, 5, seed=7, scale=0.05)
    ref = reference.lfq(channel_last(x), ref_config(q, tau=10.0))
    (_, loss, _), br = q(x, inv_temperature=10.0, return_loss_breakdown=True)
    close(br.per_sample_entropy, ref.per_sample_entropy)
    close(br.codebook_entropy, ref.batch_entropy)
    q.batch_maximization_weight = 0.25  # a schedule changes the attribute
    (_, loss, _), _ = q(x, inv_temperature=10.0, return_loss_breakdown=True)
    close(loss, ref.per_sample_entropy - 0.25 * ref.batch_entropy)


def test_mask_reaches_every_loss_term():
    q = LFQ(dim=8, codebook_size=256)
    x = rand(2, 8, 3, 4, seed=8, scale=0.02)
    mask = torch.rand(2, 12, generator=torch.Generator().manual_seed(0)) > 0.4  # theirs: [b, n]
    x_bad = x.clone().movedim(1, -1)
    x_bad[~mask.view(2, 3, 4)] = float("nan")  # masked-out tokens reach no loss
    x_bad = x_bad.movedim(-1, 1)
    (_, loss, _), br = q(x_bad, return_loss_breakdown=True, mask=mask)
    ref = reference.lfq(channel_last(x), ref_config(q), mask.view(2, 3, 4).numpy())
    close(br.per_sample_entropy, ref.per_sample_entropy)
    close(br.codebook_entropy, ref.batch_entropy)
    close(br.commitment, ref.commitment_loss)
    close(loss, ref.per_sample_entropy - ref.batch_entropy)
    (_, loss_hw, _), _ = q(x_bad, return_loss_breakdown=True, mask=mask.view(2, 3, 4))
    assert torch.equal(loss, loss_hw)
    with pytest.raises(ValueError):
        q(x, mask=mask[:, :5])


def test_eval_and_return_loss_false():
    q = LFQ(dim=8, codebook_size=256)
    x = rand(2, 8, 4, 4, seed=9)
    (quant, loss, idx), br = q(x, return_loss_breakdown=True)
    q.train()
    (_, loss_nl, idx_nl), br_nl = q(x, return_loss_breakdown=True, return_loss=False)
    assert float(loss_nl) == 0.0 and float(br_nl.per_sample_entropy) == 0.0
    assert float(br_nl.codebook_entropy) == 0.0 and torch.equal(br_nl.commitment, br.commitment)
    q.eval()
    (quant_e, loss_e, idx_e), br_e = q(x, return_loss_breakdown=True)
    assert torch.equal(quant_e, quant) and torch.equal(idx_e, idx) and torch.equal(idx_nl, idx)
    assert all(float(v) == 0.0 for v in (loss_e, *br_e))


def test_gradients_flow():
    q = LFQ(dim=8, codebook_size=256)
    x = rand(2, 8, 4, 4, seed=10, scale=0.05, dtype=torch.float64).requires_grad_(True)
    (quant, loss, _), br = q(x, return_loss_breakdown=True)
    weights = torch.arange(8.0, dtype=x.dtype)[:, None, None]
    (g_codes,) = torch.autograd.grad((quant * weights).sum(), x, retain_graph=True)
    assert torch.equal(g_codes, weights.expand_as(x))  # straight-through: identity
    total = 0.1 * loss + 0.25 * br.commitment
    (g,) = torch.autograd.grad(total, x)
    ref_cfg = ref_config(q).replace(entropy_weight=0.1, commitment_weight=0.25)
    expected = np.moveaxis(reference.vjp("aux_loss", channel_last(x), ref_cfg), -1, 1)
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-9, atol=1e-15)  # float64 layer: exact


def test_half_input():
    q = LFQ(dim=8, codebook_size=256)
    x = rand(2, 8, 4, 4, seed=11, dtype=torch.float16).requires_grad_(True)
    (quant, loss, idx), br = q(x, return_loss_breakdown=True)
    assert quant.dtype == torch.float16 and loss.dtype == torch.float32
    assert torch.equal(quant, torch.where(x > 0, 1.0, -1.0).half())
    quant.float().sum().backward()
    assert x.grad.dtype == torch.float16 and torch.equal(x.grad, torch.ones_like(x))


class _Tokenizer(torch.nn.Module):
    """Their VQModel's skeleton: encoder, `self.quantize`, decoder."""

    def __init__(self, quantize):
        super().__init__()
        self.encoder = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.quantize = quantize
        self.decoder = torch.nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        (quant, emb_loss, info), loss_break = self.quantize(self.encoder(x), return_loss_breakdown=True)
        return self.decoder(quant), emb_loss, info, loss_break


class _TheirBuffers(torch.nn.Module):
    """A stand-in with their quantizer's buffers (all registered with persistent=False)."""

    def __init__(self, d):
        super().__init__()
        self.register_buffer("mask", 2 ** torch.arange(d), persistent=False)
        self.register_buffer("zero", torch.tensor(0.0), persistent=False)
        codebook = ((torch.arange(2**d)[:, None] & 2 ** torch.arange(d)) != 0) * 2.0 - 1.0
        self.register_buffer("codebook", codebook, persistent=False)


def test_state_dict_loads_strictly():
    torch.manual_seed(0)
    theirs = _Tokenizer(_TheirBuffers(8))
    ours = _Tokenizer(LFQ(dim=8, codebook_size=256))
    assert ours.quantize.state_dict() == {}
    assert set(ours.state_dict()) == set(theirs.state_dict())
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(ours.quantize.codebook, theirs.quantize.codebook)  # same rows, LSB first
    ours.to(torch.float64)
    assert ours.quantize.dtype == torch.float64 and ours.quantize.codebook.dtype == torch.float64


def test_training_step():
    torch.manual_seed(0)
    model = _Tokenizer(LFQ(dim=8, codebook_size=256))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    losses = []
    for _ in range(5):
        xrec, eloss, info, loss_break = model(x)
        loss = (xrec - x).abs().mean() + 0.1 * eloss + 0.25 * loss_break.commitment
        opt.zero_grad()
        loss.backward()
        assert model.encoder.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert info.shape == (4 * 8 * 8,) and int(info.max()) < 256
