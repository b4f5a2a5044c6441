"""Submissions that try to cheat or to break the grader, graded by the
instructor's command in one class with an honest student.

Each adversarial notebook answers chapter 3's exercise (staged backward,
closed-form backward, numerical gradient: three test cells) with right
answers except where it cheats or misbehaves. Each must end with zero for
what it cheats on, full marks for the rest, a clear line in the report, and
no effect on the honest student or the gradebook.

The isolation checks (files, network, the reference implementation) need the
jail's namespaces: root, and a system that allows them (``grading.jail.isolation``).
"""

from __future__ import annotations

import csv
import json
import socket
import threading

import nbformat
import numpy as np
import pytest

from grading import course as C
from grading import jail
from grading.__main__ import main
from grading.samples import answer_code, fill

A = "ch03-backward"
TESTS = ("test-staged", "test-closed", "test-numgrad")
RIGHT = answer_code(A)
STAGED = RIGHT["answer-staged"]
WRONG_STAGED = (
    "def batchnorm_backward_staged(dout, x, gamma, eps=1e-5):\n"
    "    return dout * 0.0, (dout * x).sum(0), dout.sum(0)\n"
)
FULL = jail.isolation() == "full"


def liar(extra: str, ret: str) -> str:
    return f"import numpy as np\n{extra}\ndef batchnorm_backward_staged(dout, x, gamma, eps=1e-5):\n    return {ret}\n"


LIAR_CLASSES = """
class Liar:
    def __eq__(self, other): return True
    def __array__(self, dtype=None, copy=None): raise RuntimeError('no values')
    def __float__(self): return 0.0
    def __len__(self): return 1
class Sub(np.ndarray):
    def __eq__(self, other): return np.ones(np.shape(other), bool)
    def __sub__(self, other): return np.zeros(np.shape(other))
    def __array_ufunc__(self, *a, **k): return np.zeros(1)
"""


def visible_only() -> str:
    """Hard-code the visible test's expected answer (what a learner could copy from a classmate)."""
    from bncheck.probes import backward_inputs
    from bnlib import batchnorm_backward, batchnorm_forward

    dout, x, gamma, eps = backward_inputs(0)
    _, cache = batchnorm_forward(x, gamma, np.zeros(x.shape[1]), eps=eps)
    dx, dg, db = batchnorm_backward(dout, cache)

    def lit(a):
        return f"np.array({a.tolist()!r})"

    return (f"import numpy as np\ndef batchnorm_backward_staged(dout, x, gamma, eps=1e-5):\n"
            f"    return {lit(dx)}, {lit(dg)}, {lit(db)}\n")


