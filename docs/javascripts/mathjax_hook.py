"""MkDocs hook: serve MathJax from the site itself, so the formulas render offline.

The `docs` extra installs `django-static-mathjax`, a PyPI package that vendors
MathJax 3 (its `es5/` build: the combined TeX component, the CommonHTML fonts and
the extensions MathJax loads on demand). This hook adds those files to the site
under `javascripts/mathjax/`, where `mkdocs.yml` points `extra_javascript`, so no
page loads anything from the network. Without the package the build fails with
the install command instead of silently shipping pages whose math never renders.

It also writes the math of a heading as its plain TeX in the table of contents
(`O(ND)`, not `\\(O(ND)\\)`): the navigation is text that MathJax does not typeset.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import re

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

DISTRIBUTION = "django-static-mathjax"
TARGET = "javascripts/mathjax"
# The other ready-made combined components: never loaded by the site (which
# loads tex-mml-chtml.js), and 15 MB of the 24 MB.
UNUSED = {
    "latest.js",
    "node-main.js",
    "tex-chtml.js",
    "tex-chtml-full.js",
    "tex-chtml-full-speech.js",
    "tex-svg.js",
    "tex-svg-full.js",
    "tex-mml-svg.js",
    "mml-chtml.js",
    "mml-svg.js",
}
INLINE_MATH = re.compile(r"\\\((.*?)\\\)")


def mathjax_dir() -> pathlib.Path:
    """The `es5/` folder of the installed MathJax copy."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise PluginError(
            f"the docs render their math with a local MathJax: pip install -e '.[docs]' (it brings {DISTRIBUTION})"
        ) from None
    es5 = pathlib.Path(dist.locate_file("mathjax/static/mathjax/es5"))
    if not (es5 / "tex-mml-chtml.js").is_file():
        raise PluginError(f"{DISTRIBUTION} {dist.version} has no mathjax/static/mathjax/es5/tex-mml-chtml.js")
    return es5


def on_files(files, config):
    es5 = mathjax_dir()
    for path in sorted(es5.rglob("*")):
        rel = path.relative_to(es5).as_posix()
        if path.is_file() and rel not in UNUSED:
            files.append(File.generated(config, f"{TARGET}/{rel}", abs_src_path=str(path)))
    return files


def _plain_titles(items) -> None:
    for item in items:
        item.title = INLINE_MATH.sub(r"\1", item.title)
        _plain_titles(item.children)


def on_page_content(html, page, config, files):
    _plain_titles(page.toc)
    return html
