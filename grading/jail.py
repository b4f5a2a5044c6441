"""Run each graded kernel in a jail: its own sandbox, no instructor files, no
network, limited resources, no reference implementation.

nbgrader starts a kernel per notebook through nbclient; ``nbgrader_config.py``
makes that kernel manager :class:`JailedKernelManager`, whose provisioner has
the kernel forked, already jailed, by this grading process's *zygote* (a
Python that imported IPython's kernel and numpy once; see the launcher
section). Where the grader runs as root on Linux and the system allows new
namespaces, the kernel gets:

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
  inside the kernel instead of harming the grader;
- a clean environment and import path, and fresh random seeds.

The kernel imports ``bncheck`` from its sandbox, holding only the probes
(:mod:`bncheck.probes`, :mod:`bncheck.framework_probes` and the registry's
table): the grader calls them (:mod:`grading.execute`) and judges their
arrays in its own process; the judges and the reference implementation are
nowhere to be found.

Without root or namespaces the launcher still applies the resource limits,
the sandbox, the clean environment and the shim, and :func:`isolation` says
what is missing; the grading report prints it.
"""

from __future__ import annotations

import functools
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
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
SHIM_MODULES = ("__init__.py", "probes.py", "framework_probes.py", "registry.py")  # of bncheck: no judge


NAMESPACE_PROBE = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "if libc.unshare(%d) != 0:\n"
    "    sys.exit(os.strerror(ctypes.get_errno()))\n"
)


