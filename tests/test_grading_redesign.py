"""The grader decides, never the learner's code (issue 9), on one class graded by the instructor's command.

Four classes of failure, each with several hand-ins written for this test:

1. correct answers written in unusual ways (an alias, ``functools.partial``,
   a decorator with and without ``functools.wraps``, a class with
   ``__call__``, a lambda, restore-by-arithmetic, einsum, loops, float64 or
   long-double internals) get full marks, in every assignment they apply to;
2. answers that change the caller's framework objects lose the test;
3. nothing of the hidden tests reaches the learner: their source, their
   seeds and their inputs appear in no feedback page, however the learner's
   code looks for them (IPython's history, ``inspect.stack()``, a global
   stash printed by a later cell, an exception carrying the inputs), and a
   lookup table built for the hidden seeds of an earlier course scores 0;
4. a fragile class run: cells that kill the kernel cost only their own
   test, however many there are; huge outputs are bounded; odd metadata
   does not stop the run.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nbformat
import pytest

from bncheck import probes
from grading import course as C
from grading import plan as P
from grading.__main__ import main
from grading.samples import answer_code, fill

ASSIGNMENTS = C.assignments()
TESTS = {a: sorted(P.test_cells(nbformat.read(C.PROJECT / "solutions" / a / f"{a}.ipynb", as_version=4)))
         for a in ASSIGNMENTS}
DEF = re.compile(r"^(def|class) (\w+)", re.M)

# ----------------------------------------------------- 1. unusual, correct ---
WRAPPERS = {
    "alias": "{name} = _impl_{name}\n",
    "partial": "import functools\n{name} = functools.partial(_impl_{name})\n",
    "decorator": ("def _deco(f):\n    def inner(*a, **k):\n        return f(*a, **k)\n    return inner\n"
                  "{name} = _deco(_impl_{name})\n"),
    "wraps": ("import functools\ndef _deco(f):\n    @functools.wraps(f)\n    def inner(*a, **k):\n        return f(*a, **k)\n"
              "    return inner\n{name} = _deco(_impl_{name})\n"),
    "callable": ("class _Callable:\n    def __init__(self, f):\n        self.f = f\n    def __call__(self, *a, **k):\n"
                 "        return self.f(*a, **k)\n{name} = _Callable(_impl_{name})\n"),
    "lambda": "{name} = lambda *a, **k: _impl_{name}(*a, **k)\n",
}


def wrapped(code: str, wrapper: str) -> str:
    """``code`` with each top-level function or class renamed ``_impl_<name>`` and ``<name>`` bound by ``wrapper``."""
    names = [m.group(2) for m in DEF.finditer(code)]
    for name in names:
        code = re.sub(rf"^(def|class) {name}\b", rf"\1 _impl_{name}", code, flags=re.M)
    return code + "\n" + "".join(WRAPPERS[wrapper].format(name=n) for n in names)


UNUSUAL = {
    ("ch02-forward", "einsum"): {"answer-forward-nd": """
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    n = x.shape[0]
    xc = x - np.einsum('nd->d', x) / n
    var = np.einsum('nd,nd->d', xc, xc) / n
    return np.einsum('d,nd->nd', gamma / np.sqrt(var + eps), xc) + beta
"""},
    ("ch02-forward", "loops"): {"answer-forward-nd": """
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    out = np.empty_like(x)
    for d in range(x.shape[1]):
        col = [float(v) for v in x[:, d]]
        m = sum(col) / len(col)
        v = sum((c - m) ** 2 for c in col) / len(col)
        for i, c in enumerate(col):
            out[i, d] = gamma[d] * (c - m) / (v + eps) ** 0.5 + beta[d]
    return out
""", "answer-forward-nchw": """
def spatial_batchnorm_forward(x, gamma, beta, eps=1e-5):
    N, C, H, W = x.shape
    out = np.empty_like(x)
    for c in range(C):
        vals = x[:, c].ravel()
        m = vals.sum() / vals.size
        v = ((vals - m) ** 2).sum() / vals.size
        out[:, c] = gamma[c] * (x[:, c] - m) / np.sqrt(v + eps) + beta[c]
    return out
"""},
    ("ch02-forward", "long-double"): {"answer-forward-nd": """
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    xl = x.astype(np.longdouble)
    out = gamma * (xl - xl.mean(0)) / np.sqrt(xl.var(0) + eps) + beta
    return out.astype(np.float64)
"""},
    ("ch03-backward", "restore-by-arithmetic"): {"answer-numgrad": """
