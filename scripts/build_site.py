"""Build the course as a static website that works without the network (what `make site` runs).

    python scripts/build_site.py                  # -> build/site/index.html (open it, or serve the folder)
    python scripts/build_site.py --out DIR        # somewhere else
    python scripts/build_site.py --check DIR      # only list what in a built site would need the network

mkdocs with the Material theme and mkdocs-jupyter renders the committed, executed notebooks (nothing is executed
here), their worked solutions, the README as the home page and the question bank as a study page. Search is
mkdocs' own (lunr, in the page). Math is typeset by MathJax 3, vendored from npm in `site/vendor/mathjax` and
configured by `site/javascripts/mathjax-config.js`; the theme's web fonts are turned off, so no page asks a
server for anything. `tests/test_site.py` builds the site and checks both: every notebook has a page, and no page
loads a script, style, font or image from another host.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE_ASSETS = ROOT / "site"
NOTEBOOKS = ROOT / "notebooks"
#: tag -> attributes whose URL the browser fetches to render the page (links the reader clicks are not listed)
FETCHED = {"script": ("src",), "img": ("src", "srcset"), "iframe": ("src",), "source": ("src", "srcset"),
           "video": ("src", "poster"), "audio": ("src",), "embed": ("src",), "object": ("data",),
           "link": ("href",)}
_EXTERNAL = re.compile(r"^(https?:)?//", re.I)
_CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)|@import\s+['\"]([^'\"]+)['\"]", re.I)
_IPYNB_HREF = re.compile(r'href="((?!https?:|//|#)[^"]*?)\.ipynb(#[^"]*)?"')


def _title(path: Path) -> str:
    import json

    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] == "markdown":
            first = "".join(cell["source"]).strip().splitlines()[0]
            return first.lstrip("# ").strip()
    return path.stem


def question_page() -> str:
    """The question bank as one Markdown page: by topic, each answer folded under its question."""
    sys.path.insert(0, str(ROOT))
    from lorakit.drill import DIFFICULTIES, TOPICS, load_bank
    from lorakit.drill.links import link_href

    bank = load_bank()
    lines = ["# Question bank", "",
             f"{len(bank)} interview questions with their answers, the common mistake and the section that teaches "
             "each one. Drill them interactively in notebook 14 (quiz, flashcards, mock interview).", ""]
    for topic in bank.topics:
        lines += [f"## {TOPICS[topic]}", ""]
        for q in bank.filter(topics=topic):
            lines.append(f"**{html.escape(q.question)}** <small>`{q.id}` · {DIFFICULTIES[q.difficulty]} · "
                         f"{q.kind}</small>")
            if q.kind == "choice":
                lines += ["", *[f"- ({k}) {html.escape(v)}" for k, v in q.choices.items()]]
            lines += ["", '<details markdown="1"><summary>Answer</summary>', "",
                      f"**Answer:** {html.escape(q.answer_text)}", "",
                      f"**Why:** {html.escape(q.explanation)}", "",
                      f"**Common mistake:** {html.escape(q.wrong_text)}. {html.escape(q.why_wrong)}", ""]
            if q.kind == "derive":
                lines += ["**A full answer makes these points:**", "", *[f"- {html.escape(c)}" for c in q.checklist],
                          ""]
            lines += [f"[Read more]({link_href(q.link, 'notebooks/')})", "", "</details>", ""]
    return "\n".join(lines)


def home_page() -> str:
    """The README, as the site's home page."""
    return (ROOT / "README.md").read_text(encoding="utf-8")


def write_sources(src: Path) -> dict:
    """Copy notebooks, solutions and assets into ``src``; return the mkdocs configuration."""
    if src.exists():
        shutil.rmtree(src)
    (src / "notebooks" / "solutions").mkdir(parents=True)
    shutil.copytree(SITE_ASSETS / "vendor", src / "vendor")
    shutil.copytree(SITE_ASSETS / "javascripts", src / "javascripts")
    learner = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    solutions = sorted((NOTEBOOKS / "solutions").glob("[0-9][0-9]_*.ipynb"))
    for path in learner:
        shutil.copy2(path, src / "notebooks" / path.name)
    for path in solutions:
        shutil.copy2(path, src / "notebooks" / "solutions" / path.name)
    (src / "index.md").write_text(home_page(), encoding="utf-8")
    (src / "questions.md").write_text(question_page(), encoding="utf-8")
    return {
        "site_name": "lorakit: LoRA and its family, derived, measured and cross-checked",
        "docs_dir": str(src),
        "use_directory_urls": False,  # pages work from file:// too
        "theme": {"name": "material", "font": False, "features": ["navigation.sections", "search.highlight"]},
        "plugins": ["search", {"mkdocs-jupyter": {"include": ["*.ipynb"], "execute": False, "include_requirejs": False,
                                                  "custom_mathjax_url": "data:,", "toc_depth": 3}}],
        "markdown_extensions": ["tables", "attr_list", "md_in_html", {"toc": {"permalink": True}},
                                {"pymdownx.arithmatex": {"generic": True}}],
        "extra_javascript": ["javascripts/mathjax-config.js", "vendor/mathjax/tex-chtml.js"],
        "validation": {"links": {"not_found": "info", "unrecognized_links": "info", "absolute_links": "info"}},
        "nav": [{"Home": "index.md"},
                {"Notebooks": [{_title(p): f"notebooks/{p.name}"} for p in learner]},
                {"Worked solutions": [{_title(p): f"notebooks/solutions/{p.name}"} for p in solutions]},
                {"Question bank": "questions.md"}],
    }


