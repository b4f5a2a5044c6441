"""Grading on a Dask cluster with a PostgreSQL gradebook (issue 13), with the real parts.

A throwaway PostgreSQL server, a ``dask scheduler`` and two ``dask worker``
processes on 127.0.0.1 (``tests/_cluster.py``) grade a mixed class (numpy,
Keras and PyTorch assignments) with ``python -m grading --scheduler ... --db
...``; one worker is killed with SIGKILL halfway. The run must end with every
hand-in graded once in the gradebook and with the same ``grades.csv`` and
``report.md`` as a local ``--jobs 2`` run of the same class. A worker that
cannot build the jail is named and given nothing; the scheduler going away
ends the run with one message, and a rerun grades only what is left. Nothing
the tests started is left running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from _cluster import DaskCluster, Postgres, pg_bindir

from _support import jail_processes
from grading import cluster
from grading import course as C
from grading import plan as P
from grading.__main__ import parse
from grading.samples import CATALOG, answer_code, fill

pytestmark = pytest.mark.skipif(pg_bindir() is None and not os.environ.get("CI"),
                                reason="PostgreSQL is not installed (make postgres installs it)")

MIXED = ["ch01-scaling", "ch03-backward", "ch05-keras", "ch06-pytorch", "ch09-normalization-family"]
STUDENTS = ["ada", "blake", "casey"]  # right, blank, a catalog mistake


def env():
    return os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def command(hand_ins: Path, course: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "grading", str(hand_ins), "--course", str(course), *extra]


def journal(course: Path) -> list[dict]:
    path = course / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def comparable(course: Path) -> tuple[str, str]:
    """grades.csv and report.md, with the course folder's own path taken out."""
    return ((course / "grades.csv").read_text(), (course / "report.md").read_text().replace(str(course), "COURSE"))


@pytest.fixture(scope="module")
def hand_ins(tmp_path_factory):
    src = tmp_path_factory.mktemp("mixed-class")
    for a in MIXED:
        wrong = [c for c in CATALOG if c[0] == a]
        for s, answers in zip(STUDENTS, (answer_code(a), None, answer_code(a) | wrong[0][1])):
            nbformat.write(fill(C.PROJECT, a, answers), src / f"{s}_{a}.ipynb")
    return src


