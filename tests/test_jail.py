"""The jailed kernel itself, started as grading starts it (``grading.jail``).

Each test starts kernels through :class:`~grading.jail.JailedKernelManager`
and asks them about themselves: what they can import, see and reach, who
they run as, what they inherited from the zygote they were forked from, and
whether anything of them is left once they are shut down or killed. The
limited mode (no root, or no namespaces) is forced by replacing
:func:`grading.jail.isolation`, as a machine without them would answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from grading import jail

FULL = jail.isolation() == "full"
CANARY = "BNCOURSE_TEST_SECRET"  # set in the grader's environment: no kernel may see it
PROBE = """
import json, os, random, sys
import numpy as np
import bncheck
try:
    import bnlib
    bnlib_file = bnlib.__file__
except ImportError:
    bnlib_file = None
report = {
    "uid": os.getuid(), "pid": os.getpid(), "cwd": os.getcwd(), "env": sorted(os.environ), "home": os.environ.get("HOME"),
    "bncheck": sorted(os.listdir(os.path.dirname(bncheck.__file__))), "bncheck_file": bncheck.__file__,
    "bnlib_file": bnlib_file,
    "path": sys.path, "project_visible": os.path.exists(%(project)r),
    "grading_loaded": sorted(m for m in sys.modules if m.split(".")[0] == "grading"),
    "numpy_random": np.random.rand(3).tolist(), "random": random.random(),
    "frameworks": sorted(m for m in ("tensorflow", "keras", "torch") if m in sys.modules),
}
print("REPORT" + json.dumps(report))
"""


async def _session(code: str, sandboxes: Path, now: bool = False, preload=()) -> tuple[str, object]:
    """Start a jailed kernel, run ``code``, shut the kernel down (``now``: killed); return (its output, its ForkedKernel)."""
    km = jail.JailedKernelManager(kernel_name="python3", sandbox_root=str(sandboxes), preload=list(preload))
    os.environ[CANARY] = "the instructor's token"
    try:
        await km.start_kernel()
        proc = km.provisioner.process
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        out = []
        await kc.execute_interactive(code, timeout=60, output_hook=lambda m: out.append(m["content"].get("text", "")))
        kc.stop_channels()
        await km.shutdown_kernel(now=now)
    finally:
        os.environ.pop(CANARY, None)
    return "".join(out), proc


async def _run(code: str, sandboxes: Path, preload=()) -> tuple[dict, object]:
    """Run ``code`` in a jailed kernel; return (the JSON it printed after REPORT, its ForkedKernel)."""
    text, proc = await _session(code, sandboxes, preload=preload)
    assert "REPORT" in text, f"the kernel printed no report; its output: {text!r}"
    return json.loads(text.split("REPORT", 1)[1]), proc


def run(code: str, sandboxes: Path, preload=()):
    return asyncio.run(_run(code, sandboxes, preload))


def gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def check_common(report: dict, sandboxes: Path) -> None:
    shipped = [f for f in report["bncheck"] if f.endswith(".py")]
    assert sorted(shipped) == ["__init__.py", "framework_probes.py", "probes.py", "registry.py"], (
        f"expected the probe-only bncheck; the kernel's bncheck holds {report['bncheck']}")
    assert report["bncheck_file"].startswith(str(sandboxes)), (
        f"expected the shim from the sandbox; received {report['bncheck_file']}")
    assert report["bnlib_file"] is None, f"the reference implementation is importable in the kernel: {report['bnlib_file']}"
    assert report["cwd"].startswith(str(sandboxes))
    assert not any(p.startswith(str(jail.PROJECT) + os.sep) and ".venv" not in p or p == str(jail.PROJECT)
                   for p in report["path"]), (
        f"the project folder is on the kernel's sys.path: {report['path']}")
    assert report["grading_loaded"] == [], f"grading modules left in the kernel: {report['grading_loaded']}"
    assert CANARY not in report["env"], "the kernel inherited a variable of the grader's environment"
    assert report["home"] == report["cwd"], f"expected HOME to be the sandbox; received {report['home']}"


@pytest.mark.skipif(not FULL, reason=f"the jail's namespaces are not available here: {jail.isolation()}")
def test_a_full_jail_hides_the_project_runs_unprivileged_and_dies_whole(tmp_path):
    report, proc = run(PROBE % {"project": str(jail.PROJECT / "solutions")}, tmp_path)
    check_common(report, tmp_path)
    assert report["uid"] >= jail.UID_BASE, f"expected an unprivileged uid of the kernel's own; received {report['uid']}"
    assert report["pid"] == 1, f"expected the kernel to be PID 1 of its own PID namespace; received {report['pid']}"
    assert report["project_visible"] is False, "the kernel can see the project's solutions/"
    assert gone(proc.pid), f"the jail's keeper {proc.pid} outlived the kernel's shutdown"


def test_a_limited_jail_still_gives_a_clean_kernel(tmp_path, monkeypatch):
    jail.isolation()  # cache the real answer first, then pretend this machine has no namespaces
    monkeypatch.setattr(jail, "isolation", lambda: "limited: forced by the test")
    report, proc = run(PROBE % {"project": str(jail.PROJECT / "solutions")}, tmp_path)
    check_common(report, tmp_path)
    assert report["pid"] == proc.pid, "in the limited mode the kernel is the zygote's child itself"
    assert gone(proc.pid)


def test_kernels_forked_from_one_zygote_get_fresh_random_seeds(tmp_path):
    first, _ = run(PROBE % {"project": "/nonexistent"}, tmp_path)
    second, _ = run(PROBE % {"project": "/nonexistent"}, tmp_path)
    for name in ("numpy_random", "random"):
        assert first[name] != second[name], f"two kernels drew the same unseeded {name} numbers (the zygote's state)"


def test_a_killed_kernel_takes_its_children_with_it(tmp_path):
    """SIGKILL as jupyter_client sends it on a forced shutdown: nothing the kernel started may survive."""
    # a grandchild that ignores SIGTERM and sleeps: it must still die with the kernel
    code = ("import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', "
            "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
            "print('CHILD', p.pid)\n")
    text, proc = asyncio.run(_session(code, tmp_path, now=True))
    assert "CHILD" in text, f"the kernel did not start its child: {text!r}"
    keeper = proc.pid
    assert gone(keeper), f"the jail (pid {keeper}) survived a forced shutdown"
    sleepers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and b"time.sleep(600)" in _cmdline(p)]
    for p in sleepers:
        os.kill(int(p.name), signal.SIGKILL)
    assert sleepers == [], f"processes the kernel started outlived it: {[p.name for p in sleepers]}"


def _cmdline(p: Path) -> bytes:
    try:
        return (p / "cmdline").read_bytes()
    except OSError:
        return b""


def test_the_jail_refuses_a_kernel_it_cannot_jail(tmp_path):
    """Only this Python's IPython kernel is forked from the zygote; anything else is refused, in words."""
    async def go():
        km = jail.JailedKernelManager(kernel_name="python3", sandbox_root=str(tmp_path))
        km.kernel_spec.argv = ["/bin/sh", "-c", "sleep 1"]
        await km.start_kernel(extra_arguments=[])

    with pytest.raises(RuntimeError, match="IPython kernel only"):
        asyncio.run(go())


