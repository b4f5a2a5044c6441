"""The instructor's grading command.

    python -m grading SUBMISSIONS [--roster students.txt] [--course DIR]

(``make grade SUBMISSIONS=...`` runs it in the project's environment.)
SUBMISSIONS is a folder or an LMS zip. The command collects the notebooks into
nbgrader's layout in the course folder (default ``_grading/``), autogrades
each one, writes feedback without hidden tests, exports ``grades.csv`` and
writes ``report.md`` with a score plot. A broken submission becomes a line in
the report; every other one is graded. Running it again re-grades the same
files to the same scores and keeps the gradebook (hand-graded written answers
included).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from . import collect as K
from . import course as C
from . import report as R


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m grading", description=__doc__.split("\n\n")[2])
    p.add_argument("submissions", type=Path, help="folder or .zip of handed-in notebooks")
    p.add_argument("--course", type=Path, default=C.PROJECT / "_grading", help="course folder to grade in (default: _grading/)")
    p.add_argument("--roster", type=Path, help="text file with one student id per line; others are reported, not graded")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    root = C.make_course(args.course)
    api = C.api(root)
    names = C.assignments(root)
    known = {a: C.source_grade_ids(root, a) for a in names}
    roster = None
    if args.roster:
        roster = {K.student_id(line) for line in args.roster.read_text().splitlines() if line.strip()}
    try:
        subs, problems = K.collect(args.submissions, known, roster)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    C.generate(api, sorted({s.assignment for s in subs}))
    graded, failures, notes = [], [], []
    for sub in tqdm(subs, desc="autograding", unit="notebook"):
        K.place(sub, root)
        notes += [f"{sub.student} / {sub.assignment}: {n}" for n in sub.notes]
        result = api.autograde(sub.assignment, sub.student)
        if not result.get("success"):
            failures.append(K.Problem(sub.student, sub.assignment, sub.source.name, "autograding failed: " + C.last_line(result)))
            continue
        feedback = api.generate_feedback(sub.assignment, sub.student)
        if not feedback.get("success"):
            failures.append(K.Problem(sub.student, sub.assignment, sub.source.name, "feedback failed: " + C.last_line(feedback)))
        graded.append((sub.assignment, sub.student))
    C.export_grades(api, root / "grades.csv")
    rows, tests, mistakes = R.gather(root, api.coursedir.db_url, graded)
    report = R.write(root, rows, tests, mistakes, problems, notes, failures)
    print(f"graded {len(graded)} of {len(subs)} notebooks; report: {report}; grades: {root / 'grades.csv'}; feedback: {root / 'feedback'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
