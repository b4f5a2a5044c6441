"""The built website, opened page by page in a real browser, offline.

`make test` builds the book first (`make book`), then runs this file against
`_build/html` (another folder: set BOOK_HTML). Each page is served from
localhost and opened in headless Chromium (Debian's `chromium`, driven by
Playwright without any browser download). A page passes when

* it logs no JavaScript error and throws no uncaught exception;
* it asks for nothing from any host but localhost (such requests are blocked
  and reported, so a reader without network sees what the test saw);
* where the page has math, MathJax (served from the site itself) has turned
  every formula into rendered output, with no TeX error.

A full-page screenshot of each chapter is saved under _build/screenshots/
(another folder: set SCREENSHOT_DIR) for a person to look at.

Without chromium these tests skip with a message, except under CI (the CI
environment variable set), where a missing browser or a missing site fails.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))
WHEEL = "bnlib_course-0.1.0-py3-none-any.whl"  # the learner's wheel (learner/build.py; test_learner_wheel.py checks the name)
SCREENSHOTS = Path(os.environ.get("SCREENSHOT_DIR", ROOT / "_build" / "screenshots"))
IN_CI = bool(os.environ.get("CI"))

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
# Schemes that never leave the machine.
LOCAL_SCHEMES = {"data", "blob", "about"}
# Sphinx marks every formula with this class; MathJax replaces its TeX.
MATH_SELECTOR = ".math"
MATHJAX_TIMEOUT_MS = 30_000


def _unavailable(reason: str):
    """Fail under CI, skip elsewhere, with the same plain message."""
    if IN_CI:
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def find_chromium() -> str | None:
    """Path of the system Chromium: $CHROMIUM, else `chromium` or `chromium-browser` on PATH."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return shutil.which("chromium") or shutil.which("chromium-browser")


def built_pages() -> list[str]:
    """Every page of the built site, as a path relative to its root (assets excluded)."""
    if not SITE.is_dir():
        return []
    return sorted(
        p.relative_to(SITE).as_posix()
        for p in SITE.rglob("*.html")
        if p.relative_to(SITE).parts[0] not in {"_static", "_sources", "_images"}
    )


PAGES = built_pages()


def require_site() -> None:
    if not (SITE / "index.html").is_file():
        _unavailable(f"no built site at {SITE}: run `make book` first (or set BOOK_HTML)")


# --------------------------------------------------------------- static ----
def _toc_entries(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k in {"root", "file"}] + [
            e for k, v in node.items() if k not in {"root", "file"} for e in _toc_entries(v)
        ]
    if isinstance(node, list):
        return [e for item in node for e in _toc_entries(item)]
    return []


def test_every_page_of_the_table_of_contents_was_built():
    require_site()
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    missing = [f"{entry}.html" for entry in _toc_entries(toc) if f"{entry}.html" not in PAGES]
    assert not missing, f"expected a page in {SITE} for every _toc.yml entry; missing {missing}"


def test_no_page_references_a_script_style_or_image_on_another_host():
    require_site()
    tag = re.compile(r"<(?:script|link|img|iframe|source)\b[^>]*?\b(?:src|href)=[\"']((?:https?:)?//[^\"']+)", re.I)
    offenders = {
        page: tag.findall((SITE / page).read_text(encoding="utf-8"))
        for page in PAGES
    }
    offenders = {page: urls for page, urls in offenders.items() if urls}
    assert not offenders, f"expected only local assets; these pages load from other hosts: {offenders}"


def test_mathjax_is_served_from_the_site_itself():
    require_site()
    scripts = {
        m for page in PAGES
        for m in re.findall(r"<script[^>]*src=\"([^\"]*mathjax[^\"]*)\"", (SITE / page).read_text(encoding="utf-8"), re.I)
    }
    assert scripts, "expected at least one page to load MathJax (the glossary has formulas); none does"
    for src in scripts:
        assert "//" not in src, f"expected MathJax from the site (a relative path); received {src!r}"
        local = src.split("?")[0].split("_static/", 1)[-1]
        assert (SITE / "_static" / local).is_file(), f"MathJax script {src!r} is referenced but missing under {SITE / '_static'}"


