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


# --- scenario encoding, the tuning grid, and learn/predict on many inputs ----------------------------
def feature_data(n_train: int = 2500, n_test: int = 400):
    from perennial.datasets import Dataset, Split

    rng = np.random.default_rng(0)

    def split(n: int) -> Split:
        labels = np.arange(n) % 4
        return Split(rng.normal(size=(n, 3)) + labels[:, None], labels)

    return Dataset("blobs", split(n_train), split(n_test), metadata={"kind": "features"})


def test_scenario_encoding_reports_chunks_and_cache_reads(tmp_path):
    from perennial.scenarios import make_scenario

    data, cache = feature_data(), FeatureCache(tmp_path)
    options = {"data": data, "n_tasks": 2, "encoder": IdentityEncoder(), "cache": cache}
    first: list[str] = []
    scenario = make_scenario("class-incremental", progress=first.append, **options)
    train = [line for line in first if line.startswith("encoding class-incremental train:")]
    # 2,500 inputs in chunks of 1,024: two lines under way (count, rate, time left), a summary.
    assert [line.split(" (")[0] for line in train] == [
        "encoding class-incremental train: 1024/2500 inputs",
        "encoding class-incremental train: 2048/2500 inputs",
        "encoding class-incremental train: 2500/2500 inputs in 0 s",
    ]
    assert "/s, ETA " in train[0] and "cache" not in "".join(first)
    assert first[-1].startswith("encoding class-incremental test: 400/400 inputs in ")

    again: list[str] = []
    rebuilt = make_scenario("class-incremental", progress=again.append, **options)
    assert (
        again[-1].endswith("(all read from the cache)") and "[1024 read from the cache]" in again[0]
    )
    assert not any("/s" in line for line in again)  # no speed claimed for features only read
    for old, new in zip(scenario, rebuilt, strict=True):
        np.testing.assert_array_equal(old.train_x, new.train_x)
    silent = make_scenario("class-incremental", **options)  # no progress: nothing to say
    assert len(silent) == 2


def test_bench_reports_the_scenario_encoding_first_and_later_seeds_as_news():
    lines: list[str] = []
    run_benchmark(
        "class-incremental",
        ["naive"],
        2,
        scenario_options={"data": feature_data(), "n_tasks": 2, "encoder": IdentityEncoder()},
        strategy_params={"hidden": (8,), "epochs": 1},
        progress=lines.append,
    )
    first_bench = next(i for i, line in enumerate(lines) if line.startswith("bench:"))
    assert lines[0].startswith("encoding class-incremental train: 1024/2500 inputs (")
    assert all(line.startswith("encoding class-incremental") for line in lines[:first_bench])
    # Seed 1's scenario is encoded under the open bench bar: its lines are the bar's news.
    news = [line for line in lines[first_bench:] if "encoding class-incremental" in line]
    assert news and all(line.startswith("bench: 2/4 experiences") for line in news)
    assert lines[-1].startswith("bench: 4/4 experiences in ")


def test_the_tuning_grid_reports_points_done_of_all_with_rate_and_eta():
    from perennial.tuning import grid_points, tune_strategies

    lines: list[str] = []
    results = tune_strategies(
        "class-incremental",
        ["er", "naive"],
        scenario_options={"data": feature_data(400, 80), "n_tasks": 2},
        strategy_params={"hidden": (8,), "epochs": 1},
        tasks=2,
        fraction=0.25,
        progress=lines.append,
    )
    total = len(grid_points("er")) + len(grid_points("naive"))
    assert total == 7 and [len(result.scores) for result in results.values()] == [3, 4]
    under_way = lines[:-1]
    assert [line.split(" (")[0] for line in under_way] == [
        f"tune: {done}/{total} grid points" for done in range(1, total)
    ] + [f"tune: {total}/{total} grid points"]  # the last point's news, then the summary
    assert all("/s, ETA " in line for line in under_way[:-1])
    assert "tune er {'lr': 0.01}: validation accuracy " in under_way[0]
    assert "tune naive {'lr': 0.1}: validation accuracy " in under_way[-1]
    assert lines[-1].startswith(f"tune: {total}/{total} grid points in ")


def test_learn_and_predict_report_encoding_many_inputs_in_chunks(tmp_path, capsys):
    from perennial import LifelongClassifier
    from perennial.cli import main
    from perennial.learner import ENCODE_CHUNK

    rng = np.random.default_rng(3)
    n = 2 * ENCODE_CHUNK + 88
    X = rng.normal(size=(n, 4)).round(3) + (np.arange(n) % 3)[:, None]
    labels = [f"c{i % 3}" for i in range(n)]
    rows = "".join(f'"{",".join(map(str, x))}",{y}\n' for x, y in zip(X, labels, strict=True))
    (tmp_path / "many.csv").write_text("text,category\n" + rows, encoding="utf-8")
    model = tmp_path / "model"
    args = ["--model", str(model), "--encoder", "identity", "--n-features", "64"]
    assert main(["learn", *args, "--csv", str(tmp_path / "many.csv")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in err] == [
        f"encoding: {ENCODE_CHUNK}/{n} inputs",
        f"encoding: {2 * ENCODE_CHUNK}/{n} inputs",
        f"encoding: {n}/{n} inputs in 0 s",
    ]
    # Encoded in chunks, learned in one step: the model the library makes in one call.
    from perennial.heads import make_head

    expected = LifelongClassifier("identity", make_head("ridge", n_features=64), unknown_rate=0.02)
    expected.learn_many(X, labels)
    learned = LifelongClassifier.load(model)
    np.testing.assert_allclose(learned.decision_scores(X[:20]), expected.decision_scores(X[:20]))

    (tmp_path / "queries.txt").write_text(
        "".join(",".join(map(str, x)) + "\n" for x in X), encoding="utf-8"
    )
    assert main(["predict", "--model", str(model), "--file", str(tmp_path / "queries.txt")]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == n
    assert err.splitlines()[-1].startswith(f"encoding: {n}/{n} inputs in ")
    # A few inputs: no encoding lines among the command's own output.
    assert main(["predict", "--model", str(model), "1,2,3,4"]) == 0
    assert "encoding" not in capsys.readouterr().err
