"""Shared pytest hooks of the test suite."""

from __future__ import annotations

from typing import Any

# The suite runs with --doctest-modules, which imports every module it collects: the scripts that
# wrote the saved-format fixtures under data/ would run again and overwrite them with today's
# format, and the tests that load old saves would then read new ones.
collect_ignore_glob = ["data/*"]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """Say where the browser tests wrote their screenshots (test_desk_browser.py's ``shots``)."""
    folder = getattr(config, "desk_screenshots", None)
    if folder is not None:
        terminalreporter.write_sep("-", "desk screenshots")
        terminalreporter.write_line(f"desk screenshots: {folder}")