def numerical_gradient(f, x, dout, h=1e-5):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        x[i] += h
        plus = np.sum(f(x) * dout)
        x[i] -= 2 * h
        minus = np.sum(f(x) * dout)
        x[i] += h
        grad[i] = (plus - minus) / (2 * h)
    return grad
"""},
    ("ch03-backward", "restore-flat"): {"answer-numgrad": """
def numerical_gradient(f, x, dout, h=1e-5):
    grad = np.zeros(x.size)
    flat = x.reshape(-1)
    for k in range(flat.size):
        np.add(flat[k:k + 1], h, out=flat[k:k + 1])
        plus = (f(x) * dout).sum()
        np.subtract(flat[k:k + 1], 2 * h, out=flat[k:k + 1])
        minus = (f(x) * dout).sum()
        flat[k] = flat[k] + h
        grad[k] = (plus - minus) / (2 * h)
    return grad.reshape(x.shape)
"""},
    ("ch03-backward", "einsum"): {"answer-closed": """
def batchnorm_backward(dout, x, gamma, eps=1e-5):
    n = x.shape[0]
    xc = x - np.einsum('nd->d', x) / n
    inv = 1 / np.sqrt(np.einsum('nd,nd->d', xc, xc) / n + eps)
    xhat = xc * inv
    dbeta = np.einsum('nd->d', dout)
    dgamma = np.einsum('nd,nd->d', dout, xhat)
    return (gamma * inv / n) * (n * dout - dbeta - xhat * dgamma), dgamma, dbeta
"""},
    ("ch06-pytorch", "float64-internals"): {"answer-fold": """
def fold_into_linear(linear, bn):
    W = linear.weight.detach().double()
    b = torch.zeros(linear.out_features, dtype=torch.float64) if linear.bias is None else linear.bias.detach().double()
    s = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    out = torch.nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        out.weight.copy_((W * s[:, None]).float())
        out.bias.copy_(((b - bn.running_mean.double()) * s + bn.bias.double()).float())
    return out
"""},
    ("ch09-normalization-family", "loops"): {"answer-ln-forward": """
def layernorm_forward(x, gamma, beta, eps=1e-5):
    rows = x.reshape(-1, x.shape[-1])
    xhat = np.empty_like(rows)
    inv = np.empty((rows.shape[0], 1))
    for i in range(rows.shape[0]):
        vals = [float(v) for v in rows[i]]
        m = sum(vals) / len(vals)
        v = sum((a - m) ** 2 for a in vals) / len(vals)
        inv[i, 0] = 1.0 / (v + eps) ** 0.5
        for j, a in enumerate(vals):
            xhat[i, j] = (a - m) * inv[i, 0]
    xhat = xhat.reshape(x.shape)
    return gamma * xhat + beta, (xhat, gamma, inv.reshape(x.shape[:-1] + (1,)))
""", "answer-gn-forward": """
def groupnorm_forward(x, gamma, beta, num_groups, eps=1e-5):
    N, C, H, W = x.shape
    K = C // num_groups
    out, xhat = np.empty_like(x), np.empty_like(x)
    inv = np.empty((N, num_groups, 1))
    for n in range(N):
        for g in range(num_groups):
            block = x[n, g * K:(g + 1) * K]
            m = block.sum() / block.size
            v = ((block - m) ** 2).sum() / block.size
            inv[n, g, 0] = 1 / np.sqrt(v + eps)
            for c in range(g * K, (g + 1) * K):
                xhat[n, c] = (x[n, c] - m) * inv[n, g, 0]
                out[n, c] = gamma[c] * xhat[n, c] + beta[c]
    return out, (xhat, gamma, inv, num_groups)
"""},
    ("ch09-normalization-family", "long-double-dict-cache"): {"answer-ln-forward": """
def layernorm_forward(x, gamma, beta, eps=1e-5):
    xl = x.astype(np.longdouble)
    out = gamma * (xl - xl.mean(-1, keepdims=True)) / np.sqrt(xl.var(-1, keepdims=True) + eps) + beta
    return out.astype(np.float64), {"x": x.copy(), "gamma": gamma.copy(), "eps": eps}
""", "answer-ln-backward": """
def layernorm_backward(dout, cache):
    x, gamma, eps = (np.asarray(cache[k], dtype=np.longdouble) for k in ("x", "gamma", "eps"))
    xc = x - x.mean(-1, keepdims=True)
    inv = 1 / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)
    xhat = xc * inv
    d = dout * gamma
    dx = inv * (d - d.mean(-1, keepdims=True) - xhat * (d * xhat).mean(-1, keepdims=True))
    lead = tuple(range(dout.ndim - 1))
    return dx.astype(np.float64), (dout * xhat).sum(lead).astype(np.float64), dout.sum(lead)
