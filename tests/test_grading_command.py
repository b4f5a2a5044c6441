"""The instructor's command on a messy class folder, as an instructor runs it.

One run grades a small class with a right answer, a blank, a typical mistake
and every kind of broken hand-in; the test reads the report, grades.csv and
the feedback, then runs the command again and expects the same grades.
"""

from __future__ import annotations

import csv
import re
import zipfile

import nbformat
import pytest

from grading import collect as K
from grading import course as C
from grading.__main__ import main
from grading.samples import CATALOG, answer_code, build, fill

FIRST, SECOND = C.assignments()[:2]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """A messy class, zipped as an LMS would hand it over, graded twice."""
    src = tmp_path_factory.mktemp("hand-ins")
    nbformat.write(fill(C.PROJECT, FIRST, answer_code(FIRST)), src / f"ada_1_2_{FIRST}.ipynb")
    nbformat.write(fill(C.PROJECT, SECOND, None), src / f"blake_{SECOND}.ipynb")
    wrong = next(c for c in CATALOG if c[0] == SECOND)
    nbformat.write(fill(C.PROJECT, SECOND, answer_code(SECOND) | wrong[1]), src / f"casey_{SECOND}.ipynb")
    (src / "drew").mkdir()
    nbformat.write(fill(C.PROJECT, FIRST, answer_code(FIRST)), src / "drew" / "Untitled (2).ipynb")
    (src / "drew" / "scratch.py").write_text("print('hi')\n")
    (src / f"emery_{FIRST}.ipynb").write_text('{"cells": [')
    nbformat.write(nbformat.convert(fill(C.PROJECT, FIRST, answer_code(FIRST)), 3), src / f"finley_{FIRST}.ipynb", version=3)
    killer = answer_code(SECOND)
    killer[sorted(killer)[-1]] = "import os\nos._exit(1)\n"
    nbformat.write(fill(C.PROJECT, SECOND, killer), src / f"gray_{SECOND}.ipynb")
    nbformat.write(fill(C.PROJECT, FIRST, answer_code(FIRST)), src / f"mallory_{FIRST}.ipynb")
    archive = tmp_path_factory.mktemp("lms") / "submissions.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(src))
    roster = archive.parent / "roster.txt"
    roster.write_text("\n".join(["ada", "blake", "casey", "drew", "emery", "finley", "gray", "hana"]) + "\n")
    course = tmp_path_factory.mktemp("course")
    runs = []
    for _ in range(2):
        assert main([str(archive), "--course", str(course), "--roster", str(roster)]) == 0
        runs.append(((course / "grades.csv").read_text(), (course / "report.md").read_text()))
    return course, runs, wrong


def rows(grades_csv: str):
    return {(r["assignment"], r["student_id"]): float(r["raw_score"]) for r in csv.DictReader(grades_csv.splitlines())}


def test_right_answer_gets_full_marks_and_blank_gets_zero(graded):
    course, runs, _ = graded
    scores = rows(runs[0][0])
    assert scores[(FIRST, "ada")] == 6 and scores[(FIRST, "drew")] == 6 and scores[(FIRST, "finley")] == 6
    assert scores[(SECOND, "blake")] == 0


def test_every_broken_hand_in_gets_a_clear_line_and_no_grade(graded):
    _, runs, _ = graded
    report = runs[0][1]
    assert "emery / " in report and "not valid JSON" in report
    assert "drew / ?: extra file, not a notebook: ignored" in report
    assert "file named 'Untitled (2).ipynb', recognised as" in report
    assert "finley / " in report and "converted from nbformat 3" in report
    assert "gray / " in report and "the kernel died" in report
    assert "mallory / ?: unknown student (not in the roster): not graded" in report
    assert f"hana / {FIRST}: missing: no notebook handed in" in report
    assert ("emery", FIRST) not in {k for k, v in rows(runs[0][0]).items() if v > 0}


def test_typical_mistake_is_counted_in_the_report(graded):
    _, runs, wrong = graded
    assert f"| {SECOND} | {sorted(wrong[2])[0]} | {wrong[3]} | 1 |" in runs[0][1]


def test_running_twice_gives_the_same_grades_and_report(graded):
    _, runs, _ = graded
    assert runs[0] == runs[1]


def test_feedback_shows_no_hidden_test(graded):
    course, _, _ = graded
    pages = list((course / "feedback").rglob("*.html"))
    assert pages, "no feedback written"
    for page in pages:
        text = page.read_text()
        assert "HIDDEN TESTS" not in text and "for seed in (" not in text, page


def test_sample_class_is_complete_and_recognised(tmp_path):
    folder = build(tmp_path / "samples")
    known = {a: set(C.source_cell_metadata(C.PROJECT, a)) for a in C.assignments()}
    subs, problems = K.collect(folder, known)
    assert len(subs) == 2 * len(known) + len(CATALOG) + 3
    assert sorted(p.message.split(":")[0] for p in problems) == ["extra file, not a notebook",
                                                                 "not valid JSON (line 1, column 12"]


def test_feedback_templates_are_compiled_once_per_process(monkeypatch):
    """nbgrader makes a new exporter per feedback page; the templates must not be parsed again for each."""
    from jinja2 import Environment

    from grading.feedback import BYTECODE, FeedbackExporter

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    parsed = []
    real = Environment._parse
    monkeypatch.setattr(Environment, "_parse",
                        lambda self, source, name, filename: parsed.append(name) or real(self, source, name, filename))
    BYTECODE.clear()
    first, _ = FeedbackExporter().from_notebook_node(nb)
    once = len(parsed)
    second, _ = FeedbackExporter().from_notebook_node(nb)
    assert once > 0, "the first page parsed no template: this test no longer sees the rendering"
    assert len(parsed) == once, f"the second page parsed templates again: {parsed[once:]}"
    assert first == second and '<span class="mi">1</span>' in second


EXTERNAL = re.compile(r"""(?:\b(?:src|href)\s*=\s*["']?|url\(\s*["']?)\s*(?:https?:)?//""", re.IGNORECASE)


def test_feedback_pages_load_nothing_from_the_network(graded):
    """A learner reads feedback offline: no script, style sheet, font or image from another host (MathJax was one)."""
    course, _, _ = graded
    pages = sorted((course / "feedback").rglob("*.html"))
    assert pages, "no feedback written"
    for page in pages:
        text = page.read_text()
        found = [text[m.start():m.start() + 80] for m in EXTERNAL.finditer(text)]
        assert not found, f"{page.relative_to(course)} loads from the network: {found[:3]}"
    with_math = [p for p in pages if SECOND in p.parts]
    assert with_math, f"no feedback page of {SECOND}, whose text has math"
    for page in with_math:
        assert "<math" in page.read_text(), f"{page.relative_to(course)}: expected its math as MathML"


def test_math_becomes_mathml_outside_code_only():
    from grading.feedback import math_to_mathml

    out = math_to_mathml("With $\\hat x = (x - \\mu)/\\sqrt{\\sigma^2 + \\epsilon}$, and `$x$` in code, "
                         "for \\$5:\n\n$$y = \\gamma \\hat x$$")
    assert out.count("<math") == 2 and 'display="block"' in out and 'display="inline"' in out, out
    assert "`$x$`" in out and "\\$5" in out, out
    assert "\\sqrt" not in out and "$$" not in out, out
