"""Feedback that never shows a hidden test, rendered without recompiling its templates.

nbgrader's feedback shows each test cell as it ran in the autograded
notebook: its source, hidden tests included, and the traceback of a failure,
whose frames quote the failing hidden line. :class:`HideHiddenTests` removes
the hidden region from the source (nbgrader's own ``ClearHiddenTests``) and
cuts the traceback of a cell that had one down to the error's message, which
the checkers write for learners ("[unbiased-variance] you normalized with...").

nbgrader renders each feedback page with a new ``HTMLExporter``, whose new
Jinja environment parses and compiles nbconvert's nine templates again: a
quarter of a notebook's grading time in the grader. :class:`FeedbackExporter`
gives every environment of the process one Jinja bytecode cache (Jinja's own
extension point; an entry is keyed by the template's name and checksum, so a
changed template is compiled afresh).

A feedback page is read offline, so it must load nothing from the network;
nbgrader's template loads MathJax from a CDN. :class:`OfflineMath` turns the
TeX of the markdown cells into MathML (``latex2mathml``), which browsers
render themselves, and :class:`FeedbackExporter` replaces nbconvert's
``mathjax`` macro with one that loads nothing (``templates/mathjax.html.j2``).
"""

import re
from pathlib import Path

from jinja2 import BytecodeCache, ChoiceLoader, FileSystemLoader
from latex2mathml.converter import convert as tex_to_mathml
from nbconvert.exporters import HTMLExporter
from nbgrader.preprocessors import ClearHiddenTests, NbGraderPreprocessor

TEMPLATES = Path(__file__).resolve().parent / "templates"


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


class MemoryBytecodeCache(BytecodeCache):
    """Compiled Jinja templates, kept in memory for the life of the process."""

    def __init__(self):
        self.store: dict[str, bytes] = {}

    def load_bytecode(self, bucket):
        code = self.store.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket):
        self.store[bucket.key] = bucket.bytecode_to_string()

    def clear(self):
        self.store.clear()


BYTECODE = MemoryBytecodeCache()


class FeedbackExporter(HTMLExporter):
    """nbconvert's HTML exporter (configured as nbgrader configures it), its templates compiled once
    per process, and with a ``mathjax`` macro that loads nothing from the network."""

    def _create_environment(self):
        environment = super()._create_environment()
        environment.loader = ChoiceLoader([FileSystemLoader(str(TEMPLATES)), environment.loader])
        environment.bytecode_cache = BYTECODE
        return environment


_CODE = re.compile(r"(```.*?```|~~~.*?~~~|`[^`\n]*`)", re.DOTALL)  # fenced blocks and code spans keep their dollars
_DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.DOTALL)
_INLINE = re.compile(r"(?<![\\$])\$(?!\$)([^\n$]+?)(?<!\\)\$(?!\$)")


def _mathml(match: re.Match, display: str) -> str:
    try:
        return tex_to_mathml(match.group(1).strip(), display=display)
    except Exception:  # noqa: BLE001 - TeX the converter does not know stays as written
        return match.group(0)


def math_to_mathml(markdown: str) -> str:
    """``markdown`` with each ``$$...$$`` and ``$...$`` outside code turned into MathML (unknown TeX kept as is)."""
    parts = _CODE.split(markdown)
    for i in range(0, len(parts), 2):  # the even parts lie outside code
        parts[i] = _DISPLAY.sub(lambda m: _mathml(m, "block"), parts[i])
        parts[i] = _INLINE.sub(lambda m: _mathml(m, "inline"), parts[i])
    return "".join(parts)


class OfflineMath(NbGraderPreprocessor):
    """Turn the math of markdown cells into MathML, for a feedback page that loads no MathJax."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "markdown":
            cell.source = math_to_mathml(cell.source)
        return cell, resources
