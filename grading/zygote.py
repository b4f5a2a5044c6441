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
- ``{"judge": {}}``: fork a judge process (:mod:`grading.remote_judge`); the
  reply ``{"judge": N}`` carries its end of a new socket pair (``SCM_RIGHTS``);
  the judge ends when that socket closes;
- end of file on the socket pair of the process that started it: the zygote exits.

A grading run with several worker processes shares its zygotes
(:meth:`Zygote.share`): the run's main process starts one per set of
frameworks the class needs, each also listening on a Unix socket in the run
folder, and each worker connects there (:meth:`Zygote.get`) instead of
starting its own; a Keras-and-PyTorch zygote costs 5 s of CPU to start, once
per run instead of once per worker. Each connection speaks the same
protocol; a kernel's pidfd goes to the worker that asked for it.
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
def serve(fd: int, frameworks: list[str], listener_fd: int | None = None, linger: bool = False) -> None:
    """Import :data:`PRELOAD` and ``frameworks``, then answer requests on socket ``fd`` until EOF, and on
    each connection to the listening socket ``listener_fd`` (if given) until it closes. With ``linger`` (a
    zygote of the host, :meth:`Zygote.get`), the end of ``fd`` ends only its kernels: the zygote serves
    its other connections until the last one closes."""
    os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # pydevd's import would warn about frozen modules
    for name in (*PRELOAD, *frameworks):
        __import__(name)
    from .jail import contain  # the jail's steps, run by each child

    statuses: dict[int, int] = {}
    forked: dict[socket.socket, dict[int, bool]] = {}  # each worker connection's kernels, not yet reaped: pid -> namespaced

    def reap(*_):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            statuses[pid] = os.waitstatus_to_exitcode(status)
            for kernels in forked.values():  # reaped: its pid may be reused, never to be signalled again
                kernels.pop(pid, None)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the grader decides when the zygote ends (EOF)
    signal.signal(signal.SIGCHLD, reap)
    chan = socket.socket(fileno=fd)
    listener = None if listener_fd is None else socket.socket(fileno=listener_fd)
    buffers: dict[socket.socket, bytes] = {chan: b""}  # the owner's channel, and one per connected worker

    def end_kernels_of(sock) -> None:
        """A worker that went away (a crash) leaves no kernel running: as ForkedKernel.kill would."""
        reap()
        for pid, namespaced in forked.pop(sock, {}).items():  # not reaped: still this zygote's child
            with contextlib.suppress(ProcessLookupError):
                if namespaced:
                    os.kill(pid, signal.SIGTERM)  # the keeper kills its kernel (PID 1 of the jail, so all of it)
                else:
                    os.killpg(pid, signal.SIGKILL)

    while True:
        ready, _, _ = select.select([*buffers, *([listener] if listener else [])], [], [])
        for sock in ready:
            if sock is listener:
                conn, _ = listener.accept()
                buffers[conn] = b""
                continue
            data = sock.recv(1 << 16)
            if not data:
                if sock is chan and not linger:
                    return  # the process that started the zygote is gone
                del buffers[sock]
                end_kernels_of(sock)
                sock.close()
                if linger and not buffers:  # the last grading process that used this host's zygote is gone
                    with contextlib.suppress(OSError):
                        os.unlink(listener.getsockname())  # no one attaches to it any more
                    return
                continue
            buf = buffers[sock] + data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                message = json.loads(line)
                if "status" in message:
                    pid = int(message["status"])
                    reap()
                    sock.sendall(json.dumps({"pid": pid, "status": statuses.pop(pid, None)}).encode() + b"\n")
                    continue
                if "judge" in message:
                    mine, theirs = socket.socketpair()  # made now: no kernel forked before holds it
                    pid = os.fork()
                    if pid == 0:
                        for other in (*buffers, listener, mine):
                            if other is not None:
                                other.close()
                        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                        from .remote_judge import serve as judge

                        judge(theirs)
                        os._exit(0)
                    theirs.close()
                    socket.send_fds(sock, [json.dumps({"judge": pid}).encode() + b"\n"], [mine.fileno()])
                    mine.close()  # kernels forked later never hold it
                    continue
                message["spawn"]["zygote"] = os.getpid()  # a child whose zygote dies before it watches for that ends
                pid = os.fork()
                if pid == 0:
                    for other in (*buffers, listener):
                        if other is not None:
                            other.close()
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    contain(message["spawn"])  # never returns
                forked.setdefault(sock, {})[pid] = bool(message["spawn"].get("namespaced"))
                if pid in statuses:  # it ended, and was reaped, before it was recorded
                    forked[sock].pop(pid)
                fds = []
                with contextlib.suppress(AttributeError, OSError):
                    fds = [os.pidfd_open(pid)]
                socket.send_fds(sock, [json.dumps({"pid": pid}).encode() + b"\n"], fds)
                for f in fds:
                    os.close(f)
            buffers[sock] = buf


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
    shared_dir: str | None = None  # where the run's shared zygotes listen (set by share(), inherited by a fork)
    host_dir: str | None = None  # where this host's zygotes listen, for its grading processes (cluster workers)

    def __init__(self, frameworks: tuple[str, ...] = (), listen: str | None = None, linger: bool = False):
        """Start a zygote for ``frameworks``; with ``listen`` (a path), it also serves connections there; with
        ``linger`` (a zygote of :attr:`host_dir`), it serves them after this process is gone, until the last closes."""
        self.owner, self.linger = os.getpid(), linger
        from .jail import PASSED_ON

        mine, theirs = socket.socketpair()
        self.chan, self.path = mine, listen
        fds, flags = [theirs.fileno()], ["--linger"] if linger else []
        listener = None
        if listen:  # bound here, so the path exists before this returns; the zygote accepts on it
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(listen)
            os.chmod(listen, 0o600)
            listener.listen(64)
            fds.append(listener.fileno())
            flags = ["--listen", str(listener.fileno()), *flags]
        env = {k: os.environ[k] for k in ("PATH", "LANG", *PASSED_ON) if k in os.environ}
        # Keras writes its settings under HOME when imported; a host's zygote owns its home (it removes it at its end)
        self.home = tempfile.mkdtemp(prefix="bn-zygote-", dir=os.path.dirname(listen) if linger else None)
        from . import logs

        with open(logs.current(), "ab") if logs.current() else contextlib.nullcontext() as log:  # the frameworks' start-up lines
            self.proc = subprocess.Popen([sys.executable, "-s", "-m", "grading.zygote", *flags, str(theirs.fileno()),
                                          *frameworks],
                                         pass_fds=tuple(fds), cwd=self.home,
                                         env=env | {"HOME": self.home, "PYTHONPATH": str(PROJECT)},  # this checkout's grading
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         # a host's zygote serves other processes too: a kill of this one's
                                         # process group or session (its job ending) must not reach it
                                         start_new_session=linger)
        theirs.close()
        if listener is not None:
            listener.close()
        self.lock = threading.Lock()
        self.buf = b""
        self.fds: list[int] = []

    @classmethod
    def _attach(cls, path: str) -> Zygote:
        """A connection to the shared zygote listening at ``path``, used like one's own."""
        self = cls.__new__(cls)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        self.owner, self.chan, self.path, self.proc, self.home, self.linger = os.getpid(), sock, path, None, None, False
        self.lock, self.buf, self.fds = threading.Lock(), b"", []
        return self

    @staticmethod
    def _name(frameworks: tuple[str, ...]) -> str:
        return "-".join(frameworks) or "numpy"

    @classmethod
    def share(cls, folder: str | os.PathLike, frameworks: tuple[str, ...] = ()) -> Zygote | None:
        """This process's zygote for ``frameworks``, started now and listening in ``folder`` (the run folder) for
        the processes this one forks next, which use it instead of starting their own (:meth:`get`).
        None (each process then starts its own) where the socket cannot be made there."""
        cls.shared_dir = str(folder)
        path = os.path.join(cls.shared_dir, f"zygote-{cls._name(frameworks)}.sock")
        zygote = cls._instances.get(frameworks)
        if zygote is not None and zygote._alive() and zygote.path == path:
            return zygote
        try:
            return cls._keep(frameworks, cls(frameworks, listen=path))
        except OSError as e:  # a path too long for a Unix socket, say
            import logging

            logging.getLogger(__name__).warning("kernel zygote for %s not shared (%s): each worker starts its own",
                                                cls._name(frameworks), e)
            return None

    @classmethod
    def unshare(cls) -> None:
        """End this process's shared zygotes (at the end of the run that shared them)."""
        for frameworks, zygote in list(cls._instances.items()):
            if zygote.path and zygote.owner == os.getpid() and zygote.proc is not None:
                cls._instances.pop(frameworks)
                zygote.close()
        cls.shared_dir = None

    @classmethod
    def _keep(cls, frameworks: tuple[str, ...], zygote: Zygote) -> Zygote:
        import atexit
        from multiprocessing import util

        cls._instances[frameworks] = zygote
        atexit.register(zygote.close)
        util.Finalize(zygote, zygote.close, exitpriority=10)  # a forked pool worker ends without atexit
        return zygote

    def _alive(self) -> bool:
        return self.owner == os.getpid() and (self.proc is None or self.proc.poll() is None)

    @classmethod
    def get(cls, frameworks: tuple[str, ...] = ()) -> Zygote:
        """This process's zygote for ``frameworks``: a connection to the run's shared one where the process
        that forked this one shares it (:meth:`share`), or to the host's (:attr:`host_dir`), started by
        whichever process needs it first; otherwise one of its own, started on first use."""
        zygote = cls._instances.get(frameworks)
        # a forked process (a pool worker) inherits its parent's zygotes: they are the parent's, not its own
        if zygote is None or not zygote._alive():
            shared = cls.shared_dir and os.path.join(cls.shared_dir, f"zygote-{cls._name(frameworks)}.sock")
            attached = None
            if shared and os.path.exists(shared) and not (zygote and zygote.owner == os.getpid() and zygote.path == shared):
                with contextlib.suppress(OSError):
                    attached = cls._attach(shared)
            if attached is None and cls.host_dir:
                attached = cls._of_host(frameworks)
            zygote = cls._keep(frameworks, attached or cls(frameworks))
        return zygote

    @classmethod
    def _of_host(cls, frameworks: tuple[str, ...]) -> Zygote | None:
        """A connection to the host's zygote for ``frameworks``, started now (and lingering) if none answers;
        None where the host folder cannot be used (the process then starts its own)."""
        import fcntl
        import stat

        path = os.path.join(cls.host_dir, f"zygote-{cls._name(frameworks)}.sock")
        try:
            os.makedirs(cls.host_dir, mode=0o700, exist_ok=True)  # again: the last zygote of the host removes it
            lock = os.open(cls.host_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            info = os.fstat(lock)
            if info.st_uid != os.getuid() or info.st_mode & 0o077 or not stat.S_ISDIR(info.st_mode):
                return None  # made by someone else, or open to others: no place for this process's kernels
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process starts it; the others wait, then attach
            with contextlib.suppress(OSError):
                return cls._attach(path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a zygote that has ended
            try:
                return cls(frameworks, listen=path, linger=True)
            except OSError:
                return None
        finally:
            os.close(lock)

    def _ask(self, message: dict) -> tuple[dict, list[int]]:
        with self.lock:
            self.chan.sendall(json.dumps(message).encode() + b"\n")
            while b"\n" not in self.buf:
                data, got, _, _ = socket.recv_fds(self.chan, 4096, 1)
                if not data:
                    raise ConnectionError("the shared kernel zygote closed the connection" if self.proc is None
                                          else f"the kernel zygote exited (status {self.proc.wait()})")
                self.buf += data
                self.fds += got
            line, self.buf = self.buf.split(b"\n", 1)
            fds, self.fds = self.fds, []
        return json.loads(line), fds

    def spawn(self, request: dict) -> ForkedKernel:
        """Have the zygote fork a jailed kernel for ``request``; raises OSError if the zygote is gone."""
        reply, fds = self._ask({"spawn": request})
        return ForkedKernel(self, reply["pid"], fds[0] if fds else None, request["namespaced"])

    def judge_channel(self) -> tuple[socket.socket, int]:
        """A socket to a judge process the zygote forks now (:mod:`grading.remote_judge`), and its pid;
        raises OSError if it cannot."""
        reply, fds = self._ask({"judge": {}})
        if not fds:
            raise OSError("the kernel zygote sent no judge socket")
        return socket.socket(fileno=fds[0]), int(reply["judge"])

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
        if self.proc is None or self.linger:  # a connection to a shared zygote: its owner ends it; a host's ends itself
            return
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)


if __name__ == "__main__":
    argv = sys.argv[1:]
    listening, linger = None, False
    if argv[:1] == ["--listen"]:
        listening, argv = int(argv[1]), argv[2:]
    if argv[:1] == ["--linger"]:
        linger, argv = True, argv[1:]
    serve(int(argv[0]), argv[1:], listening, linger)
    if linger:  # a host's zygote: its home goes with it (and the host folder, once empty)
        import shutil

        home = os.getcwd()
        shutil.rmtree(home, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(home))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # without the interpreter's teardown of TensorFlow and PyTorch (1.8 s, at the end of every run)
