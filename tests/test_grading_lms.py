"""Grades in Canvas's and Moodle's own import formats (grading/lms.py), parsed back column by column."""

from __future__ import annotations

import csv

import pytest
from nbgrader.api import Gradebook

from grading import lms
from grading.__main__ import main, parse
from grading.collect import student_id


def roster_of(tmp_path, text):
    path = tmp_path / "roster.txt"
    path.write_text(text)
    return lms.read_roster(path, student_id)


@pytest.fixture
def class_gradebook(tmp_path):
    """Two assignments; ada hand-graded on a written answer, blake autograded only, casey missing a2."""
    url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    with Gradebook(url) as gb:
        for a, written in (("a1", 3.0), ("a2", 0.0)):
            gb.add_assignment(a)
            gb.add_notebook(a, a)
            gb.add_grade_cell("q1", a, a, max_score=2.0, cell_type="code")
            if written:
                gb.add_grade_cell("w1", a, a, max_score=written, cell_type="markdown")
        for s in ("ada", "blake", "casey"):
            gb.add_student(s)
        for a, s, auto, manual in (("a1", "ada", 2.0, 1.5), ("a1", "blake", 1.0, None), ("a1", "casey", 0.0, None),
                                   ("a2", "ada", 1.0, None), ("a2", "blake", 2.0, None)):
            gb.add_submission(a, s)
            gb.find_grade("q1", a, a, s).auto_score = auto
            if manual is not None:
                gb.find_grade("w1", a, a, s).manual_score = manual
        gb.db.commit()
    return url


ROSTER = "# id, LMS id, SIS id, name\nada, 101, S1, \"Lovelace, Ada\"\nblake,102\ncasey, 103, , Casey Jones\n"


def test_final_scores_count_manual_grades(class_gradebook):
    scores, maxima = lms.final_scores(class_gradebook)
    assert maxima == {"a1": 5.0, "a2": 2.0}
    assert scores == {("a1", "ada"): 3.5, ("a1", "blake"): 1.0, ("a1", "casey"): 0.0,
                      ("a2", "ada"): 1.0, ("a2", "blake"): 2.0}


def test_canvas_file_column_by_column(tmp_path, class_gradebook):
    people = roster_of(tmp_path, ROSTER)
    path = lms.export("canvas", tmp_path, class_gradebook, people)
    assert path.name == "grades-canvas.csv"
    rows = list(csv.reader(path.read_text().splitlines()))
    assert rows[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "a1", "a2"]
    assert rows[1] == ["Points Possible", "", "", "", "", "5", "2"]
    assert rows[2] == ["Lovelace, Ada", "101", "S1", "", "", "3.5", "1"]
    assert rows[3] == ["blake", "102", "", "", "", "1", "2"]
    assert rows[4] == ["Casey Jones", "103", "", "", "", "0", ""]  # no a2 hand-in: left blank, not 0
    assert len(rows) == 5


def test_moodle_file_column_by_column(tmp_path, class_gradebook):
    people = roster_of(tmp_path, ROSTER)
    path = lms.export("moodle", tmp_path, class_gradebook, people, id_field="idnumber")
    rows = list(csv.reader(path.read_text().splitlines()))
    assert rows == [["idnumber", "a1", "a2"], ["101", "3.5", "1"], ["102", "1", "2"], ["103", "0", ""]]


def test_roster_without_lms_ids_is_a_clear_error(tmp_path, class_gradebook):
    people = roster_of(tmp_path, "ada, 101\nblake\ncasey\n")
    with pytest.raises(ValueError, match=r"--export canvas: expected an LMS id .* none for: blake, casey"):
        lms.export("canvas", tmp_path, class_gradebook, people)


def test_roster_lines(tmp_path):
    people = roster_of(tmp_path, "SmithJane_extra, 1234\nada\n")
    assert people["smithjane"] == lms.Person("smithjane", "1234")
    assert people["ada"] == lms.Person("ada")
    with pytest.raises(ValueError, match="line 2: student 'ada' is listed twice"):
        roster_of(tmp_path, "ada\nada, 5\n")
    with pytest.raises(ValueError, match="expected at most 4 comma-separated fields"):
        roster_of(tmp_path, "ada, 1, 2, 3, 4\n")


def test_export_needs_a_roster_and_a_known_format(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse(["x.zip", "--export", "canvas"])
    assert "--export canvas: expected --roster" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["x.zip", "--roster", "r.txt", "--export", "blackboard"])
    assert "invalid choice: 'blackboard'" in capsys.readouterr().err
    assert parse(["x.zip", "--roster", "r.txt", "--export", "canvas", "--export", "moodle"]).export == ["canvas", "moodle"]


def test_bad_roster_stops_the_command(tmp_path, capsys):
    roster = tmp_path / "roster.txt"
    roster.write_text("ada\nada\n")
    assert main([str(tmp_path), "--course", str(tmp_path / "course"), "--roster", str(roster), "-j", "1"]) == 2
    assert "student 'ada' is listed twice" in capsys.readouterr().err
