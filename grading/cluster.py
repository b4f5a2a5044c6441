"""Grading on a Dask cluster: one task per hand-in, the jailed kernels on the workers.

    python -m grading SUBMISSIONS --scheduler tcp://HOST:PORT --db postgresql://USER@HOST/DB

The grader (this process) collects the hand-ins, generates the assignments
into the gradebook (PostgreSQL, reached by every worker through nbgrader's
own SQLAlchemy URL) and submits one task per hand-in to the Dask scheduler.
Each task carries what its worker needs, so the workers share no file
system with the grader, only the course's environment: the hand-in, and a
:class:`Bundle` of the assignment (the course's nbgrader configuration, its
source notebooks and the course secret for hidden inputs), which the worker
unpacks once per digest into its own run folder (:mod:`grading.cleanup`:
removed when the worker ends, however it ends). The worker grades it with
:func:`grading.runner.grade_one`, as a local worker does, and sends back the
files of that hand-in (submitted, autograded, feedback, the judge's record),
which the grader writes into its course folder; the scores are in the
gradebook already. The journal, the report and ``grades.csv`` are the local
run's.

Faults:

- a worker that dies mid-task (SIGKILL, out of memory) costs nothing: the
  scheduler gives its tasks to another worker; nbgrader's autograde replaces
  whatever the dead worker had written of that submission, so each hand-in
  is in the gradebook once. A hand-in that kills every worker it reaches
  (Dask's ``allowed-failures``, 3) becomes one failure line in the report;
- a worker that cannot build the jail (:func:`grading.jail.isolation` is not
  ``"full"``) is never given a hand-in: the grader asks every worker first,
  names those that refuse, and restricts the tasks to the others; a task
  that reaches one anyway refuses to grade; so is a worker that runs other
  course code than the grader (a digest of grading, bncheck and bnlib as the
  worker imported them: a worker started before the course was updated
  would judge with the old code);
- the scheduler going away (or every worker able to grade) ends the run with
  one message; the journal lets a rerun grade only what is left.

Nothing secret is logged or shown: Dask logs a failed task's arguments and
shows task keys on its dashboard, so a bundle's ``repr`` names its digest
only, the worker's function returns a failure record instead of raising, and
the keys name the assignment and a digest of the student id.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import socket
import sys
import threading
import time
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from pathlib import Path

from . import course as C
from . import plan as P
from . import runner as G

# the folders of one hand-in in a course folder that the worker sends back ({s}: student, {a}: assignment)
OUTPUTS = ("submitted/{s}/{a}", "autograded/{s}/{a}", "feedback/{s}/{a}", "verdicts/{s}/{a}.json")
NO_WORKER_S = 60.0  # how long a run waits for a worker able to grade before it gives up


class ClusterError(RuntimeError):
    """The cluster cannot go on (no scheduler, no worker able to grade); the message says what to do."""


CODE_PACKAGES = ("grading", "bncheck", "bnlib")  # what grades: the grader's code, the checks and judges, the reference


@functools.cache
def code_digest() -> str:
    """sha256 of the course code this process grades with (every .py file of CODE_PACKAGES), taken once,
    as the code is imported: a worker started before the course was updated still runs the old code."""
    import importlib

    for name in ("bnlib", "bncheck.judges", "bncheck.registry", "grading.judge", "grading.execute"):
        importlib.import_module(name)  # imported now, with the files hashed below
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for package in CODE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """What a worker needs to grade one assignment: ``files`` = ((path in the course folder, bytes), ...),
    and the digest of the grader's course code (``code``), which the worker's must equal."""

    assignment: str
    digest: str
    files: tuple = field(repr=False)
    code: str = ""

    def __repr__(self) -> str:  # Dask writes a failed task's arguments to its log: never the secret
        return f"Bundle({self.assignment!r}, sha256={self.digest[:16]})"


def bundle(root: Path, assignment: str) -> Bundle:
    """The course configuration, ``assignment``'s source folder and the course secret, read from ``root``."""
    root = Path(root)
    P.course_secret(root)  # created on first use, as a local run would
    paths = [root / C.CONFIG_NAME, root / P.SECRET_NAME,
             *sorted(p for p in (root / "solutions" / assignment).rglob("*") if p.is_file())]
    files = tuple((p.relative_to(root).as_posix(), p.read_bytes()) for p in paths)
    h = hashlib.sha256()
    for name, data in files:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return Bundle(assignment, h.hexdigest(), files, code_digest())


