"""``perennial bench --json`` saves after every run and search; ``--resume`` goes on from it.

The reference for every resumed benchmark is the same benchmark run in one go: seeded runs are
deterministic, so a resumed table must hold exactly the matrices of the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from perennial.bench import RunResult, check_done, expected_params, run_benchmark
from perennial.exceptions import InvalidParameterError

SMALL = {"n_tasks": 2, "examples_per_task": 80}
PARAMS = {"hidden": (16,), "memory_per_class": 2}
ENV = {**os.environ, "PERENNIAL_DATA": os.environ.get("PERENNIAL_DATA", "../shared/data")}
CLI_SMALL = [
    "--scenario", "split-mnist", "--tasks", "2", "--examples-per-task", "80",
    "--hidden", "16", "--memory-per-class", "2",
]  # fmt: skip


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "perennial.cli", "bench", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
    )


def _matrices(document: dict) -> dict[tuple[str, int], list]:
    return {(run["strategy"], run["seed"]): run["accuracy_matrix"] for run in document["runs"]}


def test_runs_done_earlier_are_kept_and_the_rest_give_the_one_go_table():
    one_go = run_benchmark("split-mnist", ["naive", "er"], 2, scenario_options=SMALL,
                           strategy_params=PARAMS)  # fmt: skip
    first = run_benchmark("split-mnist", ["naive", "er"], 1, scenario_options=SMALL,
                          strategy_params=PARAMS)  # fmt: skip
    saved = [RunResult.from_json(json.loads(json.dumps(run.to_json()))) for run in first]
    new: list[RunResult] = []
    resumed = run_benchmark(
        "split-mnist", ["naive", "er"], 2, scenario_options=SMALL, strategy_params=PARAMS,
        done=saved, on_run=new.append,
    )  # fmt: skip
    assert [(run.strategy, run.seed) for run in new] == [("naive", 1), ("er", 1)]
    assert [(run.strategy, run.seed) for run in resumed] == [
        (run.strategy, run.seed) for run in one_go
    ]
    for got, want in zip(resumed, one_go, strict=True):
        np.testing.assert_array_equal(got.matrix, want.matrix)
    assert resumed[0] is saved[0] and resumed[1] is saved[1]  # not run again


def test_nothing_left_to_run_returns_the_earlier_runs():
    runs = run_benchmark("split-mnist", ["naive"], 1, scenario_options=SMALL,
                         strategy_params=PARAMS)  # fmt: skip
    called: list[RunResult] = []
    again = run_benchmark("split-mnist", ["naive"], 1, scenario_options=SMALL,
                          strategy_params=PARAMS, done=runs, on_run=called.append)  # fmt: skip
    assert again == runs and called == []


def _run(name: str, seed: int, params: dict) -> RunResult:
    n = 2
    return RunResult(name, seed, np.zeros((n, n)), np.zeros(n), 1.0, 0, 0, {}, params=params)


@pytest.mark.parametrize(
    ("run", "message"),
    [
        (lambda p: _run("ewc", 0, p["naive"]), "not of a strategy named now"),
        (lambda p: _run("naive", 3, p["naive"]), "ask for at least 4 seeds"),
        (lambda p: _run("naive", 0, {**p["naive"], "lr": 0.5}), "lr=0.5"),
        (lambda p: _run("naive", 0, {k: v for k, v in p["naive"].items() if k != "lr"}), "lr"),
    ],
)
def test_runs_of_another_setup_are_refused(run, message):
    own = {"naive": dict(PARAMS)}
    recorded = {"naive": expected_params("naive", PARAMS)}
    assert check_done([_run("naive", 0, recorded["naive"])], ["naive"], 2, own)  # the match
    with pytest.raises(InvalidParameterError, match=message):
        check_done([run(recorded)], ["naive"], 2, own)
    twice = [_run("naive", 0, recorded["naive"])] * 2
    with pytest.raises(InvalidParameterError, match="appears twice"):
        check_done(twice, ["naive"], 2, own)


def test_an_interrupted_bench_resumes_to_the_one_go_table(tmp_path: Path):
    reference = tmp_path / "one-go.json"
    done = _bench(*CLI_SMALL, "--strategies", "naive,er,lwf", "--seeds", "2",
                  "--json", str(reference))  # fmt: skip
    assert done.returncode == 0, done.stderr
    want = json.loads(reference.read_text())
    assert want["complete"] is True

    out = tmp_path / "results.json"
    command = [sys.executable, "-m", "perennial.cli", "bench", *CLI_SMALL,
               "--strategies", "naive,er,lwf", "--seeds", "2", "--json", str(out)]  # fmt: skip
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not out.exists() and process.poll() is None:
            time.sleep(0.02)
        process.kill()  # as a crash or a closed session would
    finally:
        process.wait()
        assert process.stderr is not None
        process.stderr.close()
    partial = json.loads(out.read_text())
    assert partial["complete"] is False
    assert 1 <= len(partial["runs"]) < 6
    kept = {(run["strategy"], run["seed"]): run for run in partial["runs"]}

    resumed = _bench(*CLI_SMALL, "--strategies", "naive,er,lwf", "--seeds", "2",
                     "--json", str(out), "--resume")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(kept)} run(s) and 0 search(es) read" in resumed.stderr
    got = json.loads(out.read_text())
    assert got["complete"] is True
    assert _matrices(got) == _matrices(want)
    for run in got["runs"]:  # the runs read back were not trained again
        if (run["strategy"], run["seed"]) in kept:
            assert run == kept[run["strategy"], run["seed"]]
    assert got["results"].keys() == want["results"].keys()


def test_resume_without_a_file_starts_afresh_and_more_seeds_add_seeds(tmp_path: Path):
    out = tmp_path / "results.json"
    first = _bench(*CLI_SMALL, "--strategies", "naive", "--seeds", "1", "--json", str(out),
                   "--resume")  # fmt: skip
    assert first.returncode == 0, first.stderr
    seed0 = json.loads(out.read_text())["runs"][0]
    more = _bench(*CLI_SMALL, "--strategies", "naive", "--seeds", "2", "--json", str(out),
                  "--resume")  # fmt: skip
    assert more.returncode == 0, more.stderr
    document = json.loads(out.read_text())
    assert [run["seed"] for run in document["runs"]] == [0, 1]
    assert document["runs"][0] == seed0
    assert document["config"]["seeds"] == 2
    assert "naive seed 0:" not in more.stderr and "naive seed 1:" in more.stderr


def test_a_tuned_bench_resumes_without_searching_again(tmp_path: Path):
    out = tmp_path / "results.json"
    tune = ["--tune", "--tune-tasks", "2"]
    first = _bench(*CLI_SMALL, "--strategies", "naive,er", "--seeds", "1", *tune,
                   "--json", str(out))  # fmt: skip
    assert first.returncode == 0, first.stderr
    before = json.loads(out.read_text())
    more = _bench(*CLI_SMALL, "--strategies", "naive,er", "--seeds", "2", *tune,
                  "--json", str(out), "--resume")  # fmt: skip
    assert more.returncode == 0, more.stderr
    assert "validation accuracy" not in more.stderr  # no grid point scored again
    after = json.loads(out.read_text())
    assert after["tuning"] == before["tuning"]
    assert [(r["strategy"], r["seed"]) for r in after["runs"]] == [
        ("naive", 0),
        ("er", 0),
        ("naive", 1),
        ("er", 1),
    ]
    chosen = before["tuning"]["naive"]["chosen"]["lr"]
    assert {run["params"]["lr"] for run in after["runs"] if run["strategy"] == "naive"} == {chosen}

    # A new strategy is searched and run; the earlier ones are kept.
    grown = _bench(*CLI_SMALL, "--strategies", "naive,er,agem", "--seeds", "2", *tune,
                   "--json", str(out), "--resume")  # fmt: skip
    assert grown.returncode == 0, grown.stderr
    assert "tune agem" in grown.stderr and "tune naive" not in grown.stderr
    final = json.loads(out.read_text())
    assert set(final["tuning"]) == {"naive", "er", "agem"}
    assert len(final["runs"]) == 6


def test_a_resumed_tuned_bench_that_stops_after_a_search_keeps_the_earlier_searches(
    tmp_path: Path,
):
    # A resumed bench saves each new search at once. When it then stops (here: an earlier run
    # whose parameters no longer match is refused after the new search), the file must still
    # hold every search it held before, beside the new one.
    out = tmp_path / "results.json"
    tune = ["--tune", "--tune-tasks", "2"]
    first = _bench(*CLI_SMALL, "--strategies", "naive,er", "--seeds", "1", *tune,
                   "--json", str(out))  # fmt: skip
    assert first.returncode == 0, first.stderr
    document = json.loads(out.read_text())
    before = document["tuning"]
    (er_run,) = [run for run in document["runs"] if run["strategy"] == "er"]
    er_run["params"]["lr"] = 0.5 if er_run["params"]["lr"] != 0.5 else 0.25
    out.write_text(json.dumps(document))

    grown = _bench(*CLI_SMALL, "--strategies", "naive,er,agem", "--seeds", "1", *tune,
                   "--json", str(out), "--resume")  # fmt: skip
    assert grown.returncode != 0
    assert "the earlier run of er with seed 0 ran with" in grown.stderr
    assert "tune agem" in grown.stderr and "tune naive" not in grown.stderr
    after = json.loads(out.read_text())
    assert set(after["tuning"]) == {"naive", "er", "agem"}
    assert {name: after["tuning"][name] for name in before} == before
    assert _matrices(after) == _matrices(document)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ["--strategies", "naive", "--seeds", "1", "--lr", "0.5"],
            "ran with --lr 0.01, and now it would run with --lr 0.5",
        ),
        (["--strategies", "naive", "--seeds", "1", "--tune"], "holds untuned runs"),
        (["--strategies", "er", "--seeds", "1"], "not of a strategy named now"),
    ],
)
def test_resume_refuses_a_file_of_other_options_and_leaves_it_as_it_was(
    tmp_path: Path, change, message
):
    out = tmp_path / "results.json"
    first = _bench(*CLI_SMALL, "--strategies", "naive", "--seeds", "1", "--json", str(out))
    assert first.returncode == 0, first.stderr
    before = out.read_bytes()
    refused = _bench(*CLI_SMALL, *change, "--json", str(out), "--resume")
    assert refused.returncode == 2, refused.stderr
    assert message in refused.stderr
    assert out.read_bytes() == before


def test_resume_refuses_other_scenario_options_a_corrupt_file_and_no_json(tmp_path: Path):
    out = tmp_path / "results.json"
    first = _bench(*CLI_SMALL, "--strategies", "naive", "--seeds", "1", "--json", str(out))
    assert first.returncode == 0, first.stderr
    before = out.read_bytes()
    other = [a if a != "80" else "90" for a in CLI_SMALL]
    refused = _bench(*other, "--strategies", "naive", "--json", str(out), "--resume")
    assert refused.returncode == 2
    assert "with --examples-per-task 80, and this command asks for --examples-per-task 90" in (
        refused.stderr
    )
    assert "seed 0:" not in refused.stderr  # refused before any run
    assert out.read_bytes() == before

    broken = tmp_path / "broken.json"
    broken.write_text('{"config": {"scenario": "split-mnist"}, "runs": [{"strat')
    refused = _bench(*CLI_SMALL, "--strategies", "naive", "--json", str(broken), "--resume")
    assert refused.returncode == 2 and "cannot read" in refused.stderr
    assert broken.read_text().endswith('"strat')

    alone = _bench(*CLI_SMALL, "--strategies", "naive", "--resume")
    assert alone.returncode == 2 and "--resume goes on from the file of --json" in alone.stderr


def test_earlier_searches_of_another_grid_or_split_are_refused():
    from perennial.tuning import TuningResult, grid_points, tune_strategies

    points = grid_points("naive")
    result = TuningResult(
        "naive",
        points[0],
        [{"params": p, "score": 0.5, "error": None} for p in points],
        tasks=2,
        fraction=0.1,
    )
    kept = tune_strategies("split-mnist", ["naive"], scenario_options=SMALL,
                           strategy_params=PARAMS, tasks=2, done={"naive": result})  # fmt: skip
    assert kept["naive"] is result
    for kwargs, message in [
        ({"fraction": 0.2}, "held out 0.1 of 2 task"),
        ({"tasks": 1}, "held out 0.1 of 2 task"),
        ({"strategy_params": {**PARAMS, "lr": 0.03}}, "other grid points"),
    ]:
        options = {"strategy_params": PARAMS, "tasks": 2, **kwargs}
        with pytest.raises(InvalidParameterError, match=message):
            tune_strategies("split-mnist", ["naive"], scenario_options=SMALL,
                            done={"naive": result}, **options)  # fmt: skip