""", "answer-gn-forward": """
class _Cache:
    def __init__(self, **kw):
        self.__dict__.update(kw)

def groupnorm_forward(x, gamma, beta, num_groups, eps=1e-5):
    N, C, H, W = x.shape
    xg = x.astype(np.longdouble).reshape(N, num_groups, -1)
    xc = xg - np.einsum('ngk->ng', xg)[..., None] / xg.shape[2]
    inv = 1 / np.sqrt(np.einsum('ngk,ngk->ng', xc, xc)[..., None] / xg.shape[2] + eps)
    xhat = (xc * inv).reshape(x.shape)
    out = np.einsum('c,nchw->nchw', gamma, xhat) + beta[:, None, None]
    return out.astype(np.float64), _Cache(xhat=xhat, gamma=gamma, inv=inv, G=num_groups)
""", "answer-gn-backward": """
def groupnorm_backward(dout, cache):
    N, C, H, W = dout.shape
    d = np.einsum('c,nchw->nchw', cache.gamma, dout).reshape(N, cache.G, -1)
    xg = cache.xhat.reshape(N, cache.G, -1)
    m = xg.shape[2]
    dx = cache.inv / m * (m * d - d.sum(2, keepdims=True) - xg * np.einsum('ngk,ngk->ng', d, xg)[..., None])
    dgamma = np.einsum('nchw,nchw->c', dout, cache.xhat)
    return dx.reshape(dout.shape).astype(np.float64), dgamma.astype(np.float64), dout.sum((0, 2, 3))
"""},
}

# ----------------------------------------------- 2. the caller's objects ---
CHANGES_CALLER = {
    "fold-leaves-bn-in-eval": "def fold_into_linear(linear, bn):\n    bn.eval()\n    return _right(linear, bn)\n",
    "fold-converts-to-double": ("import copy\ndef fold_into_linear(linear, bn):\n    linear.double()\n"
                                "    return _right(copy.deepcopy(linear).float(), bn)\n"),
    "fold-freezes-caller": ("def fold_into_linear(linear, bn):\n    for p in linear.parameters():\n"
                            "        p.requires_grad_(False)\n    return _right(linear, bn)\n"),
}

# ------------------------------------------------------- 3. hidden leaks ---
A3 = "ch02-forward"
RIGHT_FWD = answer_code(A3)["answer-forward-nd"]
LEAKS = {
    "history": ({}, "import IPython\nprint(In)\nprint(Out)\nprint(IPython.get_ipython().history_manager.input_hist_raw)\n"),
    "stack": ({"answer-forward-nd": """
import inspect, sys
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    for frame in inspect.stack():
        print(frame.filename, frame.code_context, {k: repr(v)[:300] for k, v in frame.frame.f_locals.items()})
    print(sys._getframe(1).f_code.co_consts, x.tolist(), file=sys.stderr)
    return gamma * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + beta
"""}, "print('done')\n"),
    "stash": ({"answer-forward-nd": """
SEEN = []
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    SEEN.append((x.tolist(), eps))
    open('stash.txt', 'a').write(repr(x.tolist()))
    return gamma * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + beta
"""}, "import bncheck.probes as p\nprint(SEEN)\nprint(p._BOUND)\nprint(open('stash.txt').read())\n"),
    "raise-inputs": ({"answer-forward-nd": """
SEEN = []
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    SEEN.append(1)
    if len(SEEN) > 1:
        raise ValueError(repr((x.tolist(), eps)))
    return gamma * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + beta
"""}, "print(SEEN)\n"),
}


def lookup_table() -> str:
    """A table of the right outputs for the visible seed and the hidden seeds a course once shipped in its source."""
    from bnlib import batchnorm_forward

    table = {}
    for seed in (0, 101, 202, 303, 404, 505):
        x, gamma, beta, eps = probes.make_inputs(seed, "ND")
        table[round(float(x[0, 0]), 9)] = batchnorm_forward(x, gamma, beta, eps=eps)[0].tolist()
    return (f"TABLE = {table!r}\n"
            "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n"
            "    return np.array(TABLE.get(round(float(x[0, 0]), 9), np.zeros(x.shape).tolist()))\n")


# ----------------------------------------------------------- 4. fragile ---
A4 = "ch03-backward"
RIGHT3 = answer_code(A4)
KILL = "import os\nos._exit(3)\n"
SEGV = "import ctypes\nctypes.string_at(0)\n"  # a crash (a signal to itself would not do: the jailed kernel is PID 1)
HUGE = 20_000_000
FRAGILE = {
    "two-killers": ({"answer-staged": KILL, "answer-closed": SEGV}, {"test-staged", "test-closed"}),
    "killer-and-loop": ({"answer-staged": KILL, "answer-closed": "while True:\n    pass\n"}, {"test-staged", "test-closed"}),
    "killer-and-hidden-killer": ({"answer-staged": SEGV, "answer-closed": RIGHT3["answer-closed"] + """