def test_the_site_serves_the_learner_wheel_that_every_exercise_page_links():
    """`make book` builds the wheel first (learner/build.py) and the site serves it at wheels/ (html_extra_path)."""
    import zipfile

    require_site()
    wheel = SITE / "wheels" / WHEEL
    assert wheel.is_file(), f"expected the learner's wheel at {wheel} (built by `make wheel`, copied by html_extra_path)"
    with zipfile.ZipFile(wheel) as z:
        tops = {n.split("/", 1)[0] for n in z.namelist()}
    assert {"bnlib", "bncheck"} <= tops and "grading" not in tops, f"{wheel.name} holds {sorted(tops)}"
    pages = sorted((SITE / "release").rglob("*.html"))
    assert pages, "expected the exercise pages under release/"
    for page in pages:
        links = re.findall(r'href="([^"]*' + re.escape(WHEEL) + ')"', page.read_text(encoding="utf-8"))
        assert links, f"{page.relative_to(SITE)}: expected a link to {WHEEL}"
        assert all((page.parent / link).resolve() == wheel.resolve() for link in links), f"{page}: {links} do not reach {wheel}"
        assert "pip install numpy" in page.read_text(encoding="utf-8"), f"{page}: expected its pip install line"


@pytest.mark.parametrize("folder", ["solutions", "grading"])
def test_solutions_notebooks_and_grading_code_are_not_part_of_the_site(folder):
    require_site()
    leaked = sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob("*") if folder in p.relative_to(SITE).parts)
    assert not leaked, f"expected nothing from {folder}/ on the site; found {leaked}"


# -------------------------------------------------------------- browser ----
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def serve(directory: Path):
    """Serve `directory` on an ephemeral localhost port; yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def site_url():
    """The built site, served on localhost for this module."""
    require_site()
    with serve(SITE) as url:
        yield url


@pytest.fixture(scope="module")
def browser(request):
    """Headless system Chromium (no browser download), through Playwright."""
    chromium = find_chromium()
    if chromium is None:
        _unavailable("chromium is not installed: `make browser` (as root, with apt-get) installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()
    if SCREENSHOTS.is_dir():
        plugins = request.config.pluginmanager
        reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"\npage screenshots: {SCREENSHOTS}")


class PageVisit:
    """What one page did while it loaded: errors, and requests to other hosts."""

    def __init__(self):
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.foreign_requests: list[str] = []


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in LOCAL_SCHEMES or parts.hostname in LOCAL_HOSTS


def open_page(browser, url: str):
    """Open `url` in a fresh context, block and record non-local requests; return (page, visit)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    visit = PageVisit()

    def route(r):
        if _is_local(r.request.url):
            r.continue_()
        else:
            visit.foreign_requests.append(r.request.url)
            r.abort("blockedbyclient")

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and visit.console_errors.append(f"{m.text} ({m.location.get('url')})"))
    page.on("pageerror", lambda e: visit.page_errors.append(str(e)))
    page.goto(url, wait_until="load")
    page.wait_for_load_state("networkidle")
    return page, visit


def wait_for_mathjax(page) -> None:
    """Wait until MathJax 3 has loaded and typeset the page."""
    page.wait_for_function(
        "() => window.MathJax && MathJax.startup && MathJax.startup.promise",
        timeout=MATHJAX_TIMEOUT_MS,
    )
    page.evaluate("() => MathJax.startup.promise")


def test_the_page_check_notices_a_cdn_script_and_a_javascript_error(browser, tmp_path):
    """The checks above can fail: a page with both faults trips both."""
    (tmp_path / "bad.html").write_text(
        "<!doctype html><html><head>"
        '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>'
        "</head><body><p>x</p><script>console.error('boom'); undefined_function();</script></body></html>",
        encoding="utf-8",
    )
    with serve(tmp_path) as url:
        page, visit = open_page(browser, f"{url}/bad.html")
        page.context.close()
    assert visit.foreign_requests == ["https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"], (
        f"expected the CDN request to be caught and blocked; recorded {visit.foreign_requests}"
    )
    assert any("boom" in e for e in visit.console_errors), (
        f"expected console.error('boom') to be recorded; got {visit.console_errors}"
    )
    assert any("undefined_function" in e for e in visit.page_errors), (
        f"expected the ReferenceError to be recorded; got {visit.page_errors}"
    )


