"""The built docs site: its math renders with no network, and its API page shows docstrings as written.

One `mkdocs build --strict` into a temporary folder, then checks of the HTML:

* no page loads a script or a stylesheet from the network, and every page with
  math loads MathJax from the site's own copy (docs/javascripts/mathjax_hook.py),
  whose files (the TeX component, the fonts, the extensions) are in the site;
* the pages' math is all in arithmatex elements (no raw `$$` or `\\(` left in
  the text), and, where Node.js is installed, every formula of the site
  typesets with that very MathJax copy without an error or an undefined macro;
* where a headless Chromium is installed, the entropy page, opened from disk with
  every host name unresolvable, shows typeset math;
* the API page has no emphasis made out of the asterisks of `C*D` or `2**D` in a
  docstring (the failure names the docstring).

Skipped when mkdocs, mkdocstrings or mkdocs-material is not installed, except the
check of the Markdown sources' inline math, which needs none of them.
"""

from __future__ import annotations

import html
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MATHJAX = "javascripts/mathjax/tex-mml-chtml.js"
MATH = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.S)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
    for needed in ("mkdocs", "mkdocstrings", "material"):
        pytest.importorskip(needed)
    out = tmp_path_factory.mktemp("docs") / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


def pages(site: pathlib.Path) -> dict[str, str]:
    return {p.relative_to(site).as_posix(): p.read_text() for p in sorted(site.rglob("*.html"))}


def formulas(page_html: str) -> list[tuple[str, bool]]:
    """(TeX, display) of every arithmatex element of a page."""
    found = []
    for _, body in MATH.findall(page_html):
        tex = html.unescape(body).strip()
        display = tex.startswith("\\[")
        assert tex[:2] in ("\\(", "\\[") and tex[-2:] in ("\\)", "\\]"), tex
        found.append((tex[2:-2], display))
    return found


def test_nothing_is_loaded_from_the_network(site):
    remote = re.compile(r'<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)="(?:https?:)?//[^"]*"')
    offenders = {name: remote.findall(text) for name, text in pages(site).items()}
    assert not {k: v for k, v in offenders.items() if v}


def test_mathjax_is_shipped_with_the_site(site):
    es5 = site / "javascripts" / "mathjax"
    assert (es5 / "tex-mml-chtml.js").stat().st_size > 500_000
    assert (es5 / "output" / "chtml" / "fonts" / "woff-v2" / "MathJax_Main-Regular.woff").is_file()
    assert (es5 / "output" / "chtml" / "fonts" / "woff-v2" / "MathJax_Math-Italic.woff").is_file()
    assert (es5 / "input" / "tex" / "extensions").is_dir()  # loaded on demand
    with_math = 0
    for name, text in pages(site).items():
        if 'class="arithmatex"' not in text:
            continue
        with_math += 1
        config = re.search(r'<script src="([^"]*javascripts/mathjax\.js)"', text)
        loader = re.search(r'<script src="([^"]*' + re.escape(MATHJAX) + ')"', text)
        assert config and loader and config.start() < loader.start(), name  # the config first
        page_dir = (site / name).parent
        assert (page_dir / loader.group(1)).resolve() == (es5 / "tex-mml-chtml.js").resolve(), name
    assert with_math >= 10


def test_entropy_page_math_is_marked_up(site):
    text = (site / "entropy" / "index.html").read_text()
    found = formulas(text)
    assert len(found) >= 15 and any(display for _, display in found)
    assert any(r"\mathrm{softmax}_j" in tex for tex, _ in found)
    # no math left outside arithmatex (raw $ or \( in the text would render as typed)
    for name, page_html in pages(site).items():
        rest = re.sub(r"<(code|pre|script|style|textarea)\b.*?</\1>", "", MATH.sub("", page_html), flags=re.S)
        rest = re.sub(r"<[^>]+>", "", rest)
        assert not re.search(r"\$\$|\\\(|\\\[", rest), (name, re.findall(r".{0,60}(?:\$\$|\\\(|\\\[).{0,60}", rest))


