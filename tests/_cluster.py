"""Real parts for the cluster tests: a throwaway PostgreSQL and a local Dask cluster, always stopped.

PostgreSQL is Debian's package (``make postgres`` installs it where it is
missing); its server programs are found by ``pg_config --bindir`` or in
/usr/lib/postgresql/*/bin (never through PATH). The cluster is made with
``initdb`` in a temporary folder (as the ``postgres`` user, or ``nobody``,
when the tests run as root: ``initdb`` refuses root); the server is the
``postgres`` program itself, a child of this process in a session of its own,
listening on 127.0.0.1 and a free port (its Unix socket in the folder), with
``fsync`` off. The Dask scheduler and workers are the ``dask`` command-line
programs of the project's environment (PATH with its ``bin`` first, the project
as working folder and on PYTHONPATH), each in a session of its own so that a
test can kill one worker with SIGKILL.

Stopping: ``stop()`` ends each server (PostgreSQL's immediate shutdown,
SIGTERM for Dask) and then SIGKILLs whatever is left of each session; the
context managers :func:`running_postgres` and :func:`running_dask` call it
however the block ends (an exception, KeyboardInterrupt). Every process
started here also gets SIGKILL when the thread that started it dies
(``setpriv --pdeathsig``, when started from the main thread), so a test run
killed outright leaves no server behind either. ``alive()`` lists what is
left; a test asserts it is empty.

The API (used by tests/test_cluster_infra.py, tests/test_grading_cluster.py and
benchmarks/bench_grading.py)::

    with running_postgres() as pg:             # Postgres, started
        pg.url                                 # postgresql+psycopg://grader@127.0.0.1:PORT/grading
        pg.query("SELECT 1")                   # rows, through psycopg
        pg.database("other")                   # a new empty database on the same server: its URL
        pg.alive()                             # pids of the server's processes ([] once stopped)
    with running_dask(folder, workers=2) as dc:  # DaskCluster, started, ``workers`` workers joined
        dc.address                             # tcp://127.0.0.1:PORT
        dc.client()                            # a distributed.Client (close it, or use ``with``)
        dc.kill_worker(0)                      # SIGKILL the first worker's session; returns its pid
        dc.wait_for_workers(n) / dc.wait_for_worker_count(n)
        dc.alive()                             # pids left of the scheduler and workers
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent
PROJECT = Path(__file__).resolve().parent.parent
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; the socket's name ".s.PGSQL.NNNNN" and the NUL take the rest


def pg_bindir() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl, postgres), or None when it is not installed.

    ``pg_config --bindir`` first, then the newest /usr/lib/postgresql/*/bin (as ``make postgres`` looks).
    """
    candidates = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=30)
        if done.returncode == 0 and done.stdout.strip():
            candidates.append(Path(done.stdout.strip()))

    def version(path: str) -> tuple:
        return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.parent.name))

    candidates += [Path(p).parent for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True)]
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> list[str]:
    """A prefix that has the started program SIGKILLed when this thread ends (main thread only: a helper
    thread that ends would take its processes with it)."""
    if threading.current_thread() is threading.main_thread() and shutil.which("setpriv"):
        return ["setpriv", "--pdeathsig", "KILL"]
    return []


def _unprivileged_user() -> str:
    """The user PostgreSQL runs as when the tests run as root: Debian's ``postgres``, else ``nobody``."""
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root, and neither a 'postgres' nor a 'nobody' user exists to run initdb as")


