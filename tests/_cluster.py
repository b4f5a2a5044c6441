"""Real parts for the cluster tests: a throwaway PostgreSQL and a local Dask cluster, always stopped.

PostgreSQL is Debian's package (``make postgres`` installs it where it is
missing); the cluster is made with ``initdb`` in a temporary folder (as the
``postgres`` user when the tests run as root: ``initdb`` refuses root), listens
on 127.0.0.1 and a free port, and is stopped with ``pg_ctl stop -m immediate``.
The Dask scheduler and workers are the ``dask`` command-line programs of the
project's environment, each in a session of its own so that a test can kill
one worker with SIGKILL, and every one of them is killed at the end.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
PROJECT = Path(__file__).resolve().parent.parent


def pg_bindir() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl), or None when it is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A throwaway PostgreSQL server in ``folder``; ``url`` is the gradebook's SQLAlchemy URL (trust auth, no password)."""

    USER, DB = "grader", "grading"

    def __init__(self, folder: Path):
        self.bindir = pg_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL's initdb was not found (make postgres installs Debian's postgresql)")
        self.folder, self.port = Path(folder), free_port()
        self.data = self.folder / "data"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.started = False

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")

    def start(self) -> Postgres:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.as_user:
            shutil.chown(self.folder, "postgres")
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.USER, "--no-sync")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        self.started = True
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")
        self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.USER, self.DB)
        return self

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.USER}@127.0.0.1:{self.port}/{self.DB}"

    def query(self, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.USER, dbname=self.DB) as conn:
            return conn.execute(sql).fetchall()

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(Exception):
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self.started = False


class DaskCluster:
    """``dask scheduler`` and ``workers`` ``dask worker`` processes on 127.0.0.1 (no nanny: a worker is one process)."""

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
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 - the process's own, closed by its end
        proc = subprocess.Popen([*prefix, str(BIN / "dask"), *args], cwd=PROJECT, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def start_scheduler(self) -> None:
        self.scheduler = self._start(["scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard",
                                      "--no-show"], "scheduler")

    def start_worker(self, name: str, prefix: tuple = ()) -> subprocess.Popen:
        """One worker process (one thread); ``prefix`` runs it under another program (setpriv, say)."""
        proc = self._start(["worker", self.address, "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", name,
                            "--local-directory", str(self.folder / name)], name, prefix)
        self.workers.append(proc)
        return proc

    def start(self) -> DaskCluster:
        self.start_scheduler()
        for i in range(self.n):
            self.start_worker(f"w{i}")
        self.wait_for_workers(self.n)
        return self

    def wait_for_workers(self, n: int, timeout: float = 90.0) -> None:
        from distributed import Client

        with Client(self.address, timeout=timeout, set_as_default=False) as client:
            client.wait_for_workers(n, timeout=timeout)

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL a process and its session (a worker's zygote and kernels end by themselves: their parent died)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                self.kill(proc)

    def alive(self) -> list[int]:
        """The pids of this cluster's processes (and of anything still in their sessions) that have not ended."""
        left = []
        for proc in self.procs:
            if proc.poll() is None:
                left.append(proc.pid)
            for pid in _session_members(proc.pid):
                left.append(pid)
        return sorted(set(left))


def _session_members(sid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) == sid and Path(f"/proc/{entry}/stat").read_text().split()[2] != "Z":
                out.append(int(entry))
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
    return out
