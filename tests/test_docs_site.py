"""The documentation site, as a newcomer's browser gets it.

`mkdocs build --strict` checks the Markdown; these tests build the site once and crawl every HTML
page it wrote, for what a reader sees and strict mode does not: a link or anchor that leads
nowhere, a code block wider than its column, a checklist shown as literal `[ ]`, a diagram shown
as its source, a script fetched from another host, and words that belong to taskflow's history
rather than to its users.
"""

from __future__ import annotations

import os
import posixpath
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Characters a code block shows without scrolling, measured in headless Chromium at 1280 px: 80
# fit, 81 scroll. The site uses system fonts (`font: false`); the code font measured was DejaVu
# Sans Mono, and Roboto Mono (material's default) holds the same 80. 1280 px is the narrowest the
# column gets on a desktop (84 at 1000 px, 90 at 800 px); below 700 px a phone scrolls code
# anyway (43 characters at 390 px). Admonitions set code smaller and hold more (97), so the plain
# column is the limit everywhere.
CODE_COLUMNS = 80
# Each list a block is nested in indents it by four characters' worth (76 in one list, 72 in two).
LIST_INDENT = 4

# The page that tells readers of the earlier Go package where things went may name that design.
WORDING_EXEMPT = ("coming-from-go/index.html",)
FORBIDDEN_WORDS = re.compile(r"\b(seeds?|seeded|issues?|go design)\b", re.IGNORECASE)
# A page may cite a bug in a third-party project by linking to that project's tracker
# (e.g. https://github.com/redis/redis-py/issues/2028): such an href is a citation, not wording.
EXTERNAL_TRACKER = re.compile(r"^https://github\.com/(?!taskflow/)[\w.-]+/[\w.-]+/issues/\d+$")

TASK_MARKER = re.compile(r"\[[ xX]\]")
MERMAID_SOURCE = re.compile(
    r"^\s*(graph|flowchart|sequenceDiagram|stateDiagram(-v2)?|classDiagram|erDiagram|gantt"
    r"|journey|gitGraph|mindmap|timeline)\b"
)


@dataclass
class CodeBlock:
    text: str
    classes: frozenset[str]
    list_depth: int
    signature: bool = False  # an API reference signature (mkdocstrings' `.doc-signature`)


@dataclass
class Script:
    src: str
    attrs: dict[str, str | None]


@dataclass
class Page:
    """What one built HTML page links to, names and shows."""

    path: str  # relative to the site root, e.g. "concepts/index.html"
    ids: set[str] = field(default_factory=set)
    links: list[str] = field(default_factory=list)
    scripts: list[Script] = field(default_factory=list)
    stylesheets: list[str] = field(default_factory=list)
    code_blocks: list[CodeBlock] = field(default_factory=list)
    prose: list[str] = field(default_factory=list)  # text outside code, scripts and styles
    text: list[str] = field(default_factory=list)  # all text but scripts and styles
    footer_links: int = 0


class _PageParser(HTMLParser):
    def __init__(self, page: Page) -> None:
        super().__init__(convert_charrefs=True)
        self.page = page
        self._hidden = 0  # inside <script> or <style>
        self._code = 0  # inside <pre> or <code>
        self._lists = 0
        self._block: list[str] | None = None
        self._block_classes: frozenset[str] = frozenset()
        self._block_depth = 0
        self._divs: list[bool] = []  # per open <div>: is it a `.doc-signature`

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self._collect_names(tag, named)
        self._collect_references(tag, named)
        if tag in ("script", "style"):
            self._hidden += 1
        elif tag in ("pre", "code"):
            self._code += 1
        elif tag == "li":
            self._lists += 1
        elif tag == "div":
            self._divs.append("doc-signature" in (named.get("class") or "").split())
        if tag == "pre":
            self._block = []
            self._block_classes = frozenset((named.get("class") or "").split())
            self._block_depth = self._lists

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._hidden -= 1
        elif tag in ("pre", "code"):
            self._code -= 1
        elif tag == "li":
            self._lists -= 1
        elif tag == "div" and self._divs:
            self._divs.pop()
        if tag == "pre" and self._block is not None:
            block = CodeBlock(
                "".join(self._block), self._block_classes, self._block_depth, any(self._divs)
            )
            self.page.code_blocks.append(block)
            self._block = None

    def handle_data(self, data: str) -> None:
        if self._hidden:
            return
        self.page.text.append(data)
        if self._block is not None:
            self._block.append(data)
        if not self._code:
            self.page.prose.append(data)

    def _collect_names(self, tag: str, attrs: dict[str, str | None]) -> None:
        if attrs.get("id"):
            self.page.ids.add(str(attrs["id"]))
        if tag == "a" and attrs.get("name"):
            self.page.ids.add(str(attrs["name"]))

    def _collect_references(self, tag: str, attrs: dict[str, str | None]) -> None:
        href, src = attrs.get("href"), attrs.get("src")
        if tag == "script" and src:
            self.page.scripts.append(Script(src, attrs))
        if tag == "link" and href and "stylesheet" in (attrs.get("rel") or "").split():
            self.page.stylesheets.append(href)
        if tag in ("a", "link") and href:
            self.page.links.append(href)
        elif tag in ("img", "script", "source") and src:
            self.page.links.append(src)
        if tag == "a" and "md-footer__link" in (attrs.get("class") or "").split():
            self.page.footer_links += 1


