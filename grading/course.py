"""One course directory, driven through nbgrader's Python API.

The configuration is always the project's ``nbgrader_config.py``; a course
directory elsewhere (a temporary folder in tests, an instructor's grading
folder) gets a copy of that file, so that paths resolve there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
from nbgrader.api import Gradebook
from nbgrader.apps import NbGraderAPI
from traitlets.config.loader import PyFileConfigLoader

PROJECT = Path(__file__).resolve().parent.parent
CONFIG_NAME = "nbgrader_config.py"


def assignments(root: Path = PROJECT) -> list[str]:
    """Names of the assignments in ``root/solutions``, in order."""
    return sorted(p.name for p in (root / "solutions").iterdir() if p.is_dir() and any(p.glob("*.ipynb")))


def make_course(dest: Path, *, with_solutions: bool = True, db_url: str | None = None) -> Path:
    """A course directory at ``dest``: the project's config and, by default, a copy of ``solutions/``.

    ``db_url`` (``--db``): the gradebook's SQLAlchemy URL, written into the course's config, so that
    every tool reading the course folder (the workers, formgrader) opens the same gradebook; without
    it, the gradebook is the SQLite file in the course folder.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = (PROJECT / CONFIG_NAME).read_text(encoding="utf-8")
    if db_url is not None:
        config += f"\n# python -m grading --db: the gradebook of this course folder\nc.CourseDirectory.db_url = {db_url!r}\n"
    tmp = dest / (CONFIG_NAME + ".part")
    tmp.write_text(config, encoding="utf-8")
    os.replace(tmp, dest / CONFIG_NAME)
    if with_solutions:
        shutil.copytree(PROJECT / "solutions", dest / "solutions", dirs_exist_ok=True)
    return dest


DB_TIMEOUT_S = 120


