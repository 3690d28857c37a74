"""`torch.compile(..., dynamic=True)` around the layer and around the functional API.

With `dynamic=True` Dynamo traces every size and every Python float as a symbol. Two
floats had broken that trace: the subnormal threshold inside the sub-code tables'
autograd Function (an internal Dynamo error: a graph input cannot enter the
Function's subgraph) and the bound of the logit clip (a graph break, an error with
`fullgraph=True`). Both are constants of the trace now, so one graph serves every
batch size. `backend="aot_eager"` traces the joint forward-backward graph that
inductor would compile, without compiling C++ (seconds, not tens of seconds).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lfq.backends.torch_backend import LFQ  # noqa: E402

import lfq  # noqa: E402


def _counter():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    return CompileCounterWithBackend("aot_eager")


def _close(got, want, what):
    torch.testing.assert_close(got, want, rtol=2e-5, atol=1e-6, msg=lambda m: f"{what}: {m}")


def test_layer_with_dynamic_true_is_one_graph_for_every_batch_size():
    torch.manual_seed(0)
    layer = LFQ(codebook_size=2**6, dim=6, entropy_loss_weight=0.1)
    counter = _counter()
    compiled = torch.compile(layer, dynamic=True, fullgraph=True, backend=counter)
    for shape in ((2, 16, 6), (3, 5, 6), (4, 9, 6)):  # sizes 0 and 1 are specialized
        x = torch.randn(*shape)
        x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
        want, got = layer(x_eager), compiled(x_compiled)
        _close(got[0], want[0], f"codes {shape}")
        assert torch.equal(got[1], want[1]), f"indices {shape}"
        _close(got[2], want[2], f"aux loss {shape}")
        (want[0].sum() + want[2]).backward()
        (got[0].sum() + got[2]).backward()
        _close(x_compiled.grad, x_eager.grad, f"gradient {shape}")
    assert counter.frame_count == 1, f"{counter.frame_count} graphs for three batch sizes"


def test_functional_lfq_with_dynamic_true_and_fullgraph():
    be, cfg = lfq.get("torch"), lfq.Config(codebook_dim=8, inv_temperature=3.0)

    def step(z):
        out = be.lfq(z, cfg)
        return out.aux_loss, out.indices

    counter = _counter()
    compiled = torch.compile(step, dynamic=True, fullgraph=True, backend=counter)
    for n in (64, 100, 7):
        z = torch.randn(n, 8, dtype=torch.float32)
        z_eager, z_compiled = z.clone().requires_grad_(), z.clone().requires_grad_()
        (want, want_idx), (got, got_idx) = step(z_eager), compiled(z_compiled)
        _close(got, want, f"aux loss, N = {n}")
        assert torch.equal(got_idx, want_idx)
        (grad_want,) = torch.autograd.grad(want, z_eager)
        (grad_got,) = torch.autograd.grad(got, z_compiled)
        _close(grad_got, grad_want, f"gradient, N = {n}")
    assert counter.frame_count == 1
