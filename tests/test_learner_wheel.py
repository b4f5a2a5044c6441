"""The learner's wheel: a learner starts an exercise with numpy and one small package.

``make wheel`` (learner/build.py) builds ``bnlib_course-0.1.0-py3-none-any.whl``
(bnlib and bncheck, numpy its only dependency); the site serves it at
``wheels/``; every exercise names it in one ``pip install`` line, at the top
of its page and in the error of its first code cell.

The end-to-end tests build the wheel afresh and install it, offline, into
new virtual environments (``python -m venv``, no system site packages) that
hold nothing else but, through a ``.pth`` file, links to exactly the
distributions of the dependency closure of numpy (and of ipykernel and
nbclient, for a kernel), taken from this environment:

- with numpy alone, every module of the wheel imports, and no framework does;
- in a kernel of that environment, each numpy exercise (chapters 1-4 and 9)
  passes its visible tests with the solutions typed in, and with a mistake of
  the grading catalog typed in, its visible test fails naming the mistake in words;
- without the wheel, each exercise's first cell fails with its pip line.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
import yaml
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from grading import course as C
from grading.samples import CATALOG, answer_code, fill

ROOT = C.PROJECT
_spec = importlib.util.spec_from_file_location("learner_build", ROOT / "learner" / "build.py")
L = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(L)

ASSIGNMENTS = C.assignments()
FRAMEWORKS = {"ch05-keras": ("tensorflow", "keras"), "ch06-pytorch": ("torch", "tensorflow", "keras")}
NUMPY_ONLY = [a for a in ASSIGNMENTS if a not in FRAMEWORKS]
KERNEL_RUNS = [a for a in NUMPY_ONLY if a[:4] in {"ch01", "ch02", "ch03", "ch04"}]  # the brief: chapters 1 to 4
NOT_THERE = ("torch", "tensorflow", "keras", "jax", "grading")


def release_nb(assignment: str):
    return nbformat.read(ROOT / "release" / assignment / f"{assignment}.ipynb", as_version=4)


def first_code_cell(nb):
    return next(c for c in nb.cells if c.cell_type == "code")


# ------------------------------------------------------ sources agree ----
def test_the_wheel_is_named_after_the_project_version_and_holds_bnlib_and_bncheck():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    version, wheel, packages = L.VERSION, L.WHEEL, L.PACKAGES
    assert version == project["version"], f"learner/pyproject.toml has {version}; the project is {project['version']}"
    assert wheel == f"bnlib_course-{project['version']}-py3-none-any.whl"
    assert packages == ("bnlib", "bncheck")


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_each_exercise_names_its_one_pip_line_at_the_top_and_in_its_first_cell(assignment):
    nb = release_nb(assignment)
    line = L.pip_line(*FRAMEWORKS.get(assignment, ()))
    intro, first = nb.cells[0], first_code_cell(nb)
    assert line in intro.source, f"{assignment}: expected its intro to give `{line}`; it says:\n{intro.source}"
    assert f'href="../../{L.SITE_PATH}"' in intro.source, f"{assignment}: expected a link to ../../{L.SITE_PATH}"
    assert line in first.source, f"{assignment}: expected its first code cell to name `{line}`"
    assert first.metadata["nbgrader"]["locked"] is True, f"{assignment}: the first code cell must stay locked"
    for framework in ("torch", "tensorflow", "keras"):
        named = re.search(rf"\b{framework}\b", line) is not None
        assert named == (framework in FRAMEWORKS.get(assignment, ())), f"{assignment}: {line}"


def test_the_site_and_the_course_page_serve_and_name_the_wheel():
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    extra = config["sphinx"]["config"]["html_extra_path"]
    assert (ROOT / extra[0]).resolve() == L.SITE_FOLDER, f"expected html_extra_path [_build/learner]; got {extra}"
    dest = L.DEST
    assert dest == L.SITE_FOLDER / Path(L.SITE_PATH).parent
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^book:.*\bwheel\b", makefile, re.M), "expected `make book` to build the wheel first"
    assert re.search(r"^wheel:.*\n\t.*learner/build\.py", makefile, re.M), "expected a `make wheel` rule"
    assert f'WHEEL = "{L.WHEEL}"' in (ROOT / "tests" / "test_site.py").read_text(encoding="utf-8"), "test_site.py: WHEEL"
    how_to = (ROOT / "how-to-use.md").read_text(encoding="utf-8")
    assert L.pip_line() in how_to and L.SITE_PATH in how_to, "expected how-to-use.md to give the pip line and the wheel's place"


# ---------------------------------------------------- fresh environments ----
def closure(*roots: str) -> dict[str, md.Distribution]:
    """The installed distributions ``roots`` need at run time, by Requires-Dist (markers honoured), themselves included."""
    found: dict[str, md.Distribution] = {}
    todo, seen = [(r, "") for r in roots], set()
    while todo:
        name, extra = todo.pop()
        key = (canonicalize_name(name), extra)
        if key in seen:
            continue
        seen.add(key)
        dist = found.setdefault(key[0], md.distribution(name))
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(req.name, "")] + [(req.name, e) for e in req.extras]
    return found


def link_folder(dists: dict[str, md.Distribution], folder: Path) -> Path:
    """A folder of links to exactly the top-level modules, packages and .dist-info folders of ``dists``."""
    folder.mkdir(parents=True, exist_ok=True)
    for dist in dists.values():
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}:
            target = Path(dist.locate_file(top))
            if target.exists() and not (folder / top).exists() and not top.endswith(".pth"):
                (folder / top).symlink_to(target)
    return folder


def clean_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    return env | {"PYTHONNOUSERSITE": "1", "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"} | extra


def fresh_venv(path: Path, links: Path) -> Path:
    """A new virtual environment (no pip, no system site packages) that sees ``links``; return its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, env=clean_env())
    python = path / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True, env=clean_env()).stdout.strip()
    (Path(site) / "learner_links.pth").write_text(f"{links}\n", encoding="utf-8")
    return python