class Postgres:
    """A throwaway PostgreSQL server in ``folder`` (a new one under /tmp when None; removed by ``stop`` then);
    ``url`` is the gradebook's SQLAlchemy URL (trust authentication, no password)."""

    USER, DB = "grader", "grading"

    def __init__(self, folder: Path | None = None):
        self.bindir = pg_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL's initdb, pg_ctl and postgres were not found "
                               "(make postgres installs Debian's postgresql)")
        self.own_folder = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="bnt-pg-", dir="/tmp") if folder is None else folder)
        if len(str(self.folder)) > SOCKET_PATH_MAX - 20:
            raise ValueError(f"expected a short folder for PostgreSQL's Unix socket (at most {SOCKET_PATH_MAX - 20} "
                             f"characters); got {self.folder} ({len(str(self.folder))})")
        self.port = free_port()
        self.data = self.folder / "data"
        self.user = _unprivileged_user() if os.geteuid() == 0 else None
        ids = pwd.getpwnam(self.user) if self.user else None  # its own group (nobody's is nogroup on Debian)
        self.as_user = ["setpriv", f"--reuid={ids.pw_uid}", f"--regid={ids.pw_gid}", "--init-groups"] if ids else []
        self.ids = (ids.pw_uid, ids.pw_gid) if ids else None
        self.proc: subprocess.Popen | None = None
        self.started = False

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")

    def start(self, timeout: float = 60.0) -> Postgres:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.ids:
            os.chown(self.folder, *self.ids)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.USER, "--no-sync",
                  "-E", "UTF8", "--locale=C")
        self.started = True
        for attempt in range(3):  # a free port can be taken between asking and binding: another one then
            if self._serve(timeout):
                break
            if attempt == 2 or "could not bind" not in self.log():
                raise RuntimeError(f"postgres did not start: {self.log()[-2000:]}")
            self.port = free_port()
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.USER, dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.DB}"')
        return self

    def _serve(self, timeout: float) -> bool:
        """Start the server program on ``self.port``; True once it accepts connections, False if it exited."""
        import psycopg

        options = ["-p", str(self.port), "-k", str(self.folder), "-c", "listen_addresses=127.0.0.1",
                   "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off",
                   # dynamic shared memory as files in the data folder: nothing left in /dev/shm after a SIGKILL
                   "-c", "dynamic_shared_memory_type=mmap", "-c", "max_connections=200"]
        with open(self.folder / "server.log", "ab") as log:
            self.proc = subprocess.Popen([*self.as_user, *_die_with_parent(), str(self.bindir / "postgres"),
                                          "-D", str(self.data), *options],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                psycopg.connect(host="127.0.0.1", port=self.port, user=self.USER, dbname="postgres",
                                connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise RuntimeError(f"postgres did not accept connections in {timeout:g} s: {self.log()[-2000:]}")

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.USER}@127.0.0.1:{self.port}/{self.DB}"

    def database(self, name: str) -> str:
        """A new, empty database ``name`` on this server; its SQLAlchemy URL."""
        import psycopg

        if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
            raise ValueError(f"expected a database name of lower-case letters, digits and _; got {name!r}")
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.USER, dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.USER}@127.0.0.1:{self.port}/{name}"

    def query(self, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.USER, dbname=self.DB) as conn:
            return conn.execute(sql).fetchall()

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT to the server), then SIGKILL to anything left of it; the folder goes when it was ours."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGQUIT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=15)
            _kill_session(proc)
        for pid in self.alive():  # a backend (each one leads a session of its own) that outlived the server
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.started = False
        if self.own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def alive(self) -> list[int]:
        """The pids of the server's processes that have not ended ([] once stopped): the server and each of
        its backends and helpers works in the data folder (its current directory), whatever its session."""
        data = str(self.data.resolve())
        left = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
                if (cwd == data or cwd.startswith(data + " ")) and _state(int(entry)) != "Z":  # " (deleted)"
                    left.append(int(entry))
            except (FileNotFoundError, PermissionError, ProcessLookupError):
                continue
        return sorted(left)