def test_only_assignments_that_import_a_framework_get_it_preloaded(tmp_path, monkeypatch):
    from grading import course as C

    found = {a: jail.frameworks_of(C.PROJECT / "solutions" / a / f"{a}.ipynb") for a in C.assignments()}
    assert found == {"ch01-scaling": (), "ch02-forward": (), "ch03-backward": (), "ch04-running-stats": (),
                     "ch05-keras": ("keras",), "ch06-pytorch": ("keras", "torch"), "ch09-normalization-family": ()}, found
    ch09 = C.PROJECT / "solutions" / "ch09-normalization-family" / "ch09-normalization-family.ipynb"
    assert jail.preload_for(ch09) == (), "chapter 9's exercise is numpy only: no framework may be preloaded"
    ch06 = C.PROJECT / "solutions" / "ch06-pytorch" / "ch06-pytorch.ipynb"
    assert jail.preload_for(ch06) == ("keras", "torch")
    monkeypatch.setenv("BNCOURSE_PRELOAD_FRAMEWORKS", "0")
    assert jail.preload_for(ch06) == (), "the instructor's switch did not turn preloading off"
    plain, _ = run(PROBE % {"project": "/nonexistent"}, tmp_path)
    assert plain["frameworks"] == [], f"a numpy-only kernel came with {plain['frameworks']} imported"
    preloaded, _ = run(PROBE % {"project": "/nonexistent"}, tmp_path, preload=["torch"])
    assert preloaded["frameworks"] == ["torch"], f"expected torch already imported; received {preloaded['frameworks']}"
    check_common(preloaded, tmp_path)


