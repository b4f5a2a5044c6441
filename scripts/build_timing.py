"""How long the book takes to build: from scratch, and again with nothing changed.

    make book-timing          (or: .venv/bin/python scripts/build_timing.py)

Copies the book's sources (the files git tracks or would track: no _build,
no .venv) into a fresh temporary folder, so that edits made meanwhile cannot
disturb the measurement, builds the learner's wheel there as `make book`
does, and builds that copy three times with the same command as
`make book` (`jupyter-book build -W -n --keep-going`). It prints:

1. cold: a fresh output folder, so no Sphinx environment and no execution
   cache: every page is read and every notebook cell is run;
2. unchanged rebuild: the same command again; Sphinx finds nothing out of
   date and the cache holds every notebook's outputs;
3. pages only: the HTML and Sphinx environment deleted, the execution cache
   kept (what a theme or config change costs): every page is re-rendered, no
   cell is run.

The target is an unchanged rebuild under 10% of the cold build (--target).
Exits 1 when a build fails or the target is missed. The source tree is never
written to; the temporary folder is removed unless --keep is given.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def snapshot(dest: Path) -> Path:
    """Copy the sources (tracked and untracked-but-not-ignored files) to `dest`."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, listing):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    # The site serves the learner's wheel (html_extra_path: _build/learner): build it as `make book` does.
    subprocess.run([sys.executable, str(dest / "learner" / "build.py"), str(dest / "_build" / "learner" / "wheels")],
                   cwd=dest, check=True, stdout=subprocess.DEVNULL)
    return dest


def build(src: Path, out: Path, log: Path) -> float:
    """Run the `make book` command on `src` with its output under `out`; return wall seconds."""
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jupyter_book), "build", "-W", "-n", "--keep-going", "--path-output", str(out), str(src)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow", PYTHONHASHSEED="0")
    env["PATH"] = f"{jupyter_book.parent}{os.pathsep}{env.get('PATH', '')}"
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=src, env=env, stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        sys.exit(f"build failed (exit {proc.returncode}); last lines of {log}:\n" + "\n".join(tail))
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=0.10, help="largest acceptable rebuild/cold ratio (default 0.10)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary build folder")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="book-timing-"))
    src, out = snapshot(tmp / "src"), tmp / "out"
    try:
        cold = build(src, out, tmp / "cold.log")
        print(f"cold build (fresh folder, no cache):       {cold:7.1f} s", flush=True)
        rebuild = build(src, out, tmp / "rebuild.log")
        print(f"unchanged rebuild:                         {rebuild:7.1f} s", flush=True)
        built = out / "_build"
        for name in ("html", ".doctrees", "jupyter_execute"):
            shutil.rmtree(built / name, ignore_errors=True)
        pages = build(src, out, tmp / "pages.log")
        print(f"pages only (execution cache kept):         {pages:7.1f} s", flush=True)
    finally:
        if args.keep:
            print(f"build folder kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    ratio = rebuild / cold
    verdict = "meets" if ratio < args.target else "MISSES"
    print(f"unchanged rebuild / cold = {ratio:.1%} ({verdict} the target of < {args.target:.0%})")
    print(f"pages only / cold        = {pages / cold:.1%}")
    return 0 if ratio < args.target else 1


if __name__ == "__main__":
    sys.exit(main())
