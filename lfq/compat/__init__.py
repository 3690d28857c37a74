"""Drop-in layers with the interfaces of other LFQ implementations, computed by lfq.

Each submodule is named after the project whose interface it takes and is imported
on its own (importing `lfq.compat` imports no framework):

* `lfq.compat.vector_quantize_pytorch`: `LFQ`, `ResidualLFQ`, `GroupedResidualLFQ`
  of vector-quantize-pytorch (torch). They are the torch backend's own layers
  (`lfq.backends.torch_backend`), whose interface is a superset of theirs.
* `lfq.compat.open_magvit2`: `LFQ` of Open-MAGVIT2 / SEED-Voken (torch), their
  arguments, return structure, LSB-first indices and `get_codebook_entry`; its
  interface conflicts with vector-quantize-pytorch's, so it is a layer of its own.
"""

__all__: list[str] = []
