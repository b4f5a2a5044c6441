"""What a graded notebook's start costs, and why it can be cut without changing what is graded.

Profiling one worker (issue 10) found most of a small notebook's grading time
spent waiting, not working:

- every fresh gradebook ran the ``alembic heads`` command (a new Python
  process) for its schema version: :func:`grading.course.create_gradebook`
  reads the same version in-process, from nbgrader's own migration scripts;
- every kernel start waited for IOPub to stay silent for 0.2 s, and for
  ZeroMQ's 100 ms reconnect: :class:`grading.kernels.ReadyClient` waits for
  the kernel's answer to its own request instead.

These tests check that the shortcuts keep the behaviour (the same gradebook
as nbgrader's, a kernel really ready) without timing anything: the speed is
measured by ``benchmarks/bench_grading.py``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import signal
import sqlite3
import tempfile
import time
from pathlib import Path
from queue import Empty

import pytest

from grading import course as C
from grading.kernels import JailedKernelManager, ReadyClient


# ------------------------------------------------------------- the gradebook
def _schema(path):
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE '%alembic_version%'").fetchall()
        version = db.execute("SELECT version_num FROM alembic_version").fetchall()
    return sorted(rows, key=repr), version


def test_a_fresh_gradebook_is_nbgraders_own(tmp_path):
    from nbgrader.api import Gradebook

    ours, theirs = tmp_path / "ours.db", tmp_path / "theirs.db"
    assert C.create_gradebook(f"sqlite:///{ours}") is True
    Gradebook(f"sqlite:///{ours}").close()  # nbgrader opens it as its own, and adds nothing
    Gradebook(f"sqlite:///{theirs}").close()  # nbgrader's way, with the alembic command
    tables, version = _schema(ours)
    assert (tables, version) == _schema(theirs)
    assert len(version) == 1 and len(tables) > 10


def test_an_existing_gradebook_is_left_as_it_is(tmp_path):
    from nbgrader.api import Gradebook

    path = tmp_path / "gradebook.db"
    with Gradebook(f"sqlite:///{path}") as gb:
        gb.add_student("s001")
    assert C.create_gradebook(f"sqlite:///{path}") is False
    with Gradebook(f"sqlite:///{path}") as gb:
        assert [s.id for s in gb.students] == ["s001"]


def test_generating_a_course_runs_no_alembic_command(tmp_path, monkeypatch):
    import nbgrader.api

    def refuse():
        raise AssertionError("nbgrader ran the alembic command")

    monkeypatch.setattr(nbgrader.api, "get_alembic_version", refuse)
    root = C.make_course(tmp_path / "course")
    api = C.api(root)
    C.generate(api, ["ch01-scaling"])
    assert (root / "release" / "ch01-scaling" / "ch01-scaling.ipynb").exists()


# ----------------------------------------------------- the kernel's readiness
class _Channel:
    """A channel whose messages are given by the test; get_msg raises Empty when none is left."""

    def __init__(self):
        self.queue: list[dict] = []

    async def get_msg(self, timeout=None):
        await asyncio.sleep(0)
        if not self.queue:
            raise Empty
        return self.queue.pop(0)


def _msg(kind, parent, **content):
    return {"msg_type": kind, "parent_header": {"msg_id": parent}, "content": content, "header": {}, "metadata": {}}


class _Kernel(ReadyClient):
    """A ReadyClient wired to fake channels: ``answers(n, request)`` says what the kernel sends for request n."""

    def __init__(self, answers, alive=True):
        super().__init__()
        self._shell, self._iopub, self.sent, self._answers, self._alive = _Channel(), _Channel(), [], answers, alive

    shell_channel = property(lambda self: self._shell)
    iopub_channel = property(lambda self: self._iopub)

    def kernel_info(self):
        request = f"req-{len(self.sent)}"
        self.sent.append(request)
        shell, iopub = self._answers(len(self.sent), request)
        self._shell.queue += shell
        self._iopub.queue += iopub
        return request

    async def _async_is_alive(self):
        return self._alive


def _reply(request):
    return _msg("kernel_info_reply", request, status="ok", language_info={"name": "python"}, protocol_version="5.3")


def _status(state, request):
    return _msg("status", request, execution_state=state)


def test_ready_after_the_kernels_idle_status_for_its_own_request():
    stale = [_reply("older"), _status("idle", "older")]  # answers to someone else's request are not taken

    def answers(n, request):
        return stale[:1] + [_reply(request)], stale[1:] + [_status("busy", request), _status("idle", request)]

    kernel = _Kernel(answers)
    asyncio.run(kernel.wait_for_ready(timeout=5))
    assert kernel.sent == ["req-0"]
    assert not kernel._iopub.queue  # what the kernel sent for the request is consumed, nothing waited for


def test_a_request_whose_iopub_messages_were_lost_is_sent_again():
    def answers(n, request):  # the first time, IOPub was not connected yet: its messages never arrive
        return [_reply(request)], ([] if n == 1 else [_status("busy", request), _status("idle", request)])

    kernel = _Kernel(answers)
    asyncio.run(kernel.wait_for_ready(timeout=5))
    assert kernel.sent == ["req-0", "req-1"]


def test_a_dead_kernel_is_reported_not_waited_for():
    kernel = _Kernel(lambda n, request: ([], []), alive=False)
    with pytest.raises(RuntimeError, match="died before replying"):
        asyncio.run(kernel.wait_for_ready(timeout=30))


def test_a_silent_kernel_times_out():
    kernel = _Kernel(lambda n, request: ([_reply(request)], []))
    with pytest.raises(RuntimeError, match="didn't respond"):
        asyncio.run(kernel.wait_for_ready(timeout=0.3))


def test_the_jailed_kernel_manager_hands_out_the_ready_client():
    assert isinstance(JailedKernelManager().client(), ReadyClient)


# ------------------------------------------------------------ shared zygotes
def _kernel_in_worker(sandboxes: str, pid_file: str | None) -> tuple[bool, int | None]:
    """In a forked worker: start a jailed kernel through this process's zygote; either shut it down (killed,
    as grading does) and return (attached to the shared zygote?, its status), or write its pid to ``pid_file``
    and die without a word, as a crashed worker would."""
    from grading.zygote import Zygote

    async def go():
        km = JailedKernelManager(kernel_name="python3", sandbox_root=sandboxes)
        await km.start_kernel()
        proc = km.provisioner.process
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        if pid_file:
            Path(pid_file).write_text(str(proc.pid))
            os._exit(3)
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
        return proc.returncode

    status = asyncio.run(go())
    return Zygote.get(()).proc is None, status


@pytest.fixture
def shared(tmp_path):
    """The run's numpy zygote, shared from this process, in a short folder (its socket's path must be short)."""
    from grading.zygote import Zygote

    folder = Path(tempfile.mkdtemp(prefix="bnz-", dir="/tmp"))
    assert Zygote.share(folder) is not None
    yield folder
    Zygote.unshare()
    shutil.rmtree(folder, ignore_errors=True)


def test_forked_workers_use_the_runs_shared_zygote(shared):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_kernel_in_worker, [(str(shared), None)] * 2)
    assert results == [(True, -signal.SIGKILL)] * 2  # attached, not a zygote of their own; kernels graded and killed


def test_a_worker_that_dies_leaves_no_kernel_running(shared):
    pid_file = shared / "kernel.pid"
    worker = multiprocessing.get_context("fork").Process(target=_kernel_in_worker, args=(str(shared), str(pid_file)))
    worker.start()
    worker.join(60)
    assert worker.exitcode == 3, "the worker did not start its kernel"
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), "the kernel of a worker that died is still running"
