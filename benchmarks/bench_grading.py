"""How fast does the class get graded? One run, three ways, the same notebooks.

    python benchmarks/bench_grading.py                      # quick: 20 students x ch01-ch04
    python benchmarks/bench_grading.py --students 100 --assignments all

A synthetic class (right answers, blanks and the catalog's typical mistakes,
mixed; see ``grading.samples``) is graded

(a) by plain sequential nbgrader: ``NbGraderAPI.autograde`` per submission,
    nothing else, with nbgrader's own kernel manager and preprocessors (the
    course's configuration without its jail: what ``nbgrader autograde``
    does out of the box);
(a') the same with the course's whole configuration: every kernel jailed,
    forked by the zygote (``grading.jail``), still one at a time;
(b1) by the instructor's command with ``--jobs 1``: all of its work (autograde,
    judge, feedback, journal, grades.csv and report), one notebook at a time;
(b) by the instructor's command, ``python -m grading --jobs J``: the same work,
    J notebooks at a time;
(d) with ``--cluster``: by the same command on a local Dask cluster, two
    workers (one thread each) and a PostgreSQL gradebook, both throwaway
    (``tests/_cluster.py``): ``--scheduler ... --db ...``, against (b);
(c) by executing each filled notebook once with nbclient (``NotebookClient``,
    a plain kernel, no grading): the floor any grader pays per notebook.

It prints the load average, seconds per notebook, throughput, (b)'s speed-up
over (a) (the target: 3x with 2 cores) and over (a') and over (b1) (the target: 1.7x),
the per-notebook cost of (b) over (c), and what a class of 300
students x 6 assignments would take at (b)'s measured throughput. It also
reports which heavy frameworks each assignment's kernel had imported after
running the notebook (TensorFlow, Keras, PyTorch): a numpy-only assignment
should import none.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

from grading import course as C  # noqa: E402 - needs this checkout on sys.path and the environment (above)
from grading.samples import CATALOG, answer_code, fill  # noqa: E402 - needs this checkout on sys.path (above)

QUICK = ["ch01-scaling", "ch02-forward", "ch03-backward", "ch04-running-stats"]
HEAVY = ("tensorflow", "keras", "torch")
PROBE = f"import sys\nprint('HEAVY-MODULES', sorted(m for m in {HEAVY!r} if m in sys.modules))"


def make_class(dest: Path, students: int, assignments: list[str]) -> list[tuple[str, str, str]]:
    """Write the class into ``dest``; return [(assignment, student, kind)]: kind is right, blank or a mistake's name."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for a in assignments:
        right = answer_code(a)
        wrong = [c for c in CATALOG if c[0] == a]
        for i in range(students):
            student = f"s{i:03d}"
            if i % 3 == 0 or not wrong:
                answers, kind = right, "right"
            elif i % 3 == 1:
                answers, kind = None, "blank"
            else:
                mistake = wrong[(i // 3) % len(wrong)]
                answers, kind = right | mistake[1], mistake[3]
            nbformat.write(fill(C.PROJECT, a, answers), dest / f"{student}_{a}.ipynb")
            out.append((a, student, kind))
    return out


def stock_api(course: Path):
    """nbgrader's API for ``course`` with nbgrader's own kernel manager and autograde preprocessors."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader(C.CONFIG_NAME, path=str(course)).load_config()
    config.pop("GradedExecute", None)  # the course's executor and its jailed kernel manager
    config.Autograde.pop("autograde_preprocessors")
    return NbGraderAPI(config=config)


def run_sequential_nbgrader(course: Path, src: Path, work, stock: bool) -> float:
    """(a) or (a'): place every notebook, generate the assignments, then time NbGraderAPI.autograde one by one."""
    C.make_course(course)
    sandboxes = Path(tempfile.mkdtemp(prefix="bench-jail-"))  # the jailed kernels' sandboxes, removed below
    api = stock_api(course) if stock else C.api(course, sandbox_root=str(sandboxes))
    C.generate(api, sorted({a for a, _, _ in work}))
    for a, s, _ in work:
        dest = course / "submitted" / s / a
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / f"{s}_{a}.ipynb", dest / f"{a}.ipynb")
    failed = 0
    try:
        t = time.perf_counter()
        for a, s, _ in work:
            failed += not api.autograde(a, s).get("success")
        elapsed = time.perf_counter() - t
    finally:
        shutil.rmtree(sandboxes, ignore_errors=True)
    if failed:
        print(f"  (a) warning: {failed} autograde calls failed")
    return elapsed


def run_command(course: Path, src: Path, jobs: int, *extra: str) -> float:
    """(b), (b1) or (d): the instructor's command, end to end, as the instructor runs it (a new process)."""
    import subprocess

    cmd = [sys.executable, "-m", "grading", str(src), "--course", str(course), "--jobs", str(jobs), *extra]
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    last = (done.stdout.strip().splitlines() or [""])[-1]
    if done.returncode != 0 or not last.startswith(f"graded {len(list(src.glob('*.ipynb')))} of"):
        raise SystemExit(f"python -m grading --jobs {jobs} failed (status {done.returncode}):\n"
                         f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    print(f"  {last}")
    return elapsed


def run_nbclient(src: Path, work) -> tuple[float, dict[str, set[str]]]:
    """(c): execute each filled notebook once in a plain kernel; also record the heavy modules it imported."""
    from nbclient import NotebookClient

    heavy: dict[str, set[str]] = {}
    cwd = Path(tempfile.mkdtemp(prefix="bench-nbclient-"))
    total = 0.0
    for a, s, _ in work:
        nb = nbformat.read(src / f"{s}_{a}.ipynb", as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell(PROBE))
        client = NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                                resources={"metadata": {"path": str(cwd)}})
        t = time.perf_counter()
        client.execute()
        total += time.perf_counter() - t
        text = "".join(o.get("text", "") for o in nb.cells[-1].get("outputs", []))
        for line in text.splitlines():
            if line.startswith("HEAVY-MODULES"):
                heavy.setdefault(a, set()).update(eval(line.split(" ", 1)[1]))  # a list literal we printed
    shutil.rmtree(cwd, ignore_errors=True)
    return total, heavy


def run_cluster(course: Path, src: Path, workers: int, base: Path) -> float:
    """(d): the command on a throwaway local Dask cluster (``workers`` one-thread workers) and PostgreSQL gradebook."""
    sys.path.insert(0, str(ROOT / "tests"))
    from _cluster import running_dask, running_postgres

    with running_postgres() as pg, running_dask(base / "dask", workers) as dask:
        return run_command(course, src, workers, "--scheduler", dask.address, "--db", pg.url)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--students", type=int, default=20)
    p.add_argument("--assignments", default=",".join(QUICK), help="comma-separated names, or 'all'")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--cluster", action="store_true",
                   help="also (d): the command on a local Dask cluster of --jobs workers with a PostgreSQL gradebook")
    p.add_argument("--keep", type=Path, help="folder to keep the class and course folders in (default: a temporary one, removed)")
    args = p.parse_args(argv)
    names = C.assignments() if args.assignments == "all" else args.assignments.split(",")
    unknown = set(names) - set(C.assignments())
    if unknown:
        p.error(f"--assignments: expected names from {C.assignments()}; got {sorted(unknown)}")
    load = os.getloadavg()
    log = open(os.devnull, "w")  # noqa: SIM115 - the kernels' and nbgrader's chatter (plain kernels warn on stderr)
    saved_stderr = os.dup(2)
    os.dup2(log.fileno(), 2)
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-grading-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        src = base / "class"
        work = make_class(src, args.students, names)
        n = len(work)
        kinds = {k: sum(w[2] == k for w in work) for k in ("right", "blank")}
        print(f"class: {args.students} students x {len(names)} assignments = {n} notebooks "
              f"({kinds['right']} right, {kinds['blank']} blank, {n - kinds['right'] - kinds['blank']} with a typical mistake); "
              f"{os.cpu_count()} CPUs")
        print("(a) plain sequential nbgrader autograde ...", flush=True)
        t_a = run_sequential_nbgrader(base / "course-a", src, work, stock=True)
        print("(a') sequential nbgrader autograde, jailed kernels ...", flush=True)
        t_aj = run_sequential_nbgrader(base / "course-aj", src, work, stock=False)
        print("(b1) python -m grading --jobs 1 ...", flush=True)
        t_b1 = run_command(base / "course-b1", src, 1)
        print(f"(b) python -m grading --jobs {args.jobs} ...", flush=True)
        t_b = run_command(base / "course-b", src, args.jobs)
        t_d = None
        if args.cluster:
            print(f"(d) python -m grading --scheduler (local Dask cluster, {args.jobs} workers) --db postgresql ...", flush=True)
            t_d = run_cluster(base / "course-d", src, args.jobs, base)
        print("(c) nbclient, each notebook once ...", flush=True)
        t_c, heavy = run_nbclient(src, work)
    finally:
        os.dup2(saved_stderr, 2)
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"{'run':<44}{'s/notebook':>12}{'notebooks/min':>15}")
    for label, t in (("(a) plain sequential nbgrader autograde", t_a), ("(a') the same, jailed kernels (zygote)", t_aj),
                     ("(b1) python -m grading --jobs 1", t_b1), (f"(b) python -m grading --jobs {args.jobs}", t_b),
                     ("(c) plain nbclient execution", t_c),
                     *([(f"(d) Dask cluster, {args.jobs} workers, PostgreSQL", t_d)] if t_d else [])):
        print(f"{label:<44}{t / n:>12.2f}{60 * n / t:>15.1f}")
    speedup = t_a / t_b
    print(f"\nload average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"throughput of (b) / (a): {speedup:.2f}x   (target >= 3x with 2 cores)")
    print(f"throughput of (b) / (a'): {t_aj / t_b:.2f}x   (target >= 1.7x: parallel grading against the same jailed kernels "
          f"one at a time; (b) also writes feedback, grades.csv and the report)")
    print(f"throughput of (b) / (b1): {t_b1 / t_b:.2f}x   (target >= 1.7x: the instructor's whole command, "
          f"--jobs {args.jobs} against --jobs 1, the same work done in parallel or one notebook at a time)")
    if t_d:
        print(f"throughput of (d) / (b): {t_b / t_d:.2f}x   (target: within 15%, 0.85x to 1.15x: {args.jobs} Dask workers "
              f"with a PostgreSQL gradebook against --jobs {args.jobs} on this machine)")
    print(f"per-notebook time, (a) / (c): {t_a / t_c:.2f}x   (nbgrader's own overhead over executing the notebook)")
    print(f"per-notebook time, (a') / (c): {t_aj / t_c:.2f}x")
    per_b = t_b * min(args.jobs, os.cpu_count() or 1) / n  # process-seconds each notebook cost in (b)
    print(
        f"per-notebook cost, (b) x jobs / (c): {per_b / (t_c / n):.2f}x   (target <= 1.5x; (b) adds judge, feedback and report)"
    )
    print(f"wall per notebook, (b) / (c): {(t_b / n) / (t_c / n):.2f}x")
    total = 300 * 6
    print(f"\na class of 300 (x 6 assignments = {total} notebooks) would take ~{total * t_b / n / 60:.0f} min here "
          f"at (b)'s throughput ({60 * n / t_b:.1f} notebooks/min; measured on {', '.join(names)})")
    print("\nheavy frameworks imported by each assignment's kernel (after running it):")
    for a in names:
        found = sorted(heavy.get(a, set()))
        print(f"  {a}: {', '.join(found) if found else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
