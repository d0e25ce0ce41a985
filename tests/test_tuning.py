"""``--tune``: grids, the validation stream carved from training data, the choice, the outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from perennial.bench import run_one
from perennial.exceptions import InvalidParameterError
from perennial.scenarios.base import Experience, Scenario
from perennial.strategies import STRATEGIES
from perennial.tuning import GRIDS, grid_points, tune, validation_stream


def blobs_scenario(seed: int = 0, per_class: int = 30) -> Scenario:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3.0, (6, 5))
    experiences = []
    for index, classes in enumerate(((0, 1), (2, 3), (4, 5), (0, 5))):
        parts = []
        for _ in range(2):
            x = np.vstack([centres[c] + rng.normal(0, 1, (per_class, 5)) for c in classes])
            y = np.repeat(np.asarray(classes, dtype=np.int64), per_class)
            parts.append((x.astype(np.float32), y))
        experiences.append(Experience(index, *parts[0], *parts[1], classes))
    return Scenario("blobs", tuple(experiences), n_classes=6, input_shape=(5,))


def test_every_grid_names_real_parameters_and_holds_the_defaults():
    assert set(GRIDS) == set(STRATEGIES)
    for name, grid in GRIDS.items():
        defaults = STRATEGIES[name]().get_params()
        for key, values in grid.items():
            assert key in defaults, (name, key)
            assert defaults[key] in values, (name, key)  # tuning can only match or beat it


def test_grid_points_are_the_product_without_fixed_values():
    assert grid_points("ewc")[:2] == [
        {"strength": 1.0, "lr": 0.003},
        {"strength": 1.0, "lr": 0.01},
    ]
    assert len(grid_points("ewc")) == 4 * 3
    assert grid_points("ewc", {"lr": 0.05}) == [{"strength": s} for s in (1.0, 10.0, 30.0, 100.0)]
    with pytest.raises(InvalidParameterError, match="no tuning grid"):
        grid_points("sgd")


def test_the_validation_stream_is_carved_from_training_data_only():
    scenario = blobs_scenario()
    stream = validation_stream(scenario, tasks=3, fraction=0.2, seed=0)
    assert len(stream) == 3 and stream.n_classes == 6
    for mine, source in zip(stream, scenario, strict=False):
        rows = {r.tobytes() for r in source.train_x}
        held = [r.tobytes() for r in mine.test_x]
        kept = [r.tobytes() for r in mine.train_x]
        assert set(held) <= rows and set(kept) <= rows  # nothing from the test split
        assert not set(held) & set(kept) and len(held) + len(kept) == source.n_train
        assert not set(held) & {r.tobytes() for r in source.test_x}
        for label in source.classes:  # stratified: 20% of each label's 30 examples
            assert int(np.sum(mine.test_y == label)) == 6
    with pytest.raises(InvalidParameterError, match="fraction"):
        validation_stream(scenario, 3, 1.0, 0)
    with pytest.raises(InvalidParameterError, match="tasks"):
        validation_stream(scenario, 0, 0.1, 0)


def test_tune_chooses_the_best_validation_point_and_never_reads_test_data():
    clean = blobs_scenario()
    # The test data poisoned: a search that read it would score NaN or fail.
    poisoned = Scenario(
        clean.name,
        tuple(
            Experience(e.index, e.train_x, e.train_y, np.full_like(e.test_x, np.nan),
                       e.test_y, e.classes)
            for e in clean
        ),
        n_classes=clean.n_classes,
        input_shape=clean.input_shape,
    )  # fmt: skip
    fixed = {"hidden": (8,), "epochs": 1}
    result = tune(poisoned, "naive", fixed, tasks=2, fraction=0.25)
    assert [entry["params"] for entry in result.scores] == grid_points("naive")
    # Each score, recomputed by hand on the same validation stream: the final row's mean.
    stream = validation_stream(clean, 2, 0.25, 0)
    expected = [
        float(np.mean(run_one(stream, "naive", 0, {**fixed, **point}).matrix[-1]))
        for point in grid_points("naive")
    ]
    got = [entry["score"] for entry in result.scores]
    np.testing.assert_allclose(got, expected)
    assert result.chosen == grid_points("naive")[int(np.argmax(expected))]
    assert result.to_json()["grid"] == GRIDS["naive"] and result.tasks == 2


def test_cli_tune_writes_the_choices_into_the_json_and_the_report(tmp_path: Path):
    out = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "perennial.cli", "bench", "--scenario", "split-mnist",
            "--strategies", "naive,gem", "--seeds", "1",
            "--examples-per-task", "120", "--hidden", "16", "--tune", "--tune-tasks", "2",
            "--memory-per-class", "2", "--json", str(out), "--report", str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PERENNIAL_DATA": os.environ.get("PERENNIAL_DATA", "../shared/data")},
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text())
    tuning = document["tuning"]
    assert set(tuning) == {"naive", "gem"}
    assert len(tuning["gem"]["scores"]) == len(grid_points("gem"))
    best = max(tuning["naive"]["scores"], key=lambda entry: entry["score"])
    assert tuning["naive"]["chosen"] == best["params"]
    # The measured runs used the chosen values.
    assert "tuned naive: lr=" in done.stderr
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Hyperparameters chosen by --tune" in report and "margin=" in report
    assert "Hyperparameters chosen by --tune" in (tmp_path / "report" / "report.html").read_text()