class DaskCluster:
    """``dask scheduler`` and ``workers`` ``dask worker`` processes on 127.0.0.1 (no nanny: a worker is one
    process, so SIGKILL really ends it, and nothing starts it again)."""

    def __init__(self, folder: Path, workers: int = 2, env: dict | None = None):
        self.folder, self.n = Path(folder), workers
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "PYTHONPATH": str(PROJECT), **(env or {})}
        self.procs: list[subprocess.Popen] = []
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def _start(self, args: list[str], name: str, prefix: tuple = ()) -> subprocess.Popen:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([*prefix, *_die_with_parent(), str(BIN / "dask"), *args], cwd=PROJECT, env=self.env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_scheduler(self) -> None:
        self.scheduler = self._start(["scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard",
                                      # its HTTP server (health, metrics) runs even without the dashboard:
                                      # on the loopback and a free port, not on every interface's 8787
                                      "--dashboard-address", "127.0.0.1:0", "--no-show"], "scheduler")

    def start_worker(self, name: str, prefix: tuple = ()) -> subprocess.Popen:
        """One worker process (one thread); ``prefix`` runs it under another program (setpriv, say)."""
        proc = self._start(["worker", self.address, "--nworkers", "1", "--nthreads", "1", "--no-nanny",
                            "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--host", "127.0.0.1", "--name", name,
                            "--local-directory", str(self.folder / name),
                            "--preload", "grading.cluster"], name, prefix)  # ready as it starts (README)
        self.workers.append(proc)
        return proc

    def start(self) -> DaskCluster:
        self.start_scheduler()
        for i in range(self.n):
            self.start_worker(f"w{i}")
        self.wait_for_workers(self.n)
        return self

    def client(self, timeout: float = 30.0):
        """A ``distributed.Client`` of this cluster (not the default client); the caller closes it."""
        from distributed import Client

        return Client(self.address, timeout=timeout, set_as_default=False)

    def wait_for_workers(self, n: int, timeout: float = 90.0) -> None:
        """Until at least ``n`` workers have joined the scheduler."""
        from distributed import Client

        with Client(self.address, timeout=timeout, set_as_default=False) as client:
            client.wait_for_workers(n, timeout=timeout)

    def wait_for_worker_count(self, client, n: int, timeout: float = 30.0) -> dict:
        """Until the scheduler knows exactly ``n`` workers (after a kill: it noticed); its worker table then."""
        deadline = time.monotonic() + timeout
        while True:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            if len(workers) == n:
                return workers
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {n} workers at the scheduler within {timeout:g} s; it has {len(workers)}")
            time.sleep(0.1)

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL a process and its session (a worker's zygote and kernels end by themselves: their parent died)."""
        _kill_session(proc)

    def kill_worker(self, index: int = 0) -> int:
        """SIGKILL worker ``index`` (in starting order) and its session; its pid."""
        proc = self.workers[index]
        self.kill(proc)
        return proc.pid

    def stop(self) -> None:
        """SIGTERM to every session (workers first), then SIGKILL to what is left after 10 s."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            self.kill(proc)

    def alive(self) -> list[int]:
        """The pids of this cluster's processes (and of anything still in their sessions) that have not ended."""
        left = []
        for proc in self.procs:
            if proc.poll() is None:
                left.append(proc.pid)
            left += _session_members(proc.pid)
        return sorted(set(left))


def worker_environment() -> dict:
    """What a task sees of its process: pid, Python, working folder, PATH's first entry, where ``grading``
    comes from. Submit it to a worker (its module must be importable there: put ``tests/`` on the
    workers' PYTHONPATH, ``DaskCluster(..., env={"PYTHONPATH": ...})``)."""
    import grading

    return {"pid": os.getpid(), "executable": sys.executable, "cwd": os.getcwd(),
            "path0": os.environ.get("PATH", "").split(os.pathsep)[0], "grading": grading.__file__}


@contextlib.contextmanager
def running_postgres(folder: Path | None = None) -> Iterator[Postgres]:
    """A started :class:`Postgres`, stopped (and its folder removed, when it made one) however the block ends."""
    server = Postgres(folder)
    try:
        yield server.start()
    finally:
        server.stop()


@contextlib.contextmanager
def running_dask(folder: Path, workers: int = 2, env: dict | None = None) -> Iterator[DaskCluster]:
    """A started :class:`DaskCluster` with ``workers`` workers joined, stopped however the block ends."""
    cluster = DaskCluster(folder, workers, env)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s session (it leads one: start_new_session) and reap ``proc``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in _session_members(proc.pid):  # a member that made a process group of its own
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def _session_members(sid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) == sid and _state(int(entry)) != "Z":
                out.append(int(entry))
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
    return out


def _state(pid: int) -> str:
    """A process's state letter (Z: a zombie, ended but not reaped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]  # after "pid (comm)"
