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
import re
from pathlib import Path

import nbformat
import pytest

from grading import course as C

ASSIGNMENTS = C.assignments()
SOLUTION = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*\n", re.M)


def answer_code(assignment: str) -> dict[str, str]:
    """The solution of each autograded answer cell, markers removed, by grade id."""
    nb = nbformat.read(C.PROJECT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    return {
        cell.metadata["nbgrader"]["grade_id"]: SOLUTION.sub("", cell.source)
        for cell in nb.cells
        if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("solution")
    }


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = C.make_course(tmp_path_factory.mktemp("course"))
    api = C.api(root)
    C.generate(api)
    return root, api


def submit(root: Path, assignment: str, student: str, answers: dict[str, str] | None) -> None:
    """Hand in the student version with ``answers`` typed into its answer cells (None: blank)."""
    nb = nbformat.read(root / "release" / assignment / f"{assignment}.ipynb", as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if answers and gid in answers:
            cell.source = answers[gid]
    dest = root / "submitted" / student / assignment
    dest.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest / f"{assignment}.ipynb")


def grade(root, api, assignment, student, answers):
    submit(root, assignment, student, answers)
    result = api.autograde(assignment, student)
    assert result["success"], result.get("error") or result.get("log")
    return C.scores(api, assignment, student), C.autograded_outputs(root, assignment, student)


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
            body = [line for line in code.splitlines() if line.strip() and not line.lstrip().startswith(("def ", "class ", '"""'))]
            assert not any(line in text for line in body[1:]), f"{a}:{gid} solution code leaked"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_gets_full_marks(course, assignment):
    root, api = course
    scores, _ = grade(root, api, assignment, "solver", answer_code(assignment))
    got = autograded(scores)
    assert got and all(s == m for s, m in got.values()), got


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_blank_notebook_gets_zero(course, assignment):
    root, api = course
    scores, outputs = grade(root, api, assignment, "blank", None)
    got = autograded(scores)
    assert got and all(s == 0 for s, _ in got.values()), got
    assert all("not-implemented" in outputs[g] or "NotImplementedError" in outputs[g] for g in got), outputs


# The catalog: (assignment, {answer cell: wrong code}, tests that must lose their points, mistake named).
FWD_ND = "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n    {body}\n"
FWD_4D = "def spatial_batchnorm_forward(x, gamma, beta, eps=1e-5):\n    {body}\n"
STAGED = "def batchnorm_backward_staged(dout, x, gamma, eps=1e-5):\n    {body}\n"
CLOSED = "def batchnorm_backward(dout, x, gamma, eps=1e-5):\n    {body}\n"
PRE = "inv = 1 / np.sqrt(x.var(0) + eps); xhat = (x - x.mean(0)) * inv\n    "


def layer(update: str, training_stats="x.mean(axes), x.var(axes)", update_in_eval=False) -> str:
    return f'''
class RunningBatchNorm:
    def __init__(self, num_features, momentum, eps, convention):
        self.m, self.eps, self.conv = momentum, eps, convention
        self.running_mean, self.running_var = np.zeros(num_features), np.ones(num_features)

    def __call__(self, x, training):
        axes = tuple(i for i in range(x.ndim) if i != 1)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        n = x.size // x.shape[1]
        mean, var = ({training_stats}) if training else (self.running_mean, self.running_var)
        if training or {update_in_eval}:
            bm, bv = x.mean(axes), x.var(axes)
            {update}
        return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + self.eps)
'''


RIGHT_UPDATE = (
    "w, bv = (self.m, bv * n / (n - 1)) if self.conv == 'torch' else (1 - self.m, bv)\n"
    "            self.running_mean = (1 - w) * self.running_mean + w * bm\n"
    "            self.running_var = (1 - w) * self.running_var + w * bv"
)

CATALOG = [
    ("ch02-forward", {"answer-forward-nd": FWD_ND.format(body="return gamma * (x - x.mean(0)) / np.sqrt(x.var(0, ddof=1) + eps) + beta")},
     {"test-forward-nd"}, "unbiased-variance"),
    ("ch02-forward", {"answer-forward-nd": FWD_ND.format(body="return gamma * (x - x.mean(0)) / (x.std(0) + eps) + beta")},
     {"test-forward-nd"}, "eps-outside-sqrt"),
    ("ch02-forward", {"answer-forward-nd": FWD_ND.format(body="m, v = x.mean(1, keepdims=True), x.var(1, keepdims=True)\n    return gamma * (x - m) / np.sqrt(v + eps) + beta")},
     {"test-forward-nd"}, "statistics-over-features"),
    ("ch02-forward", {"answer-forward-nchw": FWD_4D.format(body="g, b = gamma.reshape(1, -1, 1, 1), beta.reshape(1, -1, 1, 1)\n    return g * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + b")},
     {"test-forward-nchw"}, "statistics-over-batch-only"),
    ("ch02-forward", {"answer-forward-nchw": FWD_4D.format(body="m, v = x.mean((0, 2, 3), keepdims=True), x.var((0, 2, 3), keepdims=True)\n    return (x - m) / np.sqrt(v + eps)")},
     {"test-forward-nchw"}, "no-gamma-beta"),
    ("ch03-backward", {"answer-staged": STAGED.format(body=PRE + "return gamma * inv * (dout - xhat * (dout * xhat).mean(0)), (dout * xhat).sum(0), dout.sum(0)")},
     {"test-staged"}, "missing-mean-path"),
    ("ch03-backward", {"answer-closed": CLOSED.format(body=PRE + "return gamma * inv * (dout - dout.mean(0)), (dout * xhat).sum(0), dout.sum(0)")},
     {"test-closed"}, "missing-variance-path"),
    ("ch03-backward", {"answer-closed": CLOSED.format(body=PRE + "return gamma * inv * dout, (dout * xhat).sum(0), dout.sum(0)")},
     {"test-closed"}, "only-direct-path"),
    ("ch03-backward", {"answer-closed": CLOSED.format(body=PRE + "return gamma * inv * (dout - dout.mean(0) - xhat * (dout * xhat).mean(0)), dout * xhat, dout.sum(0)")},
     {"test-closed"}, "wrong-shape"),
    ("ch03-backward", {"answer-numgrad": "def numerical_gradient(f, x, dout, h=1e-5):\n    g = np.zeros_like(x)\n    base = np.sum(f(x) * dout)\n"
                       "    for i in np.ndindex(x.shape):\n        xp = x.copy(); xp[i] += h\n        g[i] = (np.sum(f(xp) * dout) - base) / h\n    return g\n"},
     {"test-numgrad"}, "forward-difference"),
    ("ch04-running-stats", {"answer-layer": layer(RIGHT_UPDATE.replace("(1 - self.m, bv)", "(self.m, bv)"))},
     {"test-layer-keras"}, "momentum-flipped"),
    ("ch04-running-stats", {"answer-layer": layer(RIGHT_UPDATE.replace("n / (n - 1)", "x.shape[0] / (x.shape[0] - 1)"))},
     {"test-layer-torch"}, "bessel-with-N"),
    ("ch04-running-stats", {"answer-layer": layer(RIGHT_UPDATE.replace("bv * n / (n - 1)", "bv"))},
     {"test-layer-torch"}, "bessel-flipped"),
    ("ch04-running-stats", {"answer-layer": layer("pass")},
     {"test-layer-torch", "test-layer-keras"}, "not-updated"),
    ("ch04-running-stats", {"answer-layer": layer(RIGHT_UPDATE, update_in_eval=True)},
     {"test-layer-torch", "test-layer-keras"}, "updated-in-inference"),
    ("ch04-running-stats", {"answer-layer": layer(RIGHT_UPDATE).replace(
        "if training else (self.running_mean, self.running_var)", "")},
     {"test-layer-torch", "test-layer-keras"}, "batch-stats-in-inference"),
    ("ch01-scaling", {"answer-standard": "def standardize_fit(X):\n    return X.mean(0), X.std(0, ddof=1)\n\n\n"
                      "def standardize_transform(X, stats):\n    return (X - stats[0]) / np.where(stats[1] == 0, 1.0, stats[1])\n"},
     {"test-standard"}, "unbiased-std"),
    ("ch01-scaling", {"answer-minmax": "def minmax_fit(X):\n    return X.min(0), X.max(0)\n\n\n"
                      "def minmax_transform(X, stats):\n    lo, hi = X.min(0), X.max(0)\n    return (X - lo) / np.where(hi == lo, 1.0, hi - lo)\n"},
     {"test-minmax"}, "fitted-on-test-data"),
]


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