# ------------------------------------------------------- the allowlist view ---
VIEW_PROBE = r"""
import json, os, subprocess, sys
out = {}
sys.path.insert(0, %(other)r)
try:
    import bnlib
    out["other_course"] = bnlib.__file__
except ImportError as e:
    out["other_course"] = None
out["other_course_visible"] = os.path.exists(%(other)r)
out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
out["cmdlines"] = [open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace") for p in out["pids"]]
open("/dev/shm/%(shm)s", "w").write("x")
out["shm"] = os.listdir("/dev/shm")
out["tmp"] = os.listdir("/tmp")
status = open("/proc/self/status").read()
out["no_new_privs"] = [l for l in status.splitlines() if l.startswith("NoNewPrivs")][0].split()[1]
try:
    r = subprocess.run(["su", "-c", "id -u"], capture_output=True, text=True, timeout=10)
    out["su"] = (r.returncode, r.stdout.strip())
except Exception as e:
    out["su"] = (None, type(e).__name__)
for name in ("torch", "tensorflow", "keras", "jax"):
    try:
        __import__(name)
        out[name] = "imported"
    except ImportError as e:
        out[name] = str(e)
out["top"] = sorted(os.listdir("/"))
out["root_home"] = sorted(os.listdir("/root")) if os.path.isdir("/root") else []
try:
    open("/usr/bin/bn-written", "w")
    out["usr_writable"] = True
except OSError:
    out["usr_writable"] = False
print("REPORT" + json.dumps(out))
"""


@pytest.mark.skipif(not FULL, reason=f"the jail's namespaces are not available here: {jail.isolation()}")
def test_the_kernel_sees_only_what_the_allowlist_gives_it(tmp_path):
    other = Path("/srv") / f"bn-other-course-{os.getpid()}"  # another copy of the course, outside any old hidden folder
    (other / "bnlib").mkdir(parents=True)
    (other / "bnlib" / "__init__.py").write_text("def batchnorm_forward(*a):\n    return 'the reference'\n")
    shm = f"bn-jail-test-{os.getpid()}"
    try:
        text, _ = asyncio.run(_session(VIEW_PROBE % {"other": str(other), "shm": shm}, tmp_path))
    finally:
        shutil.rmtree(other, ignore_errors=True)
    assert "REPORT" in text, text
    r = json.loads(text.split("REPORT", 1)[1])
    assert r["other_course"] is None and not r["other_course_visible"], f"another copy of the course is readable: {r}"
    assert r["pids"] == [1], f"the kernel sees processes besides its own: {r['pids']} {r['cmdlines']}"
    assert r["shm"] == [shm] and not (Path("/dev/shm") / shm).exists(), "the kernel's /dev/shm is shared with the host"
    # fresh: nothing but the way to its own sandbox (kept at the path the grader knows) and, where the
    # Python environment lies below /tmp (CI's clone), the way to it, read-only
    ways = {p.parts[2] for p in [tmp_path, *map(Path, (sys.base_prefix, sys.prefix))]
            if p.parts[1:2] == ("tmp",) and len(p.parts) > 2}
    assert set(r["tmp"]) == ways, f"the kernel's /tmp is not fresh: {r['tmp']}"
    assert r["no_new_privs"] == "1", r["no_new_privs"]
    assert r["su"][1] != "0", f"a setuid program gave the kernel root: {r['su']}"
    for name in ("torch", "tensorflow", "keras", "jax"):
        assert r[name] != "imported" and ("numpy only" in r[name] or "No module named" in r[name]), (name, r[name])
    assert "numpy only" in r["torch"], r["torch"]
    # /root holds nothing but the way to the Python installation (pyenv's, on this machine)
    ways = {p.parts[2] for p in map(Path, (sys.base_prefix, sys.prefix)) if p.parts[1:2] == ("root",)}
    assert set(r["root_home"]) <= ways and not r["usr_writable"], r
    assert set(r["top"]) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "tmp", "dev", "proc",
                             "root", "work"} | {Path(sys.base_prefix).resolve().parts[1], Path(sys.prefix).parts[1]}, r["top"]


