"""Grading many notebooks at once, and resuming a run that was cut short.

:func:`grade_one` is the whole of one submission's work (place the notebook,
autograde it, write its feedback) and returns a small, picklable record. It is
self-contained: it builds its own ``NbGraderAPI`` from the course folder, so
it runs as well in a worker process (:func:`grade_all` uses a spawn-started
pool) as in the calling one.

Every worker writes to the course's one sqlite gradebook, opened with a long
busy timeout (:func:`grading.course.grading_url`) so that a writer waits its
turn instead of failing.

The :class:`Journal` (``journal.jsonl`` in the course folder) records each
submission once its grading *and* feedback are complete, keyed by the sha256
of the submitted notebook and of the assignment's source notebook. A rerun
skips a submission whose entry matches and regrades (with force) anything
else, so a run killed halfway loses nothing and grades nothing twice.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import multiprocessing
import os
import shutil
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

JOURNAL_NAME = "journal.jsonl"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def source_digest(course_root: Path, assignment: str) -> str:
    """One sha256 over the assignment's source notebooks: a change to its tests invalidates the journal."""
    h = hashlib.sha256()
    for path in sorted((Path(course_root) / "solutions" / assignment).glob("*.ipynb")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def grade_one(course_root: Path, assignment: str, student: str, notebook: str | None = None,
              settings: dict | None = None) -> dict:
    """Grade one submission: place it, autograde it, write its feedback.

    ``notebook`` is the submission's JSON text, written to
    ``submitted/<student>/<assignment>/<assignment>.ipynb`` (replacing an
    earlier copy); without it, the notebook already there is graded.

    ``settings`` are traits of :class:`grading.execute.GradedExecute` for
    this run (``timeout``, ``budget``, ...).

    Returns ``{"assignment", "student", "sha256", "status", "message", "pid"}``
    where status is ``"graded"``, ``"over-budget"`` (graded, but the
    submission ran out of time before its last cells), ``"autograde-failed"``
    or ``"feedback-failed"``, message the line for the report ("" when
    graded) and sha256 that of the notebook graded.
    """
    from . import course as C

    root = Path(course_root)
    dest = root / "submitted" / student / assignment
    target = dest / f"{assignment}.ipynb"
    settings = dict(settings or {})
    stamp = settings.pop("submitted_at", {}).get(f"{assignment}/{student}")  # grading.late: when it was handed in
    if notebook is not None:
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        tmp = target.with_suffix(".ipynb.part")
        tmp.write_text(notebook, encoding="utf-8")
        os.replace(tmp, target)
    if stamp:  # nbgrader's autograde reads it into the gradebook (SubmittedAssignment.timestamp)
        (dest / "timestamp.txt").write_text(stamp + "\n", encoding="utf-8")
    record = {"assignment": assignment, "student": student, "sha256": sha256_text(target.read_text(encoding="utf-8")),
              "status": "graded", "message": "", "pid": os.getpid()}
    from . import judge

    api = C.api(root, **(settings or {}))
    result = judge.autograde(api, assignment, student)  # jailed kernels; checks called and judged by the grader
    if not result.get("success"):
        return record | {"status": "autograde-failed", "message": "autograding failed: " + C.last_line(result)}
    feedback = api.generate_feedback(assignment, student)
    if not feedback.get("success"):
        return record | {"status": "feedback-failed", "message": "feedback failed: " + C.last_line(feedback)}
    over = judge.run_record(root, student, assignment).get("over_budget")
    if over:
        return record | {"status": "over-budget",
                         "message": f"graded in part: it used up its time budget of {over['budget']:g} s; the cells "
                                    f"from cell {over['cell'] + 1} on were not run and score 0"}
    return record


class Journal:
    """Append-only record of finished submissions, one JSON object a line.

    Each entry is written with one ``write`` of a whole line and flushed to
    disk before the next submission counts as done; a line cut short by a
    kill does not parse and is ignored, so its submission is graded again.
    """

    def __init__(self, course_root: Path):
        self.path = Path(course_root) / JOURNAL_NAME
        self.entries: dict[tuple[str, str], dict] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self.entries[(entry["assignment"], entry["student"])] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def done(self, assignment: str, student: str, sha256: str, source: str) -> dict | None:
        """The entry of this exact submission (same notebook, same assignment source), or None."""
        entry = self.entries.get((assignment, student))
        if entry and entry.get("sha256") == sha256 and entry.get("source") == source:
            return entry
        return None

    def record(self, entry: dict) -> None:
        line = json.dumps(entry, sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.entries[(entry["assignment"], entry["student"])] = entry


INFLIGHT = ".inflight"  # in the course folder: a file per submission being graded


def _inflight(course_root: Path, assignment: str, student: str) -> Path:
    return Path(course_root) / INFLIGHT / sha256_text(f"{assignment}\0{student}")


def _grade_marked(grade, course_root: Path, assignment: str, student: str, notebook: str | None) -> dict:
    """``grade(...)`` with a marker file present while it runs: a worker that dies leaves its marker behind."""
    marker = _inflight(course_root, assignment, student)
    marker.parent.mkdir(exist_ok=True)
    marker.write_text(json.dumps([assignment, student]))
    try:
        return grade(course_root, assignment, student, notebook)
    finally:
        marker.unlink(missing_ok=True)


def _failed(assignment: str, student: str, why: str) -> dict:
    """The record of a submission whose grading process failed (no notebook was graded)."""
    return {"assignment": assignment, "student": student, "sha256": "", "status": "autograde-failed", "pid": None,
            "message": f"autograding failed: {why}"}


def warm(log: Path | None = None) -> None:
    """A worker's start, before any hand-in reaches it: where its log goes, the modules grading
    imports, and the numpy assignments' zygote (a Python with IPython's kernel and numpy loaded)."""
    if log is not None:
        from . import logs

        logs.to_file(log)
    from nbgrader.apps import NbGraderAPI  # noqa: F401 - imported now, while the grader is still collecting

    from . import execute, kernels  # noqa: F401 - the same
    from .zygote import Zygote

    Zygote.get(())
    from . import jail

    for name in FIRST_USE:  # what a worker's first hand-in would import (0.7 s), imported while it waits for one
        importlib.import_module(name)
    jail.isolation()  # the jail's probe (a subprocess, 0.37 s, once per process): now, not in the first hand-in


# The modules a worker imports on its first hand-in, after those the grader imports before it forks
# (found by listing sys.modules before and after a first grade_one): the feedback's exporter and
# math, the kernel's connection files, the judge's numpy.random.
FIRST_USE = ("grading.feedback", "grading.sandbox", "ipykernel.kernelspec", "ipykernel.connect", "IPython.display",
             "latex2mathml.converter", "jinja2.ext", "ipython_pygments_lexers", "numpy.random", "difflib", "codeop")


def _ready() -> int:
    return os.getpid()


def start_pool(jobs: int, init=None) -> ProcessPoolExecutor:
    """A pool of ``jobs`` workers, started now (each runs ``init``): they warm up while the
    grader collects and prepares the hand-ins, then :func:`grade_all` uses them.

    The workers are forked, with grading's modules already imported here: a spawned worker imported
    them again (1.9 s of CPU each, on the two cores the workers then grade on). The pool is started
    first thing, while this process holds no thread, database connection or kernel zygote, which is
    what makes a fork safe; a process that holds threads or kernel zygotes of its own already (grading
    called as a library, after other work) spawns its workers instead, as does a pool started later,
    after a worker died (see _pool_run). Forked workers use the run's shared zygotes (:meth:`Zygote.share`).
    """
    import threading

    from nbgrader.apps import NbGraderAPI  # noqa: F401 - imported once, here, for every worker

    from . import execute, kernels  # noqa: F401 - the same
    from .zygote import Zygote

    own = [z for z in Zygote._instances.values() if not z.path]  # the shared ones (Zygote.share) are for the workers
    method = "fork" if threading.active_count() == 1 and not own else "spawn"
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context(method), initializer=init)
    pool.submit(_ready)  # the workers start with the first task
    return pool


def _pool_run(course_root: Path, items: list, jobs: int, grade, finish, init=None, pool=None, prepare=None) -> list:
    """Grade ``items`` in a pool of ``jobs`` spawned workers (``pool``, or a fresh one); return the items
    left unfinished if a worker died. ``prepare(assignment)`` runs here before each item is handed to
    the pool, while the workers grade the items handed to them before."""
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")
    unfinished = []
    if pool is None:
        pool = ProcessPoolExecutor(max_workers=min(jobs, len(items)), mp_context=ctx, initializer=init)
    with pool:
        pending = {}
        for a, s, text in items:
            if prepare is not None:
                try:
                    prepare(a)
                except BaseException:  # the grader's own failure (a source notebook nbgrader rejects): stop at once
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
            pending[pool.submit(_grade_marked, grade, course_root, a, s, text)] = (a, s, text)
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                item = pending.pop(fut)
                try:
                    record = fut.result()
                except BrokenProcessPool:  # a worker died: this item was not graded, and the pool is lost
                    unfinished.append(item)
                    continue
                except Exception as e:  # noqa: BLE001 - grading this one raised: report it, go on
                    record = _failed(item[0], item[1], f"the grading process raised {type(e).__name__}: {e}")
                finish(record)
    return unfinished


def grade_all(course_root: Path, work: list[tuple[str, str, str]], jobs: int, on_done=None, grade=None,
              init=None, pool=None, prepare=None) -> dict:
    """Grade ``work`` = [(assignment, student, notebook JSON)] with ``jobs`` processes.

    ``on_done(record)`` is called in this process as each submission finishes
    (in completion order); returns ``{(assignment, student): record}``.
    ``grade`` is :func:`grade_one` unless given (a picklable function with
    the same signature); ``init`` runs first in each worker process (where
    its log goes, say); ``pool``, from :func:`start_pool`, is used for the
    first round instead of a fresh one. ``prepare(assignment)`` runs in
    this process before a submission of that assignment is first handed
    out (the command generates the assignment there: the workers grade the
    submissions handed out before meanwhile); it is called again for every
    submission and must return at once when its work is done.

    A worker process that dies (a crash, the out-of-memory killer) breaks
    the whole pool, and every submission the pool had not finished comes
    back unfinished. The ones that were being graded at that moment (their
    marker files remain in ``.inflight/``) are then graded alone, one pool
    each: one that breaks its own pool too gets a failure record; the others
    go to a fresh pool. So a submission that kills the grader costs no one
    else their grade. Workers that die before grading anything (no marker:
    the environment is broken) fail what is left at once, with one message.
    """
    grade = grade or grade_one
    results = {}

    def finish(record):
        results[(record["assignment"], record["student"])] = record
        if on_done:
            on_done(record)

    if jobs <= 1 or len(work) <= 1:
        if pool is not None:
            pool.shutdown()
        for assignment, student, text in work:
            if prepare is not None:
                prepare(assignment)
            finish(grade(course_root, assignment, student, text))
        return results
    inflight = Path(course_root) / INFLIGHT
    shutil.rmtree(inflight, ignore_errors=True)
    todo = list(work)
    while todo:
        unfinished = _pool_run(course_root, todo, jobs, grade, finish, init, pool, prepare)
        pool = None  # a later round (after a worker died) gets a fresh pool
        suspects = [item for item in unfinished if _inflight(course_root, item[0], item[1]).exists()]
        if unfinished and not suspects:  # the workers die before grading anything: nothing to retry alone
            for a, s, _ in unfinished:
                finish(_failed(a, s, "the grading processes died before grading it (see the errors above)"))
            break
        for a, s, text in suspects:
            _inflight(course_root, a, s).unlink(missing_ok=True)
            if _pool_run(course_root, [(a, s, text)], 1, grade, finish, init):
                _inflight(course_root, a, s).unlink(missing_ok=True)
                finish(_failed(a, s, "the grading process crashed on this submission (twice, the second time "
                                      "grading it alone); the rest of the class was graded without it"))
        todo = [item for item in unfinished if item not in suspects]
    shutil.rmtree(inflight, ignore_errors=True)
    return results