@dataclass
class Site:
    root: Path
    pages: dict[str, Page]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)]
    done = subprocess.run(build, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    pages = {}
    for html in sorted(out.rglob("*.html")):
        page = Page(html.relative_to(out).as_posix())
        _PageParser(page).feed(html.read_text(encoding="utf-8"))
        pages[page.path] = page
    # A crawl that found nothing would pass every check below.
    assert {"index.html", "concepts/index.html", "deployment/index.html"} <= pages.keys()
    return Site(out, pages)


def _is_external(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.scheme or parts.netloc)


def _resolve(site: Site, page: Page, url: str) -> tuple[str, str]:
    """The site-relative file a link from `page` leads to, and its fragment."""
    parts = urlsplit(url)
    path = unquote(parts.path)
    if not path:
        return page.path, parts.fragment
    base = "" if path.startswith("/") else posixpath.dirname(page.path)
    target = posixpath.normpath(posixpath.join(base, path.lstrip("/")))
    target = "" if target == "." else target
    if path.endswith("/") or (site.root / target).is_dir():
        target = posixpath.join(target, "index.html")
    return target, parts.fragment


def _broken_links(site: Site) -> Iterator[str]:
    for page in site.pages.values():
        for url in page.links:
            if _is_external(url):
                continue
            target, fragment = _resolve(site, page, url)
            if not (site.root / target).is_file():
                yield f"{page.path}: {url} -> no file {target}"
            elif fragment and target.endswith(".html") and fragment not in site.pages[target].ids:
                yield f"{page.path}: {url} -> no id {fragment!r} on {target}"


def test_every_internal_link_and_anchor_resolves(site: Site) -> None:
    assert list(_broken_links(site)) == []


def _too_wide(site: Site) -> Iterator[str]:
    for page in site.pages.values():
        for block in page.code_blocks:
            if "mermaid" in block.classes:
                continue  # drawn as a diagram, not shown as text
            limit = CODE_COLUMNS - LIST_INDENT * block.list_depth
            for line in block.text.splitlines():
                if len(line) > limit:
                    yield f"{page.path}: {len(line)} > {limit}: {line[:60]}..."


def test_code_blocks_fit_the_column(site: Site) -> None:
    assert list(_too_wide(site)) == []


def _signatures(site: Site) -> dict[str, list[str]]:
    """Each API reference page's rendered signatures, as the lines a reader sees."""
    return {
        page.path: [block.text for block in page.code_blocks if block.signature]
        for page in site.pages.values()
        if page.path.startswith("reference/")
    }


def test_reference_signatures_fit_the_column(site: Site) -> None:
    """A signature wraps one parameter a line rather than scroll off to the right."""
    signatures = _signatures(site)
    wide = [
        f"{path}: {len(line)} > {CODE_COLUMNS}: {line[:60]}..."
        for path, texts in signatures.items()
        for text in texts
        for line in text.splitlines()
        if len(line) > CODE_COLUMNS
    ]
    assert wide == []
    # The check above finds signatures to measure, and they are formatted: the longest one,
    # App.add_consumer's, spreads over many lines (without a formatter it is one line of ~380).
    add_consumer = [
        text for text in signatures["reference/app/index.html"] if "add_consumer(" in text
    ]
    assert len(add_consumer) == 1
    assert len(add_consumer[0].splitlines()) > 10


def test_reference_leaves_out_internal_members(site: Site) -> None:
    """Members the runner calls are not shown as API, and private names never are."""
    ids = {
        i for path, page in site.pages.items() if path.startswith("reference/") for i in page.ids
    }
    assert "taskflow.App.add_consumer" in ids
    internal = {"taskflow.App.attach", "taskflow.http.OperationsEndpoint.attach"}
    assert ids & internal == set()
    assert [i for i in ids if i.startswith("taskflow.") and "._" in i] == []


def test_checklists_render_as_checkboxes(site: Site) -> None:
    literal = [
        f"{page.path}: {text.strip()[:60]!r}"
        for page in site.pages.values()
        for text in page.prose
        if TASK_MARKER.search(text)
    ]
    assert literal == []
    deployment = "".join(site.pages["deployment/index.html"].text)
    assert "Topics have at least as many partitions" in deployment


def _local_mermaid(site: Site, page: Page) -> list[Script]:
    return [
        script
        for script in page.scripts
        if not _is_external(script.src)
        and posixpath.basename(urlsplit(script.src).path).startswith("mermaid")
        and (site.root / _resolve(site, page, script.src)[0]).is_file()
    ]


def test_diagrams_are_drawn_by_the_sites_own_mermaid(site: Site) -> None:
    raw = [
        f"{page.path}: {block.text.strip()[:40]!r}"
        for page in site.pages.values()
        for block in page.code_blocks
        if MERMAID_SOURCE.match(block.text) and "mermaid" not in block.classes
    ]
    assert raw == [], "diagram source that no script will draw"
    with_diagrams = [
        page
        for page in site.pages.values()
        if any("mermaid" in block.classes for block in page.code_blocks)
    ]
    assert with_diagrams, "the concepts page draws its diagrams with mermaid"
    for page in with_diagrams:
        scripts = _local_mermaid(site, page)
        assert scripts, f"{page.path} has diagrams but loads no mermaid from the site"
        # material looks for a global `mermaid` when it finds a diagram and fetches one from a CDN
        # if there is none: the site's copy must be a classic script that has run by then.
        attrs = scripts[0].attrs
        assert not {"async", "defer"} & attrs.keys(), attrs
        assert attrs.get("type") in (None, "text/javascript"), attrs


def test_no_page_loads_a_script_or_stylesheet_from_another_host(site: Site) -> None:
    external = [
        f"{page.path}: {url}"
        for page in site.pages.values()
        for url in [script.src for script in page.scripts] + page.stylesheets
        if _is_external(url)
    ]
    assert external == []


def test_every_page_links_to_its_neighbours(site: Site) -> None:
    """The footer's previous/next links carry a newcomer through the guide in order."""
    pages = [page for path, page in site.pages.items() if path != "404.html"]
    assert [page.path for page in pages if not page.footer_links] == []


def _forbidden_wording(site: Site) -> Iterator[str]:
    for page in site.pages.values():
        if page.path in WORDING_EXEMPT:
            continue
        for text in page.text:
            for match in FORBIDDEN_WORDS.finditer(text):
                yield f"{page.path}: {match.group(0)!r} in {text.strip()[:80]!r}"
        for url in page.links:
            if FORBIDDEN_WORDS.search(url) and not EXTERNAL_TRACKER.match(url):
                yield f"{page.path}: link {url}"


def test_wording_speaks_of_taskflow_and_its_users(site: Site) -> None:
    assert list(_forbidden_wording(site)) == []


# The guide pages a team learns from: every Python block there runs when pasted, or says where
# the complete program is.
GUIDES = (
    "getting-started",
    "concepts",
    "consuming",
    "scheduling",
    "rate-limiting",
    "idempotency",
    "middleware",
    "reliability",
    "testing",
    "deployment",
    "observability",
)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```\n", re.MULTILINE | re.DOTALL)
INCLUDE = re.compile(r'^--8<-- "(examples|tests)/[\w/.-]+\.py(:[\w-]+)?"$')
# A fragment is followed by a line that links to the Examples page, where the file is whole.
FRAGMENT_NOTE = re.compile(r"^(From|A fragment).*?\]\(examples\.md#[\w-]+\)")


def _incomplete_snippets() -> Iterator[str]:
    for name in GUIDES:
        text = (ROOT / "docs" / f"{name}.md").read_text()
        for block in PYTHON_BLOCK.finditer(text):
            lines = [line for line in block.group(1).splitlines() if line.strip()]
            if all(INCLUDE.match(line) for line in lines):
                continue
            after = text[block.end() :].lstrip("\n").split("\n\n", 1)[0]
            if not FRAGMENT_NOTE.match(after.replace("\n", " ")):
                yield f"{name}.md: {lines[0][:60]!r}"


def test_every_guide_snippet_is_a_tested_file_or_links_to_one() -> None:
    assert list(_incomplete_snippets()) == []


def test_the_examples_page_shows_every_example_whole() -> None:
    page = (ROOT / "docs/examples.md").read_text()
    programs = sorted(
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "examples").glob("*.py")
        if path.name != "__init__.py"
    )
    assert programs
    assert [p for p in programs if f'--8<-- "{p}"' not in page] == []
