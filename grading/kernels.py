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
import uuid
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Bool, List, Unicode

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


class JailedKernelManager(AsyncKernelManager):
    """A kernel manager that starts every kernel jailed, in a fresh sandbox."""

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

    async def _async_finish_shutdown(self, waittime=None, pollinterval=0.1, restart=False):
        # a jailed kernel exits within milliseconds of its shutdown reply: look every 5 ms, not 100
        return await super()._async_finish_shutdown(waittime, pollinterval=0.005, restart=restart)