_HEADING = re.compile(r"<h([1-6])([^>]*)>(.*?)</h\1>", re.S)
_ANCHOR_LINK = re.compile(r'<a class="anchor-link"[^>]*>.*?</a>', re.S)
#: nbconvert's loader of the widget renderer (from unpkg); the committed notebooks carry no widget state to render
_WIDGETS_LOADER = re.compile(r"<script>\s*\(function\(\) \{\s*function addWidgetsRenderer\(\).*?</script>", re.S)
#: a URL of another host written into an inline script (a loader that adds a <script src=...> at run time)
_SCRIPT_URL = re.compile(r"""['"]((?:https?:)?//[^'"\s]+\.(?:js|css|mjs))['"]""", re.I)
_MERMAID_LOADER = re.compile(r'<script type="module">(?:(?!</script>).)*?mermaid(?:(?!</script>).)*</script>', re.S)


def _jupyter_anchors(text: str) -> str:
    """Give every heading the anchor JupyterLab gives it (``3.-How-many...``) next to mkdocs' slug, so the links
    written for Jupyter (question bank, solution links) land on the right section of the site too."""
    from lorakit.drill.links import heading_anchor

    def add(match: re.Match) -> str:
        inner = match.group(3)
        label = html.unescape(re.sub(r"<[^>]+>", "", _ANCHOR_LINK.sub("", inner))).strip()
        if not label:
            return match.group(0)
        anchor = html.escape(heading_anchor(label), quote=True)
        if f'id="{anchor}"' in match.group(2):
            return match.group(0)
        return f'<h{match.group(1)}{match.group(2)}><span id="{anchor}"></span>{inner}</h{match.group(1)}>'

    return _HEADING.sub(add, text)


def fix_notebook_links(site: Path) -> int:
    """Point links written for Jupyter (``x.ipynb#anchor``) at the built pages (``x.html#anchor``), and add
    JupyterLab's heading anchors to the notebook pages."""
    changed = 0
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        new = _IPYNB_HREF.sub(lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"', text)
        if page.parent.name in ("notebooks", "solutions"):
            new = _jupyter_anchors(new)
            new = _WIDGETS_LOADER.sub("", new)
            if 'class="jp-Mermaid' not in new:  # nbconvert's CDN loader of mermaid, unused here
                new = _MERMAID_LOADER.sub("", new)
        if new != text:
            page.write_text(new, encoding="utf-8")
            changed += 1
    return changed


class _Fetched(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "link" and not {"stylesheet", "icon", "preload", "modulepreload", "manifest",
                                  "apple-touch-icon"} & set((values.get("rel") or "").lower().split()):
            return
        for attr in FETCHED.get(tag, ()):
            if values.get(attr):
                self.urls += [u.strip().split(" ")[0] for u in values[attr].split(",")]
        if values.get("style"):
            self.urls += [a or b for a, b in _CSS_URL.findall(values["style"])]


def external_resources(site: Path) -> list[str]:
    """``"page: url"`` for every script, style, font, image or frame a built page would fetch from another host."""
    found = []
    for page in sorted(site.rglob("*")):
        if page.suffix == ".html":
            parser = _Fetched()
            text = page.read_text(encoding="utf-8")
            parser.feed(text)
            urls = parser.urls + [a or b for block in re.findall(r"<style[^>]*>(.*?)</style>", text, re.S)
                                  for a, b in _CSS_URL.findall(block)]
            urls += [u for block in re.findall(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", text, re.S)
                     for u in _SCRIPT_URL.findall(block)]
        elif page.suffix == ".css":
            urls = [a or b for a, b in _CSS_URL.findall(page.read_text(encoding="utf-8", errors="replace"))]
        else:
            continue
        found += [f"{page.relative_to(site)}: {u}" for u in urls if _EXTERNAL.match(u)]
    return found


def build(out: Path) -> Path:
    import yaml

    sys.path.insert(0, str(ROOT))
    out = out.resolve()  # mkdocs runs in the sources folder: relative paths would point elsewhere
    work = out.parent / f"{out.name}-src"
    config = write_sources(work / "docs")
    config["site_dir"] = str(out)
    config_file = work / "mkdocs.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--quiet", "-f", str(config_file)], check=True,
                   cwd=work, env=env)
    fix_notebook_links(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "site")
    parser.add_argument("--check", type=Path, help="only check a built site for network fetches")
    args = parser.parse_args(argv)
    site = args.check or build(args.out)
    problems = external_resources(site)
    for problem in problems:
        print("needs the network:", problem)
    pages = len(list(site.rglob("*.html")))
    print(f"{site}: {pages} pages, {'offline' if not problems else f'{len(problems)} external fetches'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
