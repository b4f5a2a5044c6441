"""Run each graded kernel in a jail: its own sandbox, no instructor files, no
network, limited resources, no reference implementation.

nbgrader starts a kernel per notebook through nbclient; ``nbgrader_config.py``
makes that kernel manager :class:`JailedKernelManager`, which wraps the
kernel command in this module's launcher. Where the grader runs as root on
Linux with ``unshare`` (util-linux), the launcher gives the kernel:

- new mount, PID and network namespaces (when the kernel exits, every
  process it forked dies with it): no network interface but a loopback
  that is down, and the kernel talks to nbclient over Unix sockets (the
  ``ipc`` transport) in its sandbox;
- a view of the file system where the top-level folders that hold courses,
  checkouts and homes (``/tmp``, ``/root``, ``/home`` and the folders holding
  the project and the course) are empty, except the Python installation, the
  virtual environment and the kernel's own sandbox: no solutions, no
  gradebook, no other student's work, no bnlib source;
- an unprivileged user id of its own (so per-user limits are per kernel);
- resource limits (address space, processes, file size, CPU time, open
  files), so that a huge allocation, a fork bomb or an endless write fails
  inside the kernel instead of harming the grader.

The kernel imports a *shim* ``bnlib`` from its sandbox holding only the
checkers' probe half (:mod:`bnlib.checkers`, :mod:`bnlib.framework_checkers`),
with ``BNLIB_CHECK_RECORD`` set: the probe records results for
:mod:`grading.judge` and the reference implementation is nowhere to be found.

Without root or ``unshare`` the launcher still applies the resource limits,
the sandbox and the shim, and :func:`isolation` says what is missing; the
grading report prints it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
JAIL_ENV = "BNCOURSE_JAIL_DIR"   # where the grader wants this submission's sandboxes
HIDE_ENV = "BNCOURSE_JAIL_HIDE"  # extra folders to hide (os.pathsep-separated), e.g. the course
# Each kernel runs as its own unprivileged user id (no /etc/passwd entry
# needed), so per-user limits such as the process count are per kernel: one
# student's fork bomb cannot starve another's kernel of processes.
UID_BASE, UID_SPAN = 200_000, 60_000


def kernel_uid() -> int:
    """A random unprivileged user id, distinct between concurrent kernels (60 000 to choose from)."""
    return UID_BASE + int.from_bytes(os.urandom(4), "big") % UID_SPAN
GIB = 1 << 30
LIMITS = {
    "RLIMIT_AS": 8 * GIB,       # address space: TensorFlow alone reserves a few GiB
    "RLIMIT_NPROC": 512,        # processes and threads of the kernel's own user id
    "RLIMIT_FSIZE": 64 << 20,   # largest file the kernel may write
    "RLIMIT_CPU": 600,          # seconds of CPU time
    "RLIMIT_NOFILE": 1024,
    "RLIMIT_CORE": 0,
}
SHIM_MODULES = ("checkers.py", "framework_checkers.py")
SHIM_INIT = '"""bnlib during grading: the checkers\' probes only (see grading.jail)."""\n'


def isolation() -> str:
    """``"full"``, or what the jail cannot do on this machine and why."""
    if os.name != "posix" or not sys.platform.startswith("linux"):
        return "limited: not Linux (no namespaces); resource limits and sandbox only"
    if os.geteuid() != 0:
        return "limited: not running as root (no namespaces, no user switch); resource limits and sandbox only"
    if not shutil.which("unshare"):
        return "limited: util-linux `unshare` not found; resource limits and sandbox only"
    return "full"


def _system_folder(p: Path) -> bool:
    return len(p.parts) > 1 and p.parts[1] in {"usr", "lib", "lib64", "bin", "sbin", "etc", "proc", "sys", "dev", "run", "var", "opt", "boot"}


def hidden_roots(extra=()) -> list[Path]:
    """Top-level folders whose content the kernel must not see."""
    roots = {Path("/tmp"), Path("/root"), Path("/home"), Path("/var/tmp")}
    for p in (PROJECT, *map(Path, extra)):
        p = Path(p).resolve()
        if len(p.parts) > 1 and not _system_folder(p):
            roots.add(Path(p.parts[0]) / p.parts[1])
    return sorted(r for r in roots if r.is_dir())


