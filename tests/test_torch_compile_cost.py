"""What keeps torch.compile's first calls short: no autocast nodes in the traced graph
unless autocast is on, and AOT autograd's cache allowed for our own programs only."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lfq.backends.torch_backend import backend as torch_backend  # noqa: E402

import lfq  # noqa: E402


def _graphs(fn, *args):
    graphs = []

    def capture(gm, inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(fn, backend=capture, fullgraph=True)(*args)
    return out, [str(node.target) for gm in graphs for node in gm.graph.nodes]


@pytest.mark.parametrize("d", [3, 6])
def test_autocast_off_context_is_traced_only_under_autocast(d):
    be, cfg = lfq.get("torch"), lfq.Config(codebook_dim=d)
    z = torch.randn(16, d, generator=torch.Generator().manual_seed(d))
    want = be.lfq(z, cfg).aux_loss
    out, targets = _graphs(lambda v: be.lfq(v, cfg).aux_loss, z)
    # an autocast context in the graph makes AOT autograd's cache refuse it
    assert not [t for t in targets if "autocast" in t], targets
    assert torch.equal(out, want)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, targets = _graphs(lambda v: be.lfq(v, cfg).aux_loss, z)
    assert [t for t in targets if "autocast" in t]  # switched off inside, as in eager mode
    assert out.dtype == torch.float32 and torch.equal(out, want)


def test_aot_cache_setting_is_scoped_to_our_calls():
    from torch._functorch import config

    before = config.autograd_cache_allow_custom_autograd_functions
    with torch_backend._aot_cacheable():
        assert config.autograd_cache_allow_custom_autograd_functions is True
    assert config.autograd_cache_allow_custom_autograd_functions == before