@pytest.mark.parametrize("page_path", PAGES or ["(no built site)"])
def test_page_loads_offline_without_errors_and_renders_its_math(browser, site_url, page_path):
    require_site()
    page, visit = open_page(browser, f"{site_url}/{page_path}")
    try:
        n_math = page.locator(MATH_SELECTOR).count()
        if n_math:
            wait_for_mathjax(page)
            rendered = page.locator("mjx-container").count()
            tex_errors = page.locator("mjx-merror").all_text_contents()
            assert rendered >= n_math, (
                f"{page_path}: expected every one of the {n_math} formulas rendered by MathJax; "
                f"found {rendered} mjx-container elements"
            )
            assert not tex_errors, f"{page_path}: MathJax reports TeX errors: {tex_errors}"
        if page_path.startswith("chapters/"):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / (Path(page_path).stem + ".png")), full_page=True)
        assert not visit.foreign_requests, f"{page_path}: expected requests to localhost only; received {visit.foreign_requests}"
        assert not visit.page_errors, f"{page_path}: uncaught JavaScript exceptions: {visit.page_errors}"
        assert not visit.console_errors, f"{page_path}: JavaScript console errors: {visit.console_errors}"
    finally:
        page.context.close()


def test_exercise_pages_show_the_student_versions_with_no_solution_or_hidden_test():
    require_site()
    pages = sorted((SITE / "release").rglob("*.html"))
    assert len(pages) == len(list((ROOT / "release").glob("*/*.ipynb"))), f"expected one page per student notebook; got {pages}"
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "NotImplementedError" in text, f"{page}: expected the blank answer cells of the student version"
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS", "BEGIN MARK SCHEME"):
            assert marker not in text, f"{page} shows {marker!r}"
        assert "cell_output" not in text, f"{page}: expected a notebook that was not executed (no cell outputs)"


# --------------------------------------------------------- phone width ----
PHONE = {"width": 390, "height": 844}   # an iPhone 12-15 screen, in CSS pixels

# For each displayed equation: how wide its formula is, how wide the box it is
# shown in and the column around it, and whether a reader can scroll that box
# sideways (overflow-x auto or scroll, and scrollLeft moves). Then whether the
# page itself scrolls sideways.
PHONE_JS = """() => {
  const vw = document.documentElement.clientWidth;
  const eqs = [];
  document.querySelectorAll('mjx-container[display="true"]').forEach((m, i) => {
    const math = m.querySelector('mjx-math') || m;
    const box = m.getBoundingClientRect();
    const scrollable = (() => {
      if (m.scrollWidth <= m.clientWidth + 1) return false;
      if (!['auto', 'scroll'].includes(getComputedStyle(m).overflowX)) return false;
      const before = m.scrollLeft;
      m.scrollLeft = before + 50;
      const moved = m.scrollLeft !== before;
      m.scrollLeft = before;
      return moved;
    })();
    const div = m.closest('div.math') || m.parentElement;
    const outer = div.parentElement, cs = getComputedStyle(outer);
    const column = outer.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
    eqs.push({index: i, id: div.id, formula: Math.ceil(math.getBoundingClientRect().width),
              box: Math.floor(box.width), column: Math.floor(column), right: Math.ceil(box.right), scrollable,
              hidden: m.scrollWidth > m.clientWidth + 1});
  });
  return {vw, page: document.documentElement.scrollWidth, eqs};
}"""


def open_phone_page(browser, url: str):
    context = browser.new_context(viewport=PHONE, service_workers="block")
    context.route("**/*", lambda r: r.continue_() if _is_local(r.request.url) else r.abort("blockedbyclient"))
    page = context.new_page()
    page.goto(url, wait_until="load")
    page.wait_for_load_state("networkidle")
    if page.locator(MATH_SELECTOR).count():
        wait_for_mathjax(page)
    return page


