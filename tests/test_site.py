"""`make site`: the static site builds offline, has a page for every notebook and solutions notebook, searches,
renders math with the vendored MathJax, and no page fetches anything from another host."""

from __future__ import annotations

import html
import importlib.util
import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

pytest.importorskip("mkdocs_jupyter")
pytest.importorskip("material")

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("build_site", ROOT / "scripts" / "build_site.py")
site_mod = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(site_mod)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return site_mod.build(tmp_path_factory.mktemp("site") / "site")


def test_every_notebook_has_a_page(site):
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        page = site / "notebooks" / f"{path.stem}.html"
        assert page.is_file(), f"no page for {path.name}"
        assert "jupyter-wrapper" in page.read_text(encoding="utf-8"), f"{page.name} is not a rendered notebook"
    for path in sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb")):
        assert (site / "notebooks" / "solutions" / f"{path.stem}.html").is_file(), f"no page for solutions/{path.name}"
    assert (site / "index.html").is_file() and (site / "questions.html").is_file()


def test_no_page_needs_the_network(site):
    assert site_mod.external_resources(site) == []
    for name in ("14_interview_drill.html", "solutions/14_interview_drill.html"):
        page = (site / "notebooks" / name).read_text(encoding="utf-8")
        assert "fonts.googleapis" not in page and "cdnjs" not in page and "jsdelivr" not in page, name


def test_external_resources_detects_fetches(tmp_path):
    (tmp_path / "a.html").write_text('<script src="https://cdn.example/x.js"></script><a href="https://ok.example">'
                                     '</a><link rel="stylesheet" href="//cdn.example/s.css"><img src="local.png">')
    (tmp_path / "b.css").write_text("@font-face{src:url(https://fonts.example/f.woff2)}")
    found = site_mod.external_resources(tmp_path)
    assert len(found) == 3 and not any("ok.example" in f for f in found)


def test_math_uses_the_vendored_mathjax(site):
    page = (site / "notebooks" / "03_scaling_rslora.html").read_text(encoding="utf-8")
    scripts = re.findall(r'<script src="([^"]+)"', page)
    assert "../vendor/mathjax/tex-chtml.js" in scripts and "../javascripts/mathjax-config.js" in scripts
    assert scripts.index("../javascripts/mathjax-config.js") < scripts.index("../vendor/mathjax/tex-chtml.js")
    fonts = site / "vendor" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2"
    assert (fonts / "MathJax_Main-Regular.woff").is_file()
    assert "$\\alpha/\\sqrt{r}$" in page or "\\alpha/\\sqrt" in page  # TeX left for MathJax to typeset


def test_search_index_covers_notebooks(site):
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    locations = {doc["location"].split("#")[0] for doc in index["docs"]}
    assert "notebooks/14_interview_drill.html" in locations and "questions.html" in locations


def test_question_links_land_on_existing_sections(site):
    page = (site / "questions.html").read_text(encoding="utf-8")
    links = re.findall(r'href="(notebooks/[^"#]+\.html)#([^"]+)"', page)
    assert len(links) >= 120
    for target, anchor in set(links):
        ids = {html.unescape(i) for i in re.findall(r'id="([^"]*)"', (site / target).read_text(encoding="utf-8"))}
        wanted = unquote(html.unescape(anchor))
        assert wanted in ids, f"{target}#{wanted}"


def test_solution_links_are_rewritten_for_the_site(site):
    page = (site / "notebooks" / "14_interview_drill.html").read_text(encoding="utf-8")
    assert 'href="solutions/14_interview_drill.html#Exercise-14.1"' in page and ".ipynb#Exercise" not in page
    solutions = (site / "notebooks" / "solutions" / "14_interview_drill.html").read_text(encoding="utf-8")
    assert 'id="Exercise-14.1"' in solutions
