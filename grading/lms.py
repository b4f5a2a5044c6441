"""Grades in an LMS's own import format: Canvas's gradebook CSV and Moodle's grade import CSV.

``python -m grading SUBMISSIONS --roster students.txt --export canvas`` (or
``--export moodle``) writes ``grades-canvas.csv`` / ``grades-moodle.csv`` in
the course folder beside nbgrader's ``grades.csv``. Each score is the final
one of the gradebook: nbgrader's ``Submission.score`` (per cell the manual
score where one was given in formgrader, else the autograded one, plus extra
credit) less its late-submission penalty, as nbgrader's own CSV exporter
computes it.

The roster ties an nbgrader student id (the one the LMS zip's names give, see
:func:`grading.collect.student_id`) to the LMS's own ids, one student a line,
comma-separated::

    # nbgrader id, LMS id, SIS id, name   (only the first is required)
    smithjane, 1234, S0042, Jane Smith

Where the columns come from
---------------------------

Canvas, "How do I import grades in the Gradebook?" (Instructor Guide,
https://community.canvaslms.com/t5/Instructor-Guide/How-do-I-import-grades-in-the-Gradebook/ta-p/807):
a CSV whose first row is the header ``Student, ID, SIS User ID, SIS Login ID,
Section`` then one column per assignment; the second row, ``Points Possible``
under ``Student``, gives each assignment's points (a column Canvas does not
know becomes a new assignment with those points). Canvas matches a row to a
student by ``ID`` (the Canvas user id: the number after the name in a Canvas
submissions zip, ``smithjane_1234_5678_ch02.ipynb``), else by the SIS ids.
Here: ``Student`` = roster name (else the nbgrader id), ``ID`` = roster LMS id,
``SIS User ID`` = roster SIS id, ``SIS Login ID`` and ``Section`` empty.

Moodle, "Import grades" (https://docs.moodle.org/en/Import_grades; the
importer is grade/import/csv/classes/load_data.php): a CSV with a header row;
on upload the instructor maps one column to a user field ("Identify user by":
username, email address, ID number or user id) and each other column to a grade
item, or to a new grade item. Here: the first column, named by
``--moodle-id-field`` (default ``email``), holds the roster LMS id; then one
column per assignment, named by the assignment, holding the points.

The Canvas page above could not be fetched from this machine; its columns were
checked against the guide's text as quoted by universities' help pages
(e.g. https://ts.vcu.edu/askit/teaching-and-learning/canvas/faculty/grading-faculty/gradebook-action-menu-faculty/).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from nbgrader.api import Gradebook, MissingEntry

FORMATS = ("canvas", "moodle")
CANVAS_HEADER = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
MOODLE_FIELDS = ("email", "username", "idnumber", "userid")


@dataclass(frozen=True)
class Person:
    student: str  # nbgrader id
    lms_id: str = ""
    sis_id: str = ""
    name: str = ""


def read_roster(path: Path, student_id) -> dict[str, Person]:
    """``{nbgrader id: Person}`` from a roster file; ``student_id`` makes the nbgrader id of its first field."""
    people = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in next(csv.reader([line], skipinitialspace=True))]
        if len(fields) > 4:
            raise ValueError(f"roster {path}, line {n}: expected at most 4 comma-separated fields "
                             f"(nbgrader id, LMS id, SIS id, name); got {len(fields)}: {line!r}")
        person = Person(student_id(fields[0]), *fields[1:])
        if person.student in people:
            raise ValueError(f"roster {path}, line {n}: student {person.student!r} is listed twice")
        people[person.student] = person
    return people


def final_scores(db_url: str) -> tuple[dict[tuple[str, str], float], dict[str, float]]:
    """``{(assignment, student): final score}`` and ``{assignment: points possible}`` from the gradebook.

    The final score is nbgrader's: manual grades over autograded ones, extra
    credit added, the late penalty taken off (as ``nbgrader export`` computes it).
    """
    scores, maxima = {}, {}
    with Gradebook(db_url) as gb:
        for a in gb.assignments:
            maxima[a.name] = a.max_score
            for student in gb.students:
                try:
                    sub = gb.find_submission(a.name, student.id)
                except MissingEntry:
                    continue
                scores[(a.name, student.id)] = sub.score - (sub.late_submission_penalty or 0.0)
    return scores, maxima


def _check_ids(fmt: str, roster: dict[str, Person], students) -> None:
    missing = sorted(s for s in students if not (roster.get(s) and roster[s].lms_id))
    if missing:
        raise ValueError(f"--export {fmt}: expected an LMS id for every graded student in the roster "
                         f"(lines 'nbgrader id, LMS id[, SIS id, name]'); none for: {', '.join(missing)}")


def _fmt(x: float) -> str:
    return f"{x:g}"


def write_canvas(path: Path, scores, maxima, roster: dict[str, Person]) -> Path:
    """Canvas's gradebook import CSV (columns: see the module's docstring)."""
    assignments = sorted(maxima)
    students = sorted({s for _, s in scores})
    _check_ids("canvas", roster, students)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CANVAS_HEADER + assignments)
        w.writerow(["Points Possible", "", "", "", ""] + [_fmt(maxima[a]) for a in assignments])
        for s in students:
            p = roster[s]
            w.writerow([p.name or s, p.lms_id, p.sis_id, "", ""]
                       + [_fmt(scores[(a, s)]) if (a, s) in scores else "" for a in assignments])
    return Path(path)


def write_moodle(path: Path, scores, maxima, roster: dict[str, Person], id_field: str = "email") -> Path:
    """Moodle's grade import CSV (columns: see the module's docstring)."""
    if id_field not in MOODLE_FIELDS:
        raise ValueError(f"--moodle-id-field: expected one of {', '.join(MOODLE_FIELDS)}; got {id_field!r}")
    assignments = sorted(maxima)
    students = sorted({s for _, s in scores})
    _check_ids("moodle", roster, students)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([id_field] + assignments)
        for s in students:
            w.writerow([roster[s].lms_id] + [_fmt(scores[(a, s)]) if (a, s) in scores else "" for a in assignments])
    return Path(path)


def export(fmt: str, root: Path, db_url: str, roster: dict[str, Person], id_field: str = "email") -> Path:
    """Write ``grades-<fmt>.csv`` in ``root`` from the gradebook; return its path."""
    scores, maxima = final_scores(db_url)
    path = Path(root) / f"grades-{fmt}.csv"
    if fmt == "canvas":
        return write_canvas(path, scores, maxima, roster)
    if fmt == "moodle":
        return write_moodle(path, scores, maxima, roster, id_field)
    raise ValueError(f"--export: expected one of {', '.join(FORMATS)}; got {fmt!r}")
