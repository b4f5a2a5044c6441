"""The graded kernel's jail, as the list of steps a reviewer reads: :func:`contain`.

nbgrader starts a kernel per notebook; ``nbgrader_config.py`` makes that
kernel manager :class:`grading.kernels.JailedKernelManager`, which asks the
grading process's zygote (:mod:`grading.zygote`) for a fork of a preloaded
Python. The forked child runs :func:`contain` before a line of the kernel:

 1. ``own session``: a session of its own, default signal handling;
 2. ``namespaces``: new mount, network (no interface but a loopback that is
    down; the kernel talks to nbclient over Unix sockets in its sandbox) and
    PID namespaces; the child stays outside as the *keeper* and the kernel is
    PID 1 inside, so every process the kernel starts dies with it;
 3. ``own user``: an unprivileged user id of its own, owner of the sandbox;
 4. ``file system view``: :func:`grading.sandbox.build`, an allowlist: the
    system's programs and libraries, the Python installation and the virtual
    environment read-only, the sandbox read-write, fresh ``/tmp``,
    ``/dev/shm`` and ``/proc``, a minimal ``/dev``; the environment's copy of
    the course masked; PyTorch, TensorFlow, Keras and JAX replaced by a
    "numpy only" error unless the assignment uses them; no new privileges;
 5. ``resource limits``: address space, processes, file size, CPU time, open files;
 6. ``console``: the kernel's own output to ``kernel.log`` in its sandbox,
    every other file descriptor (the zygote's channel) closed;
 7. ``drop privileges``: the unprivileged user, no groups, a parent-death signal;
 8. ``clean environment``: only :func:`kernel_env`'s variables;
 9. ``import path``: the sandbox's ``lib`` (``bncheck``'s probes only, see
    :func:`make_shim`), then the Python installation and the environment; no
    project folder, no editable-install finder, no grading module;
10. ``fresh seeds``: ``random`` and ``numpy.random`` reseeded;

then runs IPython's kernel. Without root, or where the system refuses
namespaces, steps 2-4 and 7 are skipped and :func:`isolation` says
"partial", naming what is missing; the grading report prints it. It never
says "full" unless the whole view was built in a probe on this machine.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import resource
import shutil
import signal
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
# Each kernel runs as its own unprivileged user id (no /etc/passwd entry
# needed), so per-user limits such as the process count are per kernel: one
# student's fork bomb cannot starve another's kernel of processes.
UID_BASE, UID_SPAN = 200_000, 60_000
GIB = 1 << 30
LIMITS = {
    "RLIMIT_AS": 8 * GIB,       # address space: TensorFlow alone reserves a few GiB
    "RLIMIT_NPROC": 512,        # processes and threads of the kernel's own user id
    "RLIMIT_FSIZE": 64 << 20,   # largest file the kernel may write
    "RLIMIT_CPU": 600,          # seconds of CPU time
    "RLIMIT_NOFILE": 1024,
    "RLIMIT_CORE": 0,
}
SHIM_MODULES = ("__init__.py", "probes.py", "framework_probes.py", "registry.py")  # of bncheck: no judge
FRAMEWORKS = ("tensorflow", "keras", "torch")  # preloaded by the zygote where the assignment imports them
# the grader's settings that the zygote and the kernels keep (how the frameworks start and log)
PASSED_ON = ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "KERAS_BACKEND", "CUDA_VISIBLE_DEVICES",
             "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")
CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID = 0x00020000, 0x40000000, 0x20000000
PR_SET_PDEATHSIG = 1
_IMPORT = re.compile(r"^\s*(?:import|from)\s+(tensorflow|keras|torch|jax)\b", re.MULTILINE)


# ------------------------------------------------------ the grader's side --
@functools.cache
def isolation() -> str:
    """``"full"``, or ``"partial: ..."`` naming what the jail cannot do on this machine (tried once per process)."""
    if os.name != "posix" or not sys.platform.startswith("linux"):
        return "partial: not Linux (no namespaces, no file system view); resource limits and sandbox only"
    if os.geteuid() != 0:
        return ("partial: not running as root (no namespaces, no file system view, no user switch); "
                "resource limits and sandbox only")
    from . import sandbox

    missing = sandbox.probe()
    if missing:
        return f"partial: this machine refuses the jail's view ({missing}); resource limits and sandbox only"
    return "full"


def kernel_uid() -> int:
    """A random unprivileged user id, distinct between concurrent kernels (60 000 to choose from)."""
    return UID_BASE + int.from_bytes(os.urandom(4), "big") % UID_SPAN


def kernel_env(sandbox: Path) -> dict[str, str]:
    """The kernel's whole environment: its sandbox's paths and a few framework settings from the grader's."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(sandbox),
        "PYTHONPATH": str(sandbox / "lib"),
        "MPLCONFIGDIR": str(sandbox / "matplotlib"),
        "IPYTHONDIR": str(sandbox / "ipython"),
        "JUPYTER_RUNTIME_DIR": str(sandbox),
        "KERAS_HOME": str(sandbox / "keras"),
        "MPLBACKEND": "Agg",
        "LANG": "C.UTF-8",
    }
    return env | {name: os.environ[name] for name in PASSED_ON if name in os.environ}


def make_shim(lib: Path) -> None:
    """A ``bncheck`` package with the probe modules only (no judge, no ``bnlib``)."""
    pkg = lib / "bncheck"
    pkg.mkdir(parents=True, exist_ok=True)
    for name in SHIM_MODULES:
        shutil.copy2(PROJECT / "bncheck" / name, pkg / name)