def test_every_formula_typesets_with_the_shipped_mathjax(site, tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs Node.js to run MathJax outside a browser")
    sys.path.insert(0, str(ROOT / "docs" / "javascripts"))
    try:
        from mathjax_hook import mathjax_dir
    finally:
        sys.path.pop(0)
    every = [
        {"page": name, "tex": tex, "display": display}
        for name, text in pages(site).items()
        for tex, display in formulas(text)
    ]
    assert len(every) > 100
    (tmp_path / "formulas.json").write_text(json.dumps(every))
    script = tmp_path / "typeset.js"
    script.write_text("""
const [es5, file] = process.argv.slice(2);
const formulas = JSON.parse(require('fs').readFileSync(file, 'utf8'));
require(es5 + '/node-main.js').init({loader: {load: ['input/tex', 'adaptors/liteDOM']}}).then((MathJax) => {
  const bad = [];
  for (const f of formulas) {
    const mml = MathJax.tex2mml(f.tex, {display: f.display});
    if (mml.includes('<merror') || mml.includes('mathcolor="red"')) bad.push([f.page, f.tex, mml.slice(0, 300)]);
  }
  console.log(JSON.stringify({count: formulas.length, bad}));
}).catch((e) => { console.error(e); process.exit(1); });
""")
    proc = subprocess.run(
        [node, str(script), str(mathjax_dir()), str(tmp_path / "formulas.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["count"] == len(every) and result["bad"] == []


def test_entropy_page_renders_offline_in_a_browser(site):
    browser = next(
        (
            shutil.which(b)
            for b in ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome")
            if shutil.which(b)
        ),
        None,
    )
    if browser is None:
        pytest.skip("no headless Chromium installed")
    page = (site / "entropy" / "index.html").as_uri()
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # no host name resolves: offline
            "--virtual-time-budget=20000",
            "--dump-dom",
            page,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    dom = proc.stdout
    expected = len(formulas((site / "entropy" / "index.html").read_text()))
    assert dom.count("<mjx-container") == expected, (dom.count("<mjx-container"), expected)
    assert "<mjx-merror" not in dom


def test_api_page_has_no_emphasis_made_of_asterisks(site):
    text = (site / "api" / "index.html").read_text()
    # an emphasis that opens or closes inside a word: the * of C*D, k*D or 2*tau, the ** of 2**D
    emphasis = re.compile(r"(\S{0,12})<(em|strong)>(.*?)</\2>(\S{0,12})", re.S)
    wrong: dict[str, list[str]] = {}
    for match in emphasis.finditer(text):
        before, tag, inner, after = match.groups()
        if not (re.search(r"[\w)\]]$", before) or re.match(r"[\w(\[]", after)):
            continue
        anchors = re.findall(r'id="([\w.]+)"', text[: match.start()])
        stars = "*" if tag == "em" else "**"
        shown = re.sub(r"<[^>]+>", "", f"{before}{stars}{inner}{stars}{after}")
        wrong.setdefault(anchors[-1] if anchors else "?", []).append(html.unescape(" ".join(shown.split())))
    wrong = {where: sorted(set(found)) for where, found in wrong.items()}
    assert not wrong, "docstrings whose asterisks became emphasis (put the expression in backticks): " + json.dumps(
        wrong, indent=1
    )


FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_MATH = re.compile(r"(?<![\\$])\$(?!\$)(.+?)(?<![\\$])\$(?!\$)")


def test_inline_math_can_render():
    """Inline `$...$` with a space after the opening or before the closing dollar is not
    math to arithmatex: it shows as raw TeX (docs/spec.md had `$0 \\cdot \\infty = $`)."""
    bad = []
    for page in sorted([ROOT / "README.md", *(ROOT / "docs").glob("**/*.md")]):
        # fenced blocks blanked line for line, so that the line numbers stay right
        text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), page.read_text())
        for number, line in enumerate(text.splitlines(), 1):
            line = re.sub(r"\$\$.*?\$\$", "", re.sub(r"`[^`]*`", "", line))
            for match in INLINE_MATH.finditer(line):
                if match.group(1) != match.group(1).strip():
                    bad.append(f"{page.relative_to(ROOT)}:{number}: {match.group(0)}")
    assert not bad, "inline math with a space inside its dollars:\n" + "\n".join(bad)


def test_code_in_table_cells_is_not_broken_mid_word(site):
    """The theme breaks code anywhere; docs/stylesheets/tables.css keeps argument names whole."""
    css = (site / "stylesheets" / "tables.css").read_text()
    assert "white-space: nowrap" in css
    assert "stylesheets/tables.css" in pages(site)["migration/index.html"]
