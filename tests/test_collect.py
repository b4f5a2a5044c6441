"""Collecting hand-ins: no notebook, however malformed, stops the class run.

Every hand-in that cannot be graded is a report line (a ``Problem``); one that
nbformat or nbgrader would refuse only for what does not decide its grade
(broken nbgrader metadata, outputs, ids, a newer minor format) is repaired and
graded. What is collected is checked here as nbgrader will see it: written
by nbformat, read back without a validation error, and accepted by nbgrader's
own metadata validator once nbgrader has put cell types back (its
``OverwriteCells`` does that before ``CheckCellMetadata`` runs).

The collector is run as ``python -m grading`` runs it: with the assignments'
cell metadata, so it sanitizes each notebook; then ``sanitize`` once more
must change nothing.
"""

from __future__ import annotations

import copy
import json
import os
import stat
import tempfile
import zipfile
from pathlib import Path

import nbformat
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grading import collect as K
from grading import course as C
from grading.samples import answer_code, fill

A = "ch02-forward"
RELEASE = C.PROJECT / "release" / A / f"{A}.ipynb"
CELL_META = {a: C.source_cell_metadata(C.PROJECT, a) for a in C.assignments()}
KNOWN = {a: set(meta) for a, meta in CELL_META.items()}
# The type of each graded cell, as nbgrader's gradebook knows it (from the student versions).
TYPES = {
    cell.metadata["nbgrader"]["grade_id"]: cell.cell_type
    for a in C.assignments()
    for cell in nbformat.read(C.PROJECT / "release" / a / f"{a}.ipynb", as_version=4).cells
    if cell.metadata.get("nbgrader", {}).get("grade_id")
}


def release_json() -> dict:
    return json.loads(RELEASE.read_text())


