"""The zygote: a preloaded Python that forks every graded kernel, and reports each one's exit status.

Every graded kernel imports the same modules (IPython's kernel, numpy, and
for the Keras and PyTorch assignments those frameworks): a third of a
notebook's grading time when each kernel is a fresh Python. So each grading
process keeps one zygote per set of preloaded frameworks
(``python -m grading.zygote FD [FRAMEWORK...]``), which imports them once and
forks a kernel per request; the child jails itself (:func:`grading.jail.contain`)
before it runs a line of the kernel.

The protocol, one JSON object a line on a socket pair:

- ``{"spawn": request}``: fork a kernel; the reply is ``{"pid": N}`` with a
  pidfd of the child attached (``SCM_RIGHTS``), through which the grader
  sees it end and signals it;
- ``{"status": N}``: the exit status of child N once it has ended, as
  ``subprocess`` writes it (negative: killed by that signal); the zygote
  reaps its children itself (``SIGCHLD``), as a forkserver must, so that no
  status is lost;
- end of file: the zygote exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# What every graded kernel imports: numpy, and what IPython's kernel imports as it starts. ipykernel imports
# its debugger (debugpy, pydevd: 0.07 s) and its shell lazily, in each kernel; imported here once, a kernel's
# start takes 0.04 s instead of 0.11 (measured with the modules a kernel's IPKernelApp.initialize imports).
PRELOAD = ("numpy", "numpy.random", "ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell",
           "ipykernel.debugger", "debugpy.server", "psutil", "pdb", "IPython.extensions", "faulthandler",
           "tornado.platform.asyncio")
PROJECT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------ the zygote itself --
def serve(fd: int, frameworks: list[str]) -> None:
    """Import :data:`PRELOAD` and ``frameworks``, then answer requests on socket ``fd`` until EOF."""
    os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # pydevd's import would warn about frozen modules
    for name in (*PRELOAD, *frameworks):
        __import__(name)
    from .jail import contain  # the jail's steps, run by each child

    statuses: dict[int, int] = {}

    def reap(*_):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            statuses[pid] = os.waitstatus_to_exitcode(status)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the grader decides when the zygote ends (EOF)
    signal.signal(signal.SIGCHLD, reap)
    chan = socket.socket(fileno=fd)
    buf = b""
    while True:
        data = chan.recv(1 << 16)
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            message = json.loads(line)
            if "status" in message:
                pid = int(message["status"])
                reap()
                chan.sendall(json.dumps({"pid": pid, "status": statuses.pop(pid, None)}).encode() + b"\n")
                continue
            pid = os.fork()
            if pid == 0:
                chan.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                contain(message["spawn"])  # never returns
            fds = []
            with contextlib.suppress(AttributeError, OSError):
                fds = [os.pidfd_open(pid)]
            socket.send_fds(chan, [json.dumps({"pid": pid}).encode() + b"\n"], fds)
            for f in fds:
                os.close(f)


# ----------------------------------------------------- the grader's side ---
class ForkedKernel:
    """A kernel forked by the zygote, with the ``subprocess.Popen`` methods jupyter_client uses."""

    stdin = stdout = stderr = None

    def __init__(self, zygote: Zygote, pid: int, pidfd: int | None, namespaced: bool):
        self.zygote, self.pid, self.pidfd, self.namespaced, self.returncode = zygote, pid, pidfd, namespaced, None

    def poll(self) -> int | None:
        if self.returncode is None:
            if self.pidfd is not None:
                gone = bool(select.select([self.pidfd], [], [], 0)[0])
            else:
                try:
                    os.kill(self.pid, 0)
                    gone = False
                except ProcessLookupError:
                    gone = True
            if gone:
                status = self.zygote.status(self.pid)
                self.returncode = -1 if status is None else status  # -1: the zygote could not say
                if self.pidfd is not None:
                    os.close(self.pidfd)
                    self.pidfd = None
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"kernel {self.pid} still running after {timeout} s")
            time.sleep(0.005)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is not None:
            return
        if self.namespaced and signum == signal.SIGKILL:
            signum = signal.SIGTERM  # the keeper kills the kernel (PID 1 of the jail, so all of it) and exits
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signum)
            elif self.namespaced:
                os.kill(self.pid, signum)
            else:
                os.killpg(self.pid, signum)  # the kernel's own session: its children too
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class Zygote:
    """A zygote of this process, one per set of preloaded frameworks, started on first use and ended with the process."""

    _instances: dict[tuple[str, ...], Zygote] = {}

    def __init__(self, frameworks: tuple[str, ...] = ()):
        self.owner = os.getpid()
        from .jail import PASSED_ON

        mine, theirs = socket.socketpair()
        self.chan = mine
        env = {k: os.environ[k] for k in ("PATH", "LANG", *PASSED_ON) if k in os.environ}
        self.home = tempfile.mkdtemp(prefix="bn-zygote-")  # Keras writes its settings under HOME when imported
        from . import logs

        with open(logs.current(), "ab") if logs.current() else contextlib.nullcontext() as log:  # the frameworks' start-up lines
            self.proc = subprocess.Popen([sys.executable, "-s", "-m", "grading.zygote", str(theirs.fileno()), *frameworks],
                                         pass_fds=(theirs.fileno(),), cwd=self.home,
                                         env=env | {"HOME": self.home, "PYTHONPATH": str(PROJECT)},  # this checkout's grading
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        theirs.close()
        self.lock = threading.Lock()
        self.buf = b""
        self.fds: list[int] = []

    @classmethod
    def get(cls, frameworks: tuple[str, ...] = ()) -> Zygote:
        zygote = cls._instances.get(frameworks)
        # a forked process (a pool worker) inherits its parent's zygotes: they are the parent's, not its own
        if zygote is None or zygote.owner != os.getpid() or zygote.proc.poll() is not None:
            zygote = cls._instances[frameworks] = cls(frameworks)
            import atexit
            from multiprocessing import util

            atexit.register(zygote.close)
            util.Finalize(zygote, zygote.close, exitpriority=10)  # a forked pool worker ends without atexit
        return zygote

    def _ask(self, message: dict) -> tuple[dict, list[int]]:
        with self.lock:
            self.chan.sendall(json.dumps(message).encode() + b"\n")
            while b"\n" not in self.buf:
                data, got, _, _ = socket.recv_fds(self.chan, 4096, 1)
                if not data:
                    raise ConnectionError(f"the kernel zygote exited (status {self.proc.wait()})")
                self.buf += data
                self.fds += got
            line, self.buf = self.buf.split(b"\n", 1)
            fds, self.fds = self.fds, []
        return json.loads(line), fds

    def spawn(self, request: dict) -> ForkedKernel:
        """Have the zygote fork a jailed kernel for ``request``; raises OSError if the zygote is gone."""
        reply, fds = self._ask({"spawn": request})
        return ForkedKernel(self, reply["pid"], fds[0] if fds else None, request["namespaced"])

    def status(self, pid: int, wait: float = 2.0) -> int | None:
        """The exit status of the zygote's child ``pid``, which has ended (None if the zygote cannot say)."""
        end = time.monotonic() + wait
        while True:
            try:
                reply, _ = self._ask({"status": pid})
            except OSError:
                return None
            if reply.get("status") is not None or time.monotonic() > end:
                return reply.get("status")
            time.sleep(0.005)

    @classmethod
    def spawn_kernel(cls, request: dict, frameworks: tuple[str, ...] = ()) -> ForkedKernel:
        """:meth:`spawn` in this process's zygote for ``frameworks``; if that zygote died, in a fresh one."""
        try:
            return cls.get(frameworks).spawn(request)
        except OSError:
            dead = cls._instances.pop(frameworks, None)
            if dead is not None:
                dead.close()
            return cls.get(frameworks).spawn(request)

    def close(self) -> None:
        """End the zygote (it exits when its channel closes); the kernels it forked are not touched."""
        import shutil

        self.chan.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2:])
