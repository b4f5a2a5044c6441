"""Course tooling for instructors: nbgrader set-up, autograding and reports.

``bnlib`` is what the course teaches; this package is how it is graded. It
drives nbgrader through its Python API with the project's
``nbgrader_config.py``, so the command line, the tests and the instructor's
grading command share one configuration.
"""

import sys

# jsonschema (imported by nbformat) imports rfc3987_syntax, when it is installed, for its "iri" format
# checks; that import compiles some 35 Lark grammars: 0.75 s of every grading process here
# (python-jsonschema/jsonschema#1428). Nothing grading validates has an "iri" format (nbformat's and
# nbgrader's schemas use none), so jsonschema is told the module is absent, as it would be without the
# optional extra: importing it raises ImportError, which jsonschema expects.
sys.modules.setdefault("rfc3987_syntax", None)