def install(python: Path, wheel: Path) -> None:
    """pip (this environment's) installs the wheel into ``python``'s environment from the file alone: no index;
    its dependency (numpy) must already be there, or pip fails."""
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-index",
                           str(wheel)], capture_output=True, text=True, env=clean_env())
    assert proc.returncode == 0, f"pip install {wheel.name} failed:\n{proc.stdout}\n{proc.stderr}"


def run_python(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=cwd, env=clean_env())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built afresh for this module."""
    return L.build(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """A working folder outside the project (so that nothing is imported from the project's sources)."""
    return tmp_path_factory.mktemp("learner")


@pytest.fixture(scope="module")
def kernel_links(places) -> Path:
    return link_folder(closure("numpy", "ipykernel", "nbclient"), places / "kernel-links")


@pytest.fixture(scope="module")
def learner_python(places, kernel_links, wheel) -> Path:
    """numpy, ipykernel, nbclient (and what they need), and the wheel."""
    python = fresh_venv(places / "venv-learner", kernel_links)
    install(python, wheel)
    return python


WHEEL_MODULES = """
import importlib, importlib.util, json, sys, zipfile
names = [n[:-3].replace('/', '.').removesuffix('.__init__') for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.endswith('.py')]
for name in names:
    importlib.import_module(name)
import bnlib, bncheck
print(json.dumps({'modules': names, 'files': [bnlib.__file__, bncheck.__file__],
                  'loaded': sorted(m for m in sys.modules if m.split('.')[0] in sys.argv[2:]),
                  'findable': [m for m in sys.argv[2:] if importlib.util.find_spec(m) is not None]}))
"""


def test_with_numpy_alone_every_module_of_the_wheel_imports(wheel, places):
    numpy_only = closure("numpy")
    assert set(numpy_only) == {"numpy"}, f"expected numpy to need nothing; it pulls {sorted(numpy_only)}"
    python = fresh_venv(places / "venv-numpy", link_folder(numpy_only, places / "numpy-links"))
    install(python, wheel)
    proc = subprocess.run([python, "-c", WHEEL_MODULES, str(wheel), *NOT_THERE],
                          capture_output=True, text=True, cwd=places, env=clean_env())
    assert proc.returncode == 0, f"importing the wheel's modules with numpy alone failed:\n{proc.stderr}"
    report = json.loads(proc.stdout)
    assert {m.split(".")[0] for m in report["modules"]} == {"bnlib", "bncheck"}
    assert "bncheck.framework_judges" in report["modules"] and "bnlib.layer" in report["modules"]
    venv = (places / "venv-numpy").resolve()
    assert all(Path(f).resolve().is_relative_to(venv) for f in report["files"]), f"expected the wheel's copies: {report['files']}"
    assert report["loaded"] == [] and report["findable"] == [], report


def test_the_learner_environment_has_no_framework_and_the_wheels_bnlib(learner_python, places):
    proc = run_python(learner_python, f"import importlib.util, json, bnlib, bncheck, ipykernel, nbclient; "
                      f"print(json.dumps([bnlib.__file__, [m for m in {NOT_THERE!r} if importlib.util.find_spec(m)]]))",
                      cwd=places)
    assert proc.returncode == 0, proc.stderr
    bnlib_file, findable = json.loads(proc.stdout)
    assert findable == [], f"expected no framework (nor grading) in the learner's environment; found {findable}"
    assert Path(bnlib_file).resolve().is_relative_to((places / "venv-learner").resolve()), bnlib_file
    assert not Path(bnlib_file).resolve().is_relative_to(ROOT), bnlib_file


def run_notebook(nb, python: Path, cwd: Path, *, allow_errors: bool):
    """Run ``nb`` in a kernel started by ``python`` (the fresh environment's), in ``cwd``; return it with its outputs."""
    kernels = cwd / "kernels"
    spec = kernels / "learner"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "learner", "language": "python", "env": {"PYTHONNOUSERSITE": "1"},
    }), encoding="utf-8")
    km = KernelManager(kernel_name="learner", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    where = nbformat.v4.new_code_cell("import bnlib, bncheck, sys\nprint(bnlib.__file__)\nprint(bncheck.__file__)")
    nb.cells.append(where)
    try:  # a client given its kernel manager leaves the kernel running: shut it down here
        client = NotebookClient(nb, km=km, timeout=120, allow_errors=allow_errors, resources={"metadata": {"path": str(cwd)}})
        client.execute(env=clean_env())  # the kernel's environment: no PYTHONPATH of ours
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    files = "".join(o.get("text", "") for o in where.outputs if o.get("output_type") == "stream").split()
    venv = python.parent.parent.resolve()
    assert len(files) == 2 and all(Path(f).resolve().is_relative_to(venv) for f in files), (
        f"expected bnlib and bncheck from the wheel in {venv}; the kernel imported {files}")
    return nb


def graded_cells(nb) -> dict[str, nbformat.NotebookNode]:
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("grade") and not c.metadata["nbgrader"].get("solution")}


