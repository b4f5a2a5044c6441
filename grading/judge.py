"""Judge a check's arrays in the grader's process; write the verdicts as outputs.

The probe in the kernel returns, for one check the grader called, the
learner's answer as plain arrays (``bncheck.probes.encode``) or the reason it
has none (``[mistake, message]``). Everything in that text was written by a
process the learner's code ran in, so it is read as untrusted: a size cap, a
strict shape, float64 arrays only, mistake names from the probes' own list.
:func:`verdict` then judges the arrays with bnlib's reference
(:func:`bncheck.judges.judge`), here, and returns a :class:`~grading.plan.Verdict`.

For a hidden check the learner's feedback gets the mistake's name and a fixed
sentence, never the message: a message can carry text the learner's code
chose (an exception's message, a shape it returned, a value it printed into a
number), and a hidden test's inputs must not travel back that way.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from nbformat import NotebookNode

from bncheck import judges
from bncheck.probes import CheckFailed

from .plan import Check, Verdict

MAX_RECORD = 4 << 20  # characters of one check's reply
MAX_REPLY = 16 << 20  # characters of one round trip's reply (several checks)
MAX_ARRAY = 1 << 20  # values of one recorded array
MAX_MESSAGE = 2000
# The mistakes a probe may report from the kernel (anything else there is malformed).
PROBE_MISTAKES = frozenset({
    "returned-none", "not-an-array", "wrong-dtype", "wrong-shape", "not-finite", "not-implemented",
    "modified-input", "wrong-return", "missing-attribute", "layer-already-built", "not-a-batchnorm-layer",
    "not-a-batchnorm1d", "not-a-linear", "not-an-int", "returned-class", "returned-tensor", "raised", "did-not-run",
})
PROBLEMS = {  # why the grader's call gave no record
    "kernel-died": "the kernel died while this check called your code (os._exit, a crash, too much memory)",
    "timeout": "your code ran past the time limit during this check",
    "not-bound": "the check could not run: the kernel died before it, or the test cell never ran",
    "no-result": "the check returned no result (did your code replace the display hook or the check itself?)",
    "budget": "not run: the submission used up its time budget before this check",
}
HIDDEN_TEXT = ("failed on a hidden test (other shapes and values than the visible test). The name in brackets says "
               "what went wrong; run your function on other inputs than the visible ones and compare with the chapter.")


class Malformed(ValueError):
    """A reply from the kernel that is not what the probe writes."""


def _array(name, entry) -> np.ndarray:
    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list) and isinstance(entry[1], str)):
        raise Malformed(f"array {name!r}: expected [shape, base64 text]")
    shape = entry[0]
    if len(shape) > 8 or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_ARRAY for d in shape):
        raise Malformed(f"array {name!r}: bad shape")
    size = math.prod(shape)
    if size > MAX_ARRAY:
        raise Malformed(f"array {name!r}: too large")
    try:
        raw = base64.b64decode(entry[1], validate=True)
    except (binascii.Error, ValueError):
        raise Malformed(f"array {name!r}: not base64") from None
    if len(raw) != 8 * size:
        raise Malformed(f"array {name!r}: {len(raw)} bytes for shape {shape}")
    return np.frombuffer(raw, dtype="<f8").astype(np.float64).reshape(shape)


def decode(text: str) -> tuple[dict[str, np.ndarray], tuple[str, str] | None]:
    """``(results, failure)`` from a probe's reply; raises :class:`Malformed`."""
    if not isinstance(text, str) or len(text) > MAX_RECORD:
        raise Malformed("not a reply of the probe's size")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise Malformed("not JSON") from None
    if not isinstance(data, dict) or set(data) != {"results", "failure"} or not isinstance(data["results"], dict):
        raise Malformed("not the probe's record")
    failure = data["failure"]
    if failure is not None:
        if not (isinstance(failure, list) and len(failure) == 2 and all(isinstance(f, str) for f in failure)):
            raise Malformed("failure: expected [mistake, message]")
        if failure[0] not in PROBE_MISTAKES:
            raise Malformed("failure: not a mistake the probes name")
        failure = (failure[0], failure[1][:MAX_MESSAGE])
    results = {}
    for name, entry in data["results"].items():
        if not (isinstance(name, str) and name.isidentifier() and len(name) <= 40):
            raise Malformed("bad array name")
        results[name] = _array(name, entry)
    return results, failure


def split_replies(text: str, n: int) -> list[str] | None:
    """The ``n`` replies of one round trip (``bncheck.probes.grader_calls``), or None if it is not that."""
    try:
        replies = json.loads(text)
    except (ValueError, RecursionError, TypeError):
        return None
    if not (isinstance(replies, list) and len(replies) == n and all(isinstance(r, str) for r in replies)):
        return None
    return replies


