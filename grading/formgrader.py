"""nbgrader's formgrader on the course folder the grading command wrote.

    python -m grading formgrader [COURSE] [--port 8899]      (make formgrader [COURSE=_grading])

starts a Jupyter server on 127.0.0.1 only, with a fresh random token, in the
course folder (where nbgrader finds the course's ``nbgrader_config.py`` and
its gradebook) and prints the formgrader's URL. Points and comments given
there go into the same gradebook as ``manual_score`` and ``comment``; nbgrader's
autograde sets only ``auto_score``, so a rerun of ``make grade`` (with or
without ``--regrade``) keeps them, and ``grades.csv``, ``grades-canvas.csv``
and the report's "total so far" count them (nbgrader's score of a cell is its
manual score when one was given). Ctrl-C stops the server.

The formgrader's pages load their scripts and styles from the server itself
(nbgrader's bundled ``formgrader/static``); nothing is fetched from elsewhere
(the browser test checks every request).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from . import course as C

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def gradebook_file(course: Path) -> Path | None:
    """The SQLite file of the course's gradebook, from its configuration; None when the gradebook is on a
    database server (``python -m grading --db postgresql://...``): there is no file to look for then."""
    from sqlalchemy.engine import make_url
    from traitlets.config.loader import PyFileConfigLoader

    url = make_url(PyFileConfigLoader(C.CONFIG_NAME, path=str(course)).load_config().CourseDirectory.db_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    return Path(url.database)


def check_course(course: Path) -> Path:
    course = Path(course).resolve()
    needs = [course / C.CONFIG_NAME]
    if needs[0].exists():
        needs.append(gradebook_file(course))  # None: a gradebook on a database server, no file to look for
    for need in filter(None, needs):
        if not need.exists():
            shown = need.relative_to(course) if need.is_relative_to(course) else need
            raise FileNotFoundError(f"formgrader: expected a course folder written by the grading command "
                                    f"(with {shown}); {course} has none; run `make grade SUBMISSIONS=...` first")
    return course


def start(course: Path, port: int | None = None, wait_s: float = 90.0) -> tuple[subprocess.Popen, str]:
    """Start the server (its own process group); return it and the formgrader's URL once it answers."""
    course = check_course(course)
    port = port or free_port()
    token = secrets.token_hex(24)
    cmd = [sys.executable, "-m", "jupyter_server", f"--ServerApp.ip={HOST}", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
           f"--ServerApp.root_dir={course}", "--ServerApp.allow_remote_access=False"]
    if os.geteuid() == 0:  # Jupyter refuses root unless told (a container, this project's CI)
        cmd.append("--ServerApp.allow_root=True")
    offline = Path(__file__).parent / "templates" / "offline_jupyter"  # nbconvert's MathJax macro without the CDN
    # (this Python's bin is on PATH already: grading.course puts it there on import)
    env = os.environ | {"JUPYTER_PATH": os.pathsep.join(filter(None, [str(offline), os.environ.get("JUPYTER_PATH")]))}
    with open(course / "formgrader.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=course, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://{HOST}:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"formgrader: the Jupyter server exited ({proc.returncode}); see {course / 'formgrader.log'}")
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                return proc, f"{base}/formgrader?token={token}"
        except OSError:
            time.sleep(0.3)
    stop(proc)
    raise RuntimeError(f"formgrader: the Jupyter server did not answer in {wait_s:g} s; see {course / 'formgrader.log'}")


def stop(proc: subprocess.Popen) -> None:
    """End the server and every process of its group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m grading formgrader", description="Grade written answers by hand in "
                                "nbgrader's formgrader, in the gradebook of a graded course folder.")
    p.add_argument("course", type=Path, nargs="?", default=C.PROJECT / "_grading",
                   help="course folder the grading command wrote (default: _grading/)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    args = p.parse_args(argv)
    try:
        proc, url = start(args.course, args.port or None)
    except (FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"formgrader: {url}\n(only this machine can reach it; Ctrl-C stops it)", flush=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # a kill or a closed terminal stops the server too (finally below)
        signal.signal(sig, lambda *_: sys.exit(0))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(proc)
