"""The kernel manager nbclient uses for graded notebooks: every kernel jailed, in a fresh sandbox.

``nbgrader_config.py`` names :class:`JailedKernelManager`; ``GradedExecute``
(:mod:`grading.execute`) gives it this run's settings. Its provisioner asks
this process's zygote (:mod:`grading.zygote`) for a kernel forked and jailed
(:func:`grading.jail.contain`), and watches it through the zygote's
:class:`~grading.zygote.ForkedKernel`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from queue import Empty

import zmq
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Bool, DottedObjectName, List, Type, Unicode

from . import jail
from .zygote import Zygote


class JailProvisioner(LocalProvisioner):
    """Starts the kernel as a jailed child of this process's zygote."""

    async def launch_kernel(self, cmd, **kw):
        if cmd[1:3] != ["-m", "ipykernel_launcher"] or Path(cmd[0]).resolve() != Path(sys.executable).resolve():
            raise RuntimeError("the grading jail starts this Python's IPython kernel only: expected "
                               f"[{sys.executable!r}, '-m', 'ipykernel_launcher', ...]; received {cmd}")
        km = self.parent
        request = {"sandbox": str(km.sandbox), "argv": cmd[3:], "env": jail.kernel_env(km.sandbox),
                   "namespaced": jail.isolation() == "full", "frameworks": bool(km.frameworks)}
        preload = tuple(f for f in jail.FRAMEWORKS if f in km.preload)
        self.process = Zygote.spawn_kernel(request, preload)
        self.pid, self.pgid, self.cwd = self.process.pid, None, str(km.sandbox)
        return self.connection_info

    async def wait(self):
        """As LocalProvisioner's, polling every 5 ms instead of 100 ms."""
        ret = 0
        if self.process:
            while await self.poll() is None:
                await asyncio.sleep(0.005)
            ret, self.process = self.process.returncode, None
        return ret


class ReadyClient(AsyncKernelClient):
    """jupyter_client's asynchronous client, with a wait for the kernel's start that ends when the kernel is ready.

    jupyter_client's ``wait_for_ready`` returns only after IOPub has been
    silent for 0.2 s (it drains the channel until a read times out), so every
    kernel start costs at least 0.2 s of waiting for nothing: about a third of
    a small notebook's grading time here. This one waits for what readiness
    means, in the same protocol: the ``kernel_info_reply`` to its request on
    the shell channel, then, on IOPub, the kernel's ``idle`` status for that
    same request (which proves IOPub is connected); a request whose messages
    were lost (IOPub not yet subscribed) is sent again, as jupyter_client does.
    """

    def start_channels(self, *args, **kw):
        # A forked kernel binds its sockets a few milliseconds after it is started, and the client connects at
        # once: ZeroMQ then retries every 100 ms (its default RECONNECT_IVL). Retry every 5 ms instead, for
        # this kernel's sockets only (the context is this kernel manager's own).
        self.context.setsockopt(zmq.RECONNECT_IVL, 5)
        return super().start_channels(*args, **kw)

    async def _next(self, channel, parent_id: str, until: float, match) -> dict | None:
        """The first message on ``channel`` answering ``parent_id`` for which ``match`` holds, or None at ``until``."""
        while (left := until - time.monotonic()) > 0:
            try:
                msg = await channel.get_msg(timeout=left)
            except Empty:
                return None
            if msg.get("parent_header", {}).get("msg_id") == parent_id and match(msg):
                return msg
        return None

    async def wait_for_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        while True:
            request = self.kernel_info()
            now = time.monotonic()
            reply = await self._next(self.shell_channel, request, min(deadline, now + 1.0),
                                     lambda m: m["msg_type"] == "kernel_info_reply")
            if reply is not None and await self._next(
                    self.iopub_channel, request, min(deadline, time.monotonic() + 0.2),
                    lambda m: m["msg_type"] == "status" and m["content"].get("execution_state") == "idle"):
                self._handle_kernel_info_reply(reply)
                return
            if not await self._async_is_alive():
                raise RuntimeError("Kernel died before replying to kernel_info")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout:g} seconds")


class JailedKernelManager(AsyncKernelManager):
    """A kernel manager that starts every kernel jailed, in a fresh sandbox."""

    client_class = DottedObjectName("grading.kernels.ReadyClient")  # kernels start without jupyter_client's idle 0.2 s
    client_factory = Type(klass=ReadyClient)

    sandbox_root = Unicode("", help="Folder for the sandboxes (a temporary folder when empty)").tag(config=True)
    preload = List(Unicode(), help="Frameworks the zygote imports before forking").tag(config=True)
    frameworks = Bool(False, help="May the kernel import PyTorch, TensorFlow, Keras or JAX? (the assignment "
                                  "uses them); otherwise they are not there").tag(config=True)
    sandbox: Path | None = None

    async def _async_pre_start_kernel(self, **kw):
        parent = Path(self.sandbox_root or tempfile.mkdtemp(prefix="bn-jail-"))
        self.sandbox = parent / f"kernel-{uuid.uuid4().hex[:8]}"
        self.sandbox.mkdir(parents=True)
        jail.make_shim(self.sandbox / "lib")
        self.transport = "ipc"
        self.ip = str(self.sandbox / "ipc")
        if len(os.fsencode(self.ip)) + 8 > 107:
            raise RuntimeError(f"the kernel's sandbox {self.sandbox} lies too deep for its sockets (a Unix socket's "
                               "path has 107 bytes at most): use a shorter temporary folder (TMPDIR)")
        self.connection_file = str(self.sandbox / "connection.json")
        self.kernel_id = self.kernel_id or kw.pop("kernel_id", str(uuid.uuid4()))
        if self.provisioner is None:
            self.provisioner = JailProvisioner(kernel_id=self.kernel_id, kernel_spec=self.kernel_spec, parent=self)
        return await super()._async_pre_start_kernel(**kw)

    # A jailed kernel exits within milliseconds of its shutdown reply or its kill: look every 5 ms, not 100.
    async def _async_finish_shutdown(self, waittime=None, pollinterval=0.1, restart=False):
        return await super()._async_finish_shutdown(waittime, pollinterval=0.005, restart=restart)

    async def _async_wait(self, pollinterval: float = 0.1) -> None:
        return await super()._async_wait(pollinterval=0.005)
