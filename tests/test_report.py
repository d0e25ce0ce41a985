"""The benchmark report: intervals in range, heatmaps that carry their values, metrics explained.

One small real benchmark (split MNIST, 2 tasks, a tiny model, 3 seeds) is run once for the module,
saved as the command's JSON, and the report is built from the runs read back from it.
"""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from perennial.bench import METRICS, RunResult, aggregate, run_benchmark
from perennial.metrics import bootstrap_ci90, mean_ci90
from perennial.report import (
    METRIC_EXPLANATIONS,
    report_from_json,
    settings_line,
    strategy_styles,
    write_report,
)
from perennial.strategies import STRATEGY_NAMES, make_strategy

STRATEGIES = ["naive", "er", "joint", "lifelong"]
POSITIVE = ("train_seconds", "peak_memory_mb", "stored_mb")
PARAMS = {"hidden": (8,), "n_features": 64, "memory_per_class": 2}
CONFIG = {"scenario": "split-mnist", "seeds": 3, "n_tasks": 2, "examples_per_task": 100}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    directory = tmp_path_factory.mktemp("report")
    runs = run_benchmark(
        "split-mnist",
        STRATEGIES,
        3,
        scenario_options={"examples_per_task": 100, "n_tasks": 2},
        strategy_params=PARAMS,
    )
    document = {
        "config": {**CONFIG, **PARAMS},
        "results": aggregate(runs),
        "runs": [run.to_json() for run in runs],
    }
    (directory / "results.json").write_text(json.dumps(document))
    document = json.loads((directory / "results.json").read_text())
    again = [RunResult.from_json(record) for record in document["runs"]]
    config = dict(CONFIG)
    write_report(again, document["results"], directory, title="small", config=config)
    return directory, document


