"""Feedback that never shows a hidden test.

nbgrader's feedback shows each test cell as it ran in the autograded
notebook: its source, hidden tests included, and the traceback of a failure,
whose frames quote the failing hidden line. :class:`HideHiddenTests` removes
the hidden region from the source (nbgrader's own ``ClearHiddenTests``) and
cuts the traceback of a cell that had one down to the error's message, which
the checkers write for learners ("[unbiased-variance] you normalized with...").
"""

from nbgrader.preprocessors import ClearHiddenTests, NbGraderPreprocessor


class HideHiddenTests(NbGraderPreprocessor):
    """Strip hidden tests from the sources and tracebacks of a feedback notebook."""

    def preprocess(self, nb, resources):
        clear = ClearHiddenTests(enforce_metadata=False)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            before = cell.source
            cell, resources = clear.preprocess_cell(cell, resources, 0)
            if cell.source != before:
                for out in cell.get("outputs", []):
                    if out.get("output_type") == "error":
                        out["traceback"] = [f"{out.get('ename', 'Error')}: {out.get('evalue', '')}",
                                            "(a hidden test failed; its code is not shown)"]
        return nb, resources