_calls = []
_right_closed = batchnorm_backward
def batchnorm_backward(dout, x, gamma, eps=1e-5):
    _calls.append(1)
    if len(_calls) > 1:
        import os
        os._exit(4)
    return _right_closed(dout, x, gamma, eps)
"""}, {"test-staged", "test-closed"}),
    "huge-error-in-answer": ({"answer-staged": RIGHT3["answer-staged"] + f"\nraise ValueError('x' * {HUGE})\n"}, set()),
    "huge-print-in-answer": ({"answer-staged": RIGHT3["answer-staged"] + f"\nprint('y' * {HUGE})\n"}, set()),
    "huge-error-in-check": ({"answer-staged": f"def batchnorm_backward_staged(dout, x, gamma, eps=1e-5):\n"
                                             f"    raise ValueError('z' * {HUGE})\n"}, {"test-staged"}),
}


def _write(src: Path, student: str, assignment: str, nb) -> None:
    nbformat.write(nb, src / f"{student}_{assignment}.ipynb")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    src = tmp_path_factory.mktemp("class")
    students: dict[str, str] = {}
    for a in ASSIGNMENTS:
        right = answer_code(a)
        for w in WRAPPERS:
            student = f"{w}-{a}"
            students[student] = a
            _write(src, student, a, fill(C.PROJECT, a, {g: wrapped(code, w) for g, code in right.items()}))
    for (a, name), answers in UNUSUAL.items():
        students[f"{name}-{a}"] = a
        _write(src, f"{name}-{a}", a, fill(C.PROJECT, a, answer_code(a) | answers))
    right6 = answer_code("ch06-pytorch")
    helper = right6["answer-fold"].replace("def fold_into_linear(", "def _right(") + "\n"
    for name, code in CHANGES_CALLER.items():
        students[name] = "ch06-pytorch"
        _write(src, name, "ch06-pytorch", fill(C.PROJECT, "ch06-pytorch", right6 | {"answer-fold": helper + code}))
    for name, (answers, added) in LEAKS.items():
        nb = fill(C.PROJECT, A3, answer_code(A3) | answers)
        nb.cells.append(nbformat.v4.new_code_cell(added))
        students[f"leak-{name}"] = A3
        _write(src, f"leak-{name}", A3, nb)
    students["lookup"] = A3
    _write(src, "lookup", A3, fill(C.PROJECT, A3, answer_code(A3) | {"answer-forward-nd": lookup_table()}))
    for name, (answers, _) in FRAGILE.items():
        students[name] = A4
        _write(src, name, A4, fill(C.PROJECT, A4, RIGHT3 | answers))
    for name, value in {"meta-null": None, "meta-list": [], "meta-string": "x"}.items():
        nb = fill(C.PROJECT, A4, RIGHT3)
        nb.cells[0].metadata["nbgrader"] = value
        students[name] = A4
        _write(src, name, A4, nb)
    course = tmp_path_factory.mktemp("course")
    assert main([str(src), "--course", str(course), "--jobs", "2", "--timeout", "15"]) == 0
    scores = {}
    with open(course / "grades.csv") as f:
        for row in csv.DictReader(f):
            key = (row["assignment"], row["student_id"])
            assert key not in scores, f"grades.csv has two rows for {key}"
            scores[key] = row
    return course, students, scores, (course / "report.md").read_text()


def _scores(graded, student):
    course, students, _, _ = graded
    got = C.scores(C.api(course), students[student], student)
    return {g: s for g, s in got.items() if g.startswith("test-")}


def test_every_hand_in_is_graded_once(graded):
    course, students, scores, _ = graded
    with C.Gradebook(C.api(course).coursedir.db_url) as gb:
        subs = [(s.assignment.name, s.student.id) for a in gb.assignments for s in a.submissions]
    assert sorted(subs) == sorted((a, s) for s, a in students.items())
    assert set(scores) >= set(subs)  # nbgrader's CSV has a row for every student and assignment, handed in or not


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_a_right_answer_under_any_name_or_wrapper_gets_full_marks_in_every_assignment(graded, wrapper):
    for a in ASSIGNMENTS:
        got = _scores(graded, f"{wrapper}-{a}")
        assert set(got) == set(TESTS[a]) and all(s == m for s, m in got.values()), (a, got)


@pytest.mark.parametrize("a, name", sorted(UNUSUAL))
def test_an_unusual_right_answer_gets_full_marks(graded, a, name):
    got = _scores(graded, f"{name}-{a}")
    assert all(s == m for s, m in got.values()), got


@pytest.mark.parametrize("name", sorted(CHANGES_CALLER))
def test_an_answer_that_changes_the_callers_objects_loses_that_test_only(graded, name):
    got = _scores(graded, name)
    assert got["test-fold"][0] == 0, got
    assert all(s == m for g, (s, m) in got.items() if g != "test-fold"), got
    course, _, _, report = graded
    assert f"- {name} / ch06-pytorch: test-fold scored 0: [modified-input]" in report


def _feedback(course: Path, student: str, a: str) -> str:
    return (course / "feedback" / student / a / f"{a}.html").read_text(encoding="utf-8")


def _hidden_secrets(course: Path, a: str) -> list[str]:
    """Texts that would show a hidden test: its seeds and its inputs' first digits."""
    plan = P.plan(course / "solutions" / a / f"{a}.ipynb", P.course_secret(course))
    found = []
    for cell in plan.values():
        for check in cell.checks:
            if check.hidden:
                params = json.loads(check.params)
                found.append(str(params["seed"]))
                x, *_ = probes.make_inputs(params["seed"], params["layout"], params.get("shape"))
                found.append(repr(float(x.flat[0]))[:7])
    return found


