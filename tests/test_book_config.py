"""Fast checks of the book's sources and configuration (no build needed).

What the site looks like once built is checked in tests/test_site.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import bnlib

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
SPHINX = CONFIG["sphinx"]["config"]


def toc_files(node) -> list[str]:
    """Every `file:` entry (and the root) of a jb-book table of contents."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"file", "root"}:
                found.append(value)
            else:
                found.extend(toc_files(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(toc_files(item))
    return found


TOC_FILES = toc_files(TOC)


def test_the_table_of_contents_lists_every_chapter_in_order_and_the_reference_pages():
    chapters = [f for f in TOC_FILES if f.startswith("chapters/")]
    on_disk = sorted(f"chapters/{p.stem}" for p in (ROOT / "chapters").glob("[0-9][0-9]-*.md"))
    assert chapters == on_disk, f"expected the chapters in chapters/, in order: {on_disk}; _toc.yml lists {chapters}"
    numbers = [int(c.split("/")[1][:2]) for c in chapters]
    assert numbers == list(range(1, len(chapters) + 1)), (
        f"expected each chapter file numbered as readers see it (1, 2, ...); got {numbers}")
    for page in ("how-to-use", "reference/api", "reference/glossary", "reference/bibliography"):
        assert page in TOC_FILES, f"expected {page!r} in _toc.yml; it lists {TOC_FILES}"


@pytest.mark.parametrize("entry", TOC_FILES)
def test_every_table_of_contents_entry_has_a_source_file(entry):
    candidates = [ROOT / f"{entry}{ext}" for ext in (".md", ".ipynb")]
    assert any(c.is_file() for c in candidates), f"_toc.yml lists {entry!r}; expected one of {[str(c) for c in candidates]}"


def test_only_pages_in_the_table_of_contents_are_built_so_solutions_and_notebooks_stay_off_the_site():
    assert CONFIG.get("only_build_toc_files") is True, (
        f"expected only_build_toc_files: true; got {CONFIG.get('only_build_toc_files')!r}"
    )
    for folder in ("solutions", "grading"):
        assert folder in CONFIG["exclude_patterns"], f"expected {folder} in exclude_patterns; got {CONFIG['exclude_patterns']}"
        assert not [f for f in TOC_FILES if f.startswith(folder)], f"_toc.yml must not list {folder}/: {TOC_FILES}"
    # student notebooks are pages, shown as handed out: never executed
    assert "release/*/*.ipynb" in CONFIG["execute"]["exclude_patterns"]


def test_notebook_outputs_are_cached_and_a_failing_cell_fails_the_build():
    execute = CONFIG["execute"]
    assert execute["execute_notebooks"] == "cache", f"expected execute_notebooks: cache; got {execute['execute_notebooks']!r}"
    assert execute["raise_on_error"] is True, f"expected raise_on_error: true; got {execute['raise_on_error']!r}"


def test_the_makefile_builds_the_book_with_warnings_as_errors_before_testing():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^book:.*\n\t.*jupyter-book build -W -n --keep-going \.", makefile, re.M), (
        "expected `make book` to run `jupyter-book build -W -n --keep-going .`"
    )
    test_rule = re.search(r"^test:(.*)$", makefile, re.M)
    assert test_rule and "book" in test_rule.group(1).split(), (
        f"expected `test` to depend on `book`; its rule is {test_rule.group(0) if test_rule else None!r}"
    )


@pytest.mark.parametrize("extension", ["sphinx_thebe", "sphinx.ext.intersphinx"])
def test_extensions_that_load_from_the_network_are_left_out(extension):
    assert extension not in SPHINX["extensions"], (
        f"{extension} loads code or data from another host; found it in {SPHINX['extensions']}"
    )


def test_mathjax_comes_from_the_installed_offline_package_not_a_cdn():
    assert "sphinx-mathjax-offline" in SPHINX["extensions"], f"expected the offline MathJax extension; got {SPHINX['extensions']}"
    assert "//" not in str(SPHINX.get("mathjax_path", "")), f"mathjax_path must be local; got {SPHINX.get('mathjax_path')!r}"
    assert CONFIG["launch_buttons"]["thebe"] is False, "thebe launch buttons load thebe from a CDN"


def test_the_api_reference_documents_every_public_name_of_bnlib():
    api = (ROOT / "reference" / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. (?:auto(?:function|class|exception|data)|py:data):: (\w+)", api, re.M))
    missing = sorted(set(bnlib.__all__) - documented)
    assert not missing, f"expected reference/api.md to document every name in bnlib.__all__; missing {missing}"


def test_tool_folders_that_tests_create_are_not_pages():
    """pytest and hypothesis write README-bearing folders into the project: a
    later `make book` must not see them (a stray page fails the -W build)."""
    for folder in (".pytest_cache", ".hypothesis", "_grading"):
        assert folder in CONFIG["exclude_patterns"], f"expected {folder} in exclude_patterns; got {CONFIG['exclude_patterns']}"
