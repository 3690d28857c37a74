"""Every ```python block of README.md and docs/*.md runs.

Blocks of one file run in order in one fresh interpreter (so a page may build on
its earlier blocks, and framework state such as JAX's x64 flag cannot leak into
other tests). A page whose blocks import a framework that is not installed is
skipped with that reason; CI installs every framework, so nothing skips there.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("**/*.md")])
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
FRAMEWORKS = ("torch", "jax", "tensorflow", "keras", "matplotlib")


def python_blocks(page: pathlib.Path) -> list[str]:
    return BLOCK.findall(page.read_text())


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_page_code_runs(page, tmp_path):
    source = "\n\n".join(python_blocks(page))
    for name in FRAMEWORKS:
        if re.search(rf"^\s*(import|from)\s+{name}\b", source, re.M) and importlib.util.find_spec(name) is None:
            pytest.skip(f"{page.name} needs {name}, which is not installed")
    # torch before tensorflow in one process (their bundled libraries clash otherwise)
    prelude = "try:\n    import torch\nexcept ImportError:\n    pass\n" if "tensorflow" in source else ""
    script = tmp_path / "page.py"
    script.write_text(prelude + source)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, f"{page.name}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
