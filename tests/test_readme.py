"""The README's Python snippets run, in order, and print what they show.

A snippet is a fenced ``python`` block written as a doctest (``>>>`` lines and their output);
one preceded by ``<!-- readme-test: skip (reason) -->`` is not run (it needs files of the
reader's own). Outputs are compared with ``ELLIPSIS`` (``0.99...``) and
``NORMALIZE_WHITESPACE``.
"""

from __future__ import annotations

import doctest
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP = re.compile(r"<!-- readme-test: skip \((?P<reason>[^)]+)\) -->")


def snippets(text: str) -> list[tuple[int, str, str | None]]:
    """(line number, code, skip reason or None) of every ```python block of ``text``."""
    found = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
            before = lines[i - 1] if i else ""
            match = SKIP.search(before)
            found.append((start + 1, "\n".join(lines[start:end]) + "\n", match and match["reason"]))
            i = end
        i += 1
    return found


def test_every_snippet_is_run_or_says_why_not():
    found = snippets(README.read_text(encoding="utf-8"))
    assert found
    for line, code, skipped in found:
        if skipped is None:
            assert code.lstrip().startswith(">>>"), f"README.md:{line} is not a doctest"


def run_snippets(text: str) -> tuple[int, str]:
    """Run the snippets of ``text`` in one namespace; (failures, report)."""
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    report = io.StringIO()
    namespace: dict[str, object] = {}
    for line, code, skipped in snippets(text):
        if skipped is not None:
            continue
        test = parser.get_doctest(code, namespace, f"README.md:{line}", "README.md", line - 1)
        runner.run(test, out=report.write, clear_globs=False)
        namespace = test.globs  # a DocTest runs in a copy: the next snippet continues from it
    return runner.failures, report.getvalue()


def test_the_readme_snippets_print_what_they_show(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # they save models under models/
    failures, report = run_snippets(README.read_text(encoding="utf-8"))
    assert failures == 0, report
    assert (tmp_path / "models" / "support" / "meta.json").is_file()


def test_a_wrong_output_fails(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    text = (
        "```python\n>>> 1 + 1\n3\n```\n\n<!-- readme-test: skip (x) -->\n```python\n>>> 1/0\n```\n"
    )
    failures, report = run_snippets(text)
    assert failures == 1 and "Expected:\n    3" in report


@pytest.mark.parametrize("text", ["```python\nprint(1)\n```\n"])
def test_snippet_parsing(text):
    assert snippets(text) == [(2, "print(1)\n", None)]
