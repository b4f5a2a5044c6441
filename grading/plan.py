"""What the grader checks in a submission, decided on the grader's side alone.

:func:`plan` lists, for each test cell of an assignment's *source* notebook
(``solutions/``), the checks it makes: the cell's source runs here, in the
grader's process, with the probes in listing mode (nothing is called), and
each ``check_*`` call becomes a :class:`Check`: the test cell's grade id, the
position of the check in the cell, its kind, the names of the learner's
functions it takes, its parameters. Nothing of the submission is involved:
which test is running and what its record is called come from here, never
from the learner's objects (an alias, a ``functools.partial`` or a class
instance is judged on what it returns).

A hidden test's seed (``seed=HIDDEN`` in the source) becomes a number drawn
from the course's secret (:func:`course_secret`): a random key created on
first use and kept beside the gradebook, where no graded kernel can read it.
The same secret gives the same seeds on every run, so a regrade gives the
same grades; another course (another secret) gets other hidden inputs. The
seed reaches the kernel only inside the grader's call of that one check.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import keyword
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from bncheck import probes
from bncheck.registry import KINDS

SECRET_NAME = "course_secret"


@dataclass(frozen=True)
class Check:
    """One check a test cell makes, as the grader will call it."""

    cell: str  # the test cell's grade id
    index: int  # its position among the cell's checks
    kind: str  # a kind of bncheck.registry.KINDS
    targets: tuple[str, ...]  # names of the learner's functions or classes, in the notebook's namespace
    params: str  # the check's keyword arguments as JSON (a hidden seed filled in)
    hidden: bool

    def call_args(self, bound: str | None = None) -> str:
        """The check's arguments in the grader's call: ``(kind, targets, params)`` as Python source.

        ``bound``: the test cell whose objects the check calls (hidden checks run
        after the learner's last cell, on the objects the test cell saw).
        """
        targets = f"_p._BOUND[{bound!r}]" if bound else f"({', '.join(self.targets)},)"
        return f"({self.kind!r}, {targets}, {self.params!r})"


def bind_source(cell: CellPlan) -> str:
    """The code the grader runs in the kernel at a test cell: keep the objects its hidden checks will call."""
    return (f"_p = __import__('bncheck.probes', fromlist=['bind'])\n"
            f"_p.bind({cell.cell!r}, ({', '.join(cell.targets)},))")


def calls_source(checks: list[Check], bound: str | None = None) -> str:
    """The code the grader runs in the kernel for several checks at once (one round trip): a JSON list comes back."""
    args = ", ".join(c.call_args(bound) for c in checks)
    return f"_p = __import__('bncheck.probes', fromlist=['grader_calls'])\n_p.grader_calls([{args}])"


@dataclass
class Verdict:
    """The judge's word on one check; what the report and the feedback are made of."""

    cell: str
    index: int
    kind: str
    hidden: bool
    passed: bool
    mistake: str | None = None
    message: str = ""  # for the learner: never text the learner's code chose, for a hidden check

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class CellPlan:
    """The checks of one test cell, visible first, in the order the source makes them."""

    cell: str
    checks: list[Check] = field(default_factory=list)

    @property
    def targets(self) -> tuple[str, ...]:
        names: list[str] = []
        for c in self.checks:
            names += [t for t in c.targets if t not in names]
        return tuple(names)


def course_secret(course_root: Path) -> bytes:
    """The course's secret for hidden inputs, created on first use (``course_secret`` beside the gradebook, mode 0600)."""
    path = Path(course_root) / SECRET_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        text = path.read_text(encoding="ascii").strip()
        if len(text) < 32:
            raise ValueError(f"{path}: expected a secret of at least 32 hex digits; got {len(text)} characters") from None
        return bytes.fromhex(text)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    return course_secret(course_root)


def hidden_seed(secret: bytes, assignment: str, cell: str, index: int) -> int:
    """A hidden test's seed: HMAC-SHA256 of the check's place under the course's secret, 31 bits."""
    digest = hmac.new(secret, f"{assignment}\0{cell}\0{index}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class _Name(str):
    """A name the test cell refers to (a learner's function): only the name is recorded."""


class _Names(dict):
    """The test cell's namespace: builtins are themselves, any other unknown name is the learner's."""

    def __missing__(self, name):
        return _BUILTINS[name] if name in _BUILTINS else _Name(name)


_ALLOWED_IMPORTS = {"bncheck", "numpy"}


def _import(name, globals=None, locals=None, fromlist=(), level=0):
    """Imports a test cell may make while its checks are listed: the probes, numpy."""
    if level or name not in _ALLOWED_IMPORTS:
        raise ImportError(f"{name} is not imported while listing checks")
    return builtins.__import__(name, globals, locals, fromlist, level)


_BUILTINS = {**builtins.__dict__, "__import__": _import}


def test_cells(nb) -> dict[str, str]:
    """Source of each autograded test cell, by grade id."""
    out = {}
    for c in nb.cells:
        meta = c.metadata.get("nbgrader") or {}
        if c.cell_type == "code" and meta.get("grade") and not meta.get("solution"):
            out[meta["grade_id"]] = c.source
    return out


def _listed(gid: str, source: str, where: Path) -> list[tuple]:
    calls: list = []
    probes._COLLECT = calls
    try:
        exec(compile(source, f"<test cell {gid}>", "exec"), {"__builtins__": _BUILTINS}, _Names(print=lambda *a, **k: None))
    except Exception as e:
        raise RuntimeError(f"cannot list the checks of test cell {gid} of {where}: {e!r}") from e
    finally:
        probes._COLLECT = None
    return calls


def plan(source_notebook: Path, secret: bytes) -> dict[str, CellPlan]:
    """The checks of each test cell of ``source_notebook``, by grade id.

    A test cell that makes no check would be scored by its own output in the
    kernel; this course has none, and a cell whose checks cannot be listed,
    or that passes anything but a plain name of the learner's, is a defect
    of the assignment: it raises rather than leave that cell to the kernel.
    """
    source_notebook = Path(source_notebook)
    assignment = source_notebook.parent.name
    nb = nbformat.read(source_notebook, as_version=4)
    out = {}
    for gid, source in test_cells(nb).items():
        calls = _listed(gid, source, source_notebook)
        if not calls:
            raise RuntimeError(f"test cell {gid} of {source_notebook} makes no bncheck check; "
                               "every test cell of this course is judged by the grader")
        cell = CellPlan(gid)
        for index, (kind, targets, params) in enumerate(calls):
            if kind not in KINDS:
                raise RuntimeError(f"test cell {gid}: unknown check kind {kind!r}")
            bad = [t for t in targets if not (isinstance(t, _Name) and t.isidentifier() and not keyword.iskeyword(t))]
            if bad:
                raise RuntimeError(f"test cell {gid}: a check must be given the learner's names; got {bad!r}")
            hidden = params.get("seed") is probes.HIDDEN
            if hidden:
                params = params | {"seed": hidden_seed(secret, assignment, gid, index)}
            cell.checks.append(Check(gid, index, kind, tuple(str(t) for t in targets),
                                     json.dumps(params, sort_keys=True), hidden))
        out[gid] = cell
    return out