# ------------------------------------------------------------------ on a worker
_run = None  # this worker process's run folder (grading.cleanup), made by prepare_worker or its first hand-in


def _course(b: Bundle) -> Path:
    """The worker's course folder for ``b``, unpacked once per digest in the worker's run folder."""
    _own_run()
    folder = Path(_run.folder) / "courses" / b.digest
    if not folder.is_dir():
        part = folder.with_name(b.digest + ".part")
        shutil.rmtree(part, ignore_errors=True)
        for name, data in b.files:
            path = part / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        os.chmod(part / P.SECRET_NAME, 0o600)
        os.replace(part, folder)
    return folder


def _own_run() -> None:
    """This worker's run folder (grading.cleanup), made once: TMPDIR for its sandboxes, zygotes and courses."""
    global _run
    if _run is None:
        from . import cleanup

        _run = cleanup.start()


def prepare_worker(code: str = "", dask_worker=None) -> str | None:
    """Run on every worker before the hand-ins (``Client.run``, in the worker's event loop): why it
    refuses to grade, or None; a worker that grades gets ready (its run folder, then
    :func:`grading.runner.warm`) and stops Dask's statistical profiler, which samples the grading thread's stack every
    10 ms: with two workers on two cores it cost a fifth of the throughput here."""
    why = refusal(code)
    if why is None:
        if dask_worker is not None:
            for name in ("profile", "profile-cycle"):
                callback = dask_worker.periodic_callbacks.get(name)
                if callback is not None:
                    callback.stop()
        from .zygote import Zygote

        Zygote.host_dir = Zygote.host_dir or host_folder()  # before _own_run points TMPDIR at this worker's run
        _own_run()
        G.warm()  # as a local pool worker starts: the numpy zygote, a first hand-in's imports and probe
    return why


def start_zygotes(needed: list[tuple[str, ...]]) -> None:
    """Run on every worker as a run starts: the kernel zygotes of the frameworks the class needs, started now
    (the host's, shared by its workers) rather than when a worker reaches its first Keras or PyTorch hand-in
    and waits 4-5 s for the import, the other workers of the host with it."""
    from .zygote import Zygote

    if refusal() is None:
        for frameworks in needed:
            Zygote.get(tuple(frameworks))


def dask_setup(worker) -> None:
    """``dask worker ... --preload grading.cluster``: the worker gets ready as it starts (:func:`prepare_worker`:
    its imports, the numpy zygote, the jail's probe; 1-2 s of CPU), not in the first run it grades; the run
    asks again (at once: all of it is kept) and skips a worker that refuses."""
    why = prepare_worker(dask_worker=worker)
    if why:
        import logging

        logging.getLogger(__name__).warning(why)


def host_folder() -> str:
    """Where the grading workers of this host share their kernel zygotes (:attr:`grading.zygote.Zygote.host_dir`):
    one folder per user, course code and Python, so that only workers that would start the very same zygote share
    it. A Keras-and-PyTorch zygote costs 4.6 s of CPU and 1 GB to start; a host's workers start it once, not once
    each. It is a worker's own, not a run's: it serves the workers that use it until the last one is gone."""
    from .jail import PASSED_ON

    setting = "\0".join(f"{k}={os.environ.get(k, '')}" for k in PASSED_ON)
    key = hashlib.sha256(f"{code_digest()}\0{sys.executable}\0{setting}".encode()).hexdigest()[:16]
    from .cleanup import socket_base

    return os.path.join(socket_base(), f"bn-zygotes-{os.getuid()}-{key}")


def refusal(code: str = "") -> str | None:
    """Why this worker refuses to grade (its jail is not complete; it runs other course code than
    the grader's ``code`` digest), or None."""
    from . import jail

    isolation = jail.isolation()
    if isolation != "full":
        return (f"worker {socket.gethostname()} (pid {os.getpid()}) refuses to grade: the jail cannot be built here "
                f"({isolation})")
    if code and code != code_digest():
        return (f"worker {socket.gethostname()} (pid {os.getpid()}) refuses to grade: it runs other course code than "
                f"the grader (sha256 {code_digest()[:12]}, the grader's {code[:12]}): start it again with this "
                "version of the course")
    return None