def test_the_zygote_reports_each_kernels_real_exit_status(tmp_path):
    """A kernel that exits with 7, or dies of a signal, is recorded so (the zygote reaps its children itself)."""
    from grading.zygote import Zygote

    for code, want in (("import os; os._exit(7)", 7), ("import ctypes; ctypes.string_at(0)", -signal.SIGSEGV)):
        async def go(code=code):
            km = jail.JailedKernelManager(kernel_name="python3", sandbox_root=str(tmp_path))
            await km.start_kernel()
            proc = km.provisioner.process
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=60)
            kc.execute(code)
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            kc.stop_channels()
            await km.shutdown_kernel(now=True)
            return proc.returncode

        assert asyncio.run(go()) == want, f"{code!r}: expected status {want}"
    assert Zygote._instances, "the kernels did not come from a zygote"


def test_a_kernel_the_grader_kills_is_recorded_as_killed(tmp_path):
    """Grading ends each kernel with a kill (GradedExecute.shutdown_kernel is "immediate"): the keeper passes the
    kernel's SIGKILL on as its own status (it once failed resetting SIGKILL's handler, and exited with an error)."""

    async def go():
        km = jail.JailedKernelManager(kernel_name="python3", sandbox_root=str(tmp_path))
        await km.start_kernel()
        proc = km.provisioner.process
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
        return proc.returncode

    assert asyncio.run(go()) == -signal.SIGKILL


@pytest.mark.skipif(not FULL, reason=f"the jail's namespaces are not available here: {jail.isolation()}")
def test_a_python_environment_below_tmp_stays_visible_in_the_view(tmp_path):
    """A checkout under /tmp (CI's clone) has its venv there: the fresh /tmp must not hide it."""
    import subprocess

    env_root = tmp_path / "venv"
    (env_root / "lib").mkdir(parents=True)
    (env_root / "lib" / "marker.txt").write_text("here")
    sandbox_dir = tmp_path / "sandbox"
    sandbox_dir.mkdir()
    code = f"""
import os, sys
from pathlib import Path
sys.path.insert(0, {str(jail.PROJECT)!r})
from grading import sandbox
roots = sandbox.python_roots()
sandbox.python_roots = lambda: roots + [Path({str(env_root)!r})]
if sandbox._libc.unshare(0x00020000 | 0x20000000) != 0:
    sys.exit("unshare")
pid = os.fork()
if pid:
    sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
sandbox.build(Path({str(sandbox_dir)!r}), frameworks=False)
os._exit(0 if open({str(env_root / "lib" / "marker.txt")!r}).read() == "here" else 5)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_child_whose_parent_died_before_it_watched_for_that_ends_at_once():
    """PR_SET_PDEATHSIG only fires for a parent that dies after it is set: a keeper whose zygote was killed
    just before (a run killed while a kernel starts) must end anyway, or it and its kernel outlive the run."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:  # the "zygote": forks the "keeper", then dies before the keeper watches for it
        parent = os.getpid()
        keeper = os.fork()
        if keeper == 0:
            os.close(r)
            deadline = time.monotonic() + 10
            while os.getppid() == parent and time.monotonic() < deadline:
                time.sleep(0.01)
            jail._on_parent_death(signal.SIGKILL, parent)
            os.write(w, b"alive")  # reached only if the call above did not end this process
            os._exit(0)
        os._exit(0)
    os.close(w)
    os.waitpid(middle, 0)
    with os.fdopen(r, "rb") as pipe:
        assert pipe.read() == b"", "the child outlived the parent it was told to die with"
