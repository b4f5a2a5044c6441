"""Late hand-ins: --due and --late-penalty, through nbgrader's timestamp.txt, duedate and late-penalty plugin."""

from __future__ import annotations

import csv
import zipfile

import nbformat
import pytest

from grading import course as C
from grading import late
from grading.__main__ import main, parse
from grading.samples import answer_code, fill

FIRST = C.assignments()[0]


def test_bad_due_and_penalty_get_clear_errors(capsys):
    for argv, words in ((["--due", "next friday"], "--due: expected a date and time such as 2026-11-20T23:59"),
                        (["--due", "2026-11-20T12:00", "--late-penalty", "ten"],
                         "--late-penalty: expected a percentage of the score per day late, 0 to 100; got 'ten'"),
                        (["--due", "2026-11-20T12:00", "--late-penalty", "150"], "0 to 100; got '150'"),
                        (["--late-penalty", "10"], "--late-penalty 10: expected --due with it; got no --due")):
        with pytest.raises(SystemExit):
            parse(["x.zip", *argv])
        assert words in capsys.readouterr().err
    assert parse(["x.zip", "--due", "2026-11-20T12:00+01:00"]).due.isoformat() == "2026-11-20T12:00:00+01:00"


def test_penalty_per_started_day():
    plugin = late.PerDayPenalty(percent_per_day=10)
    assert plugin.late_submission_penalty("s", 8.0, 0) is None
    assert plugin.late_submission_penalty("s", 8.0, 1) == pytest.approx(0.8)  # a second late: one day
    assert plugin.late_submission_penalty("s", 8.0, 86400 + 1) == pytest.approx(1.6)
    assert plugin.late_submission_penalty("s", 8.0, 30 * 86400) == 8.0  # never more than the score
    assert late.PerDayPenalty(percent_per_day=0).late_submission_penalty("s", 8.0, 5e5) is None
    assert late.how_late(93784) == "1 d 2 h 3 min"


def test_on_time_and_late_hand_ins(tmp_path):
    """ada hands in an hour early, blake 1 d 2 h late (zip times, read in --due's offset +01:00)."""
    archive = tmp_path / "submissions.zip"
    text = nbformat.writes(fill(C.PROJECT, FIRST, answer_code(FIRST)))
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(zipfile.ZipInfo(f"ada_1_2_{FIRST}.ipynb", date_time=(2026, 11, 20, 11, 0, 0)), text)
        zf.writestr(zipfile.ZipInfo(f"blake_3_4_{FIRST}.ipynb", date_time=(2026, 11, 21, 14, 0, 0)), text)
    course = tmp_path / "course"
    argv = [str(archive), "--course", str(course), "-j", "1", "--due", "2026-11-20T12:00+01:00", "--late-penalty", "10"]
    assert main(argv) == 0
    rows = {r["student_id"]: r for r in csv.DictReader((course / "grades.csv").read_text().splitlines())}
    full = float(rows["ada"]["raw_score"])
    assert full > 0 and float(rows["blake"]["raw_score"]) == full
    assert rows["ada"]["duedate"].startswith("2026-11-20 11:00:00")  # stored in UTC
    assert rows["ada"]["timestamp"].startswith("2026-11-20 10:00:00")
    assert rows["blake"]["timestamp"].startswith("2026-11-21 13:00:00")
    assert float(rows["ada"]["late_submission_penalty"]) == 0 and float(rows["ada"]["score"]) == full
    assert float(rows["blake"]["late_submission_penalty"]) == pytest.approx(0.2 * full)  # two started days
    assert float(rows["blake"]["score"]) == pytest.approx(0.8 * full)
    report = (course / "report.md").read_text()
    section = report.split("## Late hand-ins", 1)[1]
    assert f"blake / {FIRST}: handed in 2026-11-21 13:00:00 UTC, due 2026-11-20 11:00:00 UTC: late by 1 d 2 h; " \
           f"penalty {0.2 * full:g} points ({full:g} -> {0.8 * full:g})" in section
    assert "ada /" not in section
