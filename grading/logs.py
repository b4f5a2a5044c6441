"""Where the libraries' messages go: a log file in the course folder, not the instructor's terminal.

The terminal shows the progress bar, one line per hand-in with a problem and
the summary. Everything else (nbgrader's and SQLAlchemy's warnings, the
frameworks' start-up lines, a zygote's output) goes to ``grading.log`` in
the course folder, which the report names. Each grading process calls
:func:`to_file` once (the workers from their pool's initializer).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

LOG_NAME = "grading.log"
_path: Path | None = None


def to_file(path: Path) -> None:
    """Send this process's log records and warnings to ``path`` (appended), and nothing to the console."""
    global _path
    _path = Path(path)
    handler = logging.FileHandler(_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, logging.FileHandler):
            old.close()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for name in ("traitlets", "NbGraderAPI", "py.warnings"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
    logging.captureWarnings(True)
    warnings.simplefilter("default")


def current() -> Path | None:
    """The log file of this process, if :func:`to_file` chose one."""
    return _path