@pytest.mark.parametrize("page_path", PAGES or ["(no built site)"])
def test_page_fits_a_phone_screen(browser, site_url, page_path):
    """At 390 px the page does not scroll sideways, and no displayed equation is
    cut off: each fits inside the screen, and one wider than its box can be
    scrolled in that box."""
    require_site()
    page = open_phone_page(browser, f"{site_url}/{page_path}")
    try:
        got = page.evaluate(PHONE_JS)
        if page_path.startswith("chapters/"):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / (Path(page_path).stem + "-390px.png")), full_page=True)
    finally:
        page.context.close()
    vw = got["vw"]
    assert got["page"] <= vw + 1, (
        f"{page_path}: at {vw} px the page is {got['page']} px wide and scrolls sideways; expected at most {vw} px"
    )
    off_screen = [e for e in got["eqs"] if e["right"] > vw + 1]
    assert not off_screen, f"{page_path}: displayed equations reach past the {vw} px screen: {off_screen}"
    stuck = [e for e in got["eqs"] if e["hidden"] and not e["scrollable"]]
    assert not stuck, f"{page_path}: displayed equations wider than their box that cannot be scrolled: {stuck}"
    squeezed = [e for e in got["eqs"] if e["hidden"] and e["box"] < e["column"] - 2]
    assert not squeezed, (
        f"{page_path}: equations wider than their box, shown in a box narrower than the text column around "
        f"it (the equation number takes the room, so the formula looks cut off): {squeezed}"
    )


def test_the_phone_check_notices_a_page_that_scrolls_sideways_and_a_clipped_equation(browser, tmp_path):
    """The phone check can fail: a wide unbreakable line, and a formula in a box that hides its overflow."""
    (tmp_path / "wide.html").write_text(
        "<!doctype html><html><head><meta name='viewport' content='width=device-width'></head><body>"
        "<p><code>" + "x" * 200 + "</code></p>"
        "<div class='eq'><mjx-container display='true' style='display:block;overflow:hidden;width:300px'>"
        "<mjx-math style='display:inline-block;width:900px'>wide</mjx-math></mjx-container></div>"
        "</body></html>",
        encoding="utf-8",
    )
    with serve(tmp_path) as url:
        page = open_phone_page(browser, f"{url}/wide.html")
        got = page.evaluate(PHONE_JS)
        page.context.close()
    assert got["page"] > got["vw"], f"expected the 200-character line to make the page scroll sideways; got {got}"
    (eq,) = got["eqs"]
    assert eq["hidden"] and not eq["scrollable"], f"expected the overflow:hidden formula to be reported as stuck; got {eq}"


# -------------------------------------------------------------- figures ----
_CELL = re.compile(r'<div class="cell( [^"]*)? docutils container"')


def _cells(html: str) -> list[str]:
    """The HTML of each executed code cell, from its opening tag to the next cell's."""
    starts = [m.start() for m in _CELL.finditer(html)] + [len(html)]
    return [html[a:b] for a, b in zip(starts, starts[1:])]


def figure_problems(html: str) -> list[str]:
    """Every image a code cell draws must sit in a numbered, captioned figure, with the cell's code folded."""
    problems = []
    for n, cell in enumerate(_cells(html), start=1):
        output = cell.split('class="cell_output', 1)[-1] if 'class="cell_output' in cell else ""
        images = re.findall(r"<img\b[^>]*>", output)
        if not images:
            continue
        figures = re.findall(r"<figure\b.*?</figure>", output, re.S)
        captioned = [f for f in figures if re.search(r'<span class="caption-number">Fig\. [\d.]+ </span>', f)]
        if len(captioned) < len(images):
            problems.append(f"code cell {n}: {len(images)} image(s), {len(captioned)} in a numbered captioned figure")
        if "tag_hide-input" not in cell[:300]:
            problems.append(f"code cell {n}: draws a figure but its code is not folded (hide-input)")
    return problems


@pytest.mark.parametrize("page_path", [p for p in PAGES if p.startswith("chapters/")] or ["(no built site)"])
def test_every_figure_has_a_numbered_caption_and_folded_code(page_path):
    require_site()
    problems = figure_problems((SITE / page_path).read_text(encoding="utf-8"))
    assert not problems, f"{page_path}: {problems}"


def test_the_figure_check_notices_an_uncaptioned_figure_and_unfolded_code():
    bare = ('<div class="cell docutils container"><div class="cell_input docutils container">x</div>'
            '<div class="cell_output docutils container"><img alt="_images/a.png" src="_images/a.png" /></div></div>')
    assert figure_problems(bare) == [
        "code cell 1: 1 image(s), 0 in a numbered captioned figure",
        "code cell 1: draws a figure but its code is not folded (hide-input)",
    ]