def grade_remote(b: Bundle, assignment: str, student: str, notebook: str, settings: dict) -> dict:
    """A worker's task: grade one hand-in; return ``{"record": ..., "files": {path: bytes}}``. Never raises."""
    why = refusal(b.code)
    if why:
        return {"record": G._failed(assignment, student, why), "files": {}, "refused": why}
    try:
        root = _course(b)
        record = G.grade_one(root, assignment, student, notebook, settings)
        files = {}
        for pattern in OUTPUTS:
            top = root / pattern.format(s=student, a=assignment)
            for path in [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()):
                files[path.relative_to(root).as_posix()] = path.read_bytes()
            shutil.rmtree(top, ignore_errors=True) if top.is_dir() else top.unlink(missing_ok=True)
        return {"record": record | {"worker": socket.gethostname()}, "files": files}
    except Exception as e:  # noqa: BLE001 - a record, never a traceback with the task's arguments in Dask's log
        return {"record": G._failed(assignment, student, f"the grading worker raised {type(e).__name__}: {e}"),
                "files": {}}


# ------------------------------------------------------------------ the grader
def _key(assignment: str, student: str, text: str) -> str:
    return f"grade-{assignment}-{G.sha256_text(student + chr(0) + text)[:16]}"


def _place(root: Path, assignment: str, student: str, files: dict) -> None:
    """Write a worker's files of one hand-in into the course folder, replacing what was there."""
    root = Path(root)
    for pattern in OUTPUTS:
        top = root / pattern.format(s=student, a=assignment)
        shutil.rmtree(top, ignore_errors=True) if top.is_dir() else top.unlink(missing_ok=True)
    for name, data in files.items():
        path = (root / name).resolve()
        if not path.is_relative_to(root.resolve()):
            raise ClusterError(f"a worker sent back a file outside the course folder: {name!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def connect(scheduler: str, timeout: float = 15.0):
    """A Dask client of ``scheduler``, or ClusterError saying what was expected and what happened."""
    from distributed import Client

    try:
        return Client(scheduler, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise ClusterError(f"--scheduler {scheduler}: expected a running Dask scheduler there; could not connect "
                           f"within {timeout:g} s ({type(e).__name__}: {e})") from None


def able_workers(client, on_refusal=None) -> list[str]:
    """The workers that can grade (a full jail), made ready (:func:`prepare_worker`); each one that
    refuses is passed to ``on_refusal(address, why)``."""
    able = []
    for address, why in sorted(client.run(prepare_worker, code_digest()).items()):
        if why is None:
            able.append(address)
        elif on_refusal is not None:
            on_refusal(address, why)
    return able


def ready(scheduler: str, on_refusal=None, wait_s: float = NO_WORKER_S, stop: threading.Event | None = None):
    """``(client, able)``: a client of ``scheduler`` and the addresses of its workers able to grade, each made
    ready (:func:`able_workers`); waits up to ``wait_s`` for one, or until ``stop`` is set. Raises ClusterError."""
    stop = stop or threading.Event()
    client = connect(scheduler)
    try:
        deadline = time.monotonic() + wait_s
        while not (able := able_workers(client, on_refusal)):
            if time.monotonic() > deadline or stop.is_set():
                raise ClusterError(f"--scheduler {scheduler}: no worker able to grade (a running worker whose jail "
                                   f"is complete) joined within {wait_s:g} s")
            on_refusal = None  # named once
            stop.wait(1.0)
    except BaseException:
        with contextlib.suppress(Exception):
            client.close(timeout=5)
        raise
    return client, able


def start(scheduler: str, on_refusal=None, wait_s: float = NO_WORKER_S) -> Future:
    """:func:`ready` in a thread of its own, started now: the workers get ready (their zygote, imports and
    jail probe, 1-1.5 s) while the grader collects the hand-ins, as a local pool's workers do. Pass the
    future to :func:`grade_all`, or to :func:`discard` if the run ends before it grades."""
    future, stop = Future(), threading.Event()
    future.stop = stop

    def run():  # a daemon thread: a run that ends early (a collect error) does not wait for the connection
        future.set_running_or_notify_cancel()
        try:
            future.set_result(ready(scheduler, on_refusal, wait_s, stop))
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits for the future
            future.set_exception(e)

    threading.Thread(target=run, name="cluster-ready", daemon=True).start()
    return future


def discard(started: Future | None) -> None:
    """End what :func:`start` began (a run that ended before it graded there): its wait for a worker, its client."""
    if started is None:
        return
    started.stop.set()

    def close(future):
        if future.exception() is None:
            with contextlib.suppress(Exception):
                future.result()[0].close(timeout=5)

    started.add_done_callback(close)


def grade_all(scheduler: str, root: Path, work: list[tuple[str, str, str]], settings: dict, on_done=None,
              on_refusal=None, wait_s: float = NO_WORKER_S, prepare=None, started: Future | None = None) -> dict:
    """Grade ``work`` = [(assignment, student, notebook JSON)] on the cluster at ``scheduler``.

    As :func:`grading.runner.grade_all`: ``on_done(record)`` in completion order, returns
    ``{(assignment, student): record}``; ``prepare(assignment)`` runs here before the first
    hand-in of an assignment is submitted. ``started`` is :func:`start`'s future, if the
    connection was started before (its client is closed here). Raises ClusterError when the run
    cannot go on; the records done by then have been passed to ``on_done`` (the journal keeps them).
    """
    from distributed import wait

    root = Path(root)
    results = {}
    if not work:
        discard(started)
        return results
    client, able = (started or start(scheduler, on_refusal, wait_s)).result()
    try:
        from . import jail

        needed = jail.zygotes_needed(root, {a for a, _, _ in work})
        if needed:  # as a local run does: they import while the workers grade the numpy hand-ins
            client.run(start_zygotes, needed, workers=able)  # returns once each has started them, not imported
        bundles = {}
        pending = {}
        for a, s, text in work:
            if a not in bundles:  # generated (the gradebook's rows) just before its first hand-in goes out
                if prepare is not None:
                    prepare(a)
                bundles[a] = bundle(root, a)
            fut = client.submit(grade_remote, bundles[a], a, s, text, settings, key=_key(a, s, text), pure=False,
                                workers=able, allow_other_workers=False)
            pending[fut] = (a, s)
        alone_since = None
        while pending:
            with client.as_current():
                try:
                    done, _ = wait(list(pending), timeout=2.0, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    done = set()
                except CancelledError:  # Dask cancels every pending task when it loses the scheduler
                    raise _gone(scheduler, len(pending)) from None
            for fut in done:
                a, s = pending.pop(fut)
                record = _outcome(fut, root, a, s, scheduler)
                results[(a, s)] = record
                if on_done:
                    on_done(record)
            if not done:  # nothing finished: is anyone left to finish it?
                if client.status != "running":
                    raise _gone(scheduler, len(pending))
                alive = set(client.scheduler_info(n_workers=-1).get("workers", {})) & set(able)
                alone_since = None if alive else (alone_since or time.monotonic())
                if alone_since is not None and time.monotonic() - alone_since > wait_s:
                    raise ClusterError(f"--scheduler {scheduler}: every worker able to grade is gone; {len(pending)} "
                                       "hand-ins were not graded: start workers and run the same command again "
                                       "(the journal keeps what was graded)")
        return results
    finally:
        with contextlib.suppress(Exception):  # closing a client whose scheduler is gone raises
            client.close(timeout=5)


def _gone(scheduler: str, left: int) -> ClusterError:
    return ClusterError(f"--scheduler {scheduler}: the Dask scheduler went away; {left} hand-ins were not graded: "
                        "run the same command again once it is back (the journal keeps what was graded)")


def _outcome(fut, root: Path, assignment: str, student: str, scheduler: str) -> dict:
    """The record of a finished task, its files placed; a failed task's record says why."""
    from distributed import KilledWorker

    if fut.status == "finished":
        out = fut.result()
        if out.get("refused"):
            print(out["refused"], file=sys.stderr)
        _place(root, assignment, student, out["files"])
        return out["record"]
    if fut.status == "cancelled":
        raise _gone(scheduler, 1)
    error = fut.exception()
    if isinstance(error, KilledWorker):
        why = "the grading workers died on this submission (three times, on workers); the rest of the class was graded"
    else:
        why = f"the grading task failed ({type(error).__name__})"
    return G._failed(assignment, student, why)
