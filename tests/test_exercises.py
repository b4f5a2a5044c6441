"""The graded exercises, graded by the real nbgrader through its Python API.

- every solution notebook autogrades to full marks, every blank student
  version to zero (without crashing the run);
- the committed student versions (``release/``) are exactly what nbgrader
  generates from ``solutions/`` today;
- a catalog of realistic wrong answers: each loses the points of the test
  aimed at it, keeps all the others, and its feedback names the mistake.
"""

from __future__ import annotations

import filecmp
from pathlib import Path

import nbformat
import pytest

from grading import course as C
from grading import jail, judge
from grading.samples import CATALOG, answer_code, fill

ASSIGNMENTS = C.assignments()


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = C.make_course(tmp_path_factory.mktemp("course"))
    api = C.api(root)
    C.generate(api)
    return root, api


def submit(root: Path, assignment: str, student: str, answers: dict[str, str] | None) -> None:
    """Hand in the student version with ``answers`` typed into its answer cells (None: blank)."""
    dest = root / "submitted" / student / assignment
    dest.mkdir(parents=True, exist_ok=True)
    nbformat.write(fill(root, assignment, answers), dest / f"{assignment}.ipynb")


def grade(root, api, assignment, student, answers):
    submit(root, assignment, student, answers)
    result = judge.autograde(api, assignment, student)
    assert result["success"], result.get("error") or result.get("log")
    return C.scores(api, assignment, student), C.autograded_outputs(root, assignment, student)


def stderr_of(root, assignment, student):
    """Text of every stderr stream in the autograded notebook, by grade id (or cell index)."""
    nb = nbformat.read(root / "autograded" / student / assignment / f"{assignment}.ipynb", as_version=4)
    return {
        cell.metadata.get("nbgrader", {}).get("grade_id", i): o.get("text", "")
        for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
        for o in cell.get("outputs", []) if o.get("output_type") == "stream" and o.get("name") == "stderr"
    }


def autograded(scores):
    """Scores of the autograded test cells (written answers are graded by hand)."""
    return {gid: s for gid, s in scores.items() if gid.startswith("test-")}


def test_every_assignment_has_graded_tests_and_a_written_answer():
    for a in ASSIGNMENTS:
        nb = nbformat.read(C.PROJECT / "solutions" / a / f"{a}.ipynb", as_version=4)
        meta = [c.metadata.get("nbgrader", {}) for c in nb.cells]
        assert sum(1 for m in meta if m.get("grade") and not m.get("solution")) >= 2, a
        assert any(m.get("grade") and m.get("solution") for m in meta), f"{a} has no manually graded answer"
        tests = [c.source for c, m in zip(nb.cells, meta) if m.get("grade") and not m.get("solution")]
        assert all("### BEGIN HIDDEN TESTS" in t for t in tests), f"{a}: a test cell has no hidden tests"


def test_committed_student_versions_are_what_nbgrader_generates(course):
    root, _ = course
    for a in ASSIGNMENTS:
        generated = root / "release" / a / f"{a}.ipynb"
        committed = C.PROJECT / "release" / a / f"{a}.ipynb"
        assert committed.exists(), f"release/{a} is missing: run `make release`"
        assert filecmp.cmp(generated, committed, shallow=False), (
            f"release/{a}/{a}.ipynb differs from what nbgrader generates from solutions/: run `make release`"
        )


def test_student_versions_hold_no_solution_or_hidden_test(course):
    root, _ = course
    for a in ASSIGNMENTS:
        text = (root / "release" / a / f"{a}.ipynb").read_text()
        assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
        for gid, code in answer_code(a).items():
            body = [line for line in code.splitlines()
                    if line.strip() and not line.lstrip().startswith(("def ", "class ", '"""'))]
            assert not any(line in text for line in body[1:]), f"{a}:{gid} solution code leaked"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_gets_full_marks(course, assignment):
    root, api = course
    scores, _ = grade(root, api, assignment, "solver", answer_code(assignment))
    got = autograded(scores)
    assert got and all(s == m for s, m in got.values()), got
    # a framework's log line on stderr would zero a test cell: none may appear anywhere
    assert stderr_of(root, assignment, "solver") == {}


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_blank_notebook_gets_zero(course, assignment):
    root, api = course
    scores, outputs = grade(root, api, assignment, "blank", None)
    got = autograded(scores)
    assert got and all(s == 0 for s, _ in got.values()), got
    assert all("not-implemented" in outputs[g] or "NotImplementedError" in outputs[g] for g in got), outputs


@pytest.mark.parametrize("assignment, wrong, losing, mistake", CATALOG, ids=[f"{c[0]}:{c[3]}" for c in CATALOG])
def test_wrong_answer_loses_only_the_points_aimed_at_it(course, assignment, wrong, losing, mistake):
    root, api = course
    answers = answer_code(assignment) | wrong
    student = f"wrong-{mistake}"
    scores, outputs = grade(root, api, assignment, student, answers)
    got = autograded(scores)
    for gid, (score, max_score) in got.items():
        if gid in losing:
            assert score == 0, f"{gid} kept {score} points for a {mistake} answer"
            assert f"[{mistake}]" in outputs[gid], f"feedback of {gid} does not name {mistake}:\n{outputs[gid][-800:]}"
        else:
            assert score == max_score, f"{gid} lost points for a {mistake} answer aimed elsewhere"


TORCH_LAYERNORM = """
import torch
def layernorm_forward(x, gamma, beta, eps=1e-5):
    t = torch.nn.functional.layer_norm(torch.from_numpy(x), x.shape[-1:], torch.from_numpy(gamma),
                                       torch.from_numpy(beta), eps)
    return t.numpy(), None
"""


@pytest.mark.skipif(jail.isolation() != "full", reason=f"the jail's namespaces are not available here: {jail.isolation()}")
def test_a_numpy_only_assignment_cannot_import_a_framework_when_graded(course):
    """Chapter 9's exercise is numpy only: a layer norm handed to PyTorch fails at `import torch` in the graded
    kernel, costing the tests that call it (forward and backward of layer norm) and nothing else."""
    root, api = course
    a = "ch09-normalization-family"
    assert jail.frameworks_of(root / "solutions" / a / f"{a}.ipynb") == ()
    scores, outputs = grade(root, api, a, "torch-user", answer_code(a) | {"answer-ln-forward": TORCH_LAYERNORM})
    got = autograded(scores)
    lost = {"test-ln-forward", "test-ln-backward"}
    assert {g for g, (s, m) in got.items() if s == 0} == lost, got
    assert all(s == m for g, (s, m) in got.items() if g not in lost), got
    assert "numpy only" in outputs["answer-ln-forward"], outputs["answer-ln-forward"]
