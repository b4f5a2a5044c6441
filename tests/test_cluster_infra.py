"""The parts cluster grading stands on (issue 13), each checked on its own with the real programs.

- ``tests/_cluster.py`` starts a throwaway PostgreSQL server and a Dask cluster
  (a ``dask scheduler``, two one-thread ``dask worker`` processes without a
  nanny) on 127.0.0.1, and stops them: a task runs on each worker, in the
  project's environment; a gradebook made on one worker and written on the
  other is read back here; a worker killed with SIGKILL is noticed by the
  scheduler and the other goes on; at the end no process is left.
- The gradebook on PostgreSQL is nbgrader's own, as on SQLite (the same tables
  and columns, the same alembic version), and the course's gradebook functions
  (``grading.course``, ``late``, ``lms``, ``report``, ``formgrader``) give the
  same results on both: the grading command grades the same hand-ins (late,
  exported for Canvas) into each, with the same files written.

Marked ``cluster`` (tests/conftest.py): ``make test-fast`` leaves them out.
Without PostgreSQL they skip (``make postgres`` installs it), except under CI.
"""

from __future__ import annotations

import operator
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from _cluster import BIN, PROJECT, pg_bindir, running_dask, running_postgres, worker_environment

from grading import course as C
from grading import formgrader, late, lms, report
from grading.samples import CATALOG, answer_code, fill

pytestmark = pytest.mark.skipif(pg_bindir() is None and not os.environ.get("CI"),
                                reason="PostgreSQL is not installed (make postgres installs it)")

ASSIGNMENT = "ch01-scaling"
# The tasks' functions must be importable on the workers: tests/ (for _cluster.worker_environment) on their path.
TEST_WORKERS_ENV = {"PYTHONPATH": f"{PROJECT}{os.pathsep}{PROJECT / 'tests'}"}


@pytest.fixture(scope="module")
def pg():
    """One PostgreSQL server for the module (each test makes its own databases); checked gone after."""
    with running_postgres() as server:
        yield server
    assert server.alive() == [], f"PostgreSQL processes outlived the server: {server.alive()}"


# ---------------------------------------------------------------- the parts together
def test_postgres_and_a_dask_cluster_start_work_survive_a_killed_worker_and_stop(tmp_path):
    from nbgrader.api import Gradebook

    t0 = time.monotonic()
    with running_postgres() as pg, running_dask(tmp_path / "dask", 2, TEST_WORKERS_ENV) as dc, dc.client() as client:
        pids = client.run(os.getpid)  # {worker address: pid}, run on every worker
        assert sorted(pids.values()) == sorted(p.pid for p in dc.workers), "each dask worker is one process of ours"
        address = {pid: a for a, pid in pids.items()}
        w0, w1 = address[dc.workers[0].pid], address[dc.workers[1].pid]

        for a in (w0, w1):  # a task on each worker, pinned there, in the project's environment
            seen = client.submit(worker_environment, pure=False, workers=[a], allow_other_workers=False).result(timeout=60)
            assert seen["pid"] == pids[a]
            assert Path(seen["executable"]).parent == BIN and seen["path0"] == str(BIN)
            assert Path(seen["cwd"]) == PROJECT and Path(seen["grading"]).is_relative_to(PROJECT)

        # the gradebook: created on one worker, written on the other, read back on both, here and through psycopg
        due = late.parse_due("2026-11-20T23:59+01:00")
        assert client.submit(C.create_gradebook, pg.url, pure=False, workers=[w0]).result(timeout=60) is True
        client.submit(late.set_duedate, pg.url, [ASSIGNMENT], due, pure=False, workers=[w1]).result(timeout=60)
        with Gradebook(pg.url) as gb:
            assert [(a.name, str(a.duedate)) for a in gb.assignments] == [(ASSIGNMENT, "2026-11-20 22:59:00")]
            gb.add_student("ada", first_name="Ada")
        assert pg.query("SELECT id, first_name FROM student") == [("ada", "Ada")]
        for a in (w0, w1):
            assert client.submit(lms.final_scores, pg.url, pure=False, workers=[a]).result(timeout=60) == (
                {}, {ASSIGNMENT: 0.0})

        running = pg.alive() + dc.alive()
        assert dc.workers[0].pid in running and dc.scheduler.pid in running and pg.proc.pid in running

        # one worker SIGKILLed: the scheduler notices, the other worker goes on
        killed = dc.kill_worker(0)
        assert dc.workers[0].returncode == -signal.SIGKILL
        assert list(dc.wait_for_worker_count(client, 1, timeout=30)) == [w1]
        assert killed not in dc.alive()
        assert client.submit(operator.add, 1, 2, pure=False).result(timeout=60) == 3
        assert client.submit(worker_environment, pure=False, workers=[w1]).result(timeout=60)["pid"] == pids[w1]
    assert dc.alive() == [], f"processes of the Dask cluster outlived it: {dc.alive()}"
    assert pg.alive() == [], f"PostgreSQL processes outlived it: {pg.alive()}"
    assert not pg.folder.exists(), "the server's temporary folder was removed"
    assert time.monotonic() - t0 < 60


def test_everything_stops_when_the_block_fails(tmp_path):
    with pytest.raises(KeyboardInterrupt), running_postgres() as pg, running_dask(tmp_path / "dask", 1) as dc:
        assert pg.alive() and dc.alive()
        raise KeyboardInterrupt  # Ctrl-C in the middle of a test
    assert pg.alive() == [] and dc.alive() == []
    assert not pg.folder.exists()


