"""One progress display for long work: count, rate and time left.

:class:`ProgressBar` draws one line in place (``\\r``) when it writes to a terminal, and prints
plain lines, one per update, when it writes to a file, a pipe or a callable (a log). Work read
from a cache is counted apart from work done, so a cached run reports what it read rather than
an impossible speed. The final line is always printed, so a job too small for any update to be
drawn still says what it did.

:func:`quiet_transformers` and :func:`quiet_dask_shutdown` silence, for the duration of a
``with`` block only, the noise of the libraries perennial drives: the "Loading weights" bar of
transformers and the "Worker process still alive" warnings Dask's nannies log while a local
cluster shuts down.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TextIO

__all__ = ["ProgressBar", "format_seconds", "quiet_dask_shutdown", "quiet_transformers"]

#: Where a progress display writes: a text stream, a callable taking one line, or nothing.
Output = TextIO | Callable[[str], None] | None

# Loggers of distributed whose warnings a normal run does not need (the nanny logs a worker that
# takes longer than its timeout to stop, which is what a closing LocalCluster on a loaded machine
# does; the worker is then killed, as intended).
_DASK_LOGGERS = ("distributed.nanny", "distributed.process")


def format_seconds(seconds: float) -> str:
    """A duration as ``42 s``, ``3 min 05 s`` or ``2 h 07 min``.

    Examples
    --------
    >>> format_seconds(4.2), format_seconds(185), format_seconds(7620)
    ('4 s', '3 min 05 s', '2 h 07 min')
    """
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _rate(count: float, seconds: float) -> str:
    per_second = count / max(seconds, 1e-9)
    return f"{per_second:.3g}/s" if per_second < 10 else f"{per_second:.0f}/s"


class ProgressBar:
    """Count, rate and time left of ``total`` units of work.

    Parameters
    ----------
    total
        Units of work expected.
    what
        What the work is, first on the line ("encoding train").
    unit
        The unit counted ("inputs", "examples", "experiences").
    output
        A text stream (drawn in place when it is a terminal), a callable that takes one line,
        or None for silence.
    interactive
        Draw in place; by default when ``output`` is a stream that is a terminal.
    clock
        Seconds, for tests.

    Examples
    --------
    >>> lines = []
    >>> ticks = iter([0.0, 1.0, 2.0, 2.5])
    >>> with ProgressBar(4, "encoding", unit="texts", output=lines.append,
    ...                  clock=lambda: next(ticks)) as bar:
    ...     bar.update(2)
    ...     bar.update(2, cached=2)
    >>> lines
    ['encoding: 2/4 texts (2/s, ETA 1 s)', 'encoding: 4/4 texts in 2 s (2 computed, 1/s; 2 read from the cache)']
    """

    def __init__(
        self,
        total: int,
        what: str,
        *,
        unit: str = "items",
        output: Output = None,
        interactive: bool | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.total = max(0, int(total))
        self.what, self.unit, self.output, self.clock = what, unit, output, clock
        if interactive is None:
            isatty = getattr(output, "isatty", None)
            interactive = bool(callable(isatty) and isatty())
        self.interactive = interactive and hasattr(output, "write")
        self.done = 0
        self.cached = 0
        self.note = ""
        self.started = clock()
        self._drawn = -1.0
        self._width = 0
        self._closed = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(failed=kind is not None)

    def line(self) -> str:
        """The current line: count, then rate and time left of the work not read from cache."""
        text = f"{self.what}: {self.done}/{self.total} {self.unit}"
        computed = self.done - self.cached
        seconds = self.clock() - self.started
        if computed > 0:
            left = (self.total - self.done) * seconds / computed
            text += f" ({_rate(computed, seconds)}, ETA {format_seconds(left)})"
        if self.cached:
            text += f" [{self.cached} read from the cache]"
        return f"{text} {self.note}".rstrip()

    def update(self, advance: int = 1, *, cached: int = 0, note: str | None = None) -> None:
        """Count ``advance`` more units, ``cached`` of them read from a cache; show ``note``.

        The note is the news of this update (the line shows it until the next update).
        """
        self.done += int(advance)
        self.cached += int(cached)
        self.note = note or ""
        if self.done >= self.total and self.total and not self.note:
            return  # the final line says it
        if self.interactive:
            now = self.clock()
            if now - self._drawn >= 0.1:
                self._drawn = now
                self._draw(self.line())
        else:
            self._say(self.line())

    def write(self, message: str) -> None:
        """Print ``message`` on its own line, above the bar."""
        if self.interactive:
            self._clear()
            self._write(message + "\n")
            self._draw(self.line())
        else:
            self._say(message)

    def close(self, failed: bool = False) -> None:
        """End the display with a summary line (printed even when nothing was drawn)."""
        if self._closed:
            return
        self._closed = True
        seconds = self.clock() - self.started
        computed = self.done - self.cached
        text = f"{self.what}: {self.done}/{self.total} {self.unit} in {format_seconds(seconds)}"
        if self.cached and computed:
            text += f" ({computed} computed, {_rate(computed, seconds)}; "
            text += f"{self.cached} read from the cache)"
        elif self.cached:
            text += " (all read from the cache)"
        elif computed:
            text += f" ({_rate(computed, seconds)})"
        if failed:
            text += " (stopped by an error)"
        if self.interactive:
            self._clear()
            self._write(text + "\n")
        else:
            self._say(text)

    def _clear(self) -> None:
        if self._width:
            self._write("\r" + " " * self._width + "\r")
            self._width = 0

    def _draw(self, text: str) -> None:
        # A line longer than the terminal would wrap, and "\r" returns only to the last part.
        text = text[: max(20, shutil.get_terminal_size().columns - 1)]
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self._write("\r" + text + " " * pad)

    def _write(self, text: str) -> None:
        stream: TextIO = self.output  # type: ignore[assignment]
        stream.write(text)
        stream.flush()

    def _say(self, text: str) -> None:
        if self.output is None:
            return
        if hasattr(self.output, "write"):
            print(text, file=self.output, flush=True)  # type: ignore[arg-type]
        else:
            self.output(text)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Inside the block, transformers draws no "Loading weights" bar and logs errors only.

    transformers draws a tqdm bar whenever a model loads and logs its warnings through its own
    verbosity. On the way out both are put back as they were, so nothing leaks into the
    caller's process. Only a transformers already imported is quieted (importing it here would
    cost seconds): enter the block after the import.
    """
    import sys

    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is None:
        yield
        return
    verbosity = transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    hub_bars_disabled = _hub_bars_disabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()
        elif hub_bars_disabled is False:
            _enable_hub_bars()


@contextmanager
def quiet_dask_shutdown() -> Iterator[None]:
    """Inside the block, Dask's nannies log errors only.

    A nanny logs "Worker process still alive after ... seconds, killing" when its worker takes
    longer than the timeout to stop, which is what a closing ``LocalCluster`` does on a loaded
    machine (the worker is then killed, as intended). The loggers' levels are put back on the
    way out.
    """
    loggers = [logging.getLogger(name) for name in _DASK_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _hub_bars_disabled() -> bool | None:
    try:
        from huggingface_hub.utils import are_progress_bars_disabled  # type: ignore[attr-defined]
    except ImportError:
        return None
    return bool(are_progress_bars_disabled())


def _enable_hub_bars() -> None:
    from huggingface_hub.utils import enable_progress_bars  # type: ignore[attr-defined]

    enable_progress_bars()
