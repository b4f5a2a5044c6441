"""What bounds one hand-in: its time budget, and the files its kernel leaves in its sandbox.

- a submission past its wall-clock budget (``--budget``) is graded in part:
  the cells it had no time for are not run and score 0, the report says so
  in one line, and the rest of the class is graded as usual;
- the grader reads nothing the kernel wrote: a FIFO or a symlink to
  ``/dev/zero`` planted in the sandbox under any record-like name changes
  nothing (each check's answer comes back in the kernel's reply, not in a file).
"""

from __future__ import annotations

import csv
import time

import nbformat
import pytest

from grading import course as C
from grading.__main__ import main
from grading.samples import answer_code, fill

A = "ch03-backward"
RIGHT = answer_code(A)
SLOW = "import time\ntime.sleep(6)\n"
PLANT = """
import os
for name in ('00000.json', '00000-dx.npy', 'records', 'verdicts.json', 'result.json'):
    for where in ('.', 'records'):
        os.makedirs(where, exist_ok=True)
        path = os.path.join(where, name)
        try:
            os.mkfifo(path)
        except OSError:
            pass
os.makedirs('lib/records', exist_ok=True)
for name in ('zero.json', 'reply.npy'):
    try:
        os.symlink('/dev/zero', os.path.join('lib/records', name))
    except OSError:
        pass
"""


def _scores(course, student):
    got = C.scores(C.api(course), A, student)
    return {g: s for g, s in got.items() if g.startswith("test-")}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    src = tmp_path_factory.mktemp("class")
    nbformat.write(fill(C.PROJECT, A, RIGHT), src / f"honest_{A}.ipynb")
    # the staged answer and its test run in time; the slow cells after it use up the budget
    slow = RIGHT | {"answer-closed": SLOW + RIGHT["answer-closed"], "answer-numgrad": SLOW + RIGHT["answer-numgrad"]}
    nbformat.write(fill(C.PROJECT, A, slow), src / f"slow_{A}.ipynb")
    nbformat.write(fill(C.PROJECT, A, RIGHT | {"answer-staged": PLANT + RIGHT["answer-staged"]}), src / f"planter_{A}.ipynb")
    course = tmp_path_factory.mktemp("course")
    t = time.monotonic()
    assert main([str(src), "--course", str(course), "--jobs", "1", "--budget", "8"]) == 0
    return course, (course / "report.md").read_text(), time.monotonic() - t


def test_a_submission_past_its_budget_is_graded_in_part_and_reported(graded):
    course, report, _ = graded
    got = _scores(course, "slow")
    assert got["test-staged"][0] == got["test-staged"][1], got
    assert got["test-numgrad"][0] == 0, got
    lines = [line for line in report.splitlines() if line.startswith("- slow / ")]
    assert any("time budget of 8 s" in line for line in lines), lines
    with open(course / "grades.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["student_id"] == "slow" and r["assignment"] == A]
    assert len(rows) == 1


def test_the_rest_of_the_class_is_graded_as_usual(graded):
    course, report, _ = graded
    for student in ("honest", "planter"):
        got = _scores(course, student)
        assert all(s == m for s, m in got.values()), (student, got)
        assert not [line for line in report.splitlines() if line.startswith(f"- {student} / ")], report


def test_planted_fifos_and_links_do_not_hang_the_grader(graded):
    _, _, seconds = graded
    assert seconds < 120, f"the class took {seconds:.0f} s"


def test_the_command_works_from_a_bare_shell_and_keeps_the_terminal_quiet(tmp_path):
    """Started with a PATH that lacks the environment's bin (nbgrader runs alembic by name): the progress
    bar, one line per problem hand-in and the summary; library warnings go to the log the report names."""
    import os
    import subprocess
    import sys

    src = tmp_path / "in"
    src.mkdir()
    nbformat.write(fill(C.PROJECT, A, RIGHT), src / f"alice_{A}.ipynb")
    nbformat.write(fill(C.PROJECT, A, None), src / f"bob_{A}.ipynb")
    (src / f"carol_{A}.ipynb").write_text("{not json")
    course = tmp_path / "course"
    env = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    done = subprocess.run([sys.executable, "-m", "grading", str(src), "--course", str(course), "--jobs", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.splitlines()
    assert len(out) == 2 and out[0].startswith("carol / ") and "not valid JSON" in out[0], out
    assert out[1].startswith("graded 2 of 2 notebooks"), out
    bar = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert all(line.startswith("autograding") for line in bar), bar[:10]
    assert "grading.log" in (course / "report.md").read_text()
    assert (course / "grading.log").stat().st_size > 0