# name: (answers replacing the right ones, tests that must score 0, a fragment of the report's line)
CASES = {
    "eq-liar": ({"answer-staged": liar(LIAR_CLASSES, "Liar(), Liar(), Liar()")}, {"test-staged"}, "[not-an-array]"),
    "ndarray-subclass": ({"answer-staged": liar(LIAR_CLASSES, "np.zeros(x.shape).view(Sub), np.zeros(x.shape[1]).view(Sub), "
                                                               "np.zeros(x.shape[1]).view(Sub)")},
                         {"test-staged"}, "test-staged"),
    "visible-only": ({"answer-staged": visible_only()}, {"test-staged"}, "test-staged"),
    "patch-checker": ({"answer-staged": "import bncheck.probes as c\nc.check_backward = lambda *a, **k: None\n" + WRONG_STAGED},
                      {"test-staged", "test-closed"}, "[did-not-run]"),
    "patch-numpy": ({"answer-staged": "import numpy as np, builtins\nnp.allclose = lambda *a, **k: True\n"
                                      "np.testing.assert_allclose = lambda *a, **k: None\nbuiltins.AssertionError = KeyError\n"
                                      + WRONG_STAGED}, {"test-staged"}, "test-staged"),
    "patch-probes": ({"answer-staged": "import bncheck.probes as p\np._plain = lambda v, **k: v\n"
                                       "p._close = lambda *a, **k: True\np._call = lambda fn, *a, **k: fn(*a)\n"
                                       + WRONG_STAGED}, {"test-staged"}, "test-staged"),
    "call-reference": ({"answer-staged": "from bnlib import batchnorm_backward as _ref\n" + STAGED},
                       {"test-staged"}, "test-staged"),
    "os-exit": ({"answer-staged": "import os\nos._exit(1)\n"}, {"test-staged"}, "test-staged"),
    "kill-kernel": ({"answer-staged": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"},
                    {"test-staged"}, "test-staged"),
    "sys-exit": ({"answer-staged": "import sys\nsys.exit(0)\n"}, {"test-staged"}, "test-staged"),
    "endless-loop": ({"answer-staged": "while True:\n    pass\n"}, {"test-staged"}, "test-staged"),
    "huge-memory": ({"answer-staged": "import numpy as np\nhog = np.ones((400_000, 100_000))\n" + STAGED},
                    {"test-staged"}, "test-staged"),
    "fork-bomb": ({"answer-staged": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"},
                  {"test-staged"}, "test-staged"),
    "print-flood": ({"answer-staged": "print('x' * 5_000_000)\n" + STAGED}, set(), None),
}


def cell_edits(nb) -> None:
    """Delete the staged test, empty the closed-form test, and add a cell claiming 100 points."""
    cells = []
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid == "test-staged":
            continue
        if gid == "test-closed":
            cell.source = "print('all tests passed')"
            cell.metadata["nbgrader"]["points"] = 100
        cells.append(cell)
    bonus = nbformat.v4.new_code_cell("print('bonus')")
    bonus.metadata["nbgrader"] = {"schema_version": 3, "grade": True, "solution": False, "locked": True,
                                  "grade_id": "bonus", "points": 100}
    nb.cells = cells + [bonus]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    src = tmp_path_factory.mktemp("class")
    nbformat.write(fill(C.PROJECT, A, RIGHT), src / f"honest_{A}.ipynb")
    for name, (answers, _, _) in CASES.items():
        nbformat.write(fill(C.PROJECT, A, RIGHT | answers), src / f"{name}_{A}.ipynb")
    # wrong staged and closed answers, with the tests edited, deleted and padded
    nb = fill(C.PROJECT, A, RIGHT | {"answer-staged": WRONG_STAGED, "answer-closed": WRONG_STAGED.replace("_staged", "")})
    cell_edits(nb)
    nbformat.write(nb, src / f"edit-tests_{A}.ipynb")
    listener = Listener()
    secrets = snoop_code(tmp_path_factory, listener.port)
    nbformat.write(fill(C.PROJECT, A, RIGHT | {"answer-staged": secrets + STAGED}), src / f"snoop_{A}.ipynb")
    course = tmp_path_factory.mktemp("course")
    try:
        assert main([str(src), "--course", str(course), "--timeout", "10"]) == 0
    finally:
        listener.close()
    scores = {}
    with open(course / "grades.csv") as f:
        for row in csv.DictReader(f):
            assert row["student_id"] not in scores, f"grades.csv has two rows for {row['student_id']}"
            scores[row["student_id"]] = float(row["raw_score"])
    return course, scores, (course / "report.md").read_text(), listener


class Listener:
    """A TCP server on the grader's loopback: a jailed kernel must not reach it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
                self.connections += 1
                conn.close()
            except OSError:
                continue

    def close(self):
        self._stop = True
        self.thread.join(2)
        self.sock.close()


def snoop_code(tmp_path_factory, port: int) -> str:
    """An answer cell that reads and writes outside its sandbox and tries the network."""
    secret = tmp_path_factory.mktemp("instructor") / "secret.txt"
    secret.write_text("TOP-SECRET-SOLUTION")
    targets = [str(secret), str(C.PROJECT / "solutions" / A / f"{A}.ipynb"), str(C.PROJECT / "bnlib" / "functional.py")]
    return f"""
import os, socket
for path in {targets!r}:
    try:
        print('READ', path, open(path).read()[:40])
    except OSError as e:
        print('DENIED', path, type(e).__name__)
for path in {[str(C.PROJECT / 'pwned.txt'), str(secret.parent / 'pwned.txt')]!r}:
    try:
        open(path, 'w').write('pwned')
        print('WROTE', path)
    except OSError as e:
        print('DENIED-WRITE', path, type(e).__name__)
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=2)
    print('NETWORK OPEN')
except OSError as e:
    print('NETWORK CLOSED', type(e).__name__)
"""


def scores_of(course, student):
    api = C.api(course)
    return C.scores(api, A, student)


def test_the_honest_student_gets_full_marks(graded):
    course, _, _, _ = graded
    got = scores_of(course, "honest")
    assert all(got[t][0] == got[t][1] for t in TESTS), got


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_cheat_or_fault_scores_zero_where_it_cheats_and_full_marks_elsewhere(graded, name):
    course, _, report, _ = graded
    _, zero, fragment = CASES[name]
    got = scores_of(course, name)
    for t in TESTS:
        want = 0.0 if t in zero else got[t][1]
        assert got[t][0] == want, f"{name}: {t} scored {got[t][0]}, expected {want}"
    lines = [line for line in report.splitlines() if line.startswith(f"- {name} / ")]
    lost = {t for t in TESTS for line in lines if f": {t} scored 0:" in line}
    assert lost == zero, f"{name}: the report says {sorted(lost)} scored 0, expected {sorted(zero)}: {lines}"
    if fragment:
        assert any(fragment in line for line in lines), f"{name}: no report line with {fragment!r} in {lines}"


def test_edited_deleted_and_added_test_cells_change_nothing(graded):
    course, _, report, _ = graded
    assert "edit-tests / ch03-backward: cell test-closed: its grading metadata was changed; restored" in report
    assert "(bonus): not a cell of the assignment" in report
    got = scores_of(course, "edit-tests")
    assert set(got) >= set(TESTS) and "bonus" not in got, got
    assert got["test-staged"][0] == 0 and got["test-closed"][0] == 0 and got["test-closed"][1] == 3
    assert got["test-numgrad"][0] == got["test-numgrad"][1]


@pytest.mark.skipif(not FULL, reason=f"the jail's namespaces are not available here: {jail.isolation()}")
def test_the_kernel_reads_and_writes_nothing_outside_its_sandbox_and_has_no_network(graded):
    course, _, _, listener = graded
    nb = nbformat.read(course / "autograded" / "snoop" / A / f"{A}.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "TOP-SECRET" not in text and "READ" not in text and "WROTE" not in text, text
    assert text.count("DENIED") >= 5 and "NETWORK CLOSED" in text, text
    assert not (C.PROJECT / "pwned.txt").exists()
    assert listener.connections == 0
    got = scores_of(course, "snoop")
    assert all(got[t][0] == got[t][1] for t in TESTS), got


def test_the_gradebook_holds_exactly_one_submission_per_student(graded):
    course, scores, _, _ = graded
    expected = {"honest", "edit-tests", "snoop", *CASES}
    assert set(scores) == expected, json.dumps(sorted(scores))  # the fixture refused a repeated student row
    with C.Gradebook(C.api(course).coursedir.db_url) as gb:
        subs = [(s.student.id, s.assignment.name) for a in gb.assignments for s in a.submissions]
    assert sorted(subs) == sorted((s, A) for s in expected), subs
