"""Grading a class in parallel, and resuming a grading run that was killed.

- the gradebook's sqlite file is shared by every worker: a writer that finds
  it busy waits (a long busy timeout) instead of failing;
- eight notebooks graded by two processes each get all their grades, once,
  and the scores a right, blank or wrong answer deserves;
- a run killed halfway (SIGKILL to its whole process group) leaves no kernel
  running, and started again grades nothing twice and ends with the same
  grades.csv and report.md as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from _support import jail_processes
from grading import course as C
from grading import runner as G
from grading.__main__ import main
from grading.samples import CATALOG, answer_code, fill

ASSIGNMENTS = ["ch01-scaling", "ch02-forward"]
# Per assignment: a right answer, a blank, and two catalog mistakes -> 8 notebooks.
STUDENTS = ["ada", "blake", "casey", "drew"]


def expected_class():
    """{(assignment, student): (answers or None, grade ids that must lose their points or None for all)}."""
    out = {}
    for a in ASSIGNMENTS:
        wrong = [c for c in CATALOG if c[0] == a][:2]
        out[(a, "ada")] = (answer_code(a), set())
        out[(a, "blake")] = (None, None)
        out[(a, "casey")] = (answer_code(a) | wrong[0][1], wrong[0][2])
        out[(a, "drew")] = (answer_code(a) | wrong[1][1], wrong[1][2])
    return out


@pytest.fixture(scope="module")
def hand_ins(tmp_path_factory):
    src = tmp_path_factory.mktemp("hand-ins")
    for (a, s), (answers, _) in expected_class().items():
        nbformat.write(fill(C.PROJECT, a, answers), src / f"{s}_{a}.ipynb")
    return src


@pytest.fixture(scope="module")
def clean_run(hand_ins, tmp_path_factory):
    """The class graded by `python -m grading --jobs 2`, uninterrupted."""
    course = tmp_path_factory.mktemp("clean-course")
    assert main([str(hand_ins), "--course", str(course), "--jobs", "2"]) == 0
    return course


def graded_cells(assignment: str) -> set[str]:
    """Grade ids of the cells that carry points in the assignment's source notebook."""
    nb = nbformat.read(C.PROJECT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    return {c.metadata["nbgrader"]["grade_id"] for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")}


def journal_lines(course: Path) -> list[dict]:
    path = course / G.JOURNAL_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def env():
    return os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after the command name in parentheses
        chain.append(pid)
    return chain


def stray_jail_processes() -> list[int]:
    """The jail processes not started by this test process."""
    return [p for p in jail_processes() if os.getpid() not in _ancestors(p)]


def kernel_running() -> bool:
    """Whether a forked kernel (or its keeper) is running: a jail process whose parent is one too."""
    jailed = set(jail_processes())
    return any(_ancestors(p)[:1] and _ancestors(p)[0] in jailed for p in jailed)


def outlived(seconds: float = 10.0) -> list[int]:
    """The jail processes still alive ``seconds`` after a run was killed (each is then killed)."""
    deadline = time.monotonic() + seconds
    while (left := stray_jail_processes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def test_a_busy_gradebook_makes_a_writer_wait_instead_of_failing(tmp_path):
    db = tmp_path / "gradebook.db"
    plain = f"sqlite:///{db}"
    with Gradebook(plain) as gb:  # create the schema
        gb.add_student("early")
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # another worker in the middle of a long write
    release = threading.Timer(6.0, holder.execute, ("COMMIT",))
    release.start()
    try:
        started = time.monotonic()
        # nbgrader's URL: sqlite3's 5 s default, then an error
        with pytest.raises(Exception, match="database is locked"), Gradebook(plain) as gb:
            gb.add_student("impatient")
        with Gradebook(C.grading_url(plain, 30)) as gb:  # the grading run's URL waits for the lock
            gb.add_student("patient")
        waited = time.monotonic() - started
    finally:
        release.join()
        holder.close()
    assert waited >= 6.0, f"expected the write to wait for the 6 s lock; it returned after {waited:.1f} s"
    with Gradebook(plain) as gb:
        assert sorted(s.id for s in gb.students) == ["early", "patient"]


def test_grading_url_adds_a_busy_timeout_to_sqlite_only():
    assert C.grading_url("sqlite:////c/gradebook.db", 60) == "sqlite:////c/gradebook.db?timeout=60"
    assert C.grading_url("sqlite:////c/gradebook.db?timeout=5", 60) == "sqlite:////c/gradebook.db?timeout=5"
    assert C.grading_url("postgresql://host/db", 60) == "postgresql://host/db"


def test_two_jobs_give_every_submission_all_its_grades_once(clean_run):
    course = clean_run
    db = course / "gradebook.db"
    with sqlite3.connect(db) as con:
        duplicates = con.execute(
            "SELECT notebook_id, cell_id, COUNT(*) FROM grade GROUP BY notebook_id, cell_id HAVING COUNT(*) > 1").fetchall()
        submissions = con.execute(
            "SELECT a.name, s.student_id, COUNT(*) FROM submitted_assignment s JOIN assignment a ON a.id = s.assignment_id "
            "GROUP BY a.name, s.student_id").fetchall()
    assert duplicates == [], f"expected one grade per (notebook, cell); duplicated: {duplicates}"
    assert sorted(submissions) == sorted((a, s, 1) for a, s in expected_class()), submissions
    api = C.api(course)
    for (a, s), (_, loses) in expected_class().items():
        scores = C.scores(api, a, s)
        assert set(scores) == graded_cells(a), (
            f"{a}/{s}: expected grades for {sorted(graded_cells(a))}, received {sorted(scores)}")
        tests = {gid: v for gid, v in scores.items() if gid.startswith("test-")}
        assert tests, f"{a}/{s}: no autograded test in the gradebook"
        for gid, (score, max_score) in tests.items():
            if loses is None:
                assert score == 0, f"{a}/{s} (blank) {gid}: expected 0, received {score}"
            elif gid in loses:
                assert score < max_score, f"{a}/{s} {gid}: expected to lose points, received {score}/{max_score}"
            else:
                assert score == max_score, f"{a}/{s} {gid}: expected {max_score}, received {score}"


def test_two_jobs_really_grade_in_two_processes(clean_run):
    entries = journal_lines(clean_run)
    assert sorted((e["assignment"], e["student"]) for e in entries) == sorted(expected_class())
    assert {e["status"] for e in entries} == {"graded"}
    pids = {e["pid"] for e in entries}
    assert len(pids) == 2 and os.getpid() not in pids, f"expected 2 worker processes, received pids {pids}"


def test_a_killed_run_started_again_grades_nothing_twice_and_reports_the_same(hand_ins, clean_run, tmp_path):
    course = tmp_path / "course"
    cmd = [sys.executable, "-m", "grading", str(hand_ins), "--course", str(course), "--jobs", "2"]
    tmp = Path(tempfile.mkdtemp(prefix="bnt-", dir="/tmp"))  # the runs' temporary folder, listed before and after
    # (short: the kernels' sockets live below it)
    shm_before = set(os.listdir("/dev/shm"))
    proc = subprocess.Popen(cmd, cwd=C.PROJECT, env=env() | {"TMPDIR": str(tmp)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        # kill it halfway, while a kernel runs: two notebooks journaled and a kernel alive
        while (len(journal_lines(course)) < 2 or not kernel_running()) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        orphans = outlived()
    # the kernels run in sessions of their own, out of killpg's reach: the jail must end them
    assert orphans == [], f"jail processes (zygote, keeper or kernel) outlived the killed run: {orphans}"
    first = journal_lines(course)
    assert 2 <= len(first) < len(expected_class()), (
        f"expected the run to be killed halfway; {len(first)} of {len(expected_class())} were journaled")
    assert proc.returncode == -signal.SIGKILL
    # nothing of the killed run is left: no sandbox, zygote folder or run folder, no /dev/shm entry
    deadline = time.monotonic() + 40
    while list(tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(tmp.iterdir()) == [], f"the killed run left {sorted(p.name for p in tmp.rglob('*'))[:20]}"
    assert set(os.listdir("/dev/shm")) - shm_before == set(), "the killed run left entries in /dev/shm"

    done = subprocess.run(cmd, cwd=C.PROJECT, env=env() | {"TMPDIR": str(tmp)}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(tmp.iterdir()) == [], f"the finished run left {sorted(p.name for p in tmp.rglob('*'))[:20]}"
    tmp.rmdir()
    assert f"{len(first)} of {len(expected_class())} notebooks were already graded in an earlier run" in done.stdout, done.stdout
    entries = journal_lines(course)
    graded_twice = [k for k in {(e["assignment"], e["student"]) for e in entries}
                    if sum((e["assignment"], e["student"]) == k for e in entries) > 1]
    assert graded_twice == [], f"graded in both runs: {graded_twice}"
    assert sorted((e["assignment"], e["student"]) for e in entries) == sorted(expected_class())

    assert (course / "grades.csv").read_text() == (clean_run / "grades.csv").read_text()
    assert (course / "report.md").read_text() == (clean_run / "report.md").read_text()
    rows = list(csv.DictReader((course / "grades.csv").open()))
    assert sorted((r["assignment"], r["student_id"]) for r in rows) == sorted(expected_class())


def test_a_changed_notebook_is_graded_again_and_an_unchanged_one_is_not(hand_ins, clean_run, tmp_path):
    course = tmp_path / "course"
    C.make_course(course)
    before = {(e["assignment"], e["student"]): e for e in journal_lines(clean_run)}
    journal = G.Journal(course)
    for e in before.values():
        journal.record(e)
    # The earlier run's graded files are not there: a journal entry without its gradebook grades is regraded too.
    src = tmp_path / "one"
    src.mkdir()
    a = ASSIGNMENTS[0]
    nbformat.write(fill(C.PROJECT, a, answer_code(a)), src / f"ada_{a}.ipynb")
    assert main([str(src), "--course", str(course), "--jobs", "1"]) == 0
    assert len(journal_lines(course)) == len(before) + 1
    assert main([str(src), "--course", str(course), "--jobs", "1"]) == 0
    assert len(journal_lines(course)) == len(before) + 1, "an unchanged, graded notebook was graded again"
    nbformat.write(fill(C.PROJECT, a, None), src / f"ada_{a}.ipynb")
    assert main([str(src), "--course", str(course), "--jobs", "1"]) == 0
    last = journal_lines(course)[-1]
    assert len(journal_lines(course)) == len(before) + 2 and (last["assignment"], last["student"]) == (a, "ada")
    rows = {(r["assignment"], r["student_id"]): float(r["raw_score"]) for r in csv.DictReader((course / "grades.csv").open())}
    assert rows[(a, "ada")] == 0, "the blank resubmission kept the earlier full marks"


CRASHER = "zed"


def grade_or_crash(course_root, assignment, student, notebook):
    """grade_one, except that grading CRASHER's submission kills the worker process, as a crash in the grader would."""
    if student == CRASHER:
        os._exit(3)
    return G.grade_one(course_root, assignment, student, notebook)


def test_a_worker_that_dies_costs_only_the_submission_it_was_grading(hand_ins, tmp_path):
    a = ASSIGNMENTS[0]
    course = C.make_course(tmp_path / "course")
    C.generate(C.api(course), [a])
    work = [(a, s, (hand_ins / f"{s}_{a}.ipynb").read_text()) for s in ("ada", "blake")]
    work.insert(1, (a, CRASHER, work[0][2]))
    work += [(a, s, (hand_ins / f"{s}_{a}.ipynb").read_text()) for s in ("casey", "drew")]
    results = G.grade_all(course, work, jobs=2, grade=grade_or_crash)
    assert sorted(results) == sorted((a, s) for _, s, _ in work)
    crashed = results[(a, CRASHER)]
    assert crashed["status"] == "autograde-failed" and "crashed on this submission" in crashed["message"], crashed
    others = {s: r["status"] for (_, s), r in results.items() if s != CRASHER}
    assert others == {s: "graded" for s in others}, f"expected every other submission graded; received {others}"
    api = C.api(course)
    tests = {gid: v for gid, v in C.scores(api, a, "ada").items() if gid.startswith("test-")}
    assert tests and all(score == top for score, top in tests.values()), f"the right answer lost points: {tests}"
    assert not (course / G.INFLIGHT).exists()


def die_unmarked(course_root, assignment, student, notebook):
    """A worker that dies outside any submission (its marker gone), as one whose environment is broken would."""
    shutil.rmtree(Path(course_root) / G.INFLIGHT, ignore_errors=True)
    os._exit(3)


def test_workers_that_die_outside_any_submission_fail_the_rest_at_once(tmp_path):
    work = [("ch01-scaling", f"s{i}", "{}") for i in range(6)]
    results = G.grade_all(tmp_path, work, jobs=2, grade=die_unmarked)
    assert sorted(results) == sorted((a, s) for a, s, _ in work)
    messages = {r["message"] for r in results.values()}
    assert messages == {"autograding failed: the grading processes died before grading it (see the errors above)"}, messages
