"""The instructor's report: score distribution, per-test pass rates, the most
common diagnosed mistakes, and one line for every submission that had a problem.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from nbgrader.api import Gradebook  # noqa: E402

from . import course as C  # noqa: E402

MISTAKE = re.compile(r"CheckFailed: \[([a-z0-9-]+)\]")
# what an answer cell's failure says, for the report's "Points lost" lines
CELL_FAULTS = {
    "KernelDied:": "the kernel died in this cell (restarted for the next cells)",
    "CellTimeoutError": "this cell ran past the time limit and was interrupted",
    "MemoryError": "this cell ran out of memory (the jail's limit)",
}


def _first_error(text: str) -> str:
    """The first ``Name: message`` line of a cell's outputs, shortened."""
    for line in text.splitlines():
        if re.match(r"^[A-Za-z_]\w*(Error|Failed|Exception|Died|Exit)\b", line) or line.startswith("CheckFailed"):
            return line[:200]
    return text.strip().splitlines()[0][:200] if text.strip() else "no output"


def gather(root: Path, db_url: str, graded: list[tuple[str, str]]):
    """Scores, pass rates, diagnosed mistakes, and a line for every test that lost points
    or answer cell that failed, for the submissions in ``graded``."""
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
    for assignment, student in graded:
        outputs = C.autograded_outputs(root, assignment, student)
        for gid, text in outputs.items():
            for m in set(MISTAKE.findall(text)):
                mistakes[(assignment, gid, m)] += 1
            for marker, words in CELL_FAULTS.items():
                if marker in text:
                    lost.append(f"{student} / {assignment}: cell {gid}: {words}")
        for gid in failing.get((assignment, student), []):
            lost.append(f"{student} / {assignment}: {gid} scored 0: {_first_error(outputs.get(gid, ''))}")
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


def plot_scores(rows, path: Path) -> None:
    by_assignment = collections.defaultdict(list)
    for assignment, _, score, max_score, *_ in rows:
        by_assignment[assignment].append(100.0 * score / max_score if max_score else 0.0)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bins = list(range(0, 101, 10))
    ax.hist(list(by_assignment.values()), bins=bins, label=list(by_assignment), stacked=True)
    ax.set_xlabel("autograded score (% of the autograded points)")
    ax.set_ylabel("submissions")
    ax.set_title("Score distribution")
    if by_assignment:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(out: Path, rows, tests, mistakes, problems, notes, failures, lost=()) -> Path:
    """Write ``report.md`` and ``scores.png`` into ``out``; return the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    plot_scores(rows, out / "scores.png")
    lines = ["# Grading report", ""]
    from .jail import isolation

    lines += [f"{len(rows)} submissions autograded; {len(failures)} could not be autograded; "
              f"{len(problems)} other problems.", "", f"Kernel isolation: {isolation()}.", "",
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
