"""Running a submission in its kernel, with the grader deciding every check.

:class:`GradedExecute` replaces nbgrader's ``Execute`` in the autograde
pipeline. It runs the learner's cells as nbgrader would, in a jailed kernel
(:mod:`grading.jail`), with three differences:

1. **A test cell's source never runs.** The grader knows the cell's checks
   (:func:`grading.plan.plan`, from the source notebook). At the test cell
   it calls each *visible* check itself (``bncheck.probes.grader_call``, the
   learner's function named by the plan), and keeps a reference to the
   objects the hidden checks will call. The *hidden* checks run after the
   learner's last cell, with seeds drawn from the course's secret: no hidden
   code, seed or input is in the kernel while a cell of the learner's runs,
   and what the learner's code prints during a check is thrown away (a
   check's outputs never reach the notebook).
2. **The judge writes the test cell's outputs.** Each check's arrays come
   back as text, are judged in this process (:func:`grading.judge.verdict`;
   the Keras and PyTorch checks in a judge process of the assignment's zygote,
   which has those frameworks imported: :mod:`grading.remote_judge`)
   and the cell gets the verdicts: a passed test prints one line, a failed
   one an error whose message is the judge's. nbgrader then scores the cell
   from these outputs as it scores any test cell, and the verdicts are
   saved as data (``verdicts/<student>/<assignment>.json``) for the report.
3. **A dead kernel costs only its cell.** When a cell (or a check) kills the
   kernel or runs past the time limit, that cell gets an error, a fresh
   kernel replays the cells before it, skipping every cell that killed a
   kernel before, and grading goes on; at most :attr:`max_deaths` times.
"""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbclient.util import run_sync
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Enum, Float, Integer, Unicode

from . import jail, remote_judge
from . import judge as J
from . import plan as P

VERDICTS_DIR = "verdicts"


def _gid(cell) -> str | None:
    meta = cell.get("metadata", {}).get("nbgrader") or {}
    return meta.get("grade_id") if isinstance(meta, dict) else None


