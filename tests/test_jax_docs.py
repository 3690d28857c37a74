"""Every ```python block of docs/jax.md runs, each on its own in a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("jax")

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "jax.md")
BLOCKS = re.findall(r"```python\n(.*?)```", open(DOC).read(), re.S)


@pytest.fixture(scope="module")
def runs():
    """Start every block at once (they are independent), then collect them."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    env["JAX_PLATFORMS"] = "cpu"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", block], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for block in BLOCKS
    ]
    return [proc.communicate(timeout=300) + (proc.returncode,) for proc in procs]


def test_the_page_has_the_expected_examples():
    assert len(BLOCKS) >= 6
    joined = "\n".join(BLOCKS)
    for needle in (
        "jax.jit",
        "jax.value_and_grad",
        "jax.vmap",
        "jax.shard_map",
        "axis_name",
        "enable_x64",
        "precision=\"default\"",
        "def adam_init",
    ):
        assert needle in joined, needle


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_block_runs(runs, index):
    stdout, stderr, code = runs[index]
    assert code == 0, f"block {index} of docs/jax.md failed:\n{BLOCKS[index]}\n{stderr[-3000:]}"
