"""The layer arguments: one table (`LAYER_ARGUMENTS`) that every framework's layer follows."""

from __future__ import annotations

import dataclasses
import inspect
import pydoc
import re

import pytest

from lfq.layer_options import LAYER_ARGUMENTS, SCHEDULE_ARGUMENTS, layer_options, schedule_options

TABLE = {record.name: record for record in LAYER_ARGUMENTS}


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


# ------------------------------------------------- one table for every layer


def _documented(cls) -> dict:
    """`{name: text}` of the entries of the "Args:" section of the docstring `help(cls)` shows."""
    doc = inspect.getdoc(cls)
    shown = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    assert doc.splitlines()[0] in shown and all(line.strip() in shown for line in doc.splitlines()[-3:])
    entries, name = {}, None
    section = doc[doc.index("\nArgs:\n") :].split("\n\n")[0]  # up to the next blank line
    for line in section.splitlines():
        match = re.match(r"^\s{4}(\*{0,2}\w+): (.*)", line)
        if match:
            name = match.group(1)
            entries[name] = match.group(2)
        elif name and line.startswith(" " * 8):
            entries[name] += " " + line.strip()
        else:
            name = None
    return entries


def _torch():
    pytest.importorskip("torch")
    from lfq.backends.torch_backend import module

    return module.LFQ


def _jax():
    pytest.importorskip("jax")
    from lfq.backends.jax_backend import module

    return module.LFQ


def _nnx():
    pytest.importorskip("flax")
    from lfq.backends.jax_backend import flax_modules

    return flax_modules.LFQ


def _linen():
    pytest.importorskip("flax")
    from lfq.backends.jax_backend import flax_modules

    return flax_modules.LinenLFQ


def _keras():
    pytest.importorskip("torch")  # import torch before tensorflow
    pytest.importorskip("tensorflow")
    from lfq.backends.tf_backend import layer

    return layer.LFQLayer


#: Parameters of a signature that are no layer argument (Flax Linen's module plumbing).
_PLUMBING = {"self", "parent", "name", "kwargs"}


@pytest.mark.parametrize("layer", [_torch, _jax, _nnx, _linen, _keras], ids=["torch", "jax", "nnx", "linen", "keras"])
def test_every_layer_takes_the_table_with_its_defaults_and_documents_every_argument(layer):
    cls = layer()
    params = {n: p for n, p in inspect.signature(cls).parameters.items() if n not in _PLUMBING}
    assert set(TABLE) <= set(params), set(TABLE) - set(params)
    for name, record in TABLE.items():
        assert params[name].default == record.default, (name, params[name].default, record.default)
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    docs = _documented(cls)
    missing = set(params) - set(docs)
    assert not missing, f"{cls.__qualname__}'s help() does not document {sorted(missing)}"
    # The table's meaning, word for word, unless the layer says more (a superset of values).
    same = [name for name in TABLE if docs[name].startswith(TABLE[name].doc)]
    assert len(same) >= len(TABLE) - 1, sorted(set(TABLE) - set(same))
    assert all(docs[name].endswith(f"Default: {TABLE[name].default!r}.") for name in TABLE)


def test_residual_layers_share_the_table_where_they_take_an_argument():
    pytest.importorskip("torch")
    from lfq.backends.torch_backend.residual import GroupedResidualLFQ, ResidualLFQ

    for cls in (ResidualLFQ, GroupedResidualLFQ):
        params = {n: p for n, p in inspect.signature(cls).parameters.items() if n not in _PLUMBING}
        docs = _documented(cls)
        assert set(params) <= set(docs), set(params) - set(docs)
        for name in set(params) & set(TABLE) - {"dim"}:  # dim is required, as in vector-quantize-pytorch
            assert params[name].default == TABLE[name].default, name


def test_open_magvit2_layer_shares_the_table_where_it_takes_an_argument():
    pytest.importorskip("torch")
    from lfq.compat.open_magvit2 import LFQ

    params = {n: p for n, p in inspect.signature(LFQ).parameters.items() if n not in _PLUMBING}
    docs = _documented(LFQ)
    assert set(params) <= set(docs), set(params) - set(docs)
    shared = set(params) & set(TABLE)
    assert {"dim", "codebook_size", "num_codebooks", "batch_entropy", "precision"} <= shared
    for name in shared:
        assert params[name].default == TABLE[name].default, name


def test_the_table_maps_onto_config_and_schedule():
    from lfq.config import Config
    from lfq.factorized import SCHEDULE_FIELDS

    fields = {f.name for f in dataclasses.fields(Config)}
    assert all(r.config_field in fields for r in LAYER_ARGUMENTS if r.config_field)
    assert sorted(SCHEDULE_ARGUMENTS.values()) == sorted(SCHEDULE_FIELDS)
    assert schedule_options(inv_temperature=2.0, entropy_loss_weight=None, commitment_loss_weight=0.0) == {
        "inv_temperature": 2.0,
        "commitment_weight": 0.0,
    }
    names = list(inspect.signature(layer_options).parameters)
    assert names == [n for n in TABLE if n not in ("projection_has_bias", "return_loss_breakdown")]
    assert set(_documented(layer_options)) >= set(names)
    with pytest.raises(TypeError, match=r"'codebok_size' \(did you mean 'codebook_size'\?\)"):
        layer_options(codebok_size=16)
    with pytest.raises(TypeError, match="unexpected schedule argument"):
        schedule_options(temperature=1.0)