class GradedExecute(Execute):
    """nbgrader's Execute, with the checks of test cells called and judged by the grader (see the module)."""

    course_root = Unicode("", help="The course folder: solutions/ and the course secret are read there.").tag(config=True)
    sandbox_root = Unicode("", help="Folder for the kernels' sandboxes (a temporary folder when empty).").tag(config=True)
    max_deaths = Integer(3, help="Kernels that may die (or time out) in one notebook before grading gives up.").tag(config=True)
    # The kernel's state is thrown away after grading: it is killed (with everything it started, see
    # grading.zygote.ForkedKernel) instead of asked to exit and waited for, which took ~50 ms a notebook.
    shutdown_kernel = Enum(["graceful", "immediate"], default_value="immediate").tag(config=True)
    budget = Float(300.0, help="Wall-clock seconds one submission's cells may take, all together (and as much again "
                               "for its hidden checks); past it the rest is not run and scores 0.").tag(config=True)

    # ---------------------------------------------------------------- setup
    def preprocess(self, nb, resources=None, km=None):
        info = (resources or {}).get("nbgrader", {})
        assignment, notebook, student = info["assignment"], info["notebook"], info["student"]
        if not self.course_root:
            raise ValueError("GradedExecute.course_root: expected the course folder (grading.course.api sets it); got ''")
        root = Path(self.course_root)
        source = root / "solutions" / assignment / f"{notebook}.ipynb"
        self._plan = P.plan(source, P.course_secret(root))
        used = jail.frameworks_of(source)  # the kernel cannot import any other framework at all
        self._frameworks = used
        self._preload = used if jail.preloading() else ()
        self._judge = remote_judge.for_frameworks(self._preload)  # in the zygote's judge process, which has them
        self._verdicts: dict[str, list[P.Verdict]] = {gid: [] for gid in self._plan}
        self._where: dict[str, int] = {}
        self._bound: dict[str, str | None] = {}  # test cell: None if its objects are bound, else why not
        self._killers: set[int] = set()
        self._deaths = 0
        self._replaying = False
        self._deadline = time.monotonic() + self.budget
        self._over_budget: int | None = None  # the first cell not run for want of time
        try:
            nb, resources = super().preprocess(nb, resources, km)
        finally:
            self._save(root, student, assignment)
        return nb, resources

    def create_kernel_manager(self):
        km = super().create_kernel_manager()
        if hasattr(km, "sandbox_root"):  # the jailed kernel manager takes this run's settings
            km.sandbox_root, km.preload, km.frameworks = self.sandbox_root, list(self._preload), bool(self._frameworks)
        return km

    def _save(self, root: Path, student: str, assignment: str) -> None:
        path = root / VERDICTS_DIR / student / f"{assignment}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"cells": {gid: [v.to_json() for v in vs] for gid, vs in self._verdicts.items()},
                "over_budget": None if self._over_budget is None else {"cell": self._over_budget, "budget": self.budget},
                "kernel_deaths": self._deaths}
        tmp = path.with_suffix(".part")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(path)

    # ----------------------------------------------------------- execution
    def _remaining(self) -> float:
        return self._deadline - time.monotonic()

    def _get_timeout(self, cell):
        """nbclient's per-cell limit, cut to what is left of the submission's budget."""
        base = super()._get_timeout(cell)
        if self._replaying:  # cells that ran before, replayed in a fresh kernel: their own limit
            return base
        left = max(1, int(self._remaining()) + 1)
        return left if base is None else min(base, left)

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        gid = _gid(cell)
        if cell.cell_type == "code" and self._remaining() <= 0:
            self._skip(cell, cell_index, gid)
        elif cell.cell_type == "code" and gid in self._plan:
            await self._test_cell(cell, cell_index, gid)
        else:
            await self._learner_cell(cell, cell_index, execution_count, store_history)
        if cell_index == len(self.nb.cells) - 1:
            await self._hidden_checks()
        return cell

    execute_cell = run_sync(async_execute_cell)

    def _skip(self, cell, cell_index: int, gid: str | None) -> None:
        """The submission's time is spent: ``cell`` does not run (a test cell's checks fail)."""
        if self._over_budget is None:
            self._over_budget = cell_index
        what = f"not run: this submission used up its time budget of {self.budget:g} s before this cell"
        if gid in self._plan:
            self._where[gid] = cell_index
            self._bound[gid] = "budget"
            self._verdicts[gid] = [J.verdict(c, None, "budget") for c in self._plan[gid].checks]
            cell.outputs = J.cell_outputs(self._verdicts[gid])
        else:
            cell.outputs = [NotebookNode(output_type="error", ename="BudgetExceeded", evalue=what,
                                         traceback=[f"BudgetExceeded: {what}"])]

    async def _learner_cell(self, cell, cell_index, execution_count, store_history) -> None:
        try:
            await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        except (DeadKernelError, CellTimeoutError) as e:
            await self._lost(cell, cell_index, died=isinstance(e, DeadKernelError))
            return
        # an interrupted cell may leave the kernel busy (threads, forked children): never trust it again
        if any(o.get("ename") == "CellTimeoutError" for o in cell.get("outputs", [])):
            cell.outputs = [o for o in cell.outputs if o.get("ename") != "CellTimeoutError"]
            await self._lost(cell, cell_index, died=False)

    async def _lost(self, cell, cell_index: int, *, died: bool) -> None:
        """``cell`` killed the kernel or ran too long: say so in it, then start a fresh kernel."""
        what = ("the kernel died while running this cell (os._exit, exit(), a signal, a crash or too much memory)"
                if died else "this cell ran past the time limit")
        ename = "KernelDied" if died else "CellTimeoutError"
        cell.outputs = list(cell.get("outputs", [])) + [NotebookNode(
            output_type="error", ename=ename, evalue=f"{what}; the grader restarted the kernel for the next cells",
            traceback=[f"{ename}: {what}"])]
        self._killers.add(cell_index)
        await self._revive(cell_index, what)

    async def _revive(self, upto: int, what: str) -> None:
        self._deaths += 1
        if self._deaths > self.max_deaths:
            raise DeadKernelError(f"the kernel was restarted {self.max_deaths} times; giving up")
        self.log.warning("cell %d: %s; restarting the kernel and replaying the cells before", upto, what)
        await self._async_cleanup_kernel()
        self.km = self.create_kernel_manager()
        await self.async_start_new_kernel()
        await self.async_start_new_kernel_client()
        self._bound = {}
        self._replaying = True
        try:
            await self._replay(upto, what)
        finally:
            self._replaying = False

    async def _replay(self, upto: int, what: str) -> None:
        for index, earlier in enumerate(self.nb.cells[:upto]):
            if self._over_budget is not None and index >= self._over_budget:
                break  # cells after it never ran
            if earlier.cell_type != "code" or index in self._killers:
                continue
            gid = _gid(earlier)
            if gid in self._plan:  # a test cell: bind its objects again, as the first time
                if gid in self._where and any(c.hidden for c in self._plan[gid].checks):
                    await self._bind(self._plan[gid], index)
                continue
            if not earlier.source.strip():
                continue
            kept = (earlier.get("outputs", []), earlier.get("execution_count"))
            try:
                await super().async_execute_cell(earlier, index, store_history=False)
            except (DeadKernelError, CellTimeoutError):
                # it ran before; now it kills the kernel: skip it too and start over
                self._killers.add(index)
                earlier.outputs, earlier.execution_count = kept
                await self._revive(upto, what)
                return
            earlier.outputs, earlier.execution_count = kept

    async def _call(self, source: str, cell_index: int) -> tuple[str | None, str | None]:
        """Run grader code in the kernel: ``(value, None)`` with the text it returned, or ``(None, why not)``.

        What the code prints goes nowhere: the scratch cell is dropped. If it
        kills the kernel, a fresh one replays the cells before ``cell_index``.
        """
        scratch = new_code_cell(source)
        at = min(cell_index, len(self.nb.cells) - 1)
        original = self.nb.cells[at]  # nbclient puts the cell it ran at its index: put the real one back
        try:
            await super().async_execute_cell(scratch, at, store_history=False)
        except (DeadKernelError, CellTimeoutError) as e:
            self.nb.cells[at] = original
            died = isinstance(e, DeadKernelError)
            await self._revive(cell_index, "a check killed the kernel" if died else "a check ran past the time limit")
            return None, "kernel-died" if died else "timeout"
        self.nb.cells[at] = original
        if any(o.get("ename") == "CellTimeoutError" for o in scratch.outputs):
            await self._revive(cell_index, "a check ran past the time limit")
            return None, "timeout"
        errors = [o for o in scratch.outputs if o.get("output_type") == "error"]
        if errors:
            return None, "error:" + str(errors[-1].get("ename", ""))[:80]
        results = [o for o in scratch.outputs if o.get("output_type") == "execute_result"]
        text = results[-1].get("data", {}).get("text/plain") if results else None
        if not isinstance(text, str) or len(text) > J.MAX_REPLY:
            return None, "no-result"
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None, "no-result"
        return (value, None) if isinstance(value, str) else (None, "no-result")

    async def _judged(self, checks: list[P.Check], source: str, cell_index: int) -> list[P.Verdict]:
        """Run ``checks`` in one round trip to the kernel; judge each reply here."""
        text, problem = await self._call(source, cell_index)
        replies = J.split_replies(text, len(checks)) if problem is None else None
        if replies is None:
            return [J.verdict(c, None, problem or "no-result") for c in checks]
        return [J.verdict(c, reply, judge=self._judge) for c, reply in zip(checks, replies)]

    async def _bind(self, cell: P.CellPlan, cell_index: int) -> None:
        _, problem = await self._call(P.bind_source(cell), cell_index)
        self._bound[cell.cell] = problem

    async def _test_cell(self, cell, cell_index: int, gid: str) -> None:
        plan = self._plan[gid]
        visible = [c for c in plan.checks if not c.hidden]
        if visible:
            self._verdicts[gid] += await self._judged(visible, P.calls_source(visible), cell_index)
        self._where[gid] = cell_index
        if any(c.hidden for c in plan.checks):  # after the visible checks: a fresh kernel replays up to here
            await self._bind(plan, cell_index)
        cell.outputs = J.cell_outputs(self._verdicts[gid])
        cell.execution_count = None

    async def _hidden_checks(self) -> None:
        """After the learner's last cell: the hidden checks of every test cell, on the objects bound there."""
        end = len(self.nb.cells)  # a kernel that dies here is replayed with every cell
        self._deadline = time.monotonic() + self.budget  # the hidden checks get a budget of their own
        for gid, plan in self._plan.items():
            if gid not in self._where:
                continue
            hidden = [c for c in plan.checks if c.hidden]
            if not hidden:
                continue
            problem = self._bound.get(gid, "not-bound")
            if problem is None and self._remaining() <= 0:
                problem = "budget"
                if self._over_budget is None:
                    self._over_budget = end
            if problem is None:
                self._verdicts[gid] += await self._judged(hidden, P.calls_source(hidden, bound=gid), end)
            else:
                self._verdicts[gid] += [J.verdict(c, None, problem) for c in hidden]
            self.nb.cells[self._where[gid]].outputs = J.cell_outputs(self._verdicts[gid])


