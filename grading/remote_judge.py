"""Judging the Keras and PyTorch checks in a process that has the frameworks imported already.

A framework check's judge builds the reference with Keras or PyTorch
(:mod:`bncheck.framework_judges`). Judged in a grading process, the first such
check imports them there: 4.4 s of CPU (Keras and TensorFlow 3.2 s, PyTorch
1.2 s), once in every worker process, while the kernel zygote of the same
assignment holds those modules already. So a grading process asks that zygote
for a judge (``{"judge": {}}``, :mod:`grading.zygote`): the zygote forks a
child, which has the frameworks for free (the fork shares their pages), and
hands back one end of a socket pair to it. The child runs :func:`serve` (our
judges on arrays the grader decoded and checked, never the learner's code,
so it is not jailed) until that socket closes; the grading process uses it
through :class:`RemoteJudge`, which judges exactly as :mod:`bncheck.judges`
does here: the same functions, the same ``CheckFailed`` (message and mistake).

Requests and replies are pickled (:class:`multiprocessing.connection.Connection`)
between two processes of the grader: the kernel has no way to the socket pair
(it is made after the zygote's earlier forks and closed in the zygote at once).
Should the judge process die or stall, the check is judged here after all
(importing the frameworks here), so a verdict never depends on it.
"""

from __future__ import annotations

import logging
import os
import socket
from multiprocessing.connection import Connection

from bncheck import judges
from bncheck.probes import CheckFailed

TIMEOUT = 120.0  # seconds one judge call may take before it is judged here instead

log = logging.getLogger(__name__)


class JudgeError(Exception):
    """A judge raised something other than CheckFailed in the judge process; ``name`` is its type's name."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


# ------------------------------------------------------ the judge process --
def serve(sock: socket.socket) -> None:
    """Answer ``(what, kind, params, results)`` requests on ``sock`` until it closes; ``what`` is "judge"
    or "partial" (:func:`bncheck.judges.judge` or :func:`~bncheck.judges.judge_partial`)."""
    conn = Connection(sock.detach())
    while True:
        try:
            what, kind, params, results = conn.recv()
        except (EOFError, OSError):
            return
        try:
            (judges.judge if what == "judge" else judges.judge_partial)(kind, params, results)
            reply = ("passed",)
        except CheckFailed as e:
            reply = ("failed", e.message, e.mistake)
        except Exception as e:  # noqa: BLE001 - reported by name, as a judge's error here would be
            reply = ("error", type(e).__name__)
        conn.send(reply)


# ---------------------------------------------------- the grader's side ---
class RemoteJudge:
    """``judge`` and ``judge_partial`` of :mod:`bncheck.judges`, run in a judge process of the zygote for ``frameworks``."""

    def __init__(self, frameworks: tuple[str, ...]):
        self.frameworks, self.conn, self.pid = tuple(frameworks), None, None

    def judge(self, kind: str, params: dict, results: dict) -> None:
        self._ask("judge", kind, params, results)

    def judge_partial(self, kind: str, params: dict, results: dict) -> None:
        self._ask("partial", kind, params, results)

    def _ask(self, what: str, kind: str, params: dict, results: dict) -> None:
        from .zygote import Zygote

        reply = None
        for attempt in range(2):  # a judge process that died is replaced once
            try:
                if self.conn is None:
                    sock, self.pid = Zygote.get(self.frameworks).judge_channel()
                    self.conn = Connection(sock.detach())
                self.conn.send((what, kind, params, results))
                if not self.conn.poll(TIMEOUT):
                    raise TimeoutError(f"no reply in {TIMEOUT:g} s")
                reply = self.conn.recv()
                break
            except (OSError, EOFError, TimeoutError) as e:
                log.warning("judge process for %s: %s; %s", "+".join(self.frameworks), e,
                            "judging in this process" if attempt else "starting another")
                self.close()
        if reply is None:  # no judge process could answer: judge in this process
            (judges.judge if what == "judge" else judges.judge_partial)(kind, params, results)
        elif reply[0] == "failed":
            raise CheckFailed(reply[1], reply[2])
        elif reply[0] == "error":
            raise JudgeError(reply[1])

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()  # the judge process ends when it reads the end of its socket
            self.conn, self.pid = None, None


_judges: dict[tuple[int, tuple[str, ...]], RemoteJudge] = {}


def for_frameworks(frameworks: tuple[str, ...]):
    """The judge for an assignment whose zygote preloads ``frameworks``: :mod:`bncheck.judges` itself when it
    preloads none (numpy's judges cost nothing to import), else this process's :class:`RemoteJudge` for them."""
    if not frameworks:
        return judges
    key = (os.getpid(), tuple(frameworks))  # a forked process opens its own
    if key not in _judges:
        _judges[key] = RemoteJudge(key[1])
    return _judges[key]