@functools.cache
def isolation() -> str:
    """``"full"``, or what the jail cannot do on this machine and why (tried once per process)."""
    if os.name != "posix" or not sys.platform.startswith("linux"):
        return "limited: not Linux (no namespaces); resource limits and sandbox only"
    if os.geteuid() != 0:
        return "limited: not running as root (no namespaces, no user switch); resource limits and sandbox only"
    probe = subprocess.run([sys.executable, "-S", "-c", NAMESPACE_PROBE % (CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID)],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        why = probe.stderr.strip().splitlines()[-1:] or [f"exit status {probe.returncode}"]
        return f"limited: this system refuses new namespaces ({why[0]}); resource limits and sandbox only"
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
    """A ``bncheck`` package with the probe modules only (no judge, no ``bnlib``)."""
    pkg = lib / "bncheck"
    pkg.mkdir(parents=True, exist_ok=True)
    src = PROJECT / "bncheck"
    for name in SHIM_MODULES:
        shutil.copy2(src / name, pkg / name)


def _jailed_kernel_manager_class():
    """The kernel manager class (built on first use: jupyter_client is slow to
    import, and the zygote, which imports this module, never needs it)."""
    import asyncio

    from jupyter_client.manager import AsyncKernelManager
    from jupyter_client.provisioning import LocalProvisioner
    from traitlets import List, Unicode

    class JailProvisioner(LocalProvisioner):
        """Starts the kernel as a jailed child of this process's zygote (see the launcher below)."""

        async def launch_kernel(self, cmd, **kw):
            if cmd[1:3] != ["-m", "ipykernel_launcher"] or Path(cmd[0]).resolve() != Path(sys.executable).resolve():
                raise RuntimeError("the grading jail starts this Python's IPython kernel only: expected "
                                   f"[{sys.executable!r}, '-m', 'ipykernel_launcher', ...]; received {cmd}")
            km = self.parent
            sandbox = km.sandbox
            request = {"sandbox": str(sandbox), "argv": cmd[3:], "env": kernel_env(sandbox),
                       "hide": list(km.hide), "namespaced": isolation() == "full"}
            frameworks = tuple(f for f in FRAMEWORKS if f in km.preload)
            self.process = Zygote.spawn_kernel(request, frameworks)
            self.pid, self.pgid, self.cwd = self.process.pid, None, str(sandbox)
            return self.connection_info

        async def wait(self):
            """As LocalProvisioner's, polling every 5 ms instead of 100 ms."""
            ret = 0
            if self.process:
                while await self.poll() is None:
                    await asyncio.sleep(0.005)
                ret, self.process = self.process.returncode, None
            return ret

    class JailedKernelManager(AsyncKernelManager):
        """A kernel manager that starts every kernel jailed, in a fresh sandbox.

        Its settings come from the grader (``GradedExecute`` passes its own on):
        where the sandboxes go, what else to hide, which frameworks the zygote
        imports before forking.
        """

        sandbox_root = Unicode("", help="Folder for the sandboxes (a temporary folder when empty)").tag(config=True)
        hide = List(Unicode(), help="Folders to hide besides the defaults (the course folder)").tag(config=True)
        preload = List(Unicode(), help="Frameworks the zygote imports before forking").tag(config=True)
        sandbox: Path | None = None

        async def _async_pre_start_kernel(self, **kw):
            parent = Path(self.sandbox_root or tempfile.mkdtemp(prefix="bn-jail-"))
            self.sandbox = parent / f"kernel-{uuid.uuid4().hex[:8]}"
            self.sandbox.mkdir(parents=True)
            make_shim(self.sandbox / "lib")
            self.transport = "ipc"
            self.ip = str(self.sandbox / "ipc")
            self.connection_file = str(self.sandbox / "connection.json")
            self.kernel_id = self.kernel_id or kw.pop("kernel_id", str(uuid.uuid4()))
            if self.provisioner is None:
                self.provisioner = JailProvisioner(kernel_id=self.kernel_id, kernel_spec=self.kernel_spec, parent=self)
            return await super()._async_pre_start_kernel(**kw)

        async def _async_finish_shutdown(self, waittime=None, pollinterval=0.1, restart=False):
            # a jailed kernel exits within milliseconds of its shutdown reply: look every 5 ms, not 100
            return await super()._async_finish_shutdown(waittime, pollinterval=0.005, restart=restart)

    return JailedKernelManager


# ------------------------------------------------------------ launcher ----
#
# Every graded kernel imports the same modules (IPython's kernel, numpy): a
# third of a notebook's grading time when each kernel is a fresh Python. So
# each grading process keeps one *zygote* (``python -m grading.jail``), a
# Python that has imported them once and forks a kernel per request. The
# child builds the jail before it runs a line of the kernel: a new session;
# new mount, network and PID namespaces; the hidden folders; rlimits; its
# own user id; a clean environment and ``sys.path`` (the shim first, no
# project folder, no editable-install finder); fresh random seeds.
#
# In the namespaces the forked child stays outside the new PID namespace as
# the jail's *keeper*: the kernel is its child, PID 1 of the namespace, so
# every process the kernel starts dies with it. The keeper forwards signals;
# asked to end (SIGTERM, or its parent-death signal) it kills the kernel.
# The grader sees the keeper through a pidfd that the zygote passes back.

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID = 0x00020000, 0x40000000, 0x20000000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
PR_SET_PDEATHSIG = 1
PRELOAD = ("numpy", "numpy.random", "ipykernel.kernelapp")  # what every graded kernel imports
FRAMEWORKS = ("tensorflow", "keras", "torch")  # preloaded too where the assignment imports them (seconds each)
# the grader's settings that the zygote and the kernels keep (how the frameworks start and log)
PASSED_ON = ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "KERAS_BACKEND", "CUDA_VISIBLE_DEVICES",
             "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")
_IMPORT = re.compile(r"^\s*(?:import|from)\s+(tensorflow|keras|torch)\b", re.MULTILINE)


def frameworks_of(source_notebook: Path) -> tuple[str, ...]:
    """The frameworks of :data:`FRAMEWORKS` that the assignment's source notebook imports, in that order."""
    import json

    cells = json.loads(Path(source_notebook).read_text(encoding="utf-8")).get("cells", [])
    code = "\n".join("".join(c.get("source", "")) for c in cells if c.get("cell_type") == "code")
    found = set(_IMPORT.findall(code))
    return tuple(f for f in FRAMEWORKS if f in found)


def preload_for(source_notebook: Path) -> tuple[str, ...]:
    """:func:`frameworks_of`, or none where the instructor set ``BNCOURSE_PRELOAD_FRAMEWORKS=0``
    (then each kernel imports its own frameworks, should one ever misbehave after a fork)."""
    if os.environ.get("BNCOURSE_PRELOAD_FRAMEWORKS", "1") == "0":
        return ()
    return frameworks_of(source_notebook)


_libc = None


def _sys(name: str, *args) -> None:
    """Call a libc function; raise OSError on failure."""
    import ctypes

    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if getattr(_libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}{args}: {os.strerror(err)}")


def _on_parent_death(sig: int) -> None:
    if sys.platform.startswith("linux"):
        _sys("prctl", PR_SET_PDEATHSIG, sig, 0, 0, 0)