def errors(cell) -> list[dict]:
    return [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def first_mistake(assignment: str):
    return next((wrong, losing, mistake) for a, wrong, losing, mistake in CATALOG if a == assignment)


@pytest.mark.parametrize("assignment", KERNEL_RUNS)
def test_an_exercise_runs_in_the_learners_own_python(assignment, learner_python, places):
    cwd = places / f"run-{assignment}"
    cwd.mkdir()
    # the solutions typed in: every visible test passes, no cell raises
    solved = run_notebook(fill(ROOT, assignment, answer_code(assignment)), learner_python, cwd, allow_errors=False)
    for gid, cell in graded_cells(solved).items():
        assert "visible test" in text(cell) and "passed" in text(cell), f"{assignment}:{gid}: {text(cell)!r}"
    # one mistake of the catalog typed in: its visible test fails, naming the mistake in words
    wrong, losing, mistake = first_mistake(assignment)
    nb = run_notebook(fill(ROOT, assignment, answer_code(assignment) | wrong), learner_python, cwd, allow_errors=True)
    cells = graded_cells(nb)
    for gid in losing:
        errs = errors(cells[gid])
        assert errs and errs[0]["ename"] == "CheckFailed", f"{assignment}:{gid} [{mistake}]: expected CheckFailed; got {errs}"
        message = errs[0]["evalue"]
        assert message.startswith(f"[{mistake}] ") and len(message.split()) >= 8, (
            f"{assignment}:{gid}: expected [{mistake}] and a sentence; got {message!r}")
    assert not [g for g, c in cells.items() if g not in losing and errors(c)], f"{assignment}: other tests failed too"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_without_the_wheel_the_first_cell_names_the_pip_line(assignment, places, kernel_links, learner_python):
    """In an environment with numpy and a kernel but no wheel, the first cell says what to install, in one line;
    in the learner's environment (no framework), the framework exercises' first cells say so too."""
    bare = places / "venv-bare" / "bin" / "python"
    if not bare.exists():
        fresh_venv(places / "venv-bare", kernel_links)
    source = first_code_cell(release_nb(assignment)).source
    line = L.pip_line(*FRAMEWORKS.get(assignment, ()))
    pythons = [bare] + ([learner_python] if assignment in FRAMEWORKS else [])
    for python in pythons:
        proc = run_python(python, source, cwd=places)
        assert proc.returncode != 0, f"{assignment}: expected the first cell to fail in {python}"
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("ModuleNotFoundError: No module named ") and f": {line} (" in last, (
            f"{assignment}: expected one line naming `{line}`; got:\n{proc.stderr}")
        assert "During handling" not in proc.stderr, proc.stderr
    if assignment not in FRAMEWORKS:  # with the wheel, it passes
        proc = run_python(learner_python, source, cwd=places)
        assert proc.returncode == 0, proc.stderr


def test_the_wheel_holds_no_grading_code_solution_or_hidden_test(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        body = "\n".join(z.read(n).decode() for n in names if n.endswith(".py"))
    assert not [n for n in names if n.startswith(("grading/", "solutions/", "tests/"))], names
    assert "### BEGIN SOLUTION" not in body and "### BEGIN HIDDEN TESTS" not in body
    print(f"{wheel.name}: {wheel.stat().st_size} bytes, {len(names)} files")
