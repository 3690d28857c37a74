"""Generated differential test: every installed backend, mode and dtype against the reference.

Hypothesis draws configurations, masks and classes of special values
(`lfq.conformance.generated`), and each draw must give the reference's codes,
indices, losses and aux-loss gradient. Token shapes come from a pool drawn once
per run (`generated.token_pool`: an empty batch and shapes of rank 0 to 3), the
same for every backend and mode, so that a mode that compiles per shape gets as
many draws as eager NumPy (see `_plan`).

Size: `--lfq-examples N` draws per backend, mode and dtype (default 50; the
compiling modes, compiled and JAX's eager one, run float32 only unless N is given); `--lfq-pool-seed S` / `--lfq-pool-size K` pick the run's
shapes. A release check (docs/conformance.md records one) runs e.g.
`pytest tests/test_differential.py --lfq-examples 2000 --lfq-pool-seed $RANDOM`.
On a failure hypothesis prints the `Draw`; `generated.check(Target(backend), draw)`
replays it.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lfq.conformance import cases, generated
from lfq.conformance.target import Target

import lfq
from lfq.validation import FLOAT_DTYPES

BACKENDS = [name for name in lfq.list_backends() if lfq.is_available(name)]
#: Draws per backend, mode and dtype in CI (`--lfq-examples` overrides).
DEFAULT_EXAMPLES = 50


def _configs(bound: bool):
    if bound:
        return st.sampled_from(generated.COMPILED_CONFIGS)
    return st.fixed_dictionaries(
        {
            "codebook_dim": st.integers(1, 8),
            "num_codebooks": st.integers(1, 3),
            "spherical": st.booleans(),
            "soft_clamp": st.sampled_from([None, None, 0.5, 4.0]),
            "inv_temperature": st.sampled_from([1.0, 100.0, 1e4]),
            "activation": st.sampled_from(["identity", "tanh"]),
            "entropy_weight": st.sampled_from([0.1, 0.0, 1.0]),
            "commitment_weight": st.sampled_from([0.25, 0.0]),
            "diversity_gamma": st.sampled_from([1.0, 0.0, 2.0]),
            "bit_order": st.sampled_from(["msb", "lsb"]),
        }
    )


def _plan(name: str, mode: str, dtype: str, pool: tuple):
    """The draw strategy of one backend, mode and dtype.

    Every mode draws its token shapes from the run's `pool`. Compiled modes (and
    JAX's eager mode, which compiles every primitive per shape: about 10 s per new
    shape on this CPU) also compile per configuration, so they draw from the three
    `generated.COMPILED_CONFIGS`; the others draw configurations freely. Values,
    masks and special classes vary freely everywhere.
    """
    bound = mode == "compiled" or name == "jax"
    return st.builds(
        generated.Draw,
        config=_configs(bound),
        tokens=st.sampled_from(pool),
        dtype=st.just(dtype),
        mask=st.sampled_from(generated.MASKS),
        classes=st.sets(st.sampled_from(generated.CLASSES), max_size=3).map(lambda s: tuple(sorted(s))),
        seed=st.integers(0, 2**32 - 1),
    )


def _x64(name: str, dtype: str):
    """JAX's 64-bit mode for float64 draws (the other backends need nothing)."""
    if name != "jax":
        return contextlib.nullcontext()
    import jax

    return jax.enable_x64(dtype == "float64")


def _declares(backend, name: str, dtype: str) -> bool:
    return dtype in tuple(backend.dtypes) or (name == "jax" and dtype == "float64")  # JAX: float64 under x64


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("name", BACKENDS)
def test_generated_inputs_match_the_reference(name, mode, dtype, request):
    backend = lfq.get(name)
    if mode not in tuple(backend.modes):
        pytest.skip(f"backend {name!r} has no {mode} mode")
    if not _declares(backend, name, dtype):
        pytest.skip(f"backend {name!r} does not declare {dtype}")
    if dtype not in cases.input_dtypes():
        pytest.skip(cases.NO_BFLOAT16)
    asked = request.config.getoption("--lfq-examples")
    if (mode == "compiled" or name == "jax") and dtype != "float32" and asked is None:
        pytest.skip("compiling modes run float32 in CI (each dtype compiles anew); --lfq-examples runs them all")
    size = request.config.getoption("--lfq-pool-size") or (2 if asked is None else 4)
    pool = generated.token_pool(request.config.getoption("--lfq-pool-seed"), size)
    target = Target(backend, registry_name=name)
    if mode == "compiled":
        target = target.compiled()
    examples = asked or DEFAULT_EXAMPLES

    @settings(
        max_examples=examples, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(_plan(name, mode, dtype, pool))
    def conforms(draw):
        with _x64(name, draw.dtype):
            problems = generated.check(target, draw)
        assert not problems, f"{name} {mode} on {draw}:\n" + "\n".join(problems)

    conforms()


def test_token_pool_is_small_and_holds_an_empty_batch():
    pools = [generated.token_pool(seed, 5) for seed in range(20)]
    for pool in pools:
        assert [len(shape) for shape in pool] == [2, 2, 1, 0, 3]
        assert pool[1] == (0, pool[0][1]) and all(n > 0 for shape in pool[2:] for n in shape)
        assert generated.token_pool(pools.index(pool), 2) == pool[:2]
    assert len(set(pools)) > 10  # another seed, other shapes
