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

Submissions are graded in parallel (``--jobs``, default: one per CPU). A run
that is killed halfway can simply be started again: the journal in the course
folder (``journal.jsonl``) lists every submission whose grading and feedback
finished, by the sha256 of its notebook, and those are not graded again
(``--regrade`` ignores the journal). The report and ``grades.csv`` always
cover every submission of the input, so a resumed run ends with the same
report as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import threading
from pathlib import Path

import nbformat
from tqdm import tqdm

from . import cleanup, jail, late, lms, logs
from . import collect as K
from . import course as C
from . import report as R
from . import runner as G
from .zygote import Zygote


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m grading", description=__doc__.split("\n\n")[2])
    p.add_argument("submissions", type=Path, help="folder or .zip of handed-in notebooks")
    p.add_argument("--course", type=Path, default=C.PROJECT / "_grading", help="course folder to grade in (default: _grading/)")
    p.add_argument("--roster", type=Path, help="text file with one student id per line; others are reported, not graded "
                   "(a line may add the student's LMS id, SIS id and name: 'id, LMS id, SIS id, name')")
    p.add_argument("--export", action="append", choices=lms.FORMATS, default=[],
                   help="also write the grades in this LMS's import format (grades-canvas.csv, grades-moodle.csv); "
                        "needs --roster with LMS ids; may be given twice")
    p.add_argument("--moodle-id-field", default="email", choices=lms.MOODLE_FIELDS,
                   help="the Moodle user field the roster's LMS ids are (default: email)")
    p.add_argument("--due", help="deadline, ISO 8601 (2026-11-20T23:59, UTC, or 2026-11-20T23:59+01:00): each hand-in's "
                                 "time (zip entry or file time, read in --due's offset) is compared with it; the report "
                                 "lists late hand-ins")
    p.add_argument("--late-penalty", default="0",
                   help="with --due: percent of the score taken per started day late (default: 0, none)")
    p.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1,
                   help="notebooks graded at the same time (default: number of CPUs)")
    p.add_argument("--regrade", action="store_true", help="grade every submission again, ignoring the journal of earlier runs")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one cell (or one check) may run (default: 120)")
    p.add_argument("--budget", type=float, default=300.0,
                   help="seconds one submission may take in its kernels, all cells together (default: 300); past it "
                        "the rest of that submission is not run, and the report says so")
    p.add_argument("--scheduler", help="grade on this Dask cluster (tcp://HOST:PORT): one task per hand-in, the jailed "
                                        "kernels on its workers; needs --db, a gradebook the workers reach")
    p.add_argument("--db", help="the gradebook's SQLAlchemy URL (postgresql://USER@HOST:PORT/DB; the password in "
                                "PGPASSWORD or ~/.pgpass, never on the command line); default: SQLite in the course folder")
    args = p.parse_args(argv)
    if args.db is not None:
        try:
            args.db = C.check_db_url(args.db)
        except ValueError as e:
            p.error(f"--db: {e}")
    if args.scheduler and (args.db is None or args.db.startswith("sqlite")):
        p.error(f"--scheduler: expected --db with a database every worker reaches (postgresql://USER@HOST:PORT/DB); "
                f"got {'no --db' if args.db is None else 'a SQLite file'}")
    if args.jobs < 1:
        p.error(f"--jobs: expected a positive number of processes; got {args.jobs}")
    if args.export and not args.roster:
        p.error(f"--export {args.export[0]}: expected --roster with each student's LMS id; got no --roster")
    try:
        args.due = late.parse_due(args.due) if args.due is not None else None
        args.late_penalty = late.parse_penalty(args.late_penalty)
    except ValueError as e:
        p.error(str(e))
    if args.late_penalty and args.due is None:
        p.error(f"--late-penalty {args.late_penalty:g}: expected --due with it; got no --due")
    for name in ("timeout", "budget"):
        if not getattr(args, name) > 0:
            p.error(f"--{name}: expected a positive number of seconds; got {getattr(args, name)}")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["formgrader"]:  # python -m grading formgrader [COURSE]: grade written answers by hand
        from . import formgrader
        return formgrader.main(argv[1:])
    args = parse(argv)
    run = cleanup.start()  # every temporary folder of the run in one, removed even if the run is killed
    pool = started = None
    try:
        root = C.make_course(args.course, db_url=args.db)
        log = root / logs.LOG_NAME
        logs.to_file(log)
        if args.jobs > 1 and not args.scheduler:  # one numpy kernel zygote for all the workers, started now;
            Zygote.share(run.folder)  # the workers start now and warm up while this process collects the hand-ins
            pool = G.start_pool(args.jobs, functools.partial(G.warm, log))
        if args.scheduler:  # the same on a cluster: its workers get ready while this process collects
            from . import cluster

            started = cluster.start(args.scheduler,
                                    on_refusal=lambda address, why: tqdm.write(f"{address}: {why}", file=sys.stderr))
        return _grade(args, root, log, pool, run.folder, started)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if started is not None:
            cluster.discard(started)
        Zygote.unshare()
        run.finish()


