"""The "torch" backend: LFQ on `torch.Tensor`s, and the `LFQ` `nn.Module`.

    >>> import torch, lfq
    >>> be = lfq.get("torch")                      # TorchBackend, eager
    >>> out = be.lfq(torch.randn(8, 10), lfq.Config(codebook_dim=10))
    >>> out.indices.shape
    torch.Size([8, 1])

`be.compiled()` runs every operation through `torch.compile(fullgraph=True)`;
`lfq.backends.torch_backend.LFQ` is the layer (projections, image/video layouts,
masks, data-parallel training). docs/torch.md has the guide.
"""

from .backend import TorchBackend
from .module import LFQ, LossBreakdown, Return
from .residual import GroupedResidualLFQ, ResidualLFQ

__all__ = ["GroupedResidualLFQ", "LFQ", "LossBreakdown", "ResidualLFQ", "Return", "TorchBackend"]