def frameworks_of(source_notebook: Path) -> tuple[str, ...]:
    """The frameworks of :data:`FRAMEWORKS` that the assignment's source notebook imports, in that order."""
    cells = json.loads(Path(source_notebook).read_text(encoding="utf-8")).get("cells", [])
    code = "\n".join("".join(c.get("source", "")) for c in cells if c.get("cell_type") == "code")
    found = set(_IMPORT.findall(code))
    return tuple(f for f in FRAMEWORKS if f in found)


def preloading() -> bool:
    """False where the instructor set ``BNCOURSE_PRELOAD_FRAMEWORKS=0`` (then each kernel imports its
    own frameworks, should one ever misbehave after a fork)."""
    return os.environ.get("BNCOURSE_PRELOAD_FRAMEWORKS", "1") != "0"


def preload_for(source_notebook: Path) -> tuple[str, ...]:
    """The frameworks the zygote imports for the assignment: :func:`frameworks_of`, unless :func:`preloading` is off."""
    return frameworks_of(source_notebook) if preloading() else ()


def zygotes_needed(course_root: Path, assignments) -> list[tuple[str, ...]]:
    """The framework sets of the zygotes a class of ``assignments`` needs besides numpy's (:func:`preload_for`)."""
    return sorted({preload_for(Path(course_root) / "solutions" / a / f"{a}.ipynb") for a in assignments} - {()})


# ------------------------------------------------------- the jail's steps --
def _sys(name: str, *args) -> None:
    """Call a libc function; raise OSError on failure."""
    import ctypes

    from .sandbox import _libc

    if getattr(_libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}{args}: {os.strerror(err)}")


def _on_parent_death(sig: int, parent: int | None = None) -> None:
    """Have the kernel send ``sig`` to this process when its parent ends; and if ``parent`` (the pid the
    parent had) is already gone, act on it now: a parent that died before this call sends nothing."""
    _sys("prctl", PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)


def own_session() -> None:
    for s in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    os.setsid()


def namespaces(zygote: int | None = None) -> None:
    """New mount, network and PID namespaces; this process stays outside as the keeper, its child goes on."""
    _sys("unshare", CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID)
    kernel = os.fork()
    if kernel:
        keep(kernel, zygote)  # never returns
    _sys("unshare", CLONE_NEWNS)  # the kernel's view is its own, not the keeper's


def keep(kernel: int, zygote: int | None = None) -> None:
    """The keeper: forward signals to the kernel, kill it when asked to end, end as it ended."""
    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(kernel, signal.SIGKILL if signum in (signal.SIGTERM, signal.SIGHUP) else signum)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, forward)
    _on_parent_death(signal.SIGTERM, zygote)
    _, status = os.waitpid(kernel, 0)
    if os.WIFSIGNALED(status):  # the zygote sees the kernel's own signal
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # these two cannot be handled, so cannot be reset either
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def own_user(sandbox: Path) -> int:
    uid = kernel_uid()
    for dirpath, _, files in os.walk(sandbox):
        os.chown(dirpath, uid, uid)
        for f in files:
            os.chown(os.path.join(dirpath, f), uid, uid)
    return uid


def file_system_view(sandbox: Path, frameworks: bool) -> None:
    from . import sandbox as view

    view.build(sandbox, frameworks=frameworks)


def resource_limits() -> None:
    for name, value in LIMITS.items():
        rl = getattr(resource, name)
        _, hard = resource.getrlimit(rl)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(rl, (value, value))


def console(sandbox: Path, uid: int | None) -> None:
    """The kernel's own output (IPython's banner, framework logs) to ``kernel.log``; every other descriptor closed."""
    log = os.open(sandbox / "kernel.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    if uid is not None:
        os.fchown(log, uid, uid)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.closerange(3, 1 << 16)  # the zygote's channel to the grader among them


def drop_privileges(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    _on_parent_death(signal.SIGKILL)  # a change of user clears it


def clean_environment(env: dict) -> None:
    os.environ.clear()
    os.environ.update(env)


def import_path(sandbox: Path) -> None:
    import importlib

    roots = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    keep_ = [p for p in sys.path if p and any(r == Path(p).resolve() or r in Path(p).resolve().parents for r in roots)]
    sys.path[:] = [str(sandbox / "lib"), *keep_]
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    for name in [m for m in sys.modules if m == "grading" or m.startswith("grading.")]:
        del sys.modules[name]


def fresh_seeds() -> None:
    import random

    random.seed()  # not the zygote's state: every kernel draws its own numbers
    sys.modules["numpy.random"].seed()


def contain(request: dict) -> None:
    """In the zygote's child: the jail's steps, then IPython's kernel in this process. Never returns."""
    code = 1
    try:
        own_session()
        sandbox = Path(request["sandbox"]).resolve()
        uid = None
        if request["namespaced"]:
            namespaces(request.get("zygote"))
            uid = own_user(sandbox)
            file_system_view(sandbox, request["frameworks"])
        else:
            _on_parent_death(signal.SIGKILL, request.get("zygote"))
        resource_limits()
        os.chdir(sandbox)
        console(sandbox, uid)
        if uid is not None:
            drop_privileges(uid)
        clean_environment(request["env"])
        import_path(sandbox)
        fresh_seeds()
        sys.argv = ["ipykernel_launcher", *request["argv"]]
        from ipykernel import kernelapp

        kernelapp.launch_new_instance()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - the kernel could not start: say why in its log
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed stream at exit: nothing left to tell
                stream.flush()
        os._exit(code)


def __getattr__(name):  # the kernel manager, on first use: jupyter_client is slow to import, and the zygote needs none
    if name == "JailedKernelManager":
        from .kernels import JailedKernelManager

        return JailedKernelManager
    raise AttributeError(name)
