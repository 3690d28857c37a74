"""Drop-in layers with the interfaces of other LFQ implementations, computed by lfq.

Each submodule is named after the project whose interface it takes and is imported
on its own (importing `lfq.compat` imports no framework):

* `lfq.compat.open_magvit2`: `LFQ` of Open-MAGVIT2 / SEED-Voken (torch), their
  arguments, return structure, LSB-first indices and `get_codebook_entry`.

vector-quantize-pytorch users need no compat layer: `lfq.backends.torch_backend.LFQ`
takes its arguments (docs/migration.md).
"""

__all__: list[str] = []
