"""The progress display, cache reads reported as such, and the third-party noise silenced."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest

from perennial.bench import run_benchmark
from perennial.encoders import FeatureCache, IdentityEncoder
from perennial.progress import (
    ProgressBar,
    format_seconds,
    quiet_dask_shutdown,
    quiet_transformers,
)
from perennial.protocols.incremental import encode_split


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_carry_count_rate_and_time_left():
    clock, lines = _Clock(), []
    with ProgressBar(10, "encoding", unit="texts", output=lines.append, clock=clock) as bar:
        clock.now = 2.0
        bar.update(4)  # 4 in 2 s: 2/s, 6 left: 3 s
        clock.now = 5.0
        bar.update(2, note="half way")  # 6 in 5 s: 1.2/s, 4 left: 3.33 s
        clock.now = 8.0
        bar.update(4)
    assert lines == [
        "encoding: 4/10 texts (2/s, ETA 3 s)",
        "encoding: 6/10 texts (1.2/s, ETA 3 s) half way",
        "encoding: 10/10 texts in 8 s (1.25/s)",
    ]


def test_a_terminal_gets_one_line_redrawn_in_place():
    clock, screen = _Clock(), _Terminal()
    with ProgressBar(3, "fit", unit="examples", output=screen, clock=clock) as bar:
        for _ in range(3):
            clock.now += 1.0
            bar.update(1, note="x")
        bar.write("a message of its own")
    text = screen.getvalue()
    assert text.count("\r") >= 3
    # Only the message and the summary end a line; the bar itself never scrolls.
    assert text.count("\n") == 2
    assert text.endswith("fit: 3/3 examples in 3 s (1/s)\n")
    assert "a message of its own\n" in text


def test_a_small_job_still_shows_a_line():
    lines: list[str] = []
    with ProgressBar(0, "encoding test", unit="inputs", output=lines.append):
        pass
    assert lines == ["encoding test: 0/0 inputs in 0 s"]
    lines.clear()
    clock = _Clock()
    with ProgressBar(5, "encoding", unit="inputs", output=lines.append, clock=clock) as bar:
        clock.now = 0.5
        bar.update(5)  # done at once: only the summary is printed
    assert lines == ["encoding: 5/5 inputs in 0 s (10/s)"]


def test_an_error_is_said_in_the_summary():
    lines: list[str] = []
    with pytest.raises(RuntimeError), ProgressBar(4, "w", output=lines.append) as bar:
        bar.update(1)
        raise RuntimeError("boom")
    assert lines[-1].startswith("w: 1/4 items in ") and lines[-1].endswith("(stopped by an error)")


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 59.4, 60, 3599, 3600, 90061)] == [
        "0 s",
        "59 s",
        "1 min 00 s",
        "59 min 59 s",
        "1 h 00 min",
        "25 h 01 min",
    ]


def test_features_read_from_the_cache_are_reported_as_such(tmp_path):
    inputs = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    cache = FeatureCache(tmp_path)
    first, second = io.StringIO(), io.StringIO()
    encoded = encode_split(IdentityEncoder(), inputs, cache, batch_size=20, progress=first)
    again = encode_split(IdentityEncoder(), inputs, cache, batch_size=20, progress=second)
    np.testing.assert_array_equal(encoded, inputs)
    np.testing.assert_array_equal(again, inputs)
    assert "cache" not in first.getvalue()
    assert first.getvalue().splitlines()[-1].startswith("  encoding inputs: 50/50 inputs in ")
    last = second.getvalue().splitlines()
    assert last[-1].endswith("(all read from the cache)")
    # No encoding speed is claimed for features that were only read.
    assert not any("/s" in line for line in last)
    assert "[20 read from the cache]" in last[0]


def test_a_cache_miss_among_hits_counts_apart(tmp_path):
    inputs = np.arange(60, dtype=np.float32).reshape(20, 3)
    cache = FeatureCache(tmp_path)
    cache.encode(IdentityEncoder(), inputs[:10])  # the first chunk is cached, the second not
    stream = io.StringIO()
    encode_split(IdentityEncoder(), inputs, cache, batch_size=10, progress=stream)
    assert "(10 computed, " in stream.getvalue().splitlines()[-1]
    assert "10 read from the cache)" in stream.getvalue().splitlines()[-1]


def test_bench_progress_counts_experiences_with_the_runs_news():
    lines: list[str] = []
    run_benchmark(
        "split-mnist",
        ["naive", "joint"],
        1,
        scenario_options={"examples_per_task": 60, "n_tasks": 2},
        strategy_params={"hidden": (8,)},
        progress=lines.append,
    )
    assert [line.split(" (")[0].split(" naive")[0] for line in lines[:2]] == [
        "bench: 1/4 experiences",
        "bench: 2/4 experiences",
    ]
    assert "naive seed 0: experience 2/2" in lines[1]
    # joint trains on the whole stream at once: its one message counts for both experiences
    assert lines[2].startswith("bench: 4/4 experiences (") and "joint seed 0" in lines[2]
    assert lines[3].startswith("bench: 4/4 experiences in ")
    assert len(lines) == 4


def test_quiet_transformers_silences_the_loading_bar_and_restores_everything(capfd):
    pytest.importorskip("sentence_transformers")
    from transformers.utils import logging as transformers_logging

    from perennial.encoders.text import TextEncoder

    before = (transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled())
    transformers_logging.set_verbosity_info()
    transformers_logging.enable_progress_bar()
    try:
        with quiet_transformers():
            assert not transformers_logging.is_progress_bar_enabled()
            assert transformers_logging.get_verbosity() == logging.ERROR
        assert transformers_logging.get_verbosity() == logging.INFO
        assert transformers_logging.is_progress_bar_enabled()
        capfd.readouterr()
        TextEncoder().encode(["a sentence"])  # loads the weights
        assert "Loading weights" not in capfd.readouterr().err
        assert transformers_logging.is_progress_bar_enabled()  # left as the caller set it
    finally:
        transformers_logging.set_verbosity(before[0])
        if not before[1]:
            transformers_logging.disable_progress_bar()


def test_quiet_dask_shutdown_is_scoped(caplog):
    nanny = logging.getLogger("distributed.nanny")
    level = nanny.level
    with caplog.at_level(logging.INFO):
        with quiet_dask_shutdown():
            nanny.warning("Worker process still alive after 3.2 seconds, killing")
        assert "still alive" not in caplog.text
        assert nanny.level == level
        nanny.warning("after the block")
    assert "after the block" in caplog.text