def _grade(args, root, log, pool, run_folder, started=None) -> int:
    api = C.api(root)
    names = C.assignments(root)
    cell_meta = {a: C.source_cell_metadata(root, a) for a in names}
    known = {a: set(meta) for a, meta in cell_meta.items()}
    roster, people = None, {}
    if args.roster:
        try:
            people = lms.read_roster(args.roster, K.student_id)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        roster = set(people)
    try:
        subs, problems = K.collect(args.submissions, known, roster, cell_meta)  # sanitized and checked for nbgrader
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    handed_in = sorted({s.assignment for s in subs})
    if pool is not None:  # the framework zygotes the class needs, one for all workers, importing while we go on
        for frameworks in jail.zygotes_needed(root, handed_in):
            Zygote.share(run_folder, frameworks)
    try:
        C.create_gradebook(api.coursedir.db_url)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's errors: a server not there, a database not made
        print(f"error: the gradebook {C.safe_url(api.coursedir.db_url)}: expected a database this process can open and "
              f"write; got {type(e).__name__}: {str(e).splitlines()[0][:300]}", file=sys.stderr)
        return 2
    generated = set()

    def generate(assignment):  # the student version and the gradebook's rows, just before its first hand-in is graded
        if assignment not in generated:
            C.generate(api, [assignment])
            generated.add(assignment)

    # the due date goes on generated assignments; with one process there is nothing to overlap generation with
    if args.due is not None or (pool is None and not args.scheduler):
        for a in handed_in:
            generate(a)
    journal = G.Journal(root)
    in_gradebook = R.submissions_in_gradebook(api.coursedir.db_url)
    sources = {a: G.source_digest(root, a) for a in handed_in}
    stamps = {}
    if args.due is not None:  # grading.late: nbgrader's duedate, timestamp.txt and late penalty
        late.set_duedate(api.coursedir.db_url, handed_in, args.due)
        stamps = {f"{s.assignment}/{s.student}": late.submitted_at(s.saved, args.due.tzinfo) for s in subs}
        policy = f"|due={args.due.isoformat()}|penalty={args.late_penalty:g}"
        sources = {a: digest + policy for a, digest in sources.items()}  # a new policy grades again
    records, work, notes = {}, [], []
    for sub in subs:
        notes += [f"{sub.student} / {sub.assignment}: {n}" for n in sub.notes]
        text = nbformat.writes(sub.notebook)
        text += "" if text.endswith("\n") else "\n"
        entry = None if args.regrade else journal.done(sub.assignment, sub.student, G.sha256_text(text), sources[sub.assignment])
        if entry and (entry["status"] != "graded" or (sub.assignment, sub.student) in in_gradebook):
            records[(sub.assignment, sub.student)] = entry
        else:
            work.append((sub.assignment, sub.student, text))
    skipped = len(records)
    with tqdm(total=len(subs), initial=skipped, desc="autograding", unit="notebook") as bar:
        def done(record):
            if record.get("sha256"):  # a record from grade_one, not a lost worker
                journal.record(record | {"source": sources[record["assignment"]]})
            bar.update(1)

        settings = {"timeout": int(math.ceil(args.timeout)), "budget": args.budget}
        if args.due is not None:
            settings |= {"submitted_at": stamps, "late_percent_per_day": args.late_penalty}
        if pool is not None or args.scheduler:  # meanwhile, this process loads what the report needs
            threading.Thread(target=R.preload, name="report-preload", daemon=True).start()
        if args.scheduler:
            from . import cluster

            try:
                records |= cluster.grade_all(args.scheduler, root, work, settings, on_done=done, prepare=generate,
                                             started=started)
            except cluster.ClusterError as e:
                bar.close()
                print(f"error: {e}", file=sys.stderr)
                return 2
        else:  # with workers, each assignment is generated here while they grade the hand-ins handed out before
            records |= G.grade_all(root, work, args.jobs, on_done=done, grade=functools.partial(G.grade_one, settings=settings),
                                   init=functools.partial(logs.to_file, log), pool=pool, prepare=generate)
    for a in handed_in:  # those whose every hand-in was graded in an earlier run
        generate(a)
    graded, failures = [], []
    for sub in subs:
        record = records[(sub.assignment, sub.student)]
        if record["status"] != "autograde-failed":
            graded.append((sub.assignment, sub.student))
        if record["status"] == "over-budget":  # graded, in part: one line among the problems
            problems.append(K.Problem(sub.student, sub.assignment, sub.source.name, record["message"]))
        elif record["status"] != "graded":
            failures.append(K.Problem(sub.student, sub.assignment, sub.source.name, record["message"]))
    C.export_grades(api, root / "grades.csv")
    R.sort_csv(root / "grades.csv")
    exports = []
    for fmt in dict.fromkeys(args.export):
        try:
            exports.append(lms.export(fmt, root, api.coursedir.db_url, people, args.moodle_id_field))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
    rows, tests, mistakes, lost = R.gather(root, api.coursedir.db_url, graded)
    report = R.write(root, rows, tests, mistakes, problems, notes, failures, lost, log=log)
    if args.due is not None:
        with report.open("a") as f:
            f.write("\n" + "\n".join(late.report_section(api.coursedir.db_url, graded)))
    for problem in failures + problems:  # one line per hand-in with a problem; the details are in the report
        print(problem.line())
    if skipped:
        print(f"{skipped} of {len(subs)} notebooks were already graded in an earlier run (journal {journal.path}): "
              "not graded again")
    print(f"graded {len(graded)} of {len(subs)} notebooks; report: {report}; grades: {root / 'grades.csv'}; "
          f"feedback: {root / 'feedback'}")
    for path in exports:
        print(f"LMS import file: {path}")
    return 0 if len(exports) == len(dict.fromkeys(args.export)) else 2


if __name__ == "__main__":
    status = main()
    # What the interpreter's exit does, less its teardown of every module it imported (nbgrader, jupyter's server,
    # SQLAlchemy, matplotlib: 0.3 s, after the report is written): the exit handlers (logging's flush, the
    # zygotes' close) run, the output is flushed, and the process ends with the command's status.
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
