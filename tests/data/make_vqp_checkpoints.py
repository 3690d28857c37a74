"""Write tests/data/vqp_checkpoints.pt: state dicts and outputs of vector-quantize-pytorch's layers.

    pip install 'lfq[bench]'   # vector-quantize-pytorch
    python tests/data/make_vqp_checkpoints.py

tests/test_vqp_dropin.py loads them into lfq's layers (strict) and compares the
outputs, so that the checkpoint format stays tested where the package is absent.
"""

import pathlib
from importlib.metadata import version

import torch


def their_checkpoints(vqp) -> dict:
    """`{name: {kwargs, state_dict, x, quantized, indices}}` from vector-quantize-pytorch module `vqp`."""
    torch.manual_seed(0)
    cases = {
        "plain": (vqp.LFQ, dict(codebook_size=256, dim=8), (2, 8, 4, 4)),
        "projected_codebooks": (vqp.LFQ, dict(codebook_size=16, dim=12, num_codebooks=2), (2, 5, 12)),
        "rotated_cosine": (
            vqp.LFQ,
            dict(codebook_size=32, dim=10, orthogonal_rotation=True, cosine_sim_project_in=True),
            (3, 4, 10),
        ),
        "spherical": (vqp.LFQ, dict(codebook_size=64, spherical=True, codebook_scale=2.0), (2, 7, 6)),
        "residual": (vqp.ResidualLFQ, dict(dim=24, codebook_size=64, num_quantizers=3), (2, 9, 24)),
    }
    out = {}
    for name, (cls, kwargs, shape) in cases.items():
        layer = cls(**kwargs).eval()
        x = torch.randn(shape)
        quantized, indices, _ = layer(x)
        out[name] = {
            "kwargs": kwargs,
            "state_dict": layer.state_dict(),
            "x": x,
            "quantized": quantized.detach(),
            "indices": indices,
        }
    return out


def main():
    import vector_quantize_pytorch as vqp

    out = {"version": version("vector-quantize-pytorch"), **their_checkpoints(vqp)}
    path = pathlib.Path(__file__).with_name("vqp_checkpoints.pt")
    torch.save(out, path)
    print(f"wrote {path} ({path.stat().st_size} bytes) from vector-quantize-pytorch {out['version']}")


if __name__ == "__main__":
    main()
