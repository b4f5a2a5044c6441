"""Course tooling for instructors: nbgrader set-up, autograding and reports.

``bnlib`` is what the course teaches; this package is how it is graded. It
drives nbgrader through its Python API with the project's
``nbgrader_config.py``, so the command line, the tests and the instructor's
grading command share one configuration.
"""
