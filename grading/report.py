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


def gather(root: Path, db_url: str, graded: list[tuple[str, str]]):
    """Scores and diagnosed mistakes of the submissions graded in this run."""
    rows, tests, mistakes = [], collections.defaultdict(lambda: [0, 0]), collections.Counter()
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
    for assignment, student in graded:
        for gid, text in C.autograded_outputs(root, assignment, student).items():
            for m in set(MISTAKE.findall(text)):
                mistakes[(assignment, gid, m)] += 1
    return rows, tests, mistakes


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


def write(out: Path, rows, tests, mistakes, problems, notes, failures) -> Path:
    """Write ``report.md`` and ``scores.png`` into ``out``; return the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    plot_scores(rows, out / "scores.png")
    lines = ["# Grading report", ""]
    lines += [f"{len(rows)} submissions autograded; {len(failures)} could not be autograded; "
              f"{len(problems)} other problems.", "", "![score distribution](scores.png)", ""]
    lines += ["## Scores", "", "| assignment | student | autograded | total so far |", "|---|---|---|---|"]
    lines += [f"| {a} | {s} | {sc:g} / {mx:g} | {tot:g} / {tmx:g} |" for a, s, sc, mx, tot, tmx in rows]
    lines += ["", "Total so far includes written answers, which score 0 until graded by hand (`nbgrader formgrader`).", ""]
    lines += ["## Pass rate per test", "", "| assignment | test | passed |", "|---|---|---|"]
    lines += [f"| {a} | {g} | {p} / {n} ({100 * p / n:.0f}%) |" for (a, g), (p, n) in sorted(tests.items())]
    lines += ["", "## Most common diagnosed mistakes", ""]
    if mistakes:
        lines += ["| assignment | test | mistake | submissions |", "|---|---|---|---|"]
        lines += [f"| {a} | {g} | {m} | {n} |" for (a, g, m), n in mistakes.most_common(15)]
    else:
        lines += ["None diagnosed."]
    lines += ["", "## Problems", ""]
    issues = [f"- {p.line()}" for p in failures + problems] + [f"- {n}" for n in notes]
    lines += issues or ["None."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