def _judged(check: Check, text: str | None, problem: str | None, judge=judges) -> tuple[str | None, str]:
    """``(mistake, message)``; mistake None when the check passed. ``judge`` has :mod:`bncheck.judges`'s
    ``judge`` and ``judge_partial`` (a :class:`grading.remote_judge.RemoteJudge`, say)."""
    if problem is not None:
        if problem.startswith("error:"):
            ename = problem.split(":", 1)[1] or "an error"
            names = " and ".join(f"`{t}`" for t in check.targets)
            return "did-not-run", (f"the check could not call {names} ({ename}): run the cell that defines it, "
                                   "and keep its name")
        mistake = problem if problem in ("kernel-died", "timeout", "budget") else "did-not-run"
        return mistake, PROBLEMS.get(problem, PROBLEMS["no-result"])
    try:
        results, failure = decode(text)
    except Malformed as e:
        return "malformed-result", f"the check's record could not be read ({e})"
    if failure is not None:
        try:  # what the check recorded before it failed (a backward check's forward output) may name the cause
            judge.judge_partial(check.kind, json.loads(check.params), results)
        except CheckFailed as e:
            return e.mistake or "wrong-values", e.message
        except Exception:  # noqa: BLE001 - a partial record the judge cannot use: the failure stands
            pass
        return failure
    try:
        judge.judge(check.kind, json.loads(check.params), results)
    except CheckFailed as e:
        return e.mistake or "wrong-values", e.message
    except Exception as e:  # noqa: BLE001 - results the judge cannot use are wrong results
        return "malformed-result", f"the recorded result could not be judged ({getattr(e, 'name', type(e).__name__)})"
    return None, ""


def verdict(check: Check, text: str | None, problem: str | None = None, judge=judges) -> Verdict:
    """The judge's word on ``check``, from the probe's reply ``text`` or the ``problem`` that stopped it
    (``judge``: see :func:`_judged`)."""
    mistake, message = _judged(check, text, problem, judge)
    if mistake is not None and check.hidden:
        message = HIDDEN_TEXT
    return Verdict(check.cell, check.index, check.kind, check.hidden, mistake is None, mistake, message[:MAX_MESSAGE])


def failure_text(v: Verdict) -> str:
    return f"[{v.mistake}] {v.message}"


def cell_outputs(verdicts: list[Verdict]) -> list:
    """A test cell's outputs: one line if every check passed, else an error with the first failure."""
    visible = sum(not v.hidden for v in verdicts)
    hidden = len(verdicts) - visible
    failed = [v for v in verdicts if not v.passed]
    if not failed:
        return [NotebookNode(output_type="stream", name="stdout",
                             text=f"Graded: every check of this test passed ({visible} visible, {hidden} hidden).\n")]
    first = failed[0]
    return [NotebookNode(output_type="error", ename="CheckFailed", evalue=failure_text(first),
                         traceback=[f"CheckFailed: {failure_text(first)}",
                                    f"{len(failed)} of {len(verdicts)} checks of this test failed."])]


def run_record(course_root: Path, student: str, assignment: str) -> dict:
    """What the grader saved of one submission's run: ``cells`` (verdicts by test cell), ``over_budget``, ``kernel_deaths``."""
    path = Path(course_root) / "verdicts" / student / f"{assignment}.json"
    if not path.is_file():
        return {"cells": {}, "over_budget": None, "kernel_deaths": 0}
    return json.loads(path.read_text(encoding="utf-8"))


def read_verdicts(course_root: Path, student: str, assignment: str) -> dict[str, list[Verdict]]:
    """The verdicts saved by the grader for one submission (empty if none)."""
    cells = run_record(course_root, student, assignment)["cells"]
    return {gid: [Verdict(**v) for v in vs] for gid, vs in cells.items()}


def autograde(api, assignment: str, student: str) -> dict:
    """nbgrader's autograde of one submission: jailed kernels, checks called and judged by the grader.

    ``api`` is built by :func:`grading.course.api`; this run's kernels get a
    sandbox folder of their own, removed afterwards. Returns nbgrader's result
    dict (``success``, ``error``, ``log``) with ``verdicts`` added.
    """
    root = Path(api.coursedir.root)
    sandboxes = Path(tempfile.mkdtemp(prefix="bn-sub-"))
    os.chmod(sandboxes, 0o755)
    api.config.GradedExecute.sandbox_root = str(sandboxes)
    try:
        result = api.autograde(assignment, student)
        if result.get("success"):
            result["verdicts"] = read_verdicts(root, student, assignment)
        return result
    finally:
        shutil.rmtree(sandboxes, ignore_errors=True)