def safe_url(url: str) -> str:
    """``url`` as it may be shown (a password, should there be one, masked)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL: show nothing of it
        return "(not a database URL)"


def check_db_url(url: str) -> str:
    """A gradebook URL (``--db``) checked: one SQLAlchemy can open, without a password in it.

    ``postgresql://`` gets the PostgreSQL driver installed here (SQLAlchemy's default for it is
    psycopg2; the course installs psycopg 3). The password goes in PGPASSWORD or ~/.pgpass: a URL
    is written into the course's configuration and shows in process listings.
    """
    import importlib.util

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"expected a database URL (postgresql://USER@HOST:PORT/DB or sqlite:///FILE); got {url!r}") from None
    if parsed.password:
        raise ValueError("expected a URL without a password (put it in PGPASSWORD or ~/.pgpass); got one with a password")
    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg2") is None:
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise ValueError(f"expected a PostgreSQL or SQLite URL; got a {parsed.get_backend_name()} one")
    return parsed.render_as_string(hide_password=False)


def _find_tools() -> None:
    """Put this Python's ``bin`` folder first on PATH when it is not there.

    nbgrader creates a gradebook by running the ``alembic`` executable by
    name; started as ``.venv/bin/python -m grading`` from a shell whose PATH
    lacks the environment, it would fail with an opaque "generate_assignment
    failed". The grader finds its own tools instead.
    """
    import os
    import sys

    tools = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if tools not in path.split(os.pathsep):
        os.environ["PATH"] = tools + (os.pathsep + path if path else "")


_find_tools()  # before anything of nbgrader runs in this process (a Gradebook creates its database with alembic)


_ENGINES: dict = {}


def _shared_engine(url, *args, **kwargs):
    """nbgrader's ``create_engine`` for a database server: one engine (connection pool) per URL and process.

    nbgrader's ``Gradebook`` creates an engine for every gradebook it opens (ten per graded
    notebook) and disposes of it on ``close``. For SQLite that costs nothing; for PostgreSQL each
    new engine connects and asks the server about itself again: 0.3 s of every notebook measured
    here (0.65 s a notebook instead of 0.36 s). A server's engine is made once per process (the pid
    is in the key: a forked process makes its own), its ``dispose`` left to the process's exit, and
    each connection is checked before use (``pool_pre_ping``): a restarted server costs a reconnect.
    """
    import atexit

    from sqlalchemy import create_engine

    if str(url).startswith("sqlite"):
        return create_engine(url, *args, **kwargs)
    key = (os.getpid(), str(url), args, tuple(sorted(kwargs.items())))
    engine = _ENGINES.get(key)
    if engine is None:
        engine = _ENGINES[key] = create_engine(url, *args, pool_pre_ping=True, **kwargs)
        atexit.register(type(engine).dispose, engine)
        engine.dispose = lambda *a, **k: None  # nbgrader's Gradebook.close: the pool stays for the next gradebook
    return engine


def _share_engines() -> None:
    import nbgrader.api

    nbgrader.api.create_engine = _shared_engine


_share_engines()


def grading_url(db_url: str, timeout: float = DB_TIMEOUT_S) -> str:
    """``db_url`` with a sqlite busy timeout of ``timeout`` seconds (other databases unchanged).

    Parallel workers share one sqlite gradebook; sqlite's default busy
    timeout in Python is 5 s, after which a writer fails with "database is
    locked". SQLAlchemy's pysqlite dialect passes ``?timeout=`` to
    ``sqlite3.connect``, so a writer waits its turn instead.
    """
    if not db_url.startswith("sqlite") or "timeout=" in db_url:
        return db_url
    return f"{db_url}{'&' if '?' in db_url else '?'}timeout={timeout:g}"


def api(root: Path, **execute) -> NbGraderAPI:
    """nbgrader's API for the course at ``root``, configured by its ``nbgrader_config.py``
    (the gradebook opened with a long busy timeout); ``execute`` sets traits of
    :class:`grading.execute.GradedExecute` for this API's runs (``sandbox_root``, ``timeout``, ``budget``).

    The one place the course's nbgrader API is built.
    """
    root = Path(root)
    config = PyFileConfigLoader(CONFIG_NAME, path=str(root)).load_config()
    config.CourseDirectory.db_url = grading_url(config.CourseDirectory.db_url)
    config.GradedExecute.course_root = str(root.resolve())
    late = execute.pop("late_percent_per_day", None)
    if late:  # grading.late: nbgrader's AssignLatePenalties asks this plugin for each late notebook's penalty
        config.AssignLatePenalties.plugin_class = "grading.late.PerDayPenalty"
        config.PerDayPenalty.percent_per_day = float(late)
    for name, value in execute.items():
        setattr(config.GradedExecute, name, value)
    return NbGraderAPI(config=config)


def _check(result: dict, what: str) -> None:
    if not result.get("success"):
        raise RuntimeError(f"nbgrader {what} failed:\n{result.get('error') or result.get('log')}")


def create_gradebook(db_url: str) -> bool:
    """Create the gradebook at ``db_url`` as nbgrader would; return False if it had tables already (left as it is).

    nbgrader's ``Gradebook`` creates a new database's tables, then runs the
    ``alembic heads`` command (a new Python process: 1.7 s of every fresh
    run here) for the schema version to record. The same version is read here
    in this process, from nbgrader's own migration scripts, by alembic's
    ``ScriptDirectory``, and recorded by alembic's ``MigrationContext.stamp``
    (nbgrader's migration environment is not run: it would reconfigure this
    process's logging). nbgrader then finds the tables and creates nothing.
    """
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from nbgrader.api import Base
    from nbgrader.dbutil import ALEMBIC_DIR
    from sqlalchemy import create_engine, inspect

    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            if inspect(conn).get_table_names():
                return False
            Base.metadata.create_all(conn)
            scripts = Config()
            scripts.set_main_option("script_location", ALEMBIC_DIR)
            MigrationContext.configure(conn).stamp(ScriptDirectory.from_config(scripts), "head")
        return True
    finally:
        engine.dispose()


def generate(course: NbGraderAPI, names=None) -> None:
    """Generate the student versions of ``names`` (all assignments by default) into ``release/``."""
    root = Path(course.coursedir.root)
    create_gradebook(course.coursedir.db_url)
    for name in names or assignments(root):
        _check(course.generate_assignment(name), f"generate_assignment {name}")


def scores(course: NbGraderAPI, assignment: str, student: str) -> dict[str, tuple[float, float]]:
    """``{grade_id: (score, max_score)}`` for one autograded submission."""
    with Gradebook(course.coursedir.db_url) as gb:
        sub = gb.find_submission(assignment, student)
        return {g.name: (g.score, g.max_score) for nb in sub.notebooks for g in nb.grades}


def autograded_outputs(root: Path, assignment: str, student: str) -> dict[str, str]:
    """Text of each graded cell's outputs (tracebacks included) in the autograded notebook, by grade id."""
    out = {}
    for path in sorted((Path(root) / "autograded" / student / assignment).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            gid = cell.metadata.get("nbgrader", {}).get("grade_id")
            if gid and cell.cell_type == "code":
                parts = []
                for o in cell.get("outputs", []):
                    if o.get("output_type") == "error":
                        parts.append(f"{o.get('ename')}: {o.get('evalue')}\n" + "\n".join(o.get("traceback", [])))
                    else:
                        parts.append(o.get("text", ""))
                out[gid] = "\n".join(parts)
    return out


KNOWN_FAILURES = [
    ("DeadKernelError", "the kernel died while running the notebook "
                        "(os._exit, sys.exit in a forked process, a crash, or too much memory)"),
    ("CellTimeoutError", "a cell ran past the time limit (an infinite loop?)"),
    ("TimeoutError", "a cell ran past the time limit (an infinite loop?)"),
]


def last_line(result: dict) -> str:
    """The most telling line of a failed nbgrader API call, in words where the cause is known."""
    text = f"{result.get('error') or ''}\n{result.get('log') or ''}"
    for marker, words in KNOWN_FAILURES:
        if marker in text:
            return words
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def export_grades(course: NbGraderAPI, path: Path) -> None:
    """Every grade in the gradebook as CSV, with nbgrader's own exporter."""
    from nbgrader.plugins import CsvExportPlugin

    with Gradebook(course.coursedir.db_url) as gb:
        CsvExportPlugin(to=str(path)).export(gb)


def source_cell_metadata(root: Path, assignment: str) -> dict[str, dict]:
    """The nbgrader metadata of each cell of an assignment's source notebook, by grade id."""
    out = {}
    for path in (Path(root) / "solutions" / assignment).glob("*.ipynb"):
        for cell in nbformat.read(path, as_version=4).cells:
            meta = cell.metadata.get("nbgrader")
            if meta and meta.get("grade_id"):
                out[meta["grade_id"]] = dict(meta)
    return out
