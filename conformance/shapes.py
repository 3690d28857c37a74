"""Shape checks of a compiled backend: one config, many shapes, one process.

A compiled backend traces per input signature. One that traces anew for each
shape, rank or batch size breaks in real use: torch.compile stops at its
recompile budget (a hard error under `fullgraph=True`), a tracer may specialize
on batch sizes 0 and 1, a training loop with variable-length batches or a
validation pass of another shape then fails after a few steps. These checks call
the backend's compiled twin (`target.compiled()`, when "compiled" is in its
modes) on `SHAPES` (ranks 1-4 of z, an empty batch, single tokens, with and
without a mask) one after the other, and compare `lfq(...)` with `lfq.reference`:
codes bitwise, indices exactly, losses within the dtype's loss tolerance
(`DEFAULT_TOLERANCES`). Every shape is its own result, so a backend that fails
from the fifth new shape on shows where.

`run_shape_checks(target)` returns `(check name, dtype, passed, message)` tuples.
"""

from __future__ import annotations

import numpy as np
from lfq.conformance import compare
from lfq.conformance.cases import DEFAULT_TOLERANCES

from lfq import reference
from lfq.config import Config
from lfq.validation import numpy_dtype

__all__ = ["DEFAULT_CONFIG", "SHAPES", "run_shape_checks"]

#: The one config of the checks: two codebooks of 4 bits, a temperature that keeps
#: the entropies away from their saturated limits.
DEFAULT_CONFIG = Config(codebook_dim=4, num_codebooks=2, inv_temperature=5.0)

#: `(token shape, masked)`: z is `token shape + (C*D,)`. Ranks 1-4, an empty batch
#: (also inside a larger rank), one token, and batch sizes that differ call to call.
SHAPES: tuple[tuple[tuple[int, ...], bool], ...] = (
    ((5,), False),
    ((), False),
    ((0,), False),
    ((1,), True),
    ((7,), True),
    ((3, 4), False),
    ((2, 0), True),
    ((1, 1), False),
    ((2, 3, 5), True),
    ((4, 1, 2), False),
    ((3, 6), True),
    ((2, 2, 3), False),
)


def _label(tokens: tuple, num_features: int, masked: bool) -> str:
    shape = "x".join(str(s) for s in tokens + (num_features,))
    return f"compiled.shapes[{shape}{',mask' if masked else ''}]"


def run_shape_checks(
    target, cfg: Config | None = None, dtype: str = "float32", shapes=SHAPES, seed: int = 0
) -> list[tuple[str, str, bool, str]]:
    """The compiled twin of `target` on many shapes of one config, against the reference.

    Args:
        target: a `lfq.conformance.target.Target` (its eager backend).
        cfg: the config (default `DEFAULT_CONFIG`).
        dtype: input dtype name; nothing runs when the backend does not declare it.
        shapes: `(token shape, masked)` pairs, called in this order.
        seed: of the inputs (NumPy PCG64, float64 rounded once to `dtype`).

    Returns:
        One `(name, dtype, passed, message)` per shape, in order; empty when
        "compiled" is not in the backend's modes. A `compiled()` that raises is one
        failed "compiled" result.
    """
    cfg = DEFAULT_CONFIG if cfg is None else cfg
    backend = target.backend
    if "compiled" not in tuple(getattr(backend, "modes", ())) or dtype not in tuple(backend.dtypes):
        return []
    try:
        compiled = target.compiled()
    except Exception as err:
        return [("compiled", dtype, False, f"'compiled' is in modes but compiled() raised {type(err).__name__}: {err}")]
    tol = DEFAULT_TOLERANCES[dtype]["loss"]
    rng = np.random.default_rng(seed)
    results = []
    for tokens, masked in shapes:
        tokens = tuple(tokens)
        name = _label(tokens, cfg.num_features, masked)
        z = (rng.standard_normal(tokens + (cfg.num_features,)) * 0.5).astype(numpy_dtype(dtype))
        mask = rng.random(tokens) > 0.3 if masked else None
        z64 = z.astype(np.float64)
        want = reference.lfq(z64, cfg, mask)
        try:
            out = compiled.backend.lfq(compiled.put(z, dtype), cfg, None if mask is None else compiled.put(mask))
            outcomes = compare.lfq_output(
                out._replace(**{f: compiled.get(v) for f, v in out._asdict().items()}), want, cfg, dtype, tol, z
            )
        except Exception as err:  # the failure under test: a backend that stops after some shapes
            results.append((name, dtype, False, f"lfq on z of shape {z.shape} raised {type(err).__name__}: {err}"))
            continue
        problems = [o.message for o in outcomes if not o.passed]
        results.append((name, dtype, not problems, "; ".join(problems)))
    return results
