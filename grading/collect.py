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

Every notebook is read into memory: a zip is read in place, never extracted,
so collecting leaves nothing behind. A notebook is repaired where the repair
cannot change what is graded (outputs, execution counts, cell ids, metadata
other than nbgrader's, a format version from a newer Jupyter) and where its
nbgrader metadata is malformed (:func:`sanitize` puts the assignment's back);
anything else that nbformat or nbgrader would not accept is a Problem. Each
accepted notebook has passed ``nbformat.validate`` and nbgrader's metadata
schema, so the nbgrader steps after collection do not fail on it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import stat
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

import jsonschema
import nbformat
from nbformat.v4.rwbase import rejoin_lines, strip_transient

IGNORED = {".DS_Store", "Thumbs.db", "desktop.ini"}

# A notebook of this course is a few hundred kB; a bigger file is refused before it is parsed.
MAX_NOTEBOOK_BYTES = 20 * 2**20
CURRENT_MINOR = nbformat.v4.nbformat_minor
NOTEBOOK_KEYS = {"cells", "metadata", "nbformat", "nbformat_minor"}
CELL_KEYS = {
    "code": {"id", "cell_type", "metadata", "source", "outputs", "execution_count"},
    "markdown": {"id", "cell_type", "metadata", "source", "attachments"},
    "raw": {"id", "cell_type", "metadata", "source", "attachments"},
}
CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass
class Submission:
    student: str
    assignment: str
    source: Path  # the file, or for a zip its path inside the archive
    notes: list[str] = field(default_factory=list)
    notebook: object = None  # nbformat NotebookNode, version 4
    saved: tuple = ()  # when it was handed in, as the archive or folder says (see _Entry.saved); no time zone


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


def _nbgrader_meta(cell):
    """A cell's nbgrader metadata, whatever its shape (None if it has none)."""
    meta = cell.get("metadata") if isinstance(cell, dict) else None
    return meta.get("nbgrader") if isinstance(meta, dict) else None


def grade_ids(nb) -> set[str]:
    """The grade ids named by the cells of ``nb``; malformed metadata names none."""
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if not isinstance(cells, list):
        return set()
    metas = (_nbgrader_meta(c) for c in cells)
    return {m["grade_id"] for m in metas if isinstance(m, dict) and isinstance(m.get("grade_id"), str)}


def _describe(value) -> str:
    """What a JSON value is, for a message: ``a string ('abc')``, ``null``, ``a list``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r}{'...' if len(value) > 40 else ''})"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _describe_key(obj: dict, key: str) -> str:
    return _describe(obj[key]) if key in obj else "missing"


def _where(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "the notebook"


class _Reject(Exception):
    """A notebook that cannot be graded; the message says why."""


# Reading one notebook ---------------------------------------------------------------------------


def _read(data: bytes) -> tuple[object | None, str | None, list[str]]:
    """(notebook v4, error, notes) for the bytes of one file: repaired, validated, or an error in words."""
    notes: list[str] = []
    try:
        return _parse(data, notes), None, notes
    except _Reject as e:
        return None, str(e), notes
    except RecursionError:
        return None, "nested too deeply to be a notebook (JSON inside JSON thousands of levels down)", notes
    except Exception as e:  # the last guard: a file no check above foresaw is still only a report line
        return None, f"could not be read as a notebook ({type(e).__name__}: {e})", notes


def _too_big(size: int) -> _Reject:
    return _Reject(f"{size / 2**20:.1f} MiB, more than the {MAX_NOTEBOOK_BYTES // 2**20} MiB a notebook may have "
                   "(huge outputs? clear them and hand it in again)")


def _parse(data: bytes, notes: list[str]):
    if len(data) > MAX_NOTEBOOK_BYTES:
        raise _too_big(len(data))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Reject(f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}): a notebook is UTF-8 JSON; "
                      "is it really a notebook?") from None
    if text.startswith("\ufeff"):
        text = text[1:]
        notes.append("the file began with a byte-order mark; ignored")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise _Reject(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); the file is probably truncated "
                      "or was edited by hand") from None
    if not isinstance(raw, dict) or ("cells" not in raw and "worksheets" not in raw):
        raise _Reject(f"valid JSON but not a notebook: expected an object with \"cells\", received {_describe(raw)}")
    major = raw.get("nbformat")
    if type(major) is not int:
        raise _Reject(f"no notebook format version: expected \"nbformat\": 4, received {_describe_key(raw, 'nbformat')}")
    if major > 4:
        raise _Reject(f"nbformat {major}: newer than this grader reads (nbformat 4)")
    if major < 4:
        try:
            raw = nbformat.convert(nbformat.reader.reads(text), 4)
        except Exception as e:  # nbformat raises several types for unreadable old versions
            raise _Reject(f"a notebook nbformat cannot read (nbformat {major}): {e}") from None
        for cell in raw.get("cells", []):
            if isinstance(cell, dict):
                cell.pop("id", None)  # conversion draws random ids; ours are the same in every run
        notes.append(f"converted from nbformat {major} to 4")
    return _repair(raw, notes)


def _repair(raw: dict, notes: list[str]):
    """Repair what does not change grading, reject the rest; return a valid NotebookNode (v4.5)."""
    minor = raw.get("nbformat_minor", 0)
    if type(minor) is not int or minor < 0:
        notes.append(f"\"nbformat_minor\" was {_describe(minor)}, expected a number; read as 4.{CURRENT_MINOR}")
    elif minor > CURRENT_MINOR:
        notes.append(f"written by a newer Jupyter (nbformat 4.{minor}); read as 4.{CURRENT_MINOR}, the newest this grader knows")
    raw["nbformat_minor"] = CURRENT_MINOR
    extra = sorted(map(str, set(raw) - NOTEBOOK_KEYS))
    if extra:
        notes.append(f"unknown top-level keys removed: {', '.join(extra)}")
        for key in set(raw) - NOTEBOOK_KEYS:
            del raw[key]
    if not isinstance(raw.get("metadata"), dict):
        notes.append(f"the notebook's metadata was {_describe_key(raw, 'metadata')}, expected an object; "
                     "replaced by an empty one")
        raw["metadata"] = {}
    cells = raw.get("cells")
    if not isinstance(cells, list):
        raise _Reject(f"\"cells\" is {_describe_key(raw, 'cells')}; expected a list of cells")
    ids: set[str] = set()
    for i, cell in enumerate(cells, 1):
        _repair_cell(i, cell, ids, notes)
    for _ in range(len(raw["metadata"]) + 1):
        # nbformat's default validator (fastjsonschema) says yes or no 10x faster; only a notebook it
        # rejects is walked with jsonschema for the errors to repair or report
        if nbformat.validator.isvalid(raw, version=4, version_minor=CURRENT_MINOR):
            break
        errors = list(nbformat.validator.iter_validate(raw, version=4, version_minor=CURRENT_MINOR))
        if not errors:
            break
        e = errors[0]
        path = list(e.absolute_path)
        if len(path) >= 2 and path[0] == "metadata":
            notes.append(f"notebook metadata {path[1]!r} was malformed ({e.message[:80]}); removed")
            del raw["metadata"][path[1]]
        else:
            raise _Reject(f"not a valid notebook (nbformat 4.{CURRENT_MINOR}) at {_where(path)}: {e.message[:200]}")
    nb = strip_transient(rejoin_lines(nbformat.from_dict(raw)))
    return nb


def _repair_cell(i: int, cell, ids: set[str], notes: list[str]) -> None:
    if not isinstance(cell, dict):
        raise _Reject(f"cell {i} is {_describe(cell)}; expected an object with \"cell_type\" and \"source\"")
    kind = cell.get("cell_type")
    if not isinstance(kind, str) or kind not in CELL_KEYS:
        raise _Reject(f"cell {i}: \"cell_type\" is {_describe_key(cell, 'cell_type')}; "
                      "expected \"code\", \"markdown\" or \"raw\"")
    source = cell.get("source")
    if isinstance(source, list) and all(isinstance(s, str) for s in source):
        cell["source"] = "".join(source)
    elif not isinstance(source, str):
        raise _Reject(f"cell {i} ({kind}): its source is {_describe_key(cell, 'source')}; "
                      "expected text (a string or a list of strings)")
    if not isinstance(cell.get("metadata"), dict):
        notes.append(f"cell {i}: its metadata was {_describe_key(cell, 'metadata')}, expected an object; "
                     "replaced by an empty one (the cell is no longer marked as graded)")
        cell["metadata"] = {}
    extra = set(cell) - CELL_KEYS[kind]
    if extra:
        notes.append(f"cell {i}: unknown keys removed: {', '.join(sorted(map(str, extra)))}")
        for key in extra:
            del cell[key]
    if kind == "code":
        if not isinstance(cell.get("outputs"), list):
            if "outputs" in cell:
                notes.append(f"cell {i}: its outputs were {_describe(cell['outputs'])}, expected a list; "
                             "cleared (outputs are not graded)")
            cell["outputs"] = []
        count = cell.get("execution_count")
        if count is not None and (type(count) is not int or count < 0):
            cell["execution_count"] = None
        cell.setdefault("execution_count", None)
    cid = cell.get("id")
    if not isinstance(cid, str) or not CELL_ID.match(cid) or cid in ids:  # made up, but the same in every run
        cid, n = f"cell-{i}", 0
        while cid in ids:
            n += 1
            cid = f"cell-{i}-{n}"
        cell["id"] = cid
    ids.add(cid)
    # The schema of this cell type: repair outputs, execution counts and non-nbgrader metadata; reject the rest.
    for _ in range(len(cell["metadata"]) + len(cell) + 1):
        errors = list(nbformat.validator.iter_validate(cell, ref=f"{kind}_cell", version=4, version_minor=CURRENT_MINOR))
        if not errors:
            return
        e = errors[0]
        path = list(e.relative_path)
        head = path[0] if path else None
        if head == "outputs":
            notes.append(f"cell {i}: its outputs were malformed ({e.message[:80]}); cleared (outputs are not graded)")
            cell["outputs"], cell["execution_count"] = [], None
        elif head == "attachments":
            notes.append(f"cell {i}: its attachments were malformed ({e.message[:80]}); removed")
            del cell["attachments"]
        elif head == "metadata" and len(path) >= 2 and path[1] != "nbgrader":
            notes.append(f"cell {i}: its metadata {path[1]!r} was malformed ({e.message[:80]}); removed")
            del cell["metadata"][path[1]]
        else:
            raise _Reject(f"cell {i} ({kind}) is not a valid notebook cell at {_where(path)}: {e.message[:200]}")
    raise _Reject(f"cell {i} ({kind}) is not a valid notebook cell")


# What nbgrader accepts ---------------------------------------------------------------------------


@functools.cache
def _nbgrader_validator():
    """A jsonschema validator for nbgrader's cell metadata, built (and its schema checked) once:
    ``jsonschema.validate`` checks the schema itself on every call (90% of collecting a class)."""
    from nbgrader.nbgraderformat import MetadataValidator

    schema = MetadataValidator().schema
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def nbgrader_errors(nb) -> str | None:
    """Why nbgrader would refuse the cells' nbgrader metadata of ``nb``, or None.

    nbgrader's own check (``CheckCellMetadata``) runs after it has put each
    graded cell's type back from the gradebook, so a changed cell type is not
    an error here; everything else it checks is: the schema (version 3, the
    keys and their types), a grade id on every graded, solution or locked cell,
    points on every graded one, and no grade id twice.
    """
    validator = _nbgrader_validator()
    seen = set()
    for i, cell in enumerate(nb.cells, 1):
        if "nbgrader" not in cell.metadata:
            continue
        meta = cell.metadata["nbgrader"]
        if not isinstance(meta, dict):
            return f"cell {i}: its nbgrader metadata is {_describe(meta)}; expected an object"
        e = jsonschema.exceptions.best_match(validator.iter_errors(meta))  # the error jsonschema.validate raises
        if e is not None:
            return f"cell {i}: its nbgrader metadata does not fit nbgrader's schema: {e.message[:200]}"
        if meta["grade"] or meta["solution"] or meta["locked"]:
            gid = meta.get("grade_id")
            if not gid:
                return f"cell {i}: a graded, solution or locked cell without a grade id"
            if gid in seen:
                return f"cell {i}: grade id {gid!r} used twice"
            seen.add(gid)
        if meta["grade"] and "points" not in meta:
            return f"cell {i}: graded cell {meta.get('grade_id')!r} without points"
    return None


def _check(nb) -> str | None:
    """Why the later steps (nbformat, nbgrader) would refuse ``nb``, or None."""
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as e:
        return f"not a valid notebook after repair: {e.message[:200]}"
    except Exception as e:
        return f"not a valid notebook after repair ({type(e).__name__}: {e})"
    try:
        why = nbgrader_errors(nb)
        if why:
            return why
        nbformat.writes(nb)
    except Exception as e:
        return f"cannot be written back for nbgrader ({type(e).__name__}: {e})"
    return None


# Finding the hand-ins --------------------------------------------------------------------------


@dataclass
class _Entry:
    rel: PurePosixPath  # path inside the folder or the archive
    kind: str  # "file", or why it is not read: "folder", "link", "unsafe", "encrypted"
    saved: tuple = ()  # (year, month, day, hour, minute, second[, microsecond]) as the folder or archive says
    order: int = 0  # position in the archive (or in name order, for a folder)
    read: object = None  # () -> bytes, or _Reject for a file over MAX_NOTEBOOK_BYTES
    path: Path | None = None  # the file itself, for a folder
    name: str | None = None  # the name as the archive has it, when ``rel`` had to be cleaned of '..' or a root


def _open_zip(src: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(src)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise ValueError(f"submissions: {src.name} is not a readable zip file ({e})") from None


def _zip_entries(zf: zipfile.ZipFile) -> list[_Entry]:
    """The members of a zip, to be read from the archive (never extracted), with the archive's own timestamps."""
    infos = zf.infolist()
    entries = []
    for order, info in enumerate(infos):
        name = info.filename.replace("\\", "/")
        parts = [p for p in re.sub(r"^[A-Za-z]:", "", name).split("/") if p not in ("", ".", "..")]
        rel = PurePosixPath(*parts) if parts else PurePosixPath(".")
        mode = info.external_attr >> 16
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in name.split("/"):
            kind = "unsafe"
        elif info.is_dir() or stat.S_ISDIR(mode):
            kind = "folder"
        elif stat.S_ISLNK(mode):
            kind = "link"
        elif info.flag_bits & 0x1:
            kind = "encrypted"
        else:
            kind = "file"

        def read(info=info):
            if info.file_size > MAX_NOTEBOOK_BYTES:
                raise _too_big(info.file_size)  # refused by its size, never inflated
            with zf.open(info) as f:
                data = f.read(MAX_NOTEBOOK_BYTES + 1)  # the size in the archive may lie
            if len(data) > MAX_NOTEBOOK_BYTES:
                raise _Reject(f"more than the {MAX_NOTEBOOK_BYTES // 2**20} MiB a notebook may have")
            return data

        entries.append(_Entry(rel, kind, tuple(info.date_time), order, read, name=info.filename if kind == "unsafe" else None))
    return entries


def _folder_entries(src: Path) -> list[_Entry]:
    """The files of a folder, symbolic links reported rather than followed; their modification times."""
    entries = []

    def unreadable(error: OSError) -> None:  # a sub-folder os.walk cannot list
        try:
            rel = PurePosixPath(Path(error.filename).relative_to(src).as_posix())
        except (TypeError, ValueError):
            rel = PurePosixPath(".")
        entries.append(_Entry(rel, "unreadable"))

    for top, dirs, files in os.walk(src, followlinks=False, onerror=unreadable):
        for name in sorted(dirs) + sorted(files):
            path = Path(top) / name
            rel = PurePosixPath(path.relative_to(src).as_posix())
            if path.is_symlink():
                entries.append(_Entry(rel, "link"))
            elif name in dirs:
                entries.append(_Entry(rel, "folder"))
            elif not path.is_file():
                entries.append(_Entry(rel, "special"))
            else:
                try:
                    when = datetime.fromtimestamp(path.stat().st_mtime)
                    saved = when.timetuple()[:6] + (when.microsecond,)
                except (OSError, OverflowError, ValueError):  # vanished, or a time no calendar holds
                    saved = ()

                def read(path=path):
                    if path.stat().st_size > MAX_NOTEBOOK_BYTES:
                        raise _too_big(path.stat().st_size)
                    with open(path, "rb") as f:
                        data = f.read(MAX_NOTEBOOK_BYTES + 1)
                    if len(data) > MAX_NOTEBOOK_BYTES:
                        raise _too_big(len(data))
                    return data

                entries.append(_Entry(rel, "file", saved, 0, read, path))
    entries.sort(key=lambda e: e.rel.parts)
    for order, entry in enumerate(entries):
        entry.order = order
    return entries


NOT_READ = {
    "link": "a symbolic link, not a file: not followed, not graded",
    "unsafe": "its path leaves the archive's folder (absolute, or with '..'): not extracted, not graded",
    "encrypted": "encrypted (password-protected) in the archive: not graded",
    "special": "not a regular file (a device, pipe or socket): not graded",
    "unreadable": "a folder that cannot be read (permissions?): not graded",
}


def _stamp(saved: tuple) -> str:
    if len(saved) < 6:
        return "?"
    y, mo, d, h, mi, sec = saved[:6]
    return f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{sec:02d}"


def collect(src: Path, known: dict[str, set[str]], roster: set[str] | None = None,
            cell_meta: dict[str, dict[str, dict]] | None = None):
    """Find every submission under ``src`` (a folder or a .zip).

    Parameters
    ----------
    known : {assignment: grade ids of its cells}
    roster : student ids allowed, or None to accept every student
    cell_meta : {assignment: {grade id: nbgrader metadata of the source cell}};
        when given, each notebook is :func:`sanitize`-d before it is checked,
        so malformed or tampered grading metadata is repaired, not refused

    Returns
    -------
    submissions : list[Submission], each notebook valid for nbformat and nbgrader
    problems : list[Problem], one per hand-in that is not graded (or two notebooks of one)
    """
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"submissions: expected a folder or a .zip file; {src} does not exist")
    if src.is_file() and src.suffix.lower() == ".zip":
        with _open_zip(src) as zf:
            return _collect(_zip_entries(zf), "the archive's timestamps", known, roster, cell_meta)
    if src.is_dir():
        return _collect(_folder_entries(src), "the files' modification times", known, roster, cell_meta)
    raise ValueError(f"submissions: expected a folder or a .zip file; got {src}")


def _collect(entries: list[_Entry], by: str, known, roster, cell_meta):
    problems: list[Problem] = []
    holders = {e.rel.parent for e in entries if e.kind == "file" and e.rel.suffix.lower() == ".ipynb"}
    found: dict[tuple[str, str], tuple[Submission, _Entry]] = {}
    for entry in sorted(entries, key=lambda e: (e.rel.parts, e.order)):
        rel = entry.rel
        if rel.name in IGNORED or "__MACOSX" in rel.parts or ".ipynb_checkpoints" in rel.parts:
            continue
        student = student_id(rel.parts[0] if len(rel.parts) > 1 else rel.stem)
        is_notebook = rel.suffix.lower() == ".ipynb"
        if entry.kind == "folder":
            if is_notebook and not any(h == rel or rel in h.parents for h in holders):
                problems.append(Problem(student, _by_name(rel, known), str(rel), "a folder named like a notebook, with no "
                                        "notebook in it: expected a notebook file; not graded"))
            continue
        if entry.kind in NOT_READ:
            problems.append(Problem(student, _by_name(rel, known) if is_notebook else None, entry.name or str(rel),
                                    NOT_READ[entry.kind]))
            continue
        if not is_notebook:
            problems.append(Problem(student, None, str(rel), "extra file, not a notebook: ignored"))
            continue
        if roster is not None and student not in roster:
            problems.append(Problem(student, None, str(rel), "unknown student (not in the roster): not graded"))
            continue
        try:
            data = entry.read()
        except _Reject as e:
            problems.append(Problem(student, _by_name(rel, known), str(rel), f"{e}: not graded"))
            continue
        except Exception as e:  # a damaged member, a file that vanished: this hand-in only
            problems.append(Problem(student, _by_name(rel, known), str(rel),
                                    f"could not be read ({type(e).__name__}: {e}): not graded"))
            continue
        nb, error, notes = _read(data)
        if error:
            problems.append(Problem(student, _by_name(rel, known), str(rel), error + ": not graded"))
            continue
        assignment = _by_name(rel, known)
        ids = grade_ids(nb)
        by_cells = max(known, key=lambda a: len(known[a] & ids)) if known else None
        if by_cells is not None and not known[by_cells] & ids:
            by_cells = None
        if assignment is None and by_cells is None:
            problems.append(Problem(student, None, str(rel), "cannot tell which assignment this is "
                                    "(neither its name nor its cells match one): not graded"))
            continue
        if assignment is None:
            assignment = by_cells
            notes.append(f"file named {rel.name!r}, recognised as {assignment} by its cells")
        elif by_cells is not None and by_cells != assignment:
            notes.append(f"file named like {assignment} but its cells are those of {by_cells}: graded as {by_cells}")
            assignment = by_cells
        if cell_meta is not None:
            notes += sanitize(nb, cell_meta.get(assignment, {}))
        else:
            notes += _drop_malformed(nb)
        why = _check(nb)
        if why:
            problems.append(Problem(student, assignment, str(rel), why + ": not graded"))
            continue
        sub = Submission(student, assignment, entry.path or Path(str(rel)), notes, nb, tuple(entry.saved))
        if (student, assignment) in found:
            sub, entry = _newer(found[(student, assignment)], (sub, entry), by, problems)
        found[(student, assignment)] = (sub, entry)
    if roster is not None:
        for student in sorted(roster):
            for assignment in sorted(known):
                if (student, assignment) not in found:
                    problems.append(Problem(student, assignment, "-", "missing: no notebook handed in"))
    return sorted((s for s, _ in found.values()), key=lambda s: (s.assignment, s.student)), problems


def _newer(kept, new, by: str, problems: list[Problem]):
    """The newer of two notebooks of one student and assignment, by ``saved``; a Problem line says which and why."""
    (a, ea), (b, eb) = sorted([kept, new], key=lambda se: (se[1].saved, se[1].order))
    if ea.saved == eb.saved:
        why = f"both saved {_stamp(eb.saved)}: graded the one later in the {'archive' if 'archive' in by else 'name order'}"
    else:
        why = f"the newer by {by}"
    problems.append(Problem(b.student, b.assignment, str(eb.rel),
                            f"two notebooks for this assignment: graded {str(eb.rel)!r} (saved {_stamp(eb.saved)}), "
                            f"ignored {str(ea.rel)!r} (saved {_stamp(ea.saved)}); {why}"))
    return b, eb


def _by_name(path, known) -> str | None:
    stem = PurePosixPath(str(path)).stem.lower()
    hits = [a for a in known if a.lower() in stem]
    return max(hits, key=len) if hits else None


# What decides how a cell is graded; other keys (nbgrader's checksum, cell type) are kept if nbgrader's schema allows them.
GRADING_KEYS = ("grade", "solution", "locked", "grade_id", "points", "task", "schema_version")
KEPT_KEYS = ("checksum", "cell_type")


def _kept(key, value) -> bool:
    if key == "checksum":
        return isinstance(value, str) and len(value) == 32
    if key == "cell_type":
        return value in ("code", "markdown", "raw") if isinstance(value, str) else False
    return False


def _cells(nb) -> list:
    cells = nb.get("cells") if isinstance(nb, dict) else None
    return cells if isinstance(cells, list) else []


def _drop_malformed(nb) -> list[str]:
    """Without the assignment's metadata at hand: remove nbgrader metadata that is not an object with a text grade id."""
    notes = []
    for i, cell in enumerate(_cells(nb), 1):
        meta = _nbgrader_meta(cell)
        well_formed = isinstance(meta, dict) and isinstance(meta.get("grade_id", ""), str)
        if "nbgrader" in (cell.get("metadata") or {}) and not well_formed:
            del cell["metadata"]["nbgrader"]
            notes.append(f"cell {i}: its nbgrader metadata was {_describe(meta)}, expected an object with a grade id; removed")
    return notes


def sanitize(nb, source_meta: dict[str, dict]) -> list[str]:
    """Make the grading metadata of a submitted notebook the assignment's own.

    A learner may change a cell's nbgrader metadata (points, grade ids, the
    "locked" flag), break it (null, a list, a number for a grade id) or add
    cells that claim to be graded. Cells with a grade id of the assignment get
    the source's metadata back (a repeated id keeps only its first cell); any
    other cell loses its grading metadata. Keys nbgrader's schema does not
    know are dropped. Returns notes for the report; never raises on a notebook
    of any shape (cells that are not objects are left to the caller's checks).
    """
    notes, seen = [], set()
    for i, cell in enumerate(_cells(nb)):
        cell_metadata = cell.get("metadata") if isinstance(cell, dict) else None
        if not isinstance(cell_metadata, dict) or "nbgrader" not in cell_metadata:
            continue
        meta = cell_metadata["nbgrader"]
        gid = meta.get("grade_id") if isinstance(meta, dict) else None
        gid = gid if isinstance(gid, str) else None
        if gid in source_meta and gid not in seen:
            seen.add(gid)
            source = source_meta[gid]
            kept = {k: v for k, v in meta.items() if k in KEPT_KEYS and _kept(k, v)}
            dropped = set(meta) - set(kept) - set(GRADING_KEYS)
            if dropped or any(meta.get(k) != source.get(k) for k in GRADING_KEYS):
                notes.append(f"cell {gid}: its grading metadata was changed; restored")
            kept.update({k: source[k] for k in GRADING_KEYS if k in source})
            cell_metadata["nbgrader"] = nbformat.from_dict(kept)
        else:
            del cell_metadata["nbgrader"]
            if not isinstance(meta, dict):
                what = f": its nbgrader metadata was {_describe(meta)}, expected an object with a grade id"
            elif gid is None and "grade_id" in meta:
                what = f": its grade id was {_describe(meta['grade_id'])}, expected one of the assignment's (text)"
            else:
                what = f" ({gid or 'no grade id'}): not a cell of the assignment (or a repeated one)"
            notes.append(f"cell {i + 1}{what}; its grading metadata was removed")
    return notes