def kept_paths(sandbox: Path) -> list[Path]:
    """What stays visible inside hidden folders: Python, the environment, the sandbox."""
    keep = {Path(sys.base_prefix).resolve(), Path(sys.prefix), sandbox}
    return sorted(keep)


def make_shim(lib: Path) -> None:
    """A ``bnlib`` package with the checkers' probe modules only."""
    pkg = lib / "bnlib"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(SHIM_INIT)
    src = PROJECT / "bnlib"
    for name in SHIM_MODULES:
        shutil.copy2(src / name, pkg / name)


def _jailed_kernel_manager_class():
    """The kernel manager class (built on first use: jupyter_client is slow to
    import, and the launcher below, run once per kernel, never needs it)."""
    from jupyter_client.manager import AsyncKernelManager

    class JailedKernelManager(AsyncKernelManager):
        """A kernel manager that starts every kernel through :func:`main` in a fresh sandbox."""

        sandbox: Path | None = None

        async def _async_pre_start_kernel(self, **kw):
            parent = Path(os.environ.get(JAIL_ENV) or tempfile.mkdtemp(prefix="bn-jail-"))
            self.sandbox = parent / f"kernel-{uuid.uuid4().hex[:8]}"
            (self.sandbox / "records").mkdir(parents=True)
            make_shim(self.sandbox / "lib")
            self.transport = "ipc"
            self.ip = str(self.sandbox / "ipc")
            self.connection_file = str(self.sandbox / "connection.json")
            return await super()._async_pre_start_kernel(**kw)

        def format_kernel_cmd(self, extra_arguments=None):
            cmd = super().format_kernel_cmd(extra_arguments)
            hide = [p for p in os.environ.get(HIDE_ENV, "").split(os.pathsep) if p]
            jail = [sys.executable, "-m", "grading.jail", "--sandbox", str(self.sandbox)]
            for p in hide:
                jail += ["--hide", p]
            if isolation() == "full":
                # a PID namespace too: when the kernel exits, every process it started dies
                # and the whole jail dies with the grader's process (parent-death signal)
                return ["setpriv", "--pdeathsig", "KILL", "--", "unshare", "--mount", "--net", "--pid", "--fork", "--kill-child",
                        "--", *jail, "--namespaced", "--", *cmd]
            return [*jail, "--", *cmd]

    return JailedKernelManager


# ------------------------------------------------------------ launcher ----
def _mount(*args: str, pass_fds=()) -> None:
    subprocess.run(["mount", *args], check=True, pass_fds=pass_fds)


def _hide(root: Path, keep: list[Path]) -> None:
    """Mount an empty tmpfs on ``root``, then bind the ``keep`` paths under it back."""
    inside = [k for k in keep if root in k.parents]
    fds = [os.open(k, os.O_PATH | os.O_DIRECTORY) for k in inside]
    _mount("-t", "tmpfs", "-o", "mode=755,size=16m", "tmpfs", str(root))
    for k, fd in zip(inside, fds):
        k.mkdir(parents=True, exist_ok=True)
        _mount("--no-canonicalize", "--bind", f"/proc/self/fd/{fd}", str(k), pass_fds=(fd,))
        os.close(fd)


def _limit() -> None:
    for name, value in LIMITS.items():
        rl = getattr(resource, name)
        soft, hard = resource.getrlimit(rl)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(rl, (value, value))


