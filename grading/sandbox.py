"""The graded kernel's view of the file system, built from an allowlist.

Run as root by the kernel's process itself (:func:`grading.jail.contain`),
in a mount namespace of its own, before a line of the learner's code. The
view starts empty and gets, one named step at a time:

=================  ===============================================================
step               what the kernel gets
=================  ===============================================================
private mounts     nothing it mounts is seen outside, nothing mounted outside is seen
empty root         a tmpfs, read-only once built: nothing but what follows
fresh /tmp         an empty tmpfs (first: the environment or the sandbox may lie below it)
system             ``/usr`` (and the ``/bin``, ``/lib`` links to it) read-only, no setuid
python             the Python installation and the virtual environment, read-only
no course code     the environment's copy of the course packages masked (empty)
numpy only         for a numpy-only assignment, PyTorch, TensorFlow, Keras and JAX
                   replaced by a module that raises "numpy only"
sandbox            its own sandbox folder, read-write, at the same path
minimal /dev       ``null``, ``zero``, ``full``, ``random``, ``urandom``; a fresh ``/dev/shm``
fresh /proc        the processes of its own PID namespace only
pivot              the view becomes ``/``; the old root is detached
read-only root     the view's own folders cannot be changed
no new privileges  ``PR_SET_NO_NEW_PRIVS``: no setuid program gains anything
=================  ===============================================================

Nothing else is mounted: no ``/home``, ``/root``, ``/opt``, ``/var``, ``/srv``,
``/etc`` (but the dynamic loader's cache and the time zone), no other course
or project folder, wherever it lies. :func:`probe` builds the view once in a
throwaway child and says which step, if any, this machine refuses.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS = 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}

SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC = ("/etc/ld.so.cache", "/etc/localtime")
DEVICES = ("null", "zero", "full", "random", "urandom")
COURSE_PACKAGES = ("bnlib", "bncheck", "grading")
FRAMEWORK_PACKAGES = ("torch", "torchgen", "functorch", "tensorflow", "tensorboard", "keras", "tf_keras", "jax", "jaxlib")
NUMPY_ONLY = ('raise ImportError("this assignment is numpy only: {name} cannot be imported when it is graded; '
              'write the answer with numpy")\n')

_libc = ctypes.CDLL(None, use_errno=True)


class JailError(OSError):
    """A step of the view that this machine refused."""

    def __init__(self, step: str, err: int, detail: str = ""):
        self.step = step
        super().__init__(err, f"{step}: {os.strerror(err)}{': ' + detail if detail else ''}")


def _check(step: str, ret: int, detail: str = "") -> None:
    if ret != 0:
        raise JailError(step, ctypes.get_errno(), detail)


def _enc(s) -> bytes | None:
    return None if s is None else os.fsencode(str(s))


def _mount(step: str, source, target, fstype, flags: int, data=None) -> None:
    _check(step, _libc.mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data)), str(target))


def _inside(root: Path, path) -> Path:
    return root / str(path).lstrip("/")


def _bind(step: str, source: Path, root: Path, *, writable: bool = False, recursive: bool = True) -> None:
    """``source`` at the same path in the view (read-only unless ``writable``), never setuid or devices."""
    target = _inside(root, source)
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    _mount(step, source, target, None, MS_BIND | (MS_REC if recursive else 0))
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | (0 if writable else MS_RDONLY)
    _mount(step, None, target, None, flags)


def _tmpfs(step: str, target: Path, mode: str, size: str = "16m", extra: int = 0) -> None:
    target.mkdir(parents=True, exist_ok=True)
    _mount(step, "tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | extra, f"mode={mode},size={size}")


def _readonly(step: str, target: Path) -> None:
    _mount(step, None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def python_roots() -> list[Path]:
    """The Python installation and the virtual environment (both as seen and resolved), outermost first."""
    roots = {Path(sys.base_prefix).resolve(), Path(sys.prefix), Path(sys.prefix).resolve()}
    return sorted(roots, key=lambda p: len(p.parts))


def site_dirs() -> list[Path]:
    """The folders packages are installed in (site-packages of the installation and of the environment)."""
    dirs = {Path(p) for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()}
    return sorted(dirs)


def _covered(path: Path, by: list[Path]) -> bool:
    return any(path == b or b in path.parents for b in by)


# ------------------------------------------------------------ the steps ----
def private_mounts() -> None:
    _mount("private mounts", None, "/", None, MS_REC | MS_PRIVATE)


def empty_root(root: Path) -> None:
    _tmpfs("empty root", root, "755", "4m")


def system(root: Path) -> list[Path]:
    mounted = []
    for name in SYSTEM:
        path = Path(name)
        if path.is_symlink():
            _inside(root, path).symlink_to(os.readlink(path))
        elif path.is_dir():
            _bind("system", path, root)
            mounted.append(path)
    for name in ETC:
        if Path(name).is_file():
            _bind("system", Path(name), root)
    return mounted


def python(root: Path, mounted: list[Path]) -> None:
    for path in python_roots():
        if path.is_dir() and not _covered(path, mounted):
            _bind("python", path, root)
            mounted.append(path)


def no_course_code(root: Path) -> None:
    for site in site_dirs():
        for name in COURSE_PACKAGES:
            if (site / name).is_dir():
                _tmpfs("no course code", _inside(root, site / name), "555", "4k", MS_RDONLY)


def numpy_only(root: Path) -> None:
    for site in site_dirs():
        for name in FRAMEWORK_PACKAGES:
            if (site / name).is_dir():
                target = _inside(root, site / name)
                _tmpfs("numpy only", target, "755", "64k")
                (target / "__init__.py").write_text(NUMPY_ONLY.format(name=name))
                _readonly("numpy only", target)


def fresh_tmp(root: Path) -> None:
    _tmpfs("fresh /tmp", _inside(root, "/tmp"), "1777", "256m")


def sandbox(root: Path, folder: Path) -> None:
    _bind("sandbox", folder, root, writable=True, recursive=False)  # not the view being built inside it


def devices(root: Path) -> None:
    dev = _inside(root, "/dev")
    _tmpfs("minimal /dev", dev, "755", "64k")
    for name in DEVICES:
        target = dev / name
        target.touch()
        _mount("minimal /dev", f"/dev/{name}", target, None, MS_BIND)
        _mount("minimal /dev", None, target, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC)
    for name, to in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                     ("stderr", "/proc/self/fd/2")):
        (dev / name).symlink_to(to)
    _tmpfs("minimal /dev", dev / "shm", "1777", "64m")
    _readonly("minimal /dev", dev)


def fresh_proc(root: Path) -> None:
    target = _inside(root, "/proc")
    target.mkdir(exist_ok=True)
    _mount("fresh /proc", "proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def pivot(root: Path) -> None:
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise JailError("pivot", 38, f"pivot_root's number on {platform.machine()} is not known here")
    os.chdir(root)
    _check("pivot", _libc.syscall(number, b".", b"."))
    _check("pivot", _libc.umount2(b".", MNT_DETACH))
    os.chdir("/")


def read_only_root() -> None:
    _readonly("read-only root", Path("/"))


def no_new_privileges() -> None:
    _check("no new privileges", _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))


def build(folder: Path, *, frameworks: bool) -> None:
    """The whole view, for a kernel whose sandbox is ``folder`` (``frameworks``: may it import them?)."""
    root = folder / ".jail-root"
    private_mounts()
    empty_root(root)
    fresh_tmp(root)  # first: the Python environment or the sandbox may lie below /tmp
    mounted = system(root)
    python(root, mounted)
    no_course_code(root)
    if not frameworks:
        numpy_only(root)
    sandbox(root, folder)
    devices(root)
    fresh_proc(root)
    pivot(root)
    read_only_root()
    no_new_privileges()


# ------------------------------------------------------------- the probe ---
PROBE = """
import os, sys
from pathlib import Path
sys.path.insert(0, {project!r})
from grading import sandbox
CLONE_NEWNS, CLONE_NEWPID = 0x00020000, 0x20000000
folder = Path({folder!r})
if sandbox._libc.unshare(CLONE_NEWNS | CLONE_NEWPID) != 0:
    sys.exit("new namespaces: " + os.strerror(sandbox.ctypes.get_errno()))
pid = os.fork()
if pid:
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
try:
    sandbox.build(folder, frameworks=False)
    assert sorted(os.listdir("/proc"))[0].isdigit() and os.getpid() == 1, "the view's /proc is not its own"
    assert not os.listdir("/dev/shm"), "the view's /dev/shm is not empty"
    assert not (Path({project!r}) / "solutions").exists(), "the project is visible"
    import numpy, ipykernel.kernelapp  # noqa: F401 - the kernel's Python environment works in the view
except Exception as e:
    sys.stderr.write(str(e) + "\\n")
    os._exit(3)
os._exit(0)
"""


def probe() -> str | None:
    """None if this machine builds the whole view; else what it refuses (built in a throwaway child)."""
    import shutil
    import subprocess
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="bn-probe-"))
    project = str(Path(__file__).resolve().parent.parent)
    try:
        run = subprocess.run([sys.executable, "-c", PROBE.format(project=project, folder=str(folder))],
                             capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "building the view took over a minute"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if run.returncode == 0:
        return None
    lines = [line for line in (run.stderr or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {run.returncode}"
