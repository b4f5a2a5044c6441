"""Judge the recorded checks of a graded notebook outside its kernel.

During grading the kernel runs the learner's code and the locked test cells,
but the checkers only *record* what the learner's functions returned
(:mod:`bnlib.checkers`, ``BNLIB_CHECK_RECORD``). This module, in the grader's
own process, decides every score of a test cell that uses them:

1. :func:`expected_checks` lists the checks each test cell makes, by running
   the cell's source from ``solutions/`` (visible and hidden tests) with the
   checkers in collect mode: nothing of the submission is involved;
2. :func:`verdicts` judges, for each test cell, the last record of each of its
   checks with bnlib's reference (:func:`bnlib._judge.judge`); a check that
   left no record (the cell was edited, the kernel stopped, the checker was
   monkeypatched) fails;
3. :func:`apply` writes the scores into the gradebook and the verdicts into
   the autograded notebook, which the feedback is made from.

A test cell scores its points only if every one of its checks passed here.
"""

from __future__ import annotations

import builtins
import json
import re
from pathlib import Path

import nbformat
import numpy as np
from nbgrader.api import Gradebook

from bnlib import _judge
from bnlib import checkers as probe
from bnlib.checkers import CheckFailed

Key = tuple[str, str, str]


class _Name(str):
    """A name the test cell refers to (the learner's function): only its name matters."""

    @property
    def __name__(self):  # noqa: A003 - mimic a function's __name__
        return str(self)


class _Names(dict):
    def __missing__(self, name):
        return _Name(name)


_ALLOWED_IMPORTS = {"bnlib", "bnlib.checkers", "bnlib.framework_checkers", "numpy"}


def _import(name, globals=None, locals=None, fromlist=(), level=0):
    """Imports a test cell may make while its checks are listed: the probe, numpy."""
    if level or name not in _ALLOWED_IMPORTS:
        raise ImportError(f"{name} is not imported while listing checks")
    return builtins.__import__(name, globals, locals, fromlist, level)


_BUILTINS = {**builtins.__dict__, "__import__": _import}


def _key(kind: str, fn_name: str, params: dict) -> Key:
    return (kind, fn_name, json.dumps(params, sort_keys=True))


def test_cells(nb) -> dict[str, str]:
    """Source of each autograded test cell, by grade id."""
    return {
        c.metadata["nbgrader"]["grade_id"]: c.source
        for c in nb.cells
        if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade") and not c.metadata["nbgrader"].get("solution")
    }


def expected_checks(source_notebook: Path) -> dict[str, list[Key]]:
    """The probe checks each test cell of the source notebook makes, in order.

    Cells that make none (plain asserts, which nbgrader scores itself) are
    absent. A test cell whose source cannot be run here is a defect of the
    assignment: it raises rather than leave that cell's points to the kernel.
    """
    nb = nbformat.read(source_notebook, as_version=4)
    expected = {}
    for gid, source in test_cells(nb).items():
        calls: list = []
        probe._COLLECT = calls
        try:
            namespace = _Names(print=lambda *a, **k: None)
            exec(compile(source, f"<test cell {gid}>", "exec"), {"__builtins__": _BUILTINS}, namespace)
        except Exception as e:
            raise RuntimeError(f"cannot list the checks of test cell {gid} of {source_notebook}: {e!r}") from e
        finally:
            probe._COLLECT = None
        if calls:
            expected[gid] = [_key(*c) for c in calls]
    return expected


_ARRAY_FILE = re.compile(r"\d{5}-[A-Za-z0-9_]+\.npy")


def read_records(folders) -> dict[Key, dict]:
    """The last record of each check in ``folders`` (one per kernel, in the
    order the kernels ran), arrays loaded without pickle."""
    records: dict[Key, dict] = {}
    if isinstance(folders, (str, Path)):
        folders = [folders]
    metas = [m for folder in map(Path, folders) if folder.is_dir() for m in sorted(folder.glob("*.json"))]
    for meta in metas:
        folder = meta.parent
        try:
            entry = json.loads(meta.read_text())
            # the kernel wrote these files: accept plain names in its own folder only
            if not all(_ARRAY_FILE.fullmatch(f) for f in entry["arrays"].values()):
                continue
            results = {name: np.load(folder / fname, allow_pickle=False) for name, fname in entry["arrays"].items()}
            key = _key(entry["kind"], entry["fn"], entry["params"])
        except Exception:  # noqa: BLE001 - a damaged record counts as no record
            continue
        records[key] = {"results": results, "failure": entry.get("failure")}
    return records