def main(argv=None) -> None:
    """``python -m grading.jail --sandbox DIR [--hide P]... [--namespaced] -- KERNEL COMMAND``."""
    argv = sys.argv[1:] if argv is None else argv
    sep = argv.index("--")
    p = argparse.ArgumentParser(prog="python -m grading.jail")
    p.add_argument("--sandbox", type=Path, required=True)
    p.add_argument("--hide", action="append", default=[])
    p.add_argument("--namespaced", action="store_true", help="running in fresh mount and network namespaces")
    args = p.parse_args(argv[:sep])
    cmd = argv[sep + 1:]
    sandbox = args.sandbox.resolve()
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(sandbox),
        "PYTHONPATH": str(sandbox / "lib"),
        "BNLIB_CHECK_RECORD": str(sandbox / "records"),
        "MPLCONFIGDIR": str(sandbox / "matplotlib"),
        "IPYTHONDIR": str(sandbox / "ipython"),
        "JUPYTER_RUNTIME_DIR": str(sandbox),
        "KERAS_HOME": str(sandbox / "keras"),
        "MPLBACKEND": "Agg",
        "LANG": "C.UTF-8",
    }
    for name in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "KERAS_BACKEND", "CUDA_VISIBLE_DEVICES",
                 "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "PYTHONHASHSEED"):
        if name in os.environ:
            env[name] = os.environ[name]
    if args.namespaced:
        _mount("--make-rprivate", "/")
        keep = kept_paths(sandbox)
        for root in hidden_roots(args.hide):
            _hide(root, keep)
        uid = kernel_uid()
        for dirpath, _, files in os.walk(sandbox):
            os.chown(dirpath, uid, uid)
            for f in files:
                os.chown(os.path.join(dirpath, f), uid, uid)
    _limit()
    os.chdir(sandbox)
    # the kernel's own console output (IPython's banner, framework logs) goes
    # to a file in the sandbox, not to the grader's console
    log = os.open(sandbox / "kernel.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    if args.namespaced:
        os.fchown(log, uid, uid)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    if args.namespaced:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    os.execvpe(cmd[0], cmd, env)


if __name__ == "__main__":
    main()


# ------------------------------------------------- surviving a dead kernel --
def _resilient_execute_class():
    """nbgrader's Execute, but a kernel that dies costs only the cell that killed it."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from nbclient.util import run_sync
    from nbformat import NotebookNode
    from nbgrader.preprocessors import Execute

    class ResilientExecute(Execute):
        """When a cell kills the kernel (``os._exit``, ``exit()``, a signal, a crash)
        or runs past the time limit (an endless loop, a fork bomb), record an error
        in that cell, start a fresh kernel, re-run the cells before it (their
        outputs kept as they were) and go on with the next cell, so the rest of
        the notebook is graded normally. At most :attr:`max_deaths` times."""

        max_deaths = 3

        async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
            try:
                cell = await super().async_execute_cell(cell, cell_index, execution_count, store_history)
            except (DeadKernelError, CellTimeoutError) as e:
                died = isinstance(e, DeadKernelError)
            else:
                # an interrupted cell may leave the kernel busy (threads, forked
                # children): never trust it for the next cells
                if not any(o.get("ename") == "CellTimeoutError" for o in cell.get("outputs", [])):
                    return cell
                died = False
            self._deaths = getattr(self, "_deaths", 0) + 1
            what = ("the kernel died while running this cell (os._exit, exit(), a signal, a crash or too much memory)"
                    if died else "this cell ran past the time limit")
            error = NotebookNode(output_type="error", ename="KernelDied" if died else "CellTimeoutError",
                                 evalue=f"{what}; the grader restarted the kernel for the next cells",
                                 traceback=[f"{'KernelDied' if died else 'CellTimeoutError'}: {what}"])
            cell.outputs = [o for o in cell.get("outputs", []) if o.get("ename") != "CellTimeoutError"] + [error]
            if self._deaths > self.max_deaths:
                raise DeadKernelError(f"the kernel was restarted {self.max_deaths} times; giving up")
            self.log.warning("cell %d: %s; restarting the kernel and replaying the cells before", cell_index, what)
            await self._revive(cell_index)
            return cell

        execute_cell = run_sync(async_execute_cell)

        async def _revive(self, upto: int) -> None:
            await self._async_cleanup_kernel()
            self.km = self.create_kernel_manager()
            await self.async_start_new_kernel()
            await self.async_start_new_kernel_client()
            for index, earlier in enumerate(self.nb.cells[:upto]):
                if earlier.cell_type != "code" or not earlier.source.strip():
                    continue
                kept = (earlier.get("outputs", []), earlier.get("execution_count"))
                try:
                    await super().async_execute_cell(earlier, index, store_history=False)
                finally:
                    earlier.outputs, earlier.execution_count = kept

    return ResilientExecute


_LAZY = {"ResilientExecute": _resilient_execute_class, "JailedKernelManager": _jailed_kernel_manager_class}


def __getattr__(name):  # classes built on first use: their imports are slow
    if name in _LAZY:
        cls = _LAZY[name]()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