@pytest.fixture(scope="module")
def local_run(hand_ins, tmp_path_factory):
    course = tmp_path_factory.mktemp("local-course")
    done = subprocess.run(command(hand_ins, course, "--jobs", "2"), cwd=C.PROJECT, env=env(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return course


@pytest.fixture
def postgres(tmp_path):
    server = Postgres(Path("/tmp") / f"bnt-pg-{os.getpid()}-{time.monotonic_ns()}")  # short: its socket lives there
    try:
        yield server.start()
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", str(server.folder)], check=False)


@pytest.fixture
def dask_cluster(tmp_path):
    made, before = [], set(jail_processes())

    def make(workers: int = 2) -> DaskCluster:
        c = DaskCluster(tmp_path / f"dask-{len(made)}", workers)
        made.append(c)
        return c.start()

    try:
        yield make
    finally:
        for c in made:
            c.stop()
        for c in made:
            assert c.alive() == [], f"processes of the test's Dask cluster outlived it: {c.alive()}"
        deadline = time.monotonic() + 30  # the workers' zygotes and kernels end once their worker is gone
        while set(jail_processes()) - before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert set(jail_processes()) - before == set(), "zygotes or kernels of the test's workers outlived them"


def wait_for_journal(course: Path, n: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while len(journal(course)) < n and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def submissions_per_hand_in(postgres: Postgres) -> dict[tuple[str, str], int]:
    rows = postgres.query("SELECT a.name, s.student_id, count(*) FROM submitted_assignment s "
                          "JOIN assignment a ON a.id = s.assignment_id GROUP BY a.name, s.student_id")
    return {(a, s): n for a, s, n in rows}


# ---------------------------------------------------------------- the fault test
def test_a_worker_killed_halfway_costs_nothing(hand_ins, local_run, postgres, dask_cluster, tmp_path):
    cluster_ = dask_cluster(2)
    course = tmp_path / "course"
    n = len(list(hand_ins.glob("*.ipynb")))
    proc = subprocess.Popen(command(hand_ins, course, "--scheduler", cluster_.address, "--db", postgres.url),
                            cwd=C.PROJECT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_journal(course, n // 2, proc)
    assert proc.poll() is None, "the run ended before half the class was graded"
    cluster_.kill(cluster_.workers[0])
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert f"graded {n} of {n} notebooks" in out, out
    entries = journal(course)
    assert sorted((e["assignment"], e["student"]) for e in entries) == sorted(
        (a, s) for a in MIXED for s in STUDENTS), "each hand-in journaled once"
    assert len({e["pid"] for e in entries}) == 2, "both workers graded before one was killed"
    assert set(submissions_per_hand_in(postgres).values()) == {1}
    assert len(submissions_per_hand_in(postgres)) == n
    assert comparable(course) == comparable(local_run)
    for s in STUDENTS:  # the worker's files came back: feedback a learner can open, without hidden tests
        assert (course / "feedback" / s / MIXED[1] / f"{MIXED[1]}.html").is_file()
    # nothing secret in what Dask logged
    secret = (course / P.SECRET_NAME).read_text().strip()
    for log in cluster_.folder.glob("*.log"):
        assert secret not in log.read_text(errors="replace"), f"the course secret is in {log.name}"


def test_a_worker_without_a_jail_or_with_other_code_is_given_nothing(hand_ins, postgres, dask_cluster, tmp_path):
    cluster_ = dask_cluster(1)
    # root without capabilities (a container without CAP_SYS_ADMIN): no namespaces, so no jail
    cluster_.start_worker("no-caps", prefix=("setpriv", "--bounding-set=-all", "--inh-caps=-all"))
    # a worker with another version of the course code (started before an update): one comment added to bnlib
    other = tmp_path / "other-version"
    for package in cluster.CODE_PACKAGES:
        shutil.copytree(C.PROJECT / package, other / package, ignore=shutil.ignore_patterns("__pycache__"))
    with (other / "bnlib" / "functional.py").open("a") as f:
        f.write("# an older release\n")
    cluster_.start_worker("old-code", prefix=("env", f"PYTHONPATH={other}"))
    cluster_.wait_for_workers(3)
    course = tmp_path / "course"
    one = tmp_path / "one"
    one.mkdir()
    for path in sorted(hand_ins.glob("*_ch01-scaling.ipynb")):
        (one / path.name).write_bytes(path.read_bytes())
    done = subprocess.run(command(one, course, "--scheduler", cluster_.address, "--db", postgres.url), cwd=C.PROJECT,
                          env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"refuses to grade: the jail cannot be built here \(partial: .*namespaces", done.stderr), done.stderr
    assert re.search(r"refuses to grade: it runs other course code than the grader .*start it again", done.stderr), \
        done.stderr
    pids = {e["pid"] for e in journal(course)}
    assert len(pids) == 1 and len(journal(course)) == len(STUDENTS)
    assert pids == {cluster_.workers[0].pid}, "only the worker with a complete jail graded"


def test_the_scheduler_going_away_ends_the_run_and_a_rerun_finishes_it(hand_ins, postgres, dask_cluster, tmp_path):
    first = dask_cluster(2)
    course = tmp_path / "course"
    numpy_only = tmp_path / "numpy-only"
    numpy_only.mkdir()
    for path in sorted(hand_ins.glob("*.ipynb")):
        if "ch05" not in path.name and "ch06" not in path.name:
            (numpy_only / path.name).write_bytes(path.read_bytes())
    n = len(list(numpy_only.glob("*.ipynb")))
    proc = subprocess.Popen(command(numpy_only, course, "--scheduler", first.address, "--db", postgres.url),
                            cwd=C.PROJECT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_journal(course, 2, proc)
    first.kill(first.scheduler)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (out[-2000:], err[-2000:])
    assert "the Dask scheduler went away" in err and "Traceback" not in err, err[-3000:]
    graded = len(journal(course))
    assert 2 <= graded < n
    again = dask_cluster(2)
    done = subprocess.run(command(numpy_only, course, "--scheduler", again.address, "--db", postgres.url),
                          cwd=C.PROJECT, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"graded {n} of {n} notebooks" in done.stdout
    assert re.search(rf"\b{graded} of {n} notebooks were already graded in an earlier run", done.stdout), done.stdout
    assert set(submissions_per_hand_in(postgres).values()) == {1}


# ---------------------------------------------------------------- without a cluster
def test_the_command_needs_a_shared_gradebook_for_a_cluster():
    for argv, expected in (
        (["x", "--scheduler", "tcp://127.0.0.1:1"], "expected --db with a database every worker reaches"),
        (["x", "--scheduler", "tcp://127.0.0.1:1", "--db", "sqlite:///g.db"], "got a SQLite file"),
        (["x", "--db", "postgresql://me:hunter2@db/grading"], "expected a URL without a password"),
        (["x", "--db", "mysql://me@db/grading"], "expected a PostgreSQL or SQLite URL"),
        (["x", "--db", "not a url"], "expected a database URL"),
    ):
        with pytest.raises(SystemExit):
            parse(argv)
        done = subprocess.run([sys.executable, "-m", "grading", *argv], cwd=C.PROJECT, env=env(), capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2 and expected in done.stderr, (argv, done.stderr)
        assert "hunter2" not in done.stderr


def test_no_scheduler_or_no_database_there_is_one_clear_error(tmp_path, hand_ins, postgres):
    done = subprocess.run(command(hand_ins, tmp_path / "course", "--scheduler", "tcp://127.0.0.1:9", "--db", postgres.url),
                          cwd=C.PROJECT, env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "expected a running Dask scheduler there" in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    missing = postgres.url.rsplit("/", 1)[0] + "/no-such-database"
    done = subprocess.run(command(hand_ins, tmp_path / "course2", "--db", missing), cwd=C.PROJECT, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "expected a database this process can open and write" in done.stderr and "no-such-database" in done.stderr


def test_the_connection_started_early_never_holds_a_run_back():
    """The workers get ready while the grader collects (cluster.start, a thread); a run that ends before it
    grades (a collect error) does not wait for that thread, and its error comes when the grader asks for it."""
    import threading

    started = cluster.start("tcp://127.0.0.1:9", wait_s=0)
    thread = next(t for t in threading.enumerate() if t.name == "cluster-ready")
    assert thread.daemon, "the interpreter would wait for the connection at exit"
    cluster.discard(started)  # returns at once; the client, if any, is closed when it comes
    with pytest.raises(cluster.ClusterError, match="expected a running Dask scheduler there"):
        started.result(timeout=60)


def test_a_run_starts_the_framework_zygotes_on_workers_that_grade(monkeypatch):
    """cluster.start_zygotes (run on every worker as a run starts): the zygotes the class needs, on a worker
    that may grade, and none on one that refuses."""
    from grading.zygote import Zygote

    started = []
    monkeypatch.setattr(Zygote, "get", classmethod(lambda cls, frameworks=(): started.append(frameworks)))
    monkeypatch.setattr(cluster, "refusal", lambda code="": None)
    cluster.start_zygotes([["keras", "tensorflow"], ["keras", "tensorflow", "torch"]])
    assert started == [("keras", "tensorflow"), ("keras", "tensorflow", "torch")]
    started.clear()
    monkeypatch.setattr(cluster, "refusal", lambda code="": "no jail here")
    cluster.start_zygotes([["keras", "tensorflow"]])
    assert started == []


def test_a_bundle_never_shows_the_course_secret(tmp_path):
    course = C.make_course(tmp_path / "course")
    b = cluster.bundle(course, "ch01-scaling")
    secret = (course / P.SECRET_NAME).read_text().strip()
    assert secret.encode() in b"".join(data for _, data in b.files)  # the worker needs it ...
    assert secret not in repr(b) and secret not in str(b)  # ... and Dask's log shows only this
    assert b.digest == cluster.bundle(course, "ch01-scaling").digest
    (course / "solutions" / "ch01-scaling" / "ch01-scaling.ipynb").write_text("{}")
    assert b.digest != cluster.bundle(course, "ch01-scaling").digest, "a changed source notebook is a new bundle"