def _judge_one(key: Key, record: dict | None) -> str | None:
    """None if the check passed, else the message for the learner."""
    if record is None:
        return ("[did-not-run] this test's checks did not run to the end "
                "(an error before them, a kernel that stopped, or a changed test cell)")
    if record["failure"]:
        mistake, message = record["failure"]
        return str(CheckFailed(message, mistake))
    kind, _, params = key
    try:
        _judge.judge(kind, json.loads(params), record["results"])
    except CheckFailed as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - malformed results are wrong results
        return f"[malformed-result] the recorded result could not be judged ({type(e).__name__})"
    return None


def verdicts(expected: dict[str, list[Key]], records: dict[Key, dict]) -> dict[str, str | None]:
    """For each test cell: None if all its checks passed, else the first failure's message."""
    out = {}
    for gid, keys in expected.items():
        out[gid] = next((m for m in (_judge_one(k, records.get(k)) for k in keys) if m), None)
    return out


def apply(root: Path, db_url: str, assignment: str, student: str, records_dir) -> dict[str, str | None]:
    """Judge one autograded submission; write scores and verdicts. Returns the verdicts.

    ``records_dir``: the records folder, or a list of them (one per kernel, oldest first).
    """
    root = Path(root)
    source = root / "solutions" / assignment / f"{assignment}.ipynb"
    expected = expected_checks(source)
    if not expected:
        return {}
    result = verdicts(expected, read_records(records_dir))
    path = root / "autograded" / student / assignment / f"{assignment}.ipynb"
    nb = nbformat.read(path, as_version=4)
    with Gradebook(db_url) as gb:
        for gid, message in result.items():
            grade = gb.find_grade(gid, assignment, assignment, student)
            grade.auto_score = grade.max_score if message is None else 0.0
        gb.db.commit()
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in result:
            message = result[gid]
            if message is None:
                cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="Graded: every check of this test passed.\n")]
            else:
                cell.outputs = [nbformat.v4.new_output("error", ename="CheckFailed", evalue=message, traceback=[f"CheckFailed: {message}"])]
    nbformat.write(nb, path)
    return result


def autograde(api, assignment: str, student: str) -> dict:
    """nbgrader's autograde of one submission in a jailed kernel, then the judge.

    Returns nbgrader's result dict (``success``, ``error``, ``log``) with
    ``verdicts`` added: {test cell: None if passed, else the message}.
    """
    import os
    import shutil
    import tempfile

    from . import jail

    root = Path(api.coursedir.root)
    sandboxes = Path(tempfile.mkdtemp(prefix="bn-sub-"))
    os.chmod(sandboxes, 0o755)
    saved = {k: os.environ.get(k) for k in (jail.JAIL_ENV, jail.HIDE_ENV, jail.PRELOAD_ENV)}
    os.environ[jail.JAIL_ENV] = str(sandboxes)
    os.environ[jail.HIDE_ENV] = str(root)
    # the kernel comes with the frameworks the assignment uses already imported (a zygote that has them)
    os.environ[jail.PRELOAD_ENV] = ",".join(jail.preload_for(root / "solutions" / assignment / f"{assignment}.ipynb"))
    try:
        result = api.autograde(assignment, student)
        if result.get("success"):
            # one sandbox per kernel: more than one when a cell killed the kernel
            records = sorted(sandboxes.glob("kernel-*/records"), key=lambda p: p.stat().st_mtime_ns)
            result["verdicts"] = apply(root, api.coursedir.db_url, assignment, student, records)
        return result
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(sandboxes, ignore_errors=True)