def _mount(source, target, fstype, flags: int, data=None) -> None:
    enc = lambda s: None if s is None else os.fsencode(str(s))  # noqa: E731
    _sys("mount", enc(source), enc(target), enc(fstype), flags, enc(data))


def _hide(root: Path, keep: list[Path]) -> None:
    """Mount an empty tmpfs on ``root``, then bind the ``keep`` paths under it back."""
    inside = [k for k in keep if root in k.parents]
    fds = [os.open(k, os.O_PATH | os.O_DIRECTORY) for k in inside]
    _mount("tmpfs", root, "tmpfs", 0, "mode=755,size=16m")
    for k, fd in zip(inside, fds):
        k.mkdir(parents=True, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", k, None, MS_BIND | MS_REC)
        os.close(fd)


def _limit() -> None:
    for name, value in LIMITS.items():
        rl = getattr(resource, name)
        soft, hard = resource.getrlimit(rl)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(rl, (value, value))


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


def _keep(kernel: int) -> None:
    """The keeper: forward signals to the kernel, kill it when asked to end, exit with its status."""
    import signal

    def forward(signum, _frame):
        try:
            os.kill(kernel, signal.SIGKILL if signum in (signal.SIGTERM, signal.SIGHUP) else signum)
        except ProcessLookupError:
            pass

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, forward)
    _on_parent_death(signal.SIGTERM)
    _, status = os.waitpid(kernel, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _python_path(lib: Path) -> list[str]:
    """The kernel's ``sys.path``: the shim, then the Python installation and the environment only."""
    roots = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    keep = [p for p in sys.path if p and any(r == Path(p).resolve() or r in Path(p).resolve().parents for r in roots)]
    return [str(lib), *keep]


def _become_kernel(request: dict) -> None:
    """In the zygote's child: build the jail, then run the IPython kernel in this process. Never returns."""
    import importlib
    import random
    import signal

    code = 1
    try:
        for s in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(s, signal.SIG_DFL if s != signal.SIGPIPE else signal.SIG_IGN)
        os.setsid()
        sandbox = Path(request["sandbox"]).resolve()
        namespaced = request["namespaced"]
        if namespaced:
            _sys("unshare", CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID)
            kernel = os.fork()
            if kernel:
                _keep(kernel)
            # the kernel: PID 1 of the new PID namespace
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
            keep = kept_paths(sandbox)
            for root in hidden_roots(request["hide"]):
                _hide(root, keep)
            uid = kernel_uid()
            for dirpath, _, files in os.walk(sandbox):
                os.chown(dirpath, uid, uid)
                for f in files:
                    os.chown(os.path.join(dirpath, f), uid, uid)
        else:
            _on_parent_death(signal.SIGKILL)
        _limit()
        os.chdir(sandbox)
        # the kernel's own console output (IPython's banner, framework logs) goes
        # to a file in the sandbox, not to the grader's console
        log = os.open(sandbox / "kernel.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        if namespaced:
            os.fchown(log, uid, uid)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 1 << 16)  # the zygote's channel to the grader among them
        if namespaced:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            _on_parent_death(signal.SIGKILL)  # a change of user clears it
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[:] = _python_path(sandbox / "lib")
        sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
        sys.path_importer_cache.clear()
        importlib.invalidate_caches()
        for name in [m for m in sys.modules if m == "grading" or m.startswith("grading.")]:
            del sys.modules[name]
        random.seed()  # not the zygote's state: every kernel draws its own numbers
        sys.modules["numpy.random"].seed()
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
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def zygote(fd: int, extra: list[str]) -> None:
    """``python -m grading.jail FD [FRAMEWORK...]``: import :data:`PRELOAD` and the frameworks,
    then fork a jailed kernel per request on socket FD.

    A request is one JSON object (see :class:`Zygote`); the reply is
    ``{"pid": N}`` with a pidfd of the child attached. EOF ends the zygote.
    """
    import json
    import signal
    import socket

    for name in (*PRELOAD, *extra):
        __import__(name)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the grader decides when the zygote ends (EOF)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the system
    chan = socket.socket(fileno=fd)
    buf = b""
    while True:
        data = chan.recv(1 << 16)
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                chan.close()
                _become_kernel(request)
            fds = []
            try:
                fds = [os.pidfd_open(pid)]
            except (AttributeError, OSError):
                pass
            socket.send_fds(chan, [json.dumps({"pid": pid}).encode() + b"\n"], fds)
            for f in fds:
                os.close(f)


class ForkedKernel:
    """A kernel forked by the zygote, with the ``subprocess.Popen`` methods jupyter_client uses."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int, pidfd: int | None, namespaced: bool):
        self.pid, self.pidfd, self.namespaced, self.returncode = pid, pidfd, namespaced, None

    def poll(self) -> int | None:
        if self.returncode is None:
            import select

            if self.pidfd is not None:
                gone = bool(select.select([self.pidfd], [], [], 0)[0])
            else:
                try:
                    os.kill(self.pid, 0)
                    gone = False
                except ProcessLookupError:
                    gone = True
            if gone:
                self.returncode = -1  # the zygote reaped it; its status is in its kernel.log
                if self.pidfd is not None:
                    os.close(self.pidfd)
                    self.pidfd = None
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        import time

        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"kernel {self.pid} still running after {timeout} s")
            time.sleep(0.005)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        import signal

        if self.poll() is not None:
            return
        if self.namespaced and signum == signal.SIGKILL:
            signum = signal.SIGTERM  # the keeper kills the kernel (PID 1 of the jail, so all of it) and exits
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signum)
            elif self.namespaced:
                os.kill(self.pid, signum)
            else:
                os.killpg(self.pid, signum)  # the kernel's own session: its children too
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        import signal

        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        import signal

        self.send_signal(signal.SIGTERM)


class Zygote:
    """A zygote of this process, one per set of preloaded frameworks, started on first use and ended with the process."""

    _instances: dict[tuple[str, ...], "Zygote"] = {}

    def __init__(self, frameworks: tuple[str, ...] = ()):
        import socket
        import threading

        mine, theirs = socket.socketpair()
        self.chan = mine
        env = {k: os.environ[k] for k in ("PATH", "LANG", *PASSED_ON) if k in os.environ}
        home = tempfile.mkdtemp(prefix="bn-zygote-")
        self.proc = subprocess.Popen([sys.executable, "-s", "-m", "grading.jail", str(theirs.fileno()), *frameworks],
                                     pass_fds=(theirs.fileno(),), cwd=home,
                                     env=env | {"HOME": home, "PYTHONPATH": str(PROJECT)},  # this checkout's grading
                                     stdin=subprocess.DEVNULL)
        theirs.close()
        self.home = home
        self.lock = threading.Lock()
        self.buf = b""

    @classmethod
    def get(cls, frameworks: tuple[str, ...] = ()) -> "Zygote":
        zygote = cls._instances.get(frameworks)
        if zygote is None or zygote.proc.poll() is not None:
            zygote = cls._instances[frameworks] = cls(frameworks)
            import atexit

            atexit.register(zygote.close)
        return zygote

    def spawn(self, request: dict) -> ForkedKernel:
        """Have the zygote fork a jailed kernel for ``request``; raises OSError if the zygote is gone."""
        import json
        import socket

        fds: list[int] = []
        with self.lock:
            self.chan.sendall(json.dumps(request).encode() + b"\n")
            while b"\n" not in self.buf:
                data, got, _, _ = socket.recv_fds(self.chan, 4096, 1)
                if not data:
                    raise ConnectionError(f"the kernel zygote exited (status {self.proc.wait()})")
                self.buf += data
                fds += got
            line, self.buf = self.buf.split(b"\n", 1)
        reply = json.loads(line)
        return ForkedKernel(reply["pid"], fds[0] if fds else None, request["namespaced"])

    @classmethod
    def spawn_kernel(cls, request: dict, frameworks: tuple[str, ...] = ()) -> ForkedKernel:
        """:meth:`spawn` in this process's zygote for ``frameworks``; if that zygote died, in a fresh one."""
        try:
            return cls.get(frameworks).spawn(request)
        except OSError:
            dead = cls._instances.pop(frameworks, None)
            if dead is not None:
                dead.close()
            return cls.get(frameworks).spawn(request)

    def close(self) -> None:
        """End the zygote (it exits when its channel closes); the kernels it forked are not touched."""
        self.chan.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)



_LAZY = {"JailedKernelManager": _jailed_kernel_manager_class}


def __getattr__(name):  # classes built on first use: their imports are slow
    if name in _LAZY:
        cls = _LAZY[name]()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


if __name__ == "__main__":
    zygote(int(sys.argv[1]), sys.argv[2:])
