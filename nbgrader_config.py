"""nbgrader configuration for the course: `solutions/` is the source folder.

Paths are relative to this file, so the course works from any checkout.
"""
from pathlib import Path

c = get_config()  # noqa: F821 (provided by nbgrader)

ROOT = Path(__file__).resolve().parent
c.CourseDirectory.root = str(ROOT)
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "release"
c.CourseDirectory.db_url = f"sqlite:///{ROOT / 'gradebook.db'}"
c.CourseDirectory.course_id = "batchnorm"

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Student versions carry no outputs; grading runs each notebook in a fresh
# kernel, jailed (grading/jail.py): its own sandbox, no instructor files, no
# network, resource limits, and only bncheck's probes. The grader calls each
# test's checks itself and judges them in its own process (grading/execute.py).
# Per cell (and per check); the grading command's --timeout and --budget set
# GradedExecute.timeout and GradedExecute.budget (the whole submission's time).
c.ExecutePreprocessor.timeout = 120
c.ExecutePreprocessor.interrupt_on_timeout = True
c.GradedExecute.kernel_manager_class = "grading.kernels.JailedKernelManager"
# A deleted test or answer cell is put back from the gradebook (its locked
# source), so deleting a test cannot leave the notebook "needs manual grade".
c.OverwriteCells.add_missing_cells = True
# nbgrader's pipeline, with the grader's executor (checks called and judged by
# the grader; a cell that kills the kernel costs only that cell) and every
# output bounded after the judge has written.
c.Autograde.autograde_preprocessors = [
    "grading.execute.GradedExecute",
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "grading.execute.BoundOutputs",
    "nbgrader.preprocessors.SaveAutoGrades",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]

# Feedback for learners: grades and messages, never the hidden tests, nothing
# loaded from the network (math as MathML); see grading/feedback.py.
c.GenerateFeedback.exporter_class = "grading.feedback.FeedbackExporter"
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "grading.feedback.HideHiddenTests",
    "grading.feedback.OfflineMath",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
