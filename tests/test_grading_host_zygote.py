"""The grading processes of one host share their kernel zygotes (Dask workers, issue 13).

Every Dask worker started its own zygotes: a Keras-and-PyTorch one costs
4.6 s of CPU and about 1 GB, once per worker instead of once per host. Now a
worker (``Zygote.host_dir``, set by :func:`grading.cluster.prepare_worker`)
attaches to the host's zygote, and the first worker that needs one starts it
in a session of its own. Such a zygote must not be a point of failure:

- two processes get one zygote: one starts it, the other attaches;
- the process that started it is killed with its whole session (a worker
  killed with SIGKILL, as the fault test does): the other's kernel keeps
  running and answering, and new kernels still start;
- the zygote ends with the last process that used it, and takes its
  socket, its home and the host folder with it;
- a host folder someone else could write to is not used (each process then
  starts its own zygote).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from _support import jail_processes
from grading.kernels import JailedKernelManager
from grading.zygote import Zygote


@pytest.fixture
def host():
    """A short host folder (a Unix socket's path is short), not made yet: the first process makes it."""
    base = Path(tempfile.mkdtemp(prefix="bnh-", dir="/tmp"))
    yield base / "host"
    shutil.rmtree(base, ignore_errors=True)


def host_zygotes() -> list[int]:
    """The pids of the host zygotes running (``python -m grading.zygote --listen FD --linger ...``), not their
    forks (kernels, keepers, judges: the same command line)."""
    def parent(pid):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    found = [pid for pid in jail_processes() if b"--linger" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:8]]
    return [pid for pid in found if parent(pid) not in found]


def _starter(host: str, out) -> None:
    """A worker that starts the host's numpy zygote, says so, and waits to be killed (with its session)."""
    os.setsid()
    Zygote._instances.clear()  # a forked process: the parent's zygotes are not its own
    Zygote.host_dir = host
    z = Zygote.get(())
    out.send((z.proc is not None, z.proc.pid if z.proc else None))
    time.sleep(600)


def _user(host: str, sandboxes: str, conn) -> None:
    """A worker that attaches to the host's zygote, starts a kernel, and checks it after the starter is killed."""
    Zygote._instances.clear()
    Zygote.host_dir = host

    async def kernel():
        km = JailedKernelManager(kernel_name="python3", sandbox_root=sandboxes)
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        return km, kc

    async def answer(kc, code):
        msg_id = kc.execute(code)
        while True:
            reply = await kc.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]["status"]

    async def go():
        km, kc = await kernel()
        z = Zygote.get(())
        conn.send((z.proc is not None, z.path))
        conn.recv()  # the starter has been killed
        alive = km.provisioner.process.poll() is None
        status = await answer(kc, "x = 6 * 7")
        km2, kc2 = await kernel()  # a new kernel from the same zygote
        status2 = await answer(kc2, "y = 1")
        for m, c in ((km, kc), (km2, kc2)):
            c.stop_channels()
            await m.shutdown_kernel(now=True)
        return alive, status, status2

    conn.send(asyncio.run(go()))


def test_two_processes_share_the_hosts_zygote_and_it_outlives_the_one_that_started_it(host, tmp_path):
    ctx = multiprocessing.get_context("fork")
    a_out, a_in = ctx.Pipe(duplex=False)
    starter = ctx.Process(target=_starter, args=(str(host), a_in))
    starter.start()
    started, zygote = a_out.recv()
    assert started, "the first process did not start the host's zygote"
    sandboxes = tmp_path / "sandboxes"
    sandboxes.mkdir()
    ours, theirs = ctx.Pipe()
    user = ctx.Process(target=_user, args=(str(host), str(sandboxes), theirs))
    user.start()
    try:
        assert ours.poll(120), "the second process got no kernel"
        user_started, path = ours.recv()
        assert not user_started and path == str(host / "zygote-numpy.sock"), "the second process has a zygote of its own"
        assert host_zygotes() == [zygote], "expected one zygote for the host"
        os.killpg(starter.pid, signal.SIGKILL)  # the starter and its whole session, as a killed worker's job
        starter.join(10)
        assert Path(f"/proc/{zygote}").exists(), "the host's zygote died with the process that started it"
        ours.send("killed")
        assert ours.poll(120), "the second process did not finish"
        alive, status, status2 = ours.recv()
        assert alive, "the kernel of the other process died with the starter"
        assert (status, status2) == ("ok", "ok"), "the kernels did not answer after the starter was killed"
        user.join(60)
        assert user.exitcode == 0
        deadline = time.monotonic() + 10  # the last process that used it is gone: the zygote ends
        while Path(f"/proc/{zygote}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{zygote}").exists(), "the host's zygote outlived every process that used it"
        assert not host.exists(), f"the host folder was left behind: {list(host.iterdir())}"
    finally:
        for p in (starter, user):
            if p.is_alive():
                p.kill()


def _own_or_host(host: str, out) -> None:
    Zygote._instances.clear()
    Zygote.host_dir = host
    z = Zygote.get(())
    out.send((z.proc is not None, z.path))
    z.close()


def test_a_host_folder_others_can_write_to_is_not_used(host):
    host.mkdir(mode=0o777)
    os.chmod(host, 0o777)
    ctx = multiprocessing.get_context("fork")
    out, into = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_own_or_host, args=(str(host), into))
    p.start()
    own, path = out.recv()
    p.join(30)
    assert own and path is None, "a zygote listening in a folder open to others"
    assert list(host.iterdir()) == []
