"""The Keras and PyTorch checks are judged in a process forked by the assignment's zygote.

Issue 10 (parallel grading that scales): each grading process imported Keras,
TensorFlow and PyTorch for its first framework check (4.4 s of CPU, once per
worker, while the zygote of the same assignment holds them already). Now the
zygote forks a judge process (:mod:`grading.remote_judge`). These tests check
that nothing about a verdict changes, that the grading process no longer
imports the frameworks, and that a judge process is never a point of failure
or a leftover:

- every recorded framework case (right answers and 20 kinds of mistake) gets
  the same verdict from the judge process as from the judges in this process;
- a class of Keras and PyTorch hand-ins (right answers and catalog mistakes)
  graded by the command: the right answers get full marks, each mistake loses
  its own tests with its own diagnosis, and the grading process has imported
  none of the frameworks;
- a judge process that dies is replaced; where none can be had, the check is
  judged in the grading process, with the same verdict;
- the zygote keeps no end of a judge's socket (no kernel it forks later can
  reach a judge), and a judge process ends when its grading process does.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from test_framework_checkers import RECORDED_CASES, _listed

from bncheck import probes
from grading import course as C
from grading import judge as J
from grading import remote_judge
from grading.plan import Check
from grading.samples import CATALOG, answer_code, fill

FRAMEWORKS = ("keras", "tensorflow", "torch")


@pytest.fixture(scope="module")
def zygote():
    """This process's own zygote with the three frameworks (the one ch06's kernels come from)."""
    from grading.zygote import Zygote

    z = Zygote.get(FRAMEWORKS)
    yield z
    Zygote._instances.pop(FRAMEWORKS, None)
    z.close()


def _gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True  # ended; its zygote reaps it
        except OSError:
            return True
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()


def _case(i: int, seed: int = 3):
    check, answer, kwargs = RECORDED_CASES[i]
    kind, params = _listed(check, answer, seed=seed, **kwargs)
    return Check("test", 0, kind, ("answer",), params, hidden=False), probes.grader_call(kind, (answer,), params)


def test_the_judge_process_gives_every_recorded_case_the_in_process_verdict(zygote):
    judge = remote_judge.RemoteJudge(FRAMEWORKS)
    seen = []
    try:
        for i in range(len(RECORDED_CASES)):
            check, reply = _case(i)
            here, there = J.verdict(check, reply), J.verdict(check, reply, judge=judge)
            assert there == here, f"case {i} ({check.kind}): judged here {here}, in the judge process {there}"
            seen.append(here.mistake)
        assert judge.pid is not None and judge.pid != os.getpid()
    finally:
        judge.close()
    assert None in seen and len({m for m in seen if m}) >= 20, seen  # right answers and many mistakes


def test_a_judges_own_error_is_reported_by_name_as_here(zygote):
    judge = remote_judge.RemoteJudge(FRAMEWORKS)
    try:
        with pytest.raises(Exception) as here:
            remote_judge.judges.judge("sequence_bn", {"seed": "not a seed"}, {})
        with pytest.raises(remote_judge.JudgeError) as there:
            judge.judge("sequence_bn", {"seed": "not a seed"}, {})
        assert there.value.name == type(here.value).__name__
        check = Check("test", 0, "sequence_bn", ("answer",), json.dumps({"seed": "x"}), hidden=False)
        reply = probes.encode({}, None)
        assert J.verdict(check, reply, judge=judge) == J.verdict(check, reply)
    finally:
        judge.close()


def test_a_judge_process_that_dies_is_replaced_and_without_one_the_check_is_judged_here(zygote, monkeypatch, caplog):
    right, wrong = _case(0), _case(1)  # a right answer and a mistake (axis=1)
    expected = [J.verdict(*right), J.verdict(*wrong)]
    assert expected[0].passed and not expected[1].passed
    judge = remote_judge.RemoteJudge(FRAMEWORKS)
    try:
        assert [J.verdict(*c, judge=judge) for c in (right, wrong)] == expected
        first = judge.pid
        os.kill(first, signal.SIGKILL)
        assert _gone(first)
        with caplog.at_level(logging.WARNING, logger="grading.remote_judge"):
            assert [J.verdict(*c, judge=judge) for c in (right, wrong)] == expected
        assert judge.pid not in (None, first), "no new judge process"
        assert "starting another" in caplog.text

        def refuse(self):
            raise OSError("no judge today")

        monkeypatch.setattr(type(zygote), "judge_channel", refuse)
        os.kill(judge.pid, signal.SIGKILL)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="grading.remote_judge"):
            assert [J.verdict(*c, judge=judge) for c in (right, wrong)] == expected
        assert "judging in this process" in caplog.text
    finally:
        judge.close()


def _open_judge_and_die(pid_file: str) -> None:
    from grading.zygote import Zygote

    _, pid = Zygote.get(FRAMEWORKS).judge_channel()
    Path(pid_file).write_text(str(pid))
    os._exit(3)


def test_the_zygote_keeps_no_end_of_a_judges_socket_and_a_judge_ends_with_its_grader(zygote, tmp_path):
    zygote.status(os.getpid(), wait=0)  # answered once the zygote has imported everything (imports open files)
    fds = Path(f"/proc/{zygote.proc.pid}/fd")
    before = len(list(fds.iterdir()))
    sock, pid = zygote.judge_channel()
    deadline = time.monotonic() + 5  # the zygote closes its end right after sending it: the reply may come first
    while len(list(fds.iterdir())) != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(list(fds.iterdir())) == before, "the zygote kept an end of the judge's socket: a kernel forked next would hold it"
    sock.close()
    assert _gone(pid), "a judge process outlived its socket"
    # a grading process that dies (a forked worker of the run) takes its judge with it
    pid_file = tmp_path / "judge.pid"
    worker = multiprocessing.get_context("fork").Process(target=_open_judge_and_die, args=(str(pid_file),))
    worker.start()
    worker.join(60)
    assert worker.exitcode == 3
    assert _gone(int(pid_file.read_text())), "the judge of a worker that died is still running"


GRADE = """
import sys
from grading.__main__ import main
rc = main(sys.argv[1:])
print("FRAMEWORKS", sorted(m for m in ("tensorflow", "keras", "torch") if m in sys.modules))
sys.exit(rc)
"""


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_framework_class_is_graded_without_importing_a_framework_in_the_grader(tmp_path, jobs):
    hand_ins, course = tmp_path / "in", tmp_path / "course"
    hand_ins.mkdir()
    expected = {}
    for a in ("ch05-keras", "ch06-pytorch"):
        mistakes = [c for c in CATALOG if c[0] == a][:2]
        nbformat.write(fill(C.PROJECT, a, answer_code(a)), hand_ins / f"right_{a}.ipynb")
        expected[(a, "right")] = (set(), None)
        for n, (_, code, lost, name) in enumerate(mistakes):
            nbformat.write(fill(C.PROJECT, a, answer_code(a) | code), hand_ins / f"wrong{n}_{a}.ipynb")
            expected[(a, f"wrong{n}")] = (lost, name)
    env = os.environ | {"PYTHONPATH": str(C.PROJECT)}
    done = subprocess.run([sys.executable, "-c", GRADE, str(hand_ins), "--course", str(course), "--jobs", str(jobs)],
                          capture_output=True, text=True, env=env, cwd=C.PROJECT, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "FRAMEWORKS []" in done.stdout, f"the grading process imported a framework: {done.stdout[-500:]}"
    for (a, student), (lost, name) in expected.items():
        cells = J.read_verdicts(course, student, a)
        assert cells, f"{student}/{a}: no verdicts"
        failed = {gid for gid, vs in cells.items() if not all(v.passed for v in vs)}
        assert failed == lost, f"{student}/{a}: failed {failed}, expected {lost}"
        if name:
            named = {v.mistake for gid in lost for v in cells[gid] if not v.passed and not v.hidden}
            assert name in named, f"{student}/{a}: expected the diagnosis {name!r}, got {named}"
