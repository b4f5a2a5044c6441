"""Nothing of a grading run is left behind, even when the run is killed with SIGKILL.

Every temporary folder of a run (the kernels' sandboxes, the zygotes' homes)
lies in one *run folder*, ``$TMPDIR/bn-run-*``: :func:`start` creates it,
points ``TMPDIR`` (inherited by the workers) at it, and starts a *watchdog*
in a session of its own, so that a kill of the grader's process group does
not reach it. The watchdog waits for the grader to end, however it ends;
then it waits for the processes of the run (the zygotes end when their
grader's channel closes, the kernels with their keepers) and removes the run
folder and the shared-memory entries (``/dev/shm``) that appeared during the
run under the names Python's ``multiprocessing`` gives them.

``python -m grading.cleanup PID FOLDER`` is the watchdog.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PREFIX = "bn-run-"
MAX_BASE = 40
SHM_BEFORE = ".shm-before"
SHM = Path("/dev/shm")
SHM_NAMES = ("sem.mp-", "mp-", "psm_", "wnsm_")  # multiprocessing's semaphores and shared memory


class Run:
    """A run's folder and its watchdog; :meth:`finish` when the run ends normally."""

    def __init__(self, folder: Path, watchdog: subprocess.Popen, previous: str | None):
        self.folder, self.watchdog, self.previous = folder, watchdog, previous

    def finish(self) -> None:
        """Remove the run folder now, give the process back its temporary folder, end the watchdog."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.previous is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = self.previous
        tempfile.tempdir = None
        self.watchdog.kill()
        self.watchdog.wait()


def socket_base() -> str:
    """The temporary folder, or /tmp where its path is too long for the Unix sockets made below it (107 bytes at most)."""
    base = tempfile.gettempdir()
    return base if len(base) <= MAX_BASE else "/tmp"


def start() -> Run:
    """Create this run's folder, make it the temporary folder of this process and its children, start the watchdog."""
    folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=socket_base()))
    # what /dev/shm held before the run, listed here: the watchdog starts after this process goes on
    (folder / SHM_BEFORE).write_text("\n".join(sorted(os.listdir(SHM))) if SHM.is_dir() else "")
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = None  # tempfile reads TMPDIR again
    watchdog = subprocess.Popen([sys.executable, "-m", "grading.cleanup", str(os.getpid()), str(folder)],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, close_fds=True,
                     env={k: v for k, v in os.environ.items() if k != "TMPDIR"} | {
                         "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    return Run(folder, watchdog, previous)


def _run_processes(folder: Path) -> list[int]:
    """Processes still running with the run folder in their command line or environment."""
    found, mark = [], str(folder).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark in (entry / "cmdline").read_bytes() or mark in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def watch(pid: int, folder: Path) -> None:
    """Wait for ``pid`` to end, then for the run's processes; remove the run folder and its shared-memory entries."""
    try:
        before = set((folder / SHM_BEFORE).read_text().splitlines())
    except OSError:
        before = set(os.listdir(SHM)) if SHM.is_dir() else set()
    try:
        fd = os.pidfd_open(pid)
        select.select([fd], [], [])
        os.close(fd)
    except ProcessLookupError:
        pass
    except OSError:  # no pidfd here: poll
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
    deadline = time.monotonic() + 30
    while _run_processes(folder) and time.monotonic() < deadline:
        time.sleep(0.1)
    for left in _run_processes(folder):  # anything the run started that outlived it
        with contextlib.suppress(ProcessLookupError):
            os.kill(left, 9)
    shutil.rmtree(folder, ignore_errors=True)
    if SHM.is_dir():
        for name in set(os.listdir(SHM)) - before:
            if name.startswith(SHM_NAMES):
                with contextlib.suppress(OSError):
                    (SHM / name).unlink()


if __name__ == "__main__":
    watch(int(sys.argv[1]), Path(sys.argv[2]))
