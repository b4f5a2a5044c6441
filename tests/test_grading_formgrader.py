"""Hand grading in nbgrader's formgrader (grading/formgrader.py), in headless Chromium through Playwright.

A class of one is graded; the formgrader is started on the course folder; the
manual-grading view of the submission is opened, a score and a comment are
entered for the written answer and saved; the class is graded again (plain, then
--regrade) and the score is in grades.csv and the report. No request of the page
may leave 127.0.0.1. The server is stopped at the end, whatever happens.
"""

from __future__ import annotations

import csv
from urllib.parse import urlsplit

import nbformat
import pytest
from nbgrader.api import Gradebook
from test_site import CHROMIUM_FLAGS, _unavailable, find_chromium

from grading import course as C
from grading import formgrader
from grading.__main__ import main
from grading.samples import answer_code, fill

FIRST = C.assignments()[0]


def written_id(assignment: str) -> str:
    nb = nbformat.read(C.PROJECT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    return next(c.metadata.nbgrader["grade_id"] for c in nb.cells
                if c.cell_type == "markdown" and c.metadata.get("nbgrader", {}).get("grade"))


@pytest.fixture
def graded_course(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    nbformat.write(fill(C.PROJECT, FIRST, answer_code(FIRST)), src / f"ada_{FIRST}.ipynb")
    course = tmp_path / "course"
    assert main([str(src), "--course", str(course), "-j", "1"]) == 0
    return src, course


@pytest.fixture
def server(graded_course):
    proc, url = formgrader.start(graded_course[1])
    try:
        yield url
    finally:
        formgrader.stop(proc)
        assert proc.poll() is not None


def total(course):
    row = next(csv.DictReader((course / "grades.csv").read_text().splitlines()))
    return float(row["score"]), float(row["raw_score"])


def test_score_given_in_formgrader_survives_regrading(graded_course, server):
    chromium = find_chromium()
    if chromium is None:
        _unavailable("chromium is not installed: `make browser` (as root, with apt-get) installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    src, course = graded_course
    before, _ = total(course)
    gid = written_id(FIRST)
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        nb_id = gb.find_submission_notebook(FIRST, FIRST, "ada").id
    base = server.split("/formgrader")[0]
    token = server.split("token=")[1]
    foreign = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.on("request", lambda r: foreign.append(r.url)
                    if urlsplit(r.url).hostname not in (None, "127.0.0.1") and urlsplit(r.url).scheme in ("http", "https")
                    else None)
            page.goto(server)  # the token logs the browser in (a cookie)
            page.goto(f"{base}/formgrader/submissions/{nb_id}/?token={token}")
            score = page.locator(f"input.score#{gid}")
            score.wait_for(timeout=30_000)
            with page.expect_response(lambda r: "/api/grade/" in r.url and r.request.method == "PUT"):
                score.fill("1.5")
                score.press("Tab")
            comment = page.locator(f"textarea#{gid}-comment")
            with page.expect_response(lambda r: "/api/comment/" in r.url and r.request.method == "PUT"):
                comment.fill("Clear, but say why the test set's statistics leak.")
                comment.press("Tab")
        finally:
            browser.close()
    assert foreign == []
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        nb = gb.find_submission_notebook(FIRST, FIRST, "ada")
        assert [g.manual_score for g in nb.grades if g.name == gid] == [1.5]
        assert [c.manual_comment for c in nb.comments if c.name == gid] == ["Clear, but say why the test set's statistics leak."]
    for extra in ([], ["--regrade"]):
        assert main([str(src), "--course", str(course), "-j", "1", *extra]) == 0
        assert total(course) == (before + 1.5, before + 1.5)
        assert f"| {FIRST} | ada |" in (course / "report.md").read_text()
        assert f"{before + 1.5:g} / " in (course / "report.md").read_text()
