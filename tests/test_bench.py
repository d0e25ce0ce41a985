"""The benchmark runner, its report, and ``perennial bench`` as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from perennial import LifelongClassifier, RidgeHead
from perennial.bench import RunResult, aggregate, failures, params_for, run_benchmark, run_one
from perennial.encoders import IdentityEncoder
from perennial.exceptions import InvalidParameterError
from perennial.metrics import backward_transfer, bootstrap_ci90, forgetting
from perennial.report import format_table, seen_average_curve, write_report
from perennial.scenarios import from_arrays
from perennial.tuning import TuningResult, tune_strategies


def _scenario(seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (6, 5))
    X = np.vstack([rng.normal(c, 1.0, (30, 5)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(6), 30)
    return from_arrays(X, y, n_tasks=3, seed=seed, test_fraction=0.3)


def test_lifelong_run_matches_a_learner_fed_by_hand():
    scenario = _scenario()
    run = run_one(scenario, "lifelong", seed=2, params={"n_features": 64})

    model = LifelongClassifier(IdentityEncoder(), RidgeHead(n_features=64, seed=2))
    expected = np.full((3, 3), np.nan)
    for i, experience in enumerate(scenario):
        model.learn_many(experience.train_x, experience.train_y.tolist())
        for j, other in enumerate(scenario):
            predicted = np.asarray(model.predict_many(other.test_x))
            expected[i, j] = np.mean(predicted == other.test_y)
    np.testing.assert_allclose(run.matrix, expected, rtol=0, atol=0)
    assert run.metrics["average_accuracy"] == pytest.approx(expected[-1].mean())
    assert run.metrics["forgetting"] == pytest.approx(forgetting(expected))
    assert run.metrics["bwt"] == pytest.approx(backward_transfer(expected))
    # Before anything is learned every class scores 0 and the first label (0) is the answer.
    np.testing.assert_array_equal(run.baseline, [np.mean(e.test_y == 0) for e in scenario])
    assert run.stored_bytes == 0


def test_joint_has_only_its_final_row():
    run = run_one(_scenario(), "joint", seed=0, params={"hidden": (16,), "epochs": 3})
    assert np.isnan(run.matrix[:-1]).all() and np.isfinite(run.matrix[-1]).all()
    assert run.metrics["average_accuracy"] == pytest.approx(run.matrix[-1].mean())
    assert np.isnan(run.metrics["forgetting"]) and np.isnan(run.metrics["bwt"])


def test_aggregate_is_the_mean_and_bootstrap_interval_over_seeds():
    runs = [
        run_one(_scenario(seed), name, seed, {"hidden": (16,), "n_features": 64})
        for seed in range(3)
        for name in ("naive", "lifelong")
    ]
    results = aggregate(runs)
    for name in ("naive", "lifelong"):
        values = [r.metrics["average_accuracy"] for r in runs if r.strategy == name]
        _, (low, high) = bootstrap_ci90(values)
        entry = results[name]["average_accuracy"]
        assert entry["mean"] == pytest.approx(float(np.mean(values)))
        assert entry["ci90"] == pytest.approx([low, high])
    assert results["naive"]["stored_mb"]["mean"] == 0.0
    table = format_table(results)
    assert table.splitlines()[0].split()[:2] == ["strategy", "average_accuracy"]
    assert len(table.splitlines()) == 3


def test_seen_average_curve():
    R = np.array([[0.9, np.nan], [0.5, 0.8]])
    np.testing.assert_allclose(seen_average_curve(R), [0.9, 0.65])


def test_report_files(tmp_path):
    runs = [run_one(_scenario(s), "naive", s, {"hidden": (8,)}) for s in range(2)]
    runs += [run_one(_scenario(s), "joint", s, {"hidden": (8,)}) for s in range(2)]
    path = write_report(runs, aggregate(runs), tmp_path / "r", title="t", config={"seeds": 2})
    assert path.read_text().startswith("<!doctype html>")
    for name in ("accuracy_matrices.png", "average_accuracy.png", "train_time.png"):
        assert (tmp_path / "r" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in (tmp_path / "r" / "report.md").read_text()


def test_parameters_are_routed_and_checked():
    assert params_for("naive", {"memory_per_class": 3, "epochs": 2}) == {"epochs": 2}
    assert params_for("er", {"memory_per_class": 3}) == {"memory_per_class": 3}
    with pytest.raises(InvalidParameterError, match="memory_per_klass"):
        params_for("er", {"memory_per_klass": 3})
    with pytest.raises(InvalidParameterError, match=r"valid strategies: .*naive"):
        run_benchmark("split-mnist", ["naive", "ewk"], 1)
    with pytest.raises(InvalidParameterError, match="seeds"):
        run_benchmark("split-mnist", ["naive"], 0)
    with pytest.raises(InvalidParameterError, match="epochs"):
        run_benchmark("split-mnist", ["naive"], 1, strategy_params={"epochs": 0})


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "perennial.cli", "bench", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PERENNIAL_DATA": os.environ.get("PERENNIAL_DATA", "../shared/data")},
        timeout=600,
    )


def test_cli_on_split_mnist(tmp_path: Path):
    out = tmp_path / "results.json"
    done = _cli(
        "--scenario", "split-mnist", "--strategies", "naive,er,joint", "--seeds", "2",
        "--examples-per-task", "300", "--memory-per-class", "5", "--hidden", "64",
        "--json", str(out), "--report", str(tmp_path / "report"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "naive seed 1: experience 5/5" in done.stderr  # progress
    document = json.loads(out.read_text())
    assert set(document["results"]) == {"naive", "er", "joint"}
    for metrics in document["results"].values():
        for key in ("average_accuracy", "forgetting", "bwt", "fwt", "train_seconds"):
            assert set(metrics[key]) == {"mean", "ci90"}
    naive = document["results"]["naive"]["average_accuracy"]
    assert 0.0 <= naive["ci90"][0] <= naive["mean"] <= naive["ci90"][1] <= 1.0
    # Each run's average accuracy is the mean of its matrix's last row.
    for run in document["runs"]:
        last = run["accuracy_matrix"][-1]
        assert run["metrics"]["average_accuracy"] == pytest.approx(float(np.mean(last)))
    assert document["results"]["er"]["stored_mb"]["mean"] > 0
    assert (tmp_path / "report" / "report.html").exists()
    assert "naive" in done.stdout and "average_accuracy" in done.stdout


def test_cli_sets_the_lifelong_width_and_ridge_and_reports_them(tmp_path: Path):
    from perennial.scenarios import make_scenario

    out = tmp_path / "results.json"
    done = _cli(
        "--scenario", "split-mnist", "--strategies", "naive,lifelong", "--tasks", "2",
        "--examples-per-task", "100", "--hidden", "16", "--n-features", "96", "--ridge", "0.5",
        "--json", str(out), "--report", str(tmp_path / "report"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text())
    assert document["config"]["n_features"] == 96 and document["config"]["ridge"] == 0.5
    runs = {run["strategy"]: run for run in document["runs"]}
    assert runs["lifelong"]["params"] == {"n_features": 96, "ridge": 0.5}
    assert "n_features" not in runs["naive"]["params"]  # only the strategy that takes it
    assert "n_features=96" in (tmp_path / "report" / "report.md").read_text()
    # The width reached the head: the same matrix as a strategy built with it by hand.
    scenario = make_scenario("split-mnist", seed=0, n_tasks=2, examples_per_task=100)
    by_hand = run_one(scenario, "lifelong", 0, {"n_features": 96, "ridge": 0.5})
    np.testing.assert_array_equal(runs["lifelong"]["accuracy_matrix"], by_hand.matrix)
    other = run_one(scenario, "lifelong", 0, {"n_features": 64, "ridge": 0.5})
    assert not np.array_equal(other.matrix, by_hand.matrix)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenario", "split-mnist", "--strategies", "naive,sgd"], "valid strategies"),
        (
            ["--scenario", "split-mnist", "--strategies", "lifelong", "--n-features", "0"],
            "--n-features",
        ),
        (["--scenario", "split-mnist", "--strategies", "lifelong", "--ridge", "-1"], "--ridge"),
        (
            [
                "--scenario",
                "permuted-mnist",
                "--strategies",
                "naive,icarl",
                "--tasks",
                "2",
                "--examples-per-task",
                "50",
            ],
            "icarl is a class-incremental method",
        ),
        (
            [
                "--scenario",
                "permuted-mnist",
                "--strategies",
                "icarl",
                "--tasks",
                "2",
                "--examples-per-task",
                "50",
                "--tune",
            ],
            "icarl is a class-incremental method",
        ),
        (
            [
                "--scenario",
                "split-mnist",
                "--strategies",
                "packnet,pnn",
                "--tasks",
                "2",
                "--examples-per-task",
                "50",
            ],
            "packnet, pnn need the task of each test input",
        ),
        (["--scenario", "split-mnst", "--strategies", "naive"], "split-mnist"),
        (["--scenario", "split-mnist", "--strategies", "naive", "--tasks", "0"], "--tasks"),
        (["--scenario", "split-mnist", "--strategies", "er", "--memory-per-class", "-1"], "memory"),
        (["--scenario", "split-mnist", "--strategies", "naive", "--seeds", "0"], "seeds"),
    ],
)
def test_cli_bad_input_fails_before_training(args, message):
    done = _cli(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "seed 0:" not in done.stderr  # no run started (its progress names the seed)
    assert "validation accuracy" not in done.stderr  # nor a point of the tuning grid


def test_curves_change_nothing_and_give_continual_world_metrics():
    scenario = _scenario()
    plain = run_one(scenario, "naive", 1, {"hidden": (16,)})
    sampled = run_one(scenario, "naive", 1, {"hidden": (16,)}, curves=True)
    np.testing.assert_array_equal(plain.matrix, sampled.matrix)
    R = plain.matrix
    by_hand = np.mean([R[i, i] - R[-1, i] for i in range(3)])
    assert plain.metrics["cw_forgetting"] == pytest.approx(by_hand)
    assert np.isnan(plain.metrics["ft_auc"])
    assert np.isfinite(sampled.metrics["ft_auc"])


def test_first_task_has_no_forward_transfer():
    # On a one-task stream the continual run and the from-scratch reference are the same run.
    single = from_arrays(
        np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32),
        np.repeat([0, 1], 30),
        n_tasks=1,
    )
    run = run_one(single, "naive", 0, {"hidden": (8,)}, curves=True)
    assert run.metrics["ft_auc"] == 0.0


def test_a_diverged_run_is_recorded_and_the_benchmark_goes_on():
    runs = run_benchmark(
        "split-mnist",
        ["ewc", "naive"],
        1,
        scenario_options={"examples_per_task": 200, "n_tasks": 2, "classes_per_task": 2},
        strategy_params={"strength": 1e9, "hidden": (16,), "lr": 0.1},
    )
    ewc, naive = runs
    assert ewc.error is not None and "diverged" in ewc.error
    assert np.isnan(ewc.metrics["average_accuracy"])
    assert naive.error is None and np.isfinite(naive.metrics["average_accuracy"])
    results = aggregate(runs)
    assert results["ewc"]["failed_runs"]["mean"] == 1.0
    assert results["ewc"]["average_accuracy"]["mean"] is None
    assert "ewc (1/1 diverged)" in format_table(results)
    assert failures(runs) == {"ewc": [{"seed": 0, "error": ewc.error}]}


def test_runs_spread_over_a_local_dask_cluster_equal_the_serial_runs():
    distributed = pytest.importorskip("distributed")
    options = {"examples_per_task": 200, "n_tasks": 2, "classes_per_task": 2}
    params = {"hidden": (16,), "n_features": 64}
    serial = run_benchmark(
        "split-mnist", ["naive", "lifelong"], 2, scenario_options=options, strategy_params=params
    )
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        spread = run_benchmark(
            "split-mnist",
            ["naive", "lifelong"],
            2,
            scenario_options=options,
            strategy_params=params,
            client=client,
        )
        # Resumed on the cluster: the runs given as done are kept, only the others are sent.
        sent: list[RunResult] = []
        resumed = run_benchmark(
            "split-mnist", ["naive", "lifelong"], 2, scenario_options=options,
            strategy_params=params, client=client, done=serial[:3], on_run=sent.append,
        )  # fmt: skip
        # The tuning grid too: every point one task on the cluster, the same choices and scores.
        searches: list[TuningResult] = []
        tuned = tune_strategies(
            "split-mnist", ["naive", "er"], scenario_options=options, strategy_params=params,
            tasks=2, client=client, on_result=searches.append,
        )  # fmt: skip
        kept = tune_strategies(
            "split-mnist", ["naive", "er"], scenario_options=options, strategy_params=params,
            tasks=2, client=client, done={"er": tuned["er"]}, on_result=searches.append,
        )  # fmt: skip
    here = tune_strategies(
        "split-mnist", ["naive"], scenario_options=options, strategy_params=params, tasks=2
    )
    assert tuned["naive"].scores == here["naive"].scores
    assert tuned["naive"].chosen == here["naive"].chosen
    assert [result.strategy for result in searches] == ["naive", "er", "naive"]
    assert kept["er"] is tuned["er"] and kept["naive"].scores == here["naive"].scores
    assert [(r.strategy, r.seed) for r in sent] == [("lifelong", 1)]
    assert resumed[:3] == serial[:3]
    np.testing.assert_array_equal(resumed[3].matrix, serial[3].matrix)
    assert [(r.strategy, r.seed) for r in spread] == [(r.strategy, r.seed) for r in serial]
    for mine, theirs in zip(spread, serial, strict=True):
        np.testing.assert_array_equal(mine.matrix, theirs.matrix)
