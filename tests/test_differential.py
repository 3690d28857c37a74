"""Generated differential test: every installed backend and mode against the reference.

Hypothesis draws configurations, token shapes (empty batches included), dtypes,
masks and classes of special values (`lfq.conformance.generated`), and each
draw must give the reference's codes, indices, losses and aux-loss gradient.

Size: `--lfq-examples N` examples per backend and mode (default 200; where every
new shape compiles, the draws come from a small pool, see `_plan`); a release check runs e.g.
`pytest tests/test_differential.py --lfq-examples 2000`. On a failure
hypothesis prints the `Draw`; `generated.check(Target(backend), draw)` replays it.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lfq.conformance import generated
from lfq.conformance.target import Target

import lfq

BACKENDS = [name for name in lfq.list_backends() if lfq.is_available(name)]
#: Examples per backend and mode in CI (`--lfq-examples` overrides).
DEFAULT_EXAMPLES = 200


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


#: Token shapes of the compile-bound runs: one with data, one empty batch.
TOKEN_POOL = ((2, 5), (0, 3))


def _plan(name: str, mode: str, release: bool):
    """The draw strategy of one backend and mode.

    Compiled modes compile per configuration, shape, dtype and mask presence (JAX's
    eager mode too: it compiles every primitive per shape, about 10 s per new
    shape on this CPU), so they draw from three configurations and two token
    shapes; values, masks and special classes vary freely. The others draw
    configurations and shapes of rank 0-3, empty batches included, in every dtype.
    Compiled modes run float32 in CI, float32 and float64 when `--lfq-examples` is given.
    """
    bound = mode == "compiled" or name == "jax"
    if not bound:
        tokens = st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple)
        dtypes = ["float32", "float64", "bfloat16", "float16"]
    elif mode == "compiled":
        # float64 doubles the compiles (torch: about 6 s each here): release runs only
        tokens, dtypes = st.sampled_from(TOKEN_POOL), ["float32", "float64"] if release else ["float32"]
    else:
        tokens, dtypes = st.just(TOKEN_POOL[0]), ["float32"]
    draws = st.builds(
        generated.Draw,
        config=_configs(bound),
        tokens=tokens,
        dtype=st.sampled_from(dtypes),
        mask=st.sampled_from(generated.MASKS),
        classes=st.sets(st.sampled_from(generated.CLASSES), max_size=3).map(lambda s: tuple(sorted(s))),
        seed=st.integers(0, 2**32 - 1),
    )
    return draws


def _x64(name: str, dtype: str):
    """JAX's 64-bit mode for float64 draws (the other backends need nothing)."""
    if name != "jax":
        return contextlib.nullcontext()
    import jax

    return jax.enable_x64(dtype == "float64")


@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("name", BACKENDS)
def test_generated_inputs_match_the_reference(name, mode, request):
    backend = lfq.get(name)
    if mode not in tuple(backend.modes):
        pytest.skip(f"backend {name!r} has no {mode} mode")
    target = Target(backend, registry_name=name)
    if mode == "compiled":
        target = target.compiled()
    asked = request.config.getoption("--lfq-examples")
    draws, examples = _plan(name, mode, release=asked is not None), asked or DEFAULT_EXAMPLES

    @settings(
        max_examples=examples, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(draws)
    def conforms(draw):
        with _x64(name, draw.dtype):
            problems = generated.check(target, draw)
        assert not problems, f"{name} {mode} on {draw}:\n" + "\n".join(problems)

    conforms()
