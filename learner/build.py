"""Build the learner's wheel: ``bnlib`` and ``bncheck``, numpy as the only dependency.

    make wheel        (or: .venv/bin/python learner/build.py [DEST_FOLDER])

Copies ``learner/pyproject.toml`` and the two packages' ``.py`` files into a
temporary folder and builds one pure-Python wheel there with pip and the
setuptools already installed (``--no-build-isolation --no-index``: nothing is
downloaded). The project's own ``pyproject.toml`` (which packages ``grading``
too) is not involved, so the wheel holds no grading code, no solutions and no
hidden tests; :func:`build` refuses a wheel that holds anything else.

The wheel lands in ``_build/learner/wheels/`` under the fixed name
:data:`WHEEL`; ``_config.yml`` serves that folder at the site's root
(``html_extra_path``), so the site has it at ``wheels/<WHEEL>``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
CONFIG = tomllib.loads((HERE / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGES = tuple(CONFIG["tool"]["setuptools"]["packages"])  # bnlib, bncheck
NAME = CONFIG["project"]["name"].replace("-", "_")
VERSION = CONFIG["project"]["version"]
WHEEL = f"{NAME}-{VERSION}-py3-none-any.whl"  # bnlib_course-0.1.0-py3-none-any.whl
SITE_FOLDER = PROJECT / "_build" / "learner"  # html_extra_path: its contents go to the site's root
SITE_PATH = f"wheels/{WHEEL}"  # where the site serves the wheel
DEST = SITE_FOLDER / "wheels"
# Zip entries get this date (1 Jan 2026) instead of the copy's mtime: the same sources give the same bytes.
SOURCE_DATE_EPOCH = "1767225600"


def pip_line(*frameworks: str) -> str:
    """The one command that sets up a learner's own Python for an exercise (``frameworks``: chapters 5 and 6)."""
    return " ".join(("pip install numpy", *frameworks, WHEEL))


def build(dest: Path = DEST, packages: tuple[str, ...] = PACKAGES) -> Path:
    """Build the wheel into ``dest`` (replacing an older one); return its path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="learner-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        shutil.copy2(HERE / "pyproject.toml", src / "pyproject.toml")
        for package in packages:
            shutil.copytree(PROJECT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        out = Path(tmp) / "out"
        env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
             "--wheel-dir", str(out), str(src)],
            cwd=tmp, env=env, capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pip wheel failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        built = sorted(out.glob("*.whl"))
        if [w.name for w in built] != [WHEEL]:
            raise RuntimeError(f"expected one wheel named {WHEEL}; pip built {[w.name for w in built]}")
        check(built[0], packages)
        target = dest / WHEEL
        shutil.copy2(built[0], target)
    return target


def check(wheel: Path, packages: tuple[str, ...] = PACKAGES) -> None:
    """Raise unless ``wheel`` holds exactly ``packages`` (Python files only) and its metadata, depending on numpy alone."""
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(f"{NAME}-{VERSION}.dist-info/METADATA").decode()
    tops = {n.split("/", 1)[0] for n in names}
    expected = set(packages) | {f"{NAME}-{VERSION}.dist-info"}
    if tops != expected:
        raise RuntimeError(f"expected {wheel.name} to hold {sorted(expected)}; it holds {sorted(tops)}")
    stray = [n for n in names if not n.endswith(".py") and ".dist-info/" not in n]
    if stray:
        raise RuntimeError(f"expected only Python files in {wheel.name}; found {stray}")
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    if requires != ["numpy>=1.26"]:
        raise RuntimeError(f"expected {wheel.name} to require numpy>=1.26 only; it requires {requires}")


def main(argv: list[str]) -> int:
    target = build(Path(argv[0]) if argv else DEST)
    print(f"learner wheel: {target} ({target.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
