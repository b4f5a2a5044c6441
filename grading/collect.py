"""Turn a messy folder or LMS zip of submissions into nbgrader's layout.

Accepted layouts (mixed freely):

- ``<student>/<assignment>/<assignment>.ipynb`` (nbgrader's own);
- ``<student>/<any name>.ipynb`` (one folder per student, as Moodle exports);
- ``<student>_<anything>.ipynb`` (flat, as Canvas exports:
  ``smithjane_1234_5678_ch02-forward.ipynb``).

Each notebook's assignment is recognised by its file name or, failing that,
by its cells' nbgrader grade ids, so ``Untitled (3).ipynb`` is still graded,
with a note. Whatever cannot be graded becomes a :class:`Problem`, one line in
the report; nothing else stops.
"""

from __future__ import annotations

import json
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

IGNORED = {".DS_Store", "Thumbs.db", "desktop.ini"}


@dataclass
class Submission:
    student: str
    assignment: str
    source: Path
    notes: list[str] = field(default_factory=list)
    notebook: object = None  # nbformat NotebookNode, version 4


@dataclass
class Problem:
    student: str | None
    assignment: str | None
    where: str
    message: str

    def line(self) -> str:
        who = self.student or "?"
        what = self.assignment or "?"
        return f"{who} / {what}: {self.message} ({self.where})"


def student_id(raw: str) -> str:
    """A safe nbgrader student id from a folder or file-name prefix."""
    raw = raw.split("_")[0].strip().lower()
    return re.sub(r"[^a-z0-9.-]+", "-", raw).strip("-.") or "unnamed"


def grade_ids(nb) -> set[str]:
    return {c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb.get("cells", [])} - {None}


def _extract(zip_path: Path) -> Path:
    dest = Path(tempfile.mkdtemp(prefix="submissions-"))
    with zipfile.ZipFile(zip_path) as zf:
        for member in zf.infolist():
            target = (dest / member.filename).resolve()
            if not str(target).startswith(str(dest.resolve())):
                raise ValueError(f"{zip_path.name}: member {member.filename!r} would be written outside the folder")
        zf.extractall(dest)
    return dest


def _read(path: Path) -> tuple[object | None, str | None, list[str]]:
    """(notebook v4, error, notes) for one file."""
    notes = []
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not a text file (not UTF-8): is it really a notebook?", notes
    except json.JSONDecodeError as e:
        return None, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); the file is probably truncated or was edited by hand", notes
    if not isinstance(raw, dict) or "cells" not in raw and "worksheets" not in raw:
        return None, "valid JSON but not a notebook (no cells)", notes
    version = raw.get("nbformat")
    try:
        nb = nbformat.reads(json.dumps(raw), as_version=4)
    except Exception as e:  # nbformat raises several types for unreadable versions
        return None, f"a notebook nbformat cannot read (nbformat {version}): {e}", notes
    if version != 4:
        notes.append(f"converted from nbformat {version} to 4")
    return nb, None, notes


def collect(src: Path, known: dict[str, set[str]], roster: set[str] | None = None):
    """Find every submission under ``src`` (a folder or a .zip).

    Parameters
    ----------
    known : {assignment: grade ids of its cells}
    roster : student ids allowed, or None to accept every student

    Returns
    -------
    submissions : list[Submission]
    problems : list[Problem]
    """
    src = Path(src)
    problems: list[Problem] = []
    if not src.exists():
        raise FileNotFoundError(f"submissions: expected a folder or a .zip file; {src} does not exist")
    folder = _extract(src) if src.is_file() and src.suffix.lower() == ".zip" else src
    if not folder.is_dir():
        raise ValueError(f"submissions: expected a folder or a .zip file; got {src}")
    found: dict[tuple[str, str], Submission] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if path.name in IGNORED or "__MACOSX" in rel.parts or ".ipynb_checkpoints" in rel.parts:
            continue
        student = student_id(rel.parts[0] if len(rel.parts) > 1 else path.stem)
        if path.suffix != ".ipynb":
            problems.append(Problem(student, None, str(rel), "extra file, not a notebook: ignored"))
            continue
        if roster is not None and student not in roster:
            problems.append(Problem(student, None, str(rel), "unknown student (not in the roster): not graded"))
            continue
        nb, error, notes = _read(path)
        if error:
            problems.append(Problem(student, _by_name(path, known), str(rel), error + ": not graded"))
            continue
        assignment = _by_name(path, known)
        by_cells = max(known, key=lambda a: len(known[a] & grade_ids(nb)))
        if not known[by_cells] & grade_ids(nb):
            by_cells = None
        if assignment is None and by_cells is None:
            problems.append(Problem(student, None, str(rel), "cannot tell which assignment this is (neither its name nor its cells match one): not graded"))
            continue
        if assignment is None:
            assignment = by_cells
            notes.append(f"file named {path.name!r}, recognised as {assignment} by its cells")
        elif by_cells is not None and by_cells != assignment:
            notes.append(f"file named like {assignment} but its cells are those of {by_cells}: graded as {by_cells}")
            assignment = by_cells
        sub = Submission(student, assignment, path, notes, nb)
        if (student, assignment) in found:
            kept = found[(student, assignment)]
            newer = sub if path.stat().st_mtime > kept.source.stat().st_mtime else kept
            other = kept if newer is sub else sub
            problems.append(Problem(student, assignment, str(rel),
                                    f"two notebooks for this assignment; graded the newer {newer.source.name!r}, ignored {other.source.name!r}"))
            sub = newer
        found[(student, assignment)] = sub
    if roster is not None:
        for student in sorted(roster):
            for assignment in sorted(known):
                if (student, assignment) not in found:
                    problems.append(Problem(student, assignment, "-", "missing: no notebook handed in"))
    return sorted(found.values(), key=lambda s: (s.assignment, s.student)), problems


def _by_name(path: Path, known) -> str | None:
    stem = path.stem.lower()
    hits = [a for a in known if a.lower() in stem]
    return max(hits, key=len) if hits else None


# What decides how a cell is graded; other keys (nbgrader's checksum, cell type) are kept.
GRADING_KEYS = ("grade", "solution", "locked", "grade_id", "points", "task", "schema_version")


def sanitize(nb, source_meta: dict[str, dict]) -> list[str]:
    """Make the grading metadata of a submitted notebook the assignment's own.

    A learner may change a cell's nbgrader metadata (points, grade ids, the
    "locked" flag) or add cells that claim to be graded. Cells with a grade id
    of the assignment get the source's metadata back (a repeated id keeps only
    its first cell); any other cell loses its grading metadata. Returns notes
    for the report.
    """
    notes, seen = [], set()
    for i, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("nbgrader")
        if meta is None:
            continue
        gid = meta.get("grade_id") if isinstance(meta, dict) else None
        if gid in source_meta and gid not in seen:
            seen.add(gid)
            source = source_meta[gid]
            if any(meta.get(k) != source.get(k) for k in GRADING_KEYS):
                notes.append(f"cell {gid}: its grading metadata was changed; restored")
            restored = {k: v for k, v in meta.items() if k not in GRADING_KEYS}
            restored.update({k: source[k] for k in GRADING_KEYS if k in source})
            cell.metadata["nbgrader"] = restored
        else:
            del cell.metadata["nbgrader"]
            notes.append(f"cell {i + 1} ({gid or 'no grade id'}): not a cell of the assignment (or a repeated one); "
                         "its grading metadata was removed")
    return notes