class BoundOutputs(NbGraderPreprocessor):
    """Every output of every cell cut to a size a page can show (after the judge and nbgrader's LimitOutput).

    nbgrader's LimitOutput counts lines; one line of 20 MB (an exception's
    message, say) passes it. This cuts each text of an output (stream text,
    an error's value and traceback lines, a result's plain text) to
    :attr:`max_chars`, and drops the rich data of outputs past
    :attr:`max_cell_chars` in a cell.
    """

    max_chars = Integer(10_000, help="Characters kept of one output's text").tag(config=True)
    max_cell_chars = Integer(100_000, help="Characters of output kept per cell").tag(config=True)

    def _cut(self, text):
        if not isinstance(text, str) or len(text) <= self.max_chars:
            return text
        return text[: self.max_chars] + f"\n... [output cut: {len(text) - self.max_chars} more characters]"

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        total, kept = 0, []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                out["text"] = self._cut(out.get("text", ""))
                size = len(out["text"])
            elif out.get("output_type") == "error":
                out["evalue"] = self._cut(out.get("evalue", ""))
                tb = [self._cut(line) for line in out.get("traceback", [])[:100]]
                out["traceback"] = tb
                size = len(out["evalue"]) + sum(len(t) for t in tb)
            else:
                data = out.get("data", {})
                size = sum(len(v) if isinstance(v, str) else len(json.dumps(v)) for v in data.values())
                if size > self.max_cell_chars:
                    out["data"] = {"text/plain": f"[output of {size} characters not kept]"}
                    size = len(out["data"]["text/plain"])
                elif "text/plain" in data:
                    data["text/plain"] = self._cut(data["text/plain"])
            if total + size > self.max_cell_chars:
                kept.append(NotebookNode(output_type="stream", name="stdout",
                                         text="... [further output of this cell not kept]\n"))
                break
            total += size
            kept.append(out)
        cell.outputs = kept
        return cell, resources