def _markdown_table(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("| strategy |")]
    start = text.splitlines().index(lines[0])
    rows = []
    for line in text.splitlines()[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return [cell.strip() for cell in lines[0].strip("|").split("|")], rows


def test_no_interval_of_a_positive_quantity_goes_below_zero(report):
    directory, document = report
    header, rows = _markdown_table((directory / "report.md").read_text())
    seen = 0
    for row in rows:
        for metric, cell in zip(header[1:], row[1:], strict=True):
            found = re.fullmatch(r"(-?[\d.]+) \[(-?[\d.]+), (-?[\d.]+)\]", cell)
            if found is None:
                assert cell == "n/a"
                continue
            mean, low, high = map(float, found.groups())
            assert low <= mean <= high, (row[0], metric, cell)
            if metric in POSITIVE:
                assert low >= 0, (row[0], metric, cell)
                seen += 1
            if metric in ("average_accuracy", "forgetting"):
                assert low >= -100 and high <= 100, (row[0], metric, cell)
    assert seen == len(STRATEGIES) * len(POSITIVE)
    for metrics in document["results"].values():
        for metric in POSITIVE:
            assert metrics[metric]["ci90"][0] >= 0


def test_aggregate_keeps_a_skewed_positive_quantity_above_zero():
    # Peak memory is mostly 0 with an occasional jump: a Student-t interval goes below 0 here.
    runs = [
        RunResult("naive", seed, np.eye(2), np.zeros(2), 1.0, 0, 0, {"peak_memory_mb": value})
        for seed, value in enumerate([0.0, 0.0, 0.0, 6.2])
    ]
    entry = aggregate(runs)["naive"]["peak_memory_mb"]
    assert entry["mean"] == pytest.approx(1.55)
    assert 0.0 <= entry["ci90"][0] <= 1.55 <= entry["ci90"][1] <= 6.2


def test_forgetting_interval_stays_at_or_below_100_percent():
    # Nearly total forgetting on two seeds, less on a third: the t interval's upper bound is 1.23.
    runs = [
        RunResult("naive", seed, np.eye(2), np.zeros(2), 1.0, 0, 0, {"forgetting": value})
        for seed, value in enumerate([0.99, 0.98, 0.60])
    ]
    assert mean_ci90([0.99, 0.98, 0.60])[1][1] > 1.0
    low, high = aggregate(runs)["naive"]["forgetting"]["ci90"]
    assert 0.60 <= low <= high <= 0.99


def test_bootstrap_interval_approaches_the_normal_one_for_many_seeds():
    # Independent reference: for many values the bootstrap distribution of the mean is normal
    # with the standard error s / sqrt(n) (ddof=0, as the bootstrap resamples the sample itself).
    values = np.random.default_rng(5).gamma(2.0, 1.0, size=400)
    mean, (low, high) = bootstrap_ci90(values)
    half = 1.6448536 * values.std() / math.sqrt(len(values))
    assert mean == pytest.approx(values.mean())
    assert low == pytest.approx(mean - half, abs=0.08 * half)
    assert high == pytest.approx(mean + half, abs=0.08 * half)
    assert bootstrap_ci90(values) == (mean, (low, high))  # the same values, the same interval


class _Heatmaps(HTMLParser):
    """The cells of every ``<table class="heatmap">``, by strategy."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.current: str | None = None
        self.row: list[str] | None = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table" and attributes.get("class") == "heatmap":
            self.current = str(attributes["data-strategy"])
            self.tables[self.current] = []
        elif self.current is not None and tag == "tr":
            self.row = []
        elif self.row is not None and tag == "td":
            self.cell = []

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self.cell is not None and self.row is not None:
            self.row.append("".join(self.cell))
            self.cell = None
        elif tag == "tr" and self.row is not None and self.current is not None:
            if self.row:
                self.tables[self.current].append(self.row)
            self.row = None
        elif tag == "table":
            self.current = None


def _json_mean_matrix(document: dict, strategy: str) -> np.ndarray:
    matrices = [
        np.array(run["accuracy_matrix"], dtype=float)
        for run in document["runs"]
        if run["strategy"] == strategy
    ]
    stack = np.stack(matrices)
    counts = np.isfinite(stack).sum(axis=0)
    sums = np.where(np.isfinite(stack), stack, 0.0).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def test_heatmap_cells_carry_the_values_of_the_json(report):
    directory, document = report
    parser = _Heatmaps()
    parser.feed((directory / "report.html").read_text())
    assert set(parser.tables) == set(STRATEGIES)
    markdown = (directory / "report.md").read_text()
    for strategy, rows in parser.tables.items():
        expected = _json_mean_matrix(document, strategy)
        shown = np.array([[math.nan if c == "-" else float(c) for c in row] for row in rows])
        assert shown.shape == expected.shape == (2, 2)
        np.testing.assert_array_equal(np.isnan(shown), np.isnan(expected))
        finite = np.isfinite(expected)
        np.testing.assert_allclose(shown[finite], 100 * expected[finite], atol=0.05 + 1e-9)
        # The Markdown carries the same matrix, rows numbered 1..T like the curves.
        block = markdown.split(f"**{strategy}**", 1)[1]
        lines = [line for line in block.splitlines() if re.match(r"\| \d+ \|", line)][:2]
        for i, line in enumerate(lines):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            assert cells[0] == str(i + 1)
            assert cells[1:] == [row for row in rows[i]]
    # joint has only its last row measured
    assert parser.tables["joint"][0] == ["-", "-"]


def test_every_table_metric_is_explained(report):
    directory, _ = report
    markdown = (directory / "report.md").read_text()
    page = (directory / "report.html").read_text()
    header, rows = _markdown_table(markdown)
    assert header[1:] == list(METRICS)
    for metric in header[1:]:
        assert f"- `{metric}`: " in markdown
        assert f"<li><code>{metric}</code>: " in page
        assert METRIC_EXPLANATIONS[metric]
    assert any("n/a" in row for row in rows)  # joint's forgetting, ft_auc without curves
    assert "- n/a: " in markdown and "why" not in METRIC_EXPLANATIONS
    assert "percentile bootstrap" in markdown and "percentile bootstrap" in page


def test_settings_line_lists_every_setting_of_the_run(report):
    directory, _ = report
    markdown = (directory / "report.md").read_text()
    line = next(line for line in markdown.splitlines() if line.startswith("Settings: "))
    naive = make_strategy("naive", hidden=(8,))
    for key in ("lr", "epochs", "batch_size", "momentum"):
        assert f"{key}={getattr(naive, key)}" in line
    assert "hidden=(8,)" in line and "memory_per_class=2" in line and "n_features=64" in line
    assert "scenario=split-mnist" in line and "seeds=3" in line


def test_a_saved_json_without_parameters_gets_its_report_again(report, tmp_path):
    directory, document = report
    old = dict(
        document, runs=[{k: v for k, v in r.items() if k != "params"} for r in document["runs"]]
    )
    old["config"] = {**old["config"], "hidden": [8]}  # as the JSON stores a tuple
    (tmp_path / "old.json").write_text(json.dumps(old))
    results = report_from_json(tmp_path / "old.json", tmp_path / "again")
    assert results == document["results"]
    again = (tmp_path / "again" / "report.md").read_text()
    line = next(line for line in again.splitlines() if line.startswith("Settings: "))
    first = (directory / "report.md").read_text()
    assert line == next(line for line in first.splitlines() if line.startswith("Settings: "))


def test_settings_line_names_the_strategies_where_values_differ():
    def run(name: str, params: dict) -> RunResult:
        return RunResult(name, 0, np.eye(1), np.zeros(1), 0.0, 0, 0, params=params)

    line = settings_line({}, [run("a", {"lr": 0.1, "epochs": 2}), run("b", {"lr": 0.2})])
    assert line == "lr=0.1 (a), lr=0.2 (b), epochs=2"


def test_every_strategy_gets_its_own_colour_and_marker(report):
    styles = strategy_styles(STRATEGY_NAMES)
    assert len(STRATEGY_NAMES) == 25
    first = list(styles.values())[:13]  # the 13 of one chart: colours and markers apart
    assert len({colour for colour, _, _ in first}) == 13
    assert len({marker for _, marker, _ in first}) == 13
    assert len(set(styles.values())) == len(STRATEGY_NAMES)  # every strategy its own style
    # Scatter plots draw no lines: colour and marker alone must tell every strategy apart.
    assert len({(colour, marker) for colour, marker, _ in styles.values()}) == 25
    assert len({(colour, line) for colour, _, line in styles.values()}) == 25
    directory, _ = report
    for name in (
        "accuracy_matrices.png",
        "average_accuracy.png",
        "forgetting.png",
        "accuracy_vs_time.png",
        "accuracy_vs_memory.png",
        "train_time.png",
    ):
        assert (directory / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in (directory / "report.md").read_text()
