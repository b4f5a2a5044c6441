"""The instructor's report: score distribution, per-test pass rates, the most
common diagnosed mistakes, and one line for every submission that had a problem.
"""

from __future__ import annotations

import collections
from pathlib import Path

import nbformat
from nbgrader.api import Gradebook

from .course import source_cell_metadata
from .judge import failure_text, read_verdicts

# what an answer cell's failure means, by the error the executor wrote (grading.execute), for "Points lost"
CELL_FAULTS = {
    "KernelDied": "the kernel died in this cell (restarted for the next cells)",
    "CellTimeoutError": "this cell ran past the time limit and was interrupted",
    "MemoryError": "this cell ran out of memory (the jail's limit)",
}


def _cell_faults(root: Path, assignment: str, student: str) -> list[tuple[str, str]]:
    """``(cell, error name)`` of every answer cell whose error is one of :data:`CELL_FAULTS`."""
    found = []
    for path in sorted((Path(root) / "autograded" / student / assignment).glob("*.ipynb")):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            meta = cell.metadata.get("nbgrader") or {}
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error" and out.get("ename") in CELL_FAULTS:
                    found.append((meta.get("grade_id") or f"{i + 1}", out["ename"]))
    return found


def gather(root: Path, db_url: str, graded: list[tuple[str, str]]):
    """Scores, pass rates, diagnosed mistakes, and a line for every test that lost points
    or answer cell that failed, for the submissions in ``graded``.

    Mistakes and messages come from the judge's verdicts (``verdicts/``, records
    written by the grader), not from the text of the notebooks' outputs.
    """
    rows, tests, mistakes = [], collections.defaultdict(lambda: [0, 0]), collections.Counter()
    lost: list[str] = []
    failing: dict[tuple[str, str], list[str]] = {}
    with Gradebook(db_url) as gb:
        for assignment, student in graded:
            sub = gb.find_submission(assignment, student)
            auto = {g.name: g for nb in sub.notebooks for g in nb.grades if g.cell.cell_type == "code"}
            score = sum(g.score for g in auto.values())
            max_score = sum(g.max_score for g in auto.values())
            rows.append((assignment, student, score, max_score, sub.score, sub.max_score))
            for gid, g in auto.items():
                tests[(assignment, gid)][0] += g.score == g.max_score
                tests[(assignment, gid)][1] += 1
            failing[(assignment, student)] = [gid for gid, g in auto.items() if g.score < g.max_score]
    order = {}  # the tests of a submission in the order of its notebook, whatever order the database returns them in
    for assignment, student in graded:
        if assignment not in order:
            order[assignment] = {gid: i for i, gid in enumerate(source_cell_metadata(root, assignment))}
        failing[(assignment, student)].sort(key=lambda gid, rank=order[assignment]: (rank.get(gid, len(rank)), gid))
    for assignment, student in graded:
        verdicts = read_verdicts(root, student, assignment)
        for gid, vs in verdicts.items():
            for m in sorted({v.mistake for v in vs if not v.passed}):
                mistakes[(assignment, gid, m)] += 1
        for gid, ename in _cell_faults(root, assignment, student):
            lost.append(f"{student} / {assignment}: cell {gid}: {CELL_FAULTS[ename]}")
        for gid in failing.get((assignment, student), []):
            first = next((v for v in verdicts.get(gid, []) if not v.passed), None)
            why = failure_text(first)[:200] if first else "no verdict recorded"
            lost.append(f"{student} / {assignment}: {gid} scored 0: {why}")
    return rows, tests, mistakes, lost


def submissions_in_gradebook(db_url: str) -> set[tuple[str, str]]:
    """(assignment, student) of every submission with grades in the gradebook."""
    with Gradebook(db_url) as gb:
        return {(sub.assignment.name, sub.student.id)
                for a in gb.assignments for sub in a.submissions
                if any(nb.grades for nb in sub.notebooks)}


def sort_csv(path: Path) -> None:
    """Sort nbgrader's grades.csv by assignment, then student (its own order is the gradebook's insertion order).

    nbgrader writes each row as its fields joined by commas, unquoted; the
    lines are reordered as they are, not rewritten.
    """
    lines = Path(path).read_text().splitlines()
    if not lines:
        return
    header = lines[0].split(",")
    key = [header.index("assignment"), header.index("student_id")]
    rows = sorted(lines[1:], key=lambda line: [line.split(",")[i] for i in key])
    Path(path).write_text("\n".join([lines[0], *rows]) + "\n")


def preload() -> None:
    """Do ahead what :func:`write` needs, in a thread while the workers grade: matplotlib's import (0.4 s), and
    the jail's probe (:func:`grading.jail.isolation`, a subprocess: 0.3 s), which the report names and which only
    the workers had run in this run."""
    from matplotlib.backends import backend_agg  # noqa: F401 - imported for write(), ahead of it
    from matplotlib.figure import Figure  # noqa: F401 - the same

    from .jail import isolation

    isolation()


def plot_scores(rows, path: Path) -> None:
    by_assignment = collections.defaultdict(list)
    for assignment, _, score, max_score, *_ in rows:
        by_assignment[assignment].append(100.0 * score / max_score if max_score else 0.0)
    # a Figure of its own, without pyplot (no backend, no global state; imported here, when the run's
    # grading is over, not by every grading process at its start)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    bins = list(range(0, 101, 10))
    ax.hist(list(by_assignment.values()), bins=bins, label=list(by_assignment), stacked=True)
    ax.set_xlabel("autograded score (% of the autograded points)")
    ax.set_ylabel("submissions")
    ax.set_title("Score distribution")
    if by_assignment:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write(out: Path, rows, tests, mistakes, problems, notes, failures, lost=(), log: Path | None = None) -> Path:
    """Write ``report.md`` and ``scores.png`` into ``out``; return the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    plot_scores(rows, out / "scores.png")
    lines = ["# Grading report", ""]
    from .jail import isolation

    lines += [f"{len(rows)} submissions autograded; {len(failures)} could not be autograded; "
              f"{len(problems)} other problems.", "", f"Kernel isolation: {isolation()}.", "",
              *([f"Warnings and messages of the libraries: `{log.name}` in the course folder.", ""] if log else []),
              "![score distribution](scores.png)", ""]
    lines += ["## Scores", "", "| assignment | student | autograded | total so far |", "|---|---|---|---|"]
    lines += [f"| {a} | {s} | {sc:g} / {mx:g} | {tot:g} / {tmx:g} |" for a, s, sc, mx, tot, tmx in rows]
    lines += ["", "Total so far includes written answers, which score 0 until graded by hand (`nbgrader formgrader`).", ""]
    lines += ["## Pass rate per test", "", "| assignment | test | passed |", "|---|---|---|"]
    lines += [f"| {a} | {g} | {p} / {n} ({100 * p / n:.0f}%) |" for (a, g), (p, n) in sorted(tests.items())]
    lines += ["", "## Most common diagnosed mistakes", ""]
    if mistakes:
        lines += ["| assignment | test | mistake | submissions |", "|---|---|---|---|"]
        lines += [f"| {a} | {g} | {m} | {n} |" for (a, g, m), n in sorted(mistakes.items(), key=lambda kv: (-kv[1], kv[0]))[:15]]
    else:
        lines += ["None diagnosed."]
    lines += ["", "## Points lost", "", "Why each test that lost points did (the message the learner sees in the feedback).", ""]
    lines += [f"- {line}" for line in lost] or ["None."]
    lines += ["", "## Problems", ""]
    issues = [f"- {p.line()}" for p in failures + problems] + [f"- {n}" for n in notes]
    lines += issues or ["None."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
