"""The layer arguments shared by the torch, JAX and Keras layers."""

from __future__ import annotations

import pytest

from lfq.layer_options import layer_options


def test_defaults_resolve_like_vector_quantize_pytorch():
    opts = layer_options(codebook_size=1024)
    assert opts.config.codebook_dim == 10 and opts.dim == 10
    assert not opts.has_projections and not opts.keep_num_codebooks_dim
    assert opts.is_channel_first(4) and opts.is_channel_first(5) and not opts.is_channel_first(3)
    many = layer_options(dim=64, codebook_dim=5, num_codebooks=3, channel_first=False)
    assert many.has_projections and many.keep_num_codebooks_dim and not many.is_channel_first(4)
    assert many.config.num_features == 15 and many.dim == 64


def test_arguments_map_onto_config():
    cfg = layer_options(
        codebook_dim=4,
        entropy_loss_weight=0.2,
        commitment_loss_weight=0.0,
        codebook_scale=2.0,
        soft_clamp_input_value=3.0,
        straight_through_activation="tanh",
        bit_order="lsb",
    ).config
    assert (cfg.entropy_weight, cfg.commitment_weight, cfg.scale, cfg.soft_clamp, cfg.activation, cfg.bit_order) == (
        0.2,
        0.0,
        2.0,
        3.0,
        "tanh",
        "lsb",
    )
    assert layer_options(codebook_size=16, codebook_dim=4).config.codebook_dim == 4


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(), ValueError, r"pass codebook_size .* or codebook_dim .*give exactly one"),
        (
            dict(codebook_size=16, codebook_dim=5),
            ValueError,
            "codebook_size=16 means codebook_dim=4, but codebook_dim=5",
        ),
        (dict(codebook_size=1000), ValueError, "power of two"),
        (dict(codebook_dim=4, num_codebooks=2, keep_num_codebooks_dim=False), ValueError, "num_codebooks == 1"),
        (
            dict(codebook_dim=4, dim=6, has_projections=False),
            ValueError,
            r"has_projections=False but dim=6 != C\*D = 4",
        ),
        (dict(codebook_dim=4, dim=0), ValueError, "dim=0 must be a positive int"),
        (dict(codebook_dim=4, channel_first="yes"), TypeError, "channel_first='yes' must be None"),
    ],
)
def test_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        layer_options(**kwargs)