@pytest.mark.parametrize("name", sorted(LEAKS))
def test_no_hidden_test_source_seed_or_input_reaches_the_feedback(graded, name):
    course, _, _, _ = graded
    page = _feedback(course, f"leak-{name}", A3)
    for text in ("HIDDEN", "hidden_seed", "grader_call", "course_secret"):
        assert text not in page, f"{name}: the feedback shows {text!r}"
    secrets = _hidden_secrets(course, A3)
    leaked = [s for s in secrets if s in page]
    assert not leaked, f"{name}: the feedback shows hidden seeds or inputs {leaked}"
    got = _scores(graded, f"leak-{name}")
    if name == "raise-inputs":
        assert got["test-forward-nd"][0] == 0 and got["test-forward-nchw"][0] == 3, got
    else:
        assert all(s == m for s, m in got.values()), got


def test_the_course_secret_stays_outside_the_kernel_and_the_feedback(graded):
    course, _, _, _ = graded
    secret = (course / P.SECRET_NAME).read_text().strip()
    assert oct((course / P.SECRET_NAME).stat().st_mode & 0o777) == "0o600"
    for page in (course / "feedback").rglob("*.html"):
        assert secret not in page.read_text(encoding="utf-8"), page


def test_a_lookup_table_of_an_earlier_courses_hidden_seeds_scores_zero(graded):
    got = _scores(graded, "lookup")
    assert got["test-forward-nd"][0] == 0 and got["test-forward-nchw"][0] == 3, got


@pytest.mark.parametrize("name", sorted(FRAGILE))
def test_a_cell_that_kills_or_floods_costs_only_its_own_test(graded, name):
    course, _, _, report = graded
    _, zero = FRAGILE[name]
    got = _scores(graded, name)
    for t in TESTS[A4]:
        want = 0.0 if t in zero else got[t][1]
        assert got[t][0] == want, f"{name}: {t} scored {got[t][0]}, expected {want}"
    lines = [line for line in report.splitlines() if line.startswith(f"- {name} / ")]
    lost = {t for t in TESTS[A4] for line in lines if f": {t} scored 0:" in line}
    assert lost == zero, lines
    autograded = course / "autograded" / name / A4 / f"{A4}.ipynb"
    assert autograded.stat().st_size < 1_000_000, f"{name}: autograded notebook of {autograded.stat().st_size} bytes"
    assert _feedback(course, name, A4).__len__() < 2_000_000


@pytest.mark.parametrize("name", ["meta-null", "meta-list", "meta-string"])
def test_odd_nbgrader_metadata_does_not_stop_the_class(graded, name):
    got = _scores(graded, name)
    assert all(s == m for s, m in got.values()), got