def cell_of(raw: dict, grade_id: str) -> dict:
    return next(c for c in raw["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == grade_id)


def good_notebook_text() -> str:
    return nbformat.writes(fill(C.PROJECT, A, answer_code(A)))


def run(src):
    """Collect as ``python -m grading`` does; sanitizing again must be a no-op. Returns (subs, problems)."""
    subs, problems = K.collect(src, KNOWN, cell_meta=CELL_META)
    for sub in subs:
        again = K.sanitize(sub.notebook, CELL_META[sub.assignment])
        assert again == [], f"{sub.student}: sanitize after collect changed more: {again}"
        assert_acceptable(sub.notebook)
    return subs, problems


def assert_acceptable(nb):
    """As nbgrader will get it: valid for nbformat, and nbgrader's validator accepts its metadata."""
    from nbgrader.nbgraderformat import MetadataValidator

    text = nbformat.writes(nb)
    captured = {}
    back = nbformat.reads(text, as_version=4, capture_validation_error=captured)
    assert not captured, f"nbformat rejects the collected notebook: {captured['ValidationError']}"
    nbformat.validate(back)
    seen = copy.deepcopy(back)
    for cell in seen.cells:  # what nbgrader's OverwriteCells does before it validates
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in TYPES and cell.cell_type != TYPES[gid]:
            cell.cell_type = TYPES[gid]
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
            else:
                cell.pop("outputs", None)
                cell.pop("execution_count", None)
    MetadataValidator().validate_nb(seen)


def class_folder(root: Path, bob: str | bytes) -> Path:
    """A folder with ada's good notebook and bob's ``bob`` (text or bytes), both of ch02-forward."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"ada_{A}.ipynb").write_text(good_notebook_text())
    target = root / f"bob_{A}.ipynb"
    target.write_bytes(bob if isinstance(bob, bytes) else bob.encode())
    return root


def outcome(tmp_path, bob):
    """(bob's submission or None, bob's problem lines); ada is always graded, with no problem."""
    subs, problems = run(class_folder(tmp_path / "class", bob))
    assert [s.student for s in subs if s.assignment == A].count("ada") == 1, [p.line() for p in problems]
    assert not [p for p in problems if p.student == "ada"], [p.line() for p in problems]
    mine = [s for s in subs if s.student == "bob"]
    lines = [p.line() for p in problems if p.student == "bob"]
    assert len(mine) + len(lines) >= 1, "bob's hand-in vanished: neither graded nor reported"
    return (mine[0] if mine else None), lines


# Variants: each is graded after a repair (with a note) or is one clear Problem line ---------------


def _set_nbgrader(value):
    def mutate(raw):
        cell_of(raw, "answer-forward-nd")["metadata"]["nbgrader"] = value
    return mutate


def _set_in_nbgrader(key, value):
    def mutate(raw):
        cell_of(raw, "answer-forward-nd")["metadata"]["nbgrader"][key] = value
    return mutate


def _cell(update):
    def mutate(raw):
        update(cell_of(raw, "answer-forward-nd"))
    return mutate


def _top(key, value):
    def mutate(raw):
        if value is DELETE:
            del raw[key]
        else:
            raw[key] = value
    return mutate


DELETE = object()
ANSWER = answer_code(A)["answer-forward-nd"]

# name: (mutation of the release notebook's JSON, "graded" or "problem", fragment of the note or problem line)
REPAIRED = {
    "nbgrader-null": (_set_nbgrader(None), "its nbgrader metadata was null, expected an object"),
    "nbgrader-list": (_set_nbgrader(["answer-forward-nd"]), "its nbgrader metadata was a list of 1 items"),
    "nbgrader-string": (_set_nbgrader("answer-forward-nd"), "its nbgrader metadata was a string"),
    "nbgrader-number": (_set_nbgrader(3), "its nbgrader metadata was a number (3)"),
    "grade-id-number": (_set_in_nbgrader("grade_id", 7), "its grade id was a number (7)"),
    "grade-id-list": (_set_in_nbgrader("grade_id", ["answer-forward-nd"]), "its grade id was a list of 1 items"),
    "grade-id-object": (_set_in_nbgrader("grade_id", {"id": "answer-forward-nd"}), "its grade id was an object"),
    "nbgrader-extra-key": (_set_in_nbgrader("bonus", 100), "cell answer-forward-nd: its grading metadata was changed; restored"),
    "nbgrader-checksum-number": (_set_in_nbgrader("checksum", 12345), "its grading metadata was changed; restored"),
    "nbgrader-points-text": (_set_in_nbgrader("points", "ten"), "its grading metadata was changed; restored"),
    "cell-metadata-missing": (_cell(lambda c: c.pop("metadata")), "its metadata was missing, expected an object"),
    "cell-metadata-list": (_cell(lambda c: c.__setitem__("metadata", [1, 2])), "its metadata was a list of 2 items"),
    "cell-metadata-field-wrong-type": (_cell(lambda c: c["metadata"].__setitem__("collapsed", "yes")),
                                       "its metadata 'collapsed' was malformed"),
    "cell-unknown-key": (_cell(lambda c: c.__setitem__("homework", True)), "unknown keys removed: homework"),
    "outputs-not-a-list": (_cell(lambda c: c.__setitem__("outputs", "none")), "its outputs were a string"),
    "output-unknown-type": (_cell(lambda c: c.__setitem__("outputs", [{"output_type": "hologram"}])),
                            "its outputs were malformed"),
    "output-not-an-object": (_cell(lambda c: c.__setitem__("outputs", [5])), "its outputs were malformed"),
    "stream-text-number": (_cell(lambda c: c.__setitem__("outputs", [{"output_type": "stream", "name": "stdout", "text": 5}])),
                           "its outputs were malformed"),
    "execution-count-text": (_cell(lambda c: c.__setitem__("execution_count", "7")), None),
    "cell-id-missing": (_cell(lambda c: c.pop("id")), None),
    "cell-id-invalid": (_cell(lambda c: c.__setitem__("id", "not a valid id!")), None),
    "notebook-metadata-list": (_top("metadata", ["x"]), "the notebook's metadata was a list of 1 items"),
    "notebook-metadata-missing": (_top("metadata", DELETE), "the notebook's metadata was missing"),
    "kernelspec-number": (lambda raw: raw["metadata"].__setitem__("kernelspec", 5),
                          "notebook metadata 'kernelspec' was malformed"),
    "minor-from-the-future": (_top("nbformat_minor", 99), "written by a newer Jupyter (nbformat 4.99)"),
    "minor-not-a-number": (_top("nbformat_minor", "five"), "\"nbformat_minor\" was a string ('five')"),
    "top-level-unknown-key": (_top("worksheets", []), "unknown top-level keys removed: worksheets"),
}

REJECTED = {
    "cells-an-object": (_top("cells", {"0": {}}), "\"cells\" is an object; expected a list of cells"),
    "cells-a-string": (_top("cells", "cells"), "\"cells\" is a string ('cells'); expected a list of cells"),
    "cell-a-string": (lambda raw: raw["cells"].insert(2, "print(1)"), "cell 3 is a string ('print(1)'); expected an object"),
    "cell-null": (lambda raw: raw["cells"].insert(0, None), "cell 1 is null; expected an object"),
    "cell-type-unknown": (_cell(lambda c: c.__setitem__("cell_type", "python")),
                          "\"cell_type\" is a string ('python'); expected"),
    "cell-type-missing": (_cell(lambda c: c.pop("cell_type")), "\"cell_type\" is missing; expected"),
    "source-number": (_cell(lambda c: c.__setitem__("source", 42)), "its source is a number (42); expected text"),
    "source-list-of-numbers": (_cell(lambda c: c.__setitem__("source", [1, 2])),
                               "its source is a list of 2 items; expected text"),
    "nbformat-text": (_top("nbformat", "4"), "expected \"nbformat\": 4, received a string ('4')"),
    "nbformat-missing": (_top("nbformat", DELETE), "expected \"nbformat\": 4, received missing"),
    "nbformat-5": (_top("nbformat", 5), "nbformat 5: newer than this grader reads"),
}


@pytest.mark.parametrize("name", sorted(REPAIRED))
def test_a_readable_notebook_with_malformed_parts_is_repaired_and_graded(tmp_path, name):
    mutate, note = REPAIRED[name]
    raw = release_json()
    cell_of(raw, "answer-forward-nd")["source"] = ANSWER
    mutate(raw)
    sub, lines = outcome(tmp_path, json.dumps(raw))
    assert sub is not None, f"{name}: not graded: {lines}"
    assert not lines, f"{name}: graded, yet also reported: {lines}"
    if note:
        assert any(note in n for n in sub.notes), f"{name}: expected a note with {note!r}; notes: {sub.notes}"
    answer = [c for c in sub.notebook.cells if c.source == ANSWER]
    assert len(answer) == 1, f"{name}: the learner's answer was lost"
    graded = {c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"] for c in sub.notebook.cells if "nbgrader" in c.metadata}
    for gid, meta in graded.items():
        for key in K.GRADING_KEYS:
            assert meta.get(key) == CELL_META[A][gid].get(key), f"{name}: {gid}.{key} is not the assignment's"


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_a_notebook_that_cannot_be_graded_is_one_clear_problem_line(tmp_path, name):
    mutate, message = REJECTED[name]
    raw = release_json()
    mutate(raw)
    sub, lines = outcome(tmp_path, json.dumps(raw))
    assert sub is None, f"{name}: graded, expected a problem line"
    assert len(lines) == 1 and message in lines[0] and lines[0].endswith(f"not graded (bob_{A}.ipynb)"), (name, lines)


def test_the_reported_crash_nbgrader_null_is_graded_not_fatal(tmp_path):
    """The case found from outside: ``"nbgrader": null`` on one cell stopped the run for everyone."""
    raw = release_json()
    raw["cells"][1]["metadata"]["nbgrader"] = None
    sub, lines = outcome(tmp_path, json.dumps(raw))
    assert sub is not None and not lines, lines
    assert ("cell 2: its nbgrader metadata was null, expected an object with a grade id; "
            "its grading metadata was removed") in sub.notes


def test_a_notebook_nbformat_rejects_only_for_its_outputs_is_repaired(tmp_path):
    raw = release_json()
    code = cell_of(raw, "answer-forward-nd")
    code["outputs"] = [{"output_type": "execute_result", "data": "3"}]  # data must be a mime bundle
    code["execution_count"] = -1
    with pytest.raises(nbformat.ValidationError):
        nbformat.validate(nbformat.from_dict(copy.deepcopy(raw)))
    sub, lines = outcome(tmp_path, json.dumps(raw))
    assert sub is not None and not lines, lines
    cell = next(c for c in sub.notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "answer-forward-nd")
    assert cell.outputs == [] and cell.execution_count is None


def test_source_as_a_list_of_lines_or_a_string_is_the_same_notebook(tmp_path):
    raw = release_json()
    as_list = json.loads(json.dumps(raw))
    for cell in as_list["cells"]:
        cell["source"] = "".join(cell["source"]).splitlines(keepends=True)
    as_text = json.loads(json.dumps(raw))
    for cell in as_text["cells"]:
        cell["source"] = "".join(cell["source"])
    a, _ = outcome(tmp_path / "list", json.dumps(as_list))
    b, _ = outcome(tmp_path / "text", json.dumps(as_text))
    assert a is not None and b is not None
    assert nbformat.writes(a.notebook) == nbformat.writes(b.notebook)


@pytest.mark.parametrize("name, data, message", [
    ("latin-1", '{"cells": [], "metadata": {"author": "Jos\u00e9"}, "nbformat": 4, "nbformat_minor": 5}'.encode("latin-1"),
     "not UTF-8 text (byte 0xe9 at offset"),
    ("utf-16", json.dumps(release_json()).encode("utf-16"), "not UTF-8 text (byte 0xff at offset 0)"),
    ("garbage", bytes(range(256)) * 4, "not UTF-8 text"),
    ("empty", b"", "not valid JSON (line 1, column 1"),
    ("truncated", json.dumps(release_json()).encode()[:5000], "not valid JSON"),
    ("json-list", b"[1, 2, 3]", "valid JSON but not a notebook: expected an object with \"cells\", received a list of 3 items"),
    ("json-string", b'"cells"', "valid JSON but not a notebook"),
    ("deeply-nested", b'{"cells": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
])
def test_a_file_that_is_not_a_notebook_is_one_clear_problem_line(tmp_path, name, data, message):
    sub, lines = outcome(tmp_path, data)
    assert sub is None and len(lines) == 1 and message in lines[0], (name, lines)


def test_a_byte_order_mark_is_ignored(tmp_path):
    sub, lines = outcome(tmp_path, b"\xef\xbb\xbf" + good_notebook_text().encode())
    assert sub is not None and not lines, lines
    assert "the file began with a byte-order mark; ignored" in sub.notes


def test_a_huge_file_is_refused_by_its_size_before_it_is_parsed(tmp_path, monkeypatch):
    limit = getattr(K, "MAX_NOTEBOOK_BYTES", 20 * 2**20)
    raw = release_json()
    cell_of(raw, "answer-forward-nd")["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x" * limit}]
    text = json.dumps(raw)
    parsed = []
    real = json.loads
    monkeypatch.setattr(json, "loads", lambda s, *a, **k: parsed.append(len(s)) or real(s, *a, **k))
    sub, lines = outcome(tmp_path, text)
    assert sub is None and len(lines) == 1 and f"more than the {limit // 2**20} MiB a notebook may have" in lines[0], lines
    assert all(n < limit for n in parsed), "the huge file was parsed"


def test_duplicate_grade_ids_keep_only_the_first(tmp_path):
    raw = release_json()
    extra = copy.deepcopy(cell_of(raw, "answer-forward-nd"))
    extra["id"] = "copy-of-answer"
    raw["cells"].append(extra)
    sub, lines = outcome(tmp_path, json.dumps(raw))
    assert sub is not None and not lines, lines
    ids = [c.metadata["nbgrader"]["grade_id"] for c in sub.notebook.cells if "nbgrader" in c.metadata]
    assert ids.count("answer-forward-nd") == 1


def test_repaired_cell_ids_are_the_same_in_every_run(tmp_path):
    """The journal knows a notebook by its sha256: repairs must not draw random ids."""
    raw = release_json()
    for cell in raw["cells"]:
        cell.pop("id")
    raw["nbformat_minor"] = 4
    first, _ = outcome(tmp_path / "one", json.dumps(raw))
    second, _ = outcome(tmp_path / "two", json.dumps(raw))
    assert nbformat.writes(first.notebook) == nbformat.writes(second.notebook)


def test_an_old_nbformat_is_converted_with_the_same_ids_every_run(tmp_path):
    old = nbformat.writes(nbformat.convert(fill(C.PROJECT, A, answer_code(A)), 3), version=3)
    first, lines = outcome(tmp_path / "one", old)
    second, _ = outcome(tmp_path / "two", old)
    assert first is not None and "converted from nbformat 3 to 4" in first.notes, lines
    assert nbformat.writes(first.notebook) == nbformat.writes(second.notebook)


# Zips: the archive's own timestamps, nothing left behind, no unsafe members ----------------------


def _member(name: str, date_time, data: str | bytes = "", mode: int = 0o100644) -> tuple[zipfile.ZipInfo, str | bytes]:
    info = zipfile.ZipInfo(name, date_time=date_time)
    info.external_attr = mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info, data


def _zip(path: Path, members) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in members:
            zf.writestr(info, data)
    return path


BLANK = nbformat.writes(fill(C.PROJECT, A, None))
ANSWERED = nbformat.writes(fill(C.PROJECT, A, answer_code(A)))


def _answered(sub) -> bool:
    return any(c.source == ANSWER for c in sub.notebook.cells)


def test_in_a_zip_the_newer_notebook_is_chosen_by_the_archives_timestamps(tmp_path):
    """The newer version comes first in the archive, so extraction order (and file times after extraction) disagree."""
    archive = _zip(tmp_path / "class.zip", [
        _member(f"bob_{A}.ipynb", (2024, 3, 2, 10, 0, 0), ANSWERED),  # newer, first in the archive
        _member(f"bob/{A}.ipynb", (2024, 3, 1, 9, 0, 0), BLANK),  # older, last in the archive
        _member(f"ada_{A}.ipynb", (2024, 3, 1, 8, 0, 0), ANSWERED),
    ])
    subs, problems = run(archive)
    bob = [s for s in subs if s.student == "bob"]
    assert len(bob) == 1 and _answered(bob[0]), "graded the older notebook"
    lines = [p.line() for p in problems if p.student == "bob"]
    assert len(lines) == 1, lines
    assert (f"graded 'bob_{A}.ipynb' (saved 2024-03-02 10:00:00), ignored 'bob/{A}.ipynb' (saved 2024-03-01 09:00:00); "
            "the newer by the archive's timestamps") in lines[0], lines


def test_in_a_zip_a_member_name_twice_is_two_versions_and_the_newer_is_graded(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        archive = _zip(tmp_path / "class.zip", [
            _member(f"bob_{A}.ipynb", (2024, 3, 2, 10, 0, 0), ANSWERED),
            _member(f"bob_{A}.ipynb", (2024, 3, 1, 9, 0, 0), BLANK),
            _member(f"ada_{A}.ipynb", (2024, 3, 1, 8, 0, 0), ANSWERED),
        ])
    subs, problems = run(archive)
    bob = [s for s in subs if s.student == "bob"]
    assert len(bob) == 1 and _answered(bob[0]), "graded the older notebook"
    assert any("the newer by the archive's timestamps" in p.message for p in problems if p.student == "bob"), problems


def test_in_a_zip_equal_timestamps_grade_the_one_later_in_the_archive(tmp_path):
    same = (2024, 3, 2, 10, 0, 0)
    archive = _zip(tmp_path / "class.zip", [
        _member(f"bob_{A}.ipynb", same, BLANK),
        _member(f"bob/{A}.ipynb", same, ANSWERED),
    ])
    subs, problems = run(archive)
    assert _answered(next(s for s in subs if s.student == "bob"))
    assert any("both saved 2024-03-02 10:00:00: graded the one later in the archive" in p.message for p in problems), problems


def test_in_a_folder_the_newer_notebook_is_chosen_by_modification_time(tmp_path):
    folder = tmp_path / "class"
    (folder / "bob").mkdir(parents=True)
    (folder / "bob" / f"{A}.ipynb").write_text(BLANK)
    (folder / f"bob_{A}.ipynb").write_text(ANSWERED)
    os.utime(folder / "bob" / f"{A}.ipynb", (1_700_000_000, 1_700_000_000))
    os.utime(folder / f"bob_{A}.ipynb", (1_700_100_000, 1_700_100_000))
    subs, problems = run(folder)
    assert _answered(next(s for s in subs if s.student == "bob"))
    assert any("the newer by the files' modification times" in p.message and f"graded 'bob_{A}.ipynb'" in p.message
               for p in problems), [p.line() for p in problems]


def test_collecting_a_zip_leaves_no_extracted_folder_behind(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    archive = _zip(tmp_path / "class.zip", [_member(f"ada_{A}.ipynb", (2024, 3, 1, 8, 0, 0), ANSWERED)])
    subs, _ = run(archive)
    assert [s.student for s in subs] == ["ada"]
    assert list(scratch.iterdir()) == [], "collection left files behind"
    assert str(subs[0].source) == f"ada_{A}.ipynb", "the source should be the path inside the archive"


def test_unsafe_zip_members_are_problem_lines_and_the_rest_is_graded(tmp_path):
    archive = _zip(tmp_path / "class.zip", [
        _member(f"ada_{A}.ipynb", (2024, 3, 1, 8, 0, 0), ANSWERED),
        _member(f"../evil_{A}.ipynb", (2024, 3, 1, 8, 0, 0), ANSWERED),
        _member(f"/abs_{A}.ipynb", (2024, 3, 1, 8, 0, 0), ANSWERED),
        _member(f"link_{A}.ipynb", (2024, 3, 1, 8, 0, 0), "/etc/passwd", mode=stat.S_IFLNK | 0o777),
        _member(f"dir_{A}.ipynb/", (2024, 3, 1, 8, 0, 0), "", mode=stat.S_IFDIR | 0o755),
    ])
    subs, problems = run(archive)
    assert [s.student for s in subs] == ["ada"]
    lines = sorted(p.line() for p in problems)
    assert any(line.startswith("evil / ") and "leaves the archive's folder" in line for line in lines), lines
    assert any(line.startswith("abs / ") and "leaves the archive's folder" in line for line in lines), lines
    assert any(line.startswith("link / ") and "a symbolic link, not a file" in line for line in lines), lines
    assert any(line.startswith("dir / ") and "a folder named like a notebook" in line for line in lines), lines


def test_a_huge_zip_member_is_refused_without_inflating_it(tmp_path):
    limit = getattr(K, "MAX_NOTEBOOK_BYTES", 20 * 2**20)
    archive = _zip(tmp_path / "class.zip", [
        _member(f"ada_{A}.ipynb", (2024, 3, 1, 8, 0, 0), ANSWERED),
        _member(f"bob_{A}.ipynb", (2024, 3, 1, 8, 0, 0), b" " * (limit + 1)),
    ])
    subs, problems = run(archive)
    assert [s.student for s in subs] == ["ada"]
    assert any(p.student == "bob" and "a notebook may have" in p.message for p in problems), [p.line() for p in problems]


def test_a_file_that_is_not_a_zip_is_an_error_for_the_whole_input(tmp_path):
    bad = tmp_path / "class.zip"
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match="not a readable zip file"):
        K.collect(bad, KNOWN, cell_meta=CELL_META)


def test_symbolic_links_and_notebook_named_folders_in_a_folder_are_problem_lines(tmp_path):
    folder = class_folder(tmp_path / "class", ANSWERED)
    secret = tmp_path / "secret.ipynb"
    secret.write_text(ANSWERED)
    (folder / f"carol_{A}.ipynb").symlink_to(secret)
    (folder / f"dana_{A}.ipynb").mkdir()
    subs, problems = run(folder)
    assert sorted(s.student for s in subs) == ["ada", "bob"]
    lines = [p.line() for p in problems]
    assert any(line.startswith("carol / ") and "a symbolic link" in line for line in lines), lines
    assert any(line.startswith("dana / ") and "a folder named like a notebook" in line for line in lines), lines


def test_a_pipe_in_the_folder_is_a_problem_line_not_a_hang(tmp_path):
    folder = class_folder(tmp_path / "class", ANSWERED)
    os.mkfifo(folder / f"erin_{A}.ipynb")
    subs, problems = run(folder)
    assert sorted(s.student for s in subs) == ["ada", "bob"]
    assert any(p.student == "erin" and "not a regular file" in p.message for p in problems), [p.line() for p in problems]


# The property: any mutation of a real notebook is graded as a valid notebook or reported ----------

KEYS = ["cells", "metadata", "nbformat", "nbformat_minor", "cell_type", "source", "outputs", "execution_count", "id",
        "nbgrader", "grade_id", "grade", "solution", "locked", "points", "schema_version", "checksum", "task",
        "kernelspec", "name", "text", "data", "output_type", "attachments"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12) | st.sampled_from(KEYS),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _base() -> dict:
    """The release notebook of ch02, with outputs to break."""
    raw = release_json()
    cell_of(raw, "imports")["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["ok\n"]}]
    cell_of(raw, "answer-forward-nd")["outputs"] = [
        {"output_type": "execute_result", "execution_count": 3, "metadata": {}, "data": {"text/plain": ["1"]}}]
    return raw


def _containers(raw, level: str) -> list:
    cells = [c for c in raw.get("cells", []) if isinstance(c, dict)] if isinstance(raw.get("cells"), list) else []
    metas = [c["metadata"] for c in cells if isinstance(c.get("metadata"), dict)]
    return {
        "notebook": [raw],
        "notebook-metadata": [raw["metadata"]] if isinstance(raw.get("metadata"), dict) else [],
        "cells": [raw["cells"]] if isinstance(raw.get("cells"), list) else [],
        "cell": cells,
        "cell-metadata": metas,
        "nbgrader": [m["nbgrader"] for m in metas if isinstance(m.get("nbgrader"), dict)],
        "outputs": [o for c in cells if isinstance(c.get("outputs"), list) for o in c["outputs"] if isinstance(o, dict)],
    }[level]


def _retype(value):
    """The same content as another JSON type."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return str(value)
    return 0


def _mutate(data, raw: dict) -> None:
    level = data.draw(st.sampled_from(["notebook", "notebook-metadata", "cells", "cell", "cell-metadata", "nbgrader",
                                       "nbgrader", "nbgrader", "outputs"]), label="level")
    targets = _containers(raw, level)
    if not targets:
        return
    target = targets[data.draw(st.integers(0, len(targets) - 1), label="which")]
    if isinstance(target, list):  # the list of cells
        op = data.draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]), label="cells op")
        i = data.draw(st.integers(0, max(len(target) - 1, 0)), label="index")
        if op == "insert" or not target:
            target.insert(i, data.draw(JSON, label="junk cell"))
        elif op == "delete":
            del target[i]
        elif op == "replace":
            target[i] = data.draw(JSON, label="junk cell")
        else:
            target.insert(i, copy.deepcopy(target[i]))
        return
    keys = sorted(target, key=str) + KEYS
    key = data.draw(st.sampled_from(keys), label="key")
    op = data.draw(st.sampled_from(["replace", "delete", "retype", "null"]), label="op")
    if op == "delete":
        target.pop(key, None)
    elif op == "retype":
        target[key] = _retype(target.get(key))
    elif op == "null":
        target[key] = None
    else:
        target[key] = data.draw(JSON, label="value")


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_any_mutated_notebook_is_graded_as_a_valid_notebook_or_reported(data):
    raw = _base()
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        _mutate(data, raw)
    text = json.dumps(raw).encode()
    damage = data.draw(st.sampled_from(["none", "none", "truncate", "garbage"]), label="damage")
    if damage == "truncate":
        text = text[:data.draw(st.integers(0, len(text)), label="cut")]
    elif damage == "garbage":
        at = data.draw(st.integers(0, len(text)), label="at")
        text = text[:at] + data.draw(st.binary(min_size=1, max_size=8), label="garbage") + text[at:]
    with tempfile.TemporaryDirectory() as tmp:
        sub, lines = outcome(Path(tmp), text)
    assert (sub is None) != (not lines), f"bob is both graded and reported, or neither: {lines}"


@pytest.mark.grading
def test_the_grading_command_grades_everyone_beside_a_null_nbgrader_notebook(tmp_path):
    """End to end, as reported: one ``"nbgrader": null`` cell stopped ``python -m grading`` with no grades for anyone."""
    import csv

    from grading.__main__ import main

    first = C.assignments()[0]
    folder = tmp_path / "class"
    folder.mkdir()
    nbformat.write(fill(C.PROJECT, first, answer_code(first)), folder / f"ada_{first}.ipynb")
    raw = json.loads(nbformat.writes(fill(C.PROJECT, first, answer_code(first))))
    raw["cells"][1]["metadata"]["nbgrader"] = None
    (folder / f"bob_{first}.ipynb").write_text(json.dumps(raw))
    course = tmp_path / "course"
    assert main([str(folder), "--course", str(course), "--jobs", "2"]) == 0
    rows = {r["student_id"]: float(r["raw_score"]) for r in csv.DictReader((course / "grades.csv").read_text().splitlines())}
    assert set(rows) == {"ada", "bob"} and rows["ada"] == rows["bob"] > 0, rows
    assert f"bob / {first}: cell 2: its nbgrader metadata was null" in (course / "report.md").read_text()