# ---------------------------------------------------------------- the gradebook on PostgreSQL
def _schema(url: str) -> tuple[dict, list]:
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            found = inspect(conn)
            tables = {t: sorted(c["name"] for c in found.get_columns(t)) for t in found.get_table_names()}
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    finally:
        engine.dispose()
    return tables, version


def test_the_gradebook_on_postgres_is_nbgraders_own_as_on_sqlite(pg, tmp_path):
    from nbgrader.api import Gradebook

    sqlite_url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    # as an instructor types it: plain postgresql:// gets the driver installed here (psycopg 3)
    typed = f"postgresql://{pg.USER}@127.0.0.1:{pg.port}/gb_schema"
    pg.database("gb_schema")
    pg_url = C.check_db_url(typed)
    assert pg_url.startswith("postgresql+psycopg://")
    for url in (sqlite_url, pg_url):
        assert C.create_gradebook(url) is True
        assert C.create_gradebook(url) is False, "an existing gradebook is left as it is"
        with Gradebook(url) as gb:  # nbgrader opens it as its own
            gb.add_student("ada", first_name="Ada")
            gb.update_or_create_assignment(ASSIGNMENT)
        assert C.create_gradebook(url) is False
    tables, version = _schema(pg_url)
    assert (tables, version) == _schema(sqlite_url)
    assert len(version) == 1 and len(tables) > 10
    late.set_duedate(pg_url, [ASSIGNMENT], late.parse_due("2026-11-20T23:59+01:00"))  # stored as naive UTC
    with Gradebook(pg_url) as gb:
        assert str(gb.find_assignment(ASSIGNMENT).duedate) == "2026-11-20 22:59:00"
    with Gradebook(pg_url) as gb:
        assert [s.id for s in gb.students] == ["ada"] and [a.name for a in gb.assignments] == [ASSIGNMENT]


def _hand_ins(folder: Path) -> Path:
    folder.mkdir()
    mistake = next(answers for a, answers, *_ in CATALOG if a == ASSIGNMENT)
    for student, answers in (("ada", answer_code(ASSIGNMENT)), ("blake", answer_code(ASSIGNMENT) | mistake)):
        path = folder / f"{student}_{ASSIGNMENT}.ipynb"
        nbformat.write(fill(C.PROJECT, ASSIGNMENT, answers), path)
        os.utime(path, (1_700_000_000, 1_700_000_000))  # 2023-11-14: late for the due date below
    return folder


def _grade(hand_ins: Path, course: Path, roster: Path, *extra: str) -> None:
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-m", "grading", str(hand_ins), "--course", str(course), "--jobs", "1",
                           "--due", "2023-11-01T12:00", "--late-penalty", "10", "--roster", str(roster),
                           "--export", "canvas", *extra], cwd=C.PROJECT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "graded 2 of 2 notebooks" in done.stdout, done.stdout[-2000:]


def test_the_course_gradebook_functions_give_the_same_on_postgres_as_on_sqlite(pg, tmp_path):
    hand_ins = _hand_ins(tmp_path / "hand-ins")
    roster = tmp_path / "roster.txt"
    roster.write_text("ada, 101\nblake, 102\n")
    on_sqlite, on_pg = tmp_path / "sqlite-course", tmp_path / "pg-course"
    pg_url = pg.database("gb_course")
    _grade(hand_ins, on_sqlite, roster)
    _grade(hand_ins, on_pg, roster, "--db", pg_url)

    assert not (on_pg / "gradebook.db").exists(), "the PostgreSQL course has no SQLite gradebook"
    sqlite_url = f"sqlite:///{on_sqlite / 'gradebook.db'}"
    assert C.api(on_pg).coursedir.db_url == pg_url, "the course folder's configuration names the PostgreSQL gradebook"

    def files(course: Path) -> list[str]:
        return [(course / name).read_text().replace(str(course), "COURSE")
                for name in ("grades.csv", "grades-canvas.csv", "report.md")]

    assert files(on_pg) == files(on_sqlite)
    # the functions themselves, against each gradebook
    graded = sorted(report.submissions_in_gradebook(sqlite_url))
    assert graded == [(ASSIGNMENT, "ada"), (ASSIGNMENT, "blake")]
    assert sorted(report.submissions_in_gradebook(pg_url)) == graded
    assert lms.final_scores(pg_url) == lms.final_scores(sqlite_url)
    scores, maxima = lms.final_scores(pg_url)
    assert scores[(ASSIGNMENT, "ada")] < maxima[ASSIGNMENT], "the late penalty is taken off"
    assert late.report_section(pg_url, graded) == late.report_section(sqlite_url, graded)
    assert report.gather(on_pg, pg_url, graded) == report.gather(on_sqlite, sqlite_url, graded)
    for s in ("ada", "blake"):
        assert C.scores(C.api(on_pg), ASSIGNMENT, s) == C.scores(C.api(on_sqlite), ASSIGNMENT, s)
    C.export_grades(C.api(on_pg), tmp_path / "pg.csv")
    C.export_grades(C.api(on_sqlite), tmp_path / "sqlite.csv")
    report.sort_csv(tmp_path / "pg.csv")
    report.sort_csv(tmp_path / "sqlite.csv")
    assert (tmp_path / "pg.csv").read_text() == (tmp_path / "sqlite.csv").read_text()
    # formgrader: a course on a database server has no gradebook file to look for
    assert formgrader.gradebook_file(on_sqlite) == on_sqlite / "gradebook.db"
    assert formgrader.gradebook_file(on_pg) is None
    assert formgrader.check_course(on_pg) == on_pg.resolve()
    (on_sqlite / "gradebook.db").unlink()
    with pytest.raises(FileNotFoundError, match="gradebook.db"):
        formgrader.check_course(on_sqlite)
