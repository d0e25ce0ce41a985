"""Hyperparameter search as the papers did it: a grid per method, scored on held-out training data.

``perennial bench --tune`` calls :func:`tune` for each strategy before the measured runs. The
search never sees test data: it builds a *validation stream* from the first ``tasks``
experiences of the seed-0 scenario, each one's training examples split into a part to train on
and a held-out ``fraction`` to score on (stratified by label, seeded), and runs every point of the
strategy's grid (:data:`GRIDS`) on it. The score of a point is its average accuracy at the end of
the validation stream (the mean of the last row of its accuracy matrix); the best point wins,
ties going to the earlier point of the grid. This is the protocol of Chaudhry et al. (2019,
"Efficient lifelong learning with A-GEM", section 5: hyperparameters chosen on the first three
tasks, then fixed) and of Mirzadeh et al. (2020, 2021, grid searches per method); the grids
here are smaller, for a 2-core machine, and are printed with their scores.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from perennial.exceptions import InvalidParameterError, TrainingDivergedError
from perennial.progress import Output
from perennial.scenarios.base import Experience, Scenario

__all__ = [
    "GRIDS",
    "TuningResult",
    "add_to_report",
    "check_tuning",
    "describe",
    "grid_points",
    "tune",
    "tune_strategies",
    "validation_stream",
]

#: The values each method's search tries. Every grid includes the method's default where it
#: has one, so tuning can only match or beat the untuned run on the validation stream.
GRIDS: dict[str, dict[str, list[Any]]] = {
    "naive": {"lr": [0.003, 0.01, 0.03, 0.1]},
    "cumulative": {"lr": [0.01, 0.03, 0.1]},
    "joint": {"lr": [0.01, 0.03, 0.1]},
    "l2": {"strength": [0.01, 0.04, 0.2, 1.0], "lr": [0.01, 0.03]},
    "ewc": {"strength": [1.0, 10.0, 30.0, 100.0], "lr": [0.003, 0.01, 0.03]},
    "online-ewc": {"strength": [1.0, 10.0, 100.0], "lr": [0.01, 0.03]},
    "si": {"strength": [0.1, 1.0, 10.0], "damping": [0.1, 1.0], "lr": [0.01, 0.03]},
    "mas": {"strength": [0.1, 1.0, 10.0], "lr": [0.01, 0.03]},
    "lwf": {"alpha": [0.5, 1.0, 2.0], "lr": [0.01, 0.03]},
    "er": {"lr": [0.01, 0.03, 0.1]},
    "agem": {"lr": [0.01, 0.03, 0.1]},
    "gem": {"margin": [0.0, 0.5], "lr": [0.01, 0.03, 0.1]},
    "derpp": {"alpha": [0.1, 0.5, 1.0], "beta": [0.5, 1.0], "lr": [0.01, 0.03]},
    # Both SGD-regime methods search the per-task decay up to 0.9: on 20 tasks, 0.8 leaves
    # MC-SGD too little learning rate for the late tasks (benchmarks/RESULTS.md, issue 19).
    "stable-sgd": {"lr": [0.03, 0.1], "decay": [0.5, 0.8, 0.9], "dropout": [0.0, 0.25, 0.5]},
    "mc-sgd": {
        "lr": [0.01, 0.03, 0.1],
        "decay": [0.8, 0.9],
        "mc_lr": [None, 0.05],
        "mc_epochs": [1, 5],
    },
    "imm-mean": {"l2_transfer": [0.0, 0.01, 0.1], "lr": [0.01, 0.03]},
    "imm-mode": {"l2_transfer": [0.0, 0.01, 0.1], "lr": [0.01, 0.03]},
    "icarl": {"lr": [0.01, 0.03, 0.1]},
    "packnet": {"prune": [0.5, 0.75, 0.9], "lr": [0.01, 0.03]},
    "pnn": {"lr": [0.01, 0.03, 0.1]},
    "dgr": {"lr": [0.01, 0.03], "gen_epochs": [2, 5]},
    "vcl": {"lr": [0.001, 0.003, 0.01], "init_logvar": [-10.0, -6.0]},
    "mbpa": {"adapt_steps": [0, 5, 10], "adapt_lr": [0.01, 0.1]},
    "gdumb": {"lr": [0.01, 0.03, 0.1]},
    # Not 16,384: G alone is 2 GiB and each solve's eigendecomposition about 64 times the
    # 4,096-feature one's (README, toolkit section); the ridge strength is chosen by GCV.
    "lifelong": {"n_features": [2048, 4096, 8192]},
}


def grid_points(name: str, fixed: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every combination of ``name``'s grid, in order; values set in ``fixed`` are not searched.

    >>> grid_points("er")
    [{'lr': 0.01}, {'lr': 0.03}, {'lr': 0.1}]
    >>> grid_points("mbpa", {"adapt_lr": 0.1})
    [{'adapt_steps': 0}, {'adapt_steps': 5}, {'adapt_steps': 10}]
    """
    if name not in GRIDS:
        raise InvalidParameterError(f"no tuning grid for strategy {name!r}")
    grid = {key: values for key, values in GRIDS[name].items() if key not in (fixed or {})}
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in product(*grid.values())]


def check_tuning(tasks: int, fraction: float) -> None:
    """Refuse a validation stream of no task, or a held-out share outside (0, 1).

    >>> check_tuning(3, 1.5)
    Traceback (most recent call last):
    ...
    perennial.exceptions.InvalidParameterError: the held-out fraction must lie strictly between 0 and 1, got 1.5
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise InvalidParameterError(f"the held-out fraction must be a number, got {fraction!r}")
    if not 0.0 < fraction < 1.0:
        raise InvalidParameterError(
            f"the held-out fraction must lie strictly between 0 and 1, got {fraction!r}"
        )
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1:
        raise InvalidParameterError(
            f"the validation stream needs at least 1 task, got {tasks!r} tasks"
        )


def validation_stream(scenario: Scenario, tasks: int, fraction: float, seed: int) -> Scenario:
    """The first ``tasks`` experiences, each scored on a held-out part of its *training* data.

    Each experience's training examples are split per label: ``round(fraction * count)`` of each
    label (at least 1 when the label has 2 examples or more) become the validation set; the rest
    are trained on. The test data is never read.
    """
    check_tuning(tasks, fraction)
    rng = np.random.default_rng(seed)
    experiences = []
    for experience in scenario.experiences[: min(tasks, len(scenario))]:
        held = np.zeros(experience.n_train, dtype=bool)
        for label in np.unique(experience.train_y):
            rows = np.flatnonzero(experience.train_y == label)
            count = round(fraction * len(rows))
            count = min(max(count, 1), len(rows) - 1) if len(rows) >= 2 else 0
            held[rng.permutation(rows)[:count]] = True
        experiences.append(
            Experience(
                index=experience.index,
                train_x=experience.train_x[~held],
                train_y=experience.train_y[~held],
                test_x=experience.train_x[held],
                test_y=experience.train_y[held],
                classes=experience.classes,
                name=experience.name,
            )
        )
    return Scenario(
        name=f"{scenario.name} (validation)",
        experiences=tuple(experiences),
        n_classes=scenario.n_classes,
        input_shape=scenario.input_shape,
        task_labels=scenario.task_labels,
        class_names=scenario.class_names,
        metadata={**scenario.metadata, "validation_of": scenario.name},
    )


@dataclass
class TuningResult:
    """The search for one strategy: every point's score, and the chosen point."""

    strategy: str
    chosen: dict[str, Any]
    scores: list[dict[str, Any]] = field(default_factory=list)  # {"params", "score", "error"}
    tasks: int = 0
    fraction: float = 0.0
    seconds: float = 0.0

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> TuningResult:
        """Rebuild a search from :meth:`to_json` output (``null`` scores become NaN)."""
        scores = [
            {
                "params": dict(entry["params"]),
                "score": float("nan") if entry["score"] is None else float(entry["score"]),
                "error": entry.get("error"),
            }
            for entry in record["scores"]
        ]
        return cls(
            strategy=str(record["strategy"]),
            chosen=dict(record["chosen"]),
            scores=scores,
            tasks=int(record["tasks"]),
            fraction=float(record["fraction"]),
            seconds=float(record.get("seconds") or 0.0),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "chosen": self.chosen,
            "grid": GRIDS.get(self.strategy, {}),
            "scores": self.scores,
            "tasks": self.tasks,
            "fraction": self.fraction,
            "seconds": self.seconds,
        }


def tune(
    scenario: Scenario,
    name: str,
    params: dict[str, Any] | None = None,
    *,
    tasks: int = 3,
    fraction: float = 0.1,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    run: Callable[..., Any] | None = None,
) -> TuningResult:
    """Choose ``name``'s hyperparameters on a validation stream of ``scenario`` (see module doc).

    ``params`` are the values the user fixed (they are not searched, and every point uses them).
    ``run(stream, name, seed, params)`` trains and scores one point (default
    :func:`perennial.bench.run_one`); a point whose training diverges scores nothing.
    """
    from perennial.bench import run_one

    stream = validation_stream(scenario, tasks, fraction, seed)
    runner = run if run is not None else run_one
    fixed = dict(params or {})
    result = TuningResult(name, {}, tasks=len(stream), fraction=fraction)
    started = time.perf_counter()
    best: tuple[float, int] | None = None
    for index, point in enumerate(grid_points(name, fixed)):
        try:
            outcome = runner(stream, name, seed, {**fixed, **point})
            score = float(np.mean(outcome.matrix[-1]))
            error = outcome.error
        except TrainingDivergedError as failure:
            score, error = float("nan"), str(failure)
        result.scores.append({"params": point, "score": score, "error": error})
        if progress is not None:
            shown = "diverged" if error else f"{100 * score:.2f}%"
            progress(f"tune {name} {point}: validation accuracy {shown}")
        if error is None and np.isfinite(score) and (best is None or score > best[0]):
            best = (score, index)
    if best is None:
        raise TrainingDivergedError(f"every point of {name}'s tuning grid diverged")
    result.chosen = dict(result.scores[best[1]]["params"])
    result.seconds = time.perf_counter() - started
    return result


def describe(results: Sequence[TuningResult]) -> str:
    """A Markdown section: the chosen values and every point's validation accuracy."""
    lines = [
        "## Hyperparameters chosen by --tune",
        "",
        "Each strategy's grid was scored on a validation stream carved from the training data of "
        "the first tasks (never the test data): the average accuracy at the end of that stream.",
        "",
    ]
    for result in results:
        chosen = ", ".join(f"{k}={v}" for k, v in result.chosen.items()) or "(nothing to search)"
        lines.append(
            f"- **{result.strategy}**: {chosen} ({len(result.scores)} points, first "
            f"{result.tasks} tasks, {result.fraction:.0%} of their training data held out, "
            f"{result.seconds:.0f} s)"
        )
        for entry in result.scores:
            point = ", ".join(f"{k}={v}" for k, v in entry["params"].items())
            score = "diverged" if entry["error"] else f"{100 * entry['score']:.2f}%"
            lines.append(f"  - {point}: {score}")
    return "\n".join(lines) + "\n"


def _score_point(
    scenario_name: str,
    options: dict[str, Any],
    name: str,
    point: dict[str, Any],
    fixed: dict[str, Any],
    tasks: int,
    fraction: float,
) -> tuple[float, str | None]:
    """One grid point on the validation stream of the seed-0 scenario (a cluster task)."""
    from perennial.bench import run_one
    from perennial.scenarios import make_scenario

    stream = validation_stream(make_scenario(scenario_name, seed=0, **options), tasks, fraction, 0)
    try:
        outcome = run_one(stream, name, 0, {**fixed, **point})
    except TrainingDivergedError as failure:
        return float("nan"), str(failure)
    return float(np.mean(outcome.matrix[-1])), outcome.error


def tune_strategies(
    scenario_name: str,
    names: Sequence[str],
    *,
    scenario_options: dict[str, Any] | None = None,
    strategy_params: dict[str, Any] | None = None,
    tasks: int = 3,
    fraction: float = 0.1,
    progress: Output = None,
    client: Any = None,
    done: dict[str, TuningResult] | None = None,
    on_result: Callable[[TuningResult], None] | None = None,
) -> dict[str, TuningResult]:
    """:func:`tune` every strategy of ``names`` on the seed-0 scenario; on a Dask ``client``,
    every grid point of every strategy is one task.

    The names, ``tasks``, ``fraction`` and every strategy built with ``strategy_params`` are
    checked before the scenario's data is loaded. ``progress`` (a text stream, drawn in place on
    a terminal, or a callable taking one line) gets the scenario's encoding, then the grid
    points scored out of all of them, their rate and the time left, each with its score (see
    :class:`perennial.progress.ProgressBar`).

    ``done`` holds searches finished earlier (:meth:`TuningResult.from_json`), which are kept
    when they searched the same grid with the same ``tasks`` and ``fraction`` (anything else is
    an error naming the difference); ``on_result`` is called with each new search as soon as
    its last point is scored, so that a caller can save it.
    """
    from perennial.bench import check_strategies, check_supported, params_for
    from perennial.progress import ProgressBar
    from perennial.scenarios import make_scenario

    check_tuning(tasks, fraction)
    shared = check_strategies(names, strategy_params)  # a bad name or value fails before loading
    fixed = {name: params_for(name, shared[name]) for name in shared}
    options = dict(scenario_options or {})
    scenario = make_scenario(scenario_name, seed=0, progress=progress, **options)
    kept = _check_done_searches(done or {}, fixed, min(tasks, len(scenario)), fraction)
    check_supported(list(fixed), scenario)  # as the measured runs will, before the first point
    results: dict[str, TuningResult] = dict(kept)
    todo = [name for name in fixed if name not in kept]
    jobs = [(name, point) for name in todo for point in grid_points(name, fixed[name])]
    with ProgressBar(len(jobs), "tune", unit="grid points", output=progress) as bar:
        if kept:
            bar.update(0, note=f"searches done earlier are kept: {', '.join(kept)}")

        def scored(line: str) -> None:
            bar.update(1, note=line)

        if client is None:
            for name in todo:
                results[name] = tune(
                    scenario, name, fixed[name], tasks=tasks, fraction=fraction, progress=scored
                )
                if on_result is not None:
                    on_result(results[name])
            return {name: results[name] for name in fixed}
        started = time.perf_counter()
        futures = [
            client.submit(
                _score_point,
                scenario_name,
                options,
                name,
                point,
                fixed[name],
                tasks,
                fraction,
                pure=False,
            )
            for name, point in jobs
        ]
        pending = {
            name: TuningResult(name, {}, tasks=min(tasks, len(scenario)), fraction=fraction)
            for name in todo
        }
        remaining = {name: len(grid_points(name, fixed[name])) for name in todo}
        for (name, point), future in zip(jobs, futures, strict=True):
            score, error = future.result()
            pending[name].scores.append({"params": point, "score": score, "error": error})
            shown = "diverged" if error else f"{100 * score:.2f}%"
            scored(f"tune {name} {point}: validation accuracy {shown} (on the cluster)")
            remaining[name] -= 1
            if remaining[name] == 0:
                result = _choose(pending[name])
                result.seconds = time.perf_counter() - started
                results[name] = result
                if on_result is not None:
                    on_result(result)
    return {name: results[name] for name in fixed}


def _choose(result: TuningResult) -> TuningResult:
    """Set ``result.chosen`` to its best point (ties to the earlier one); refuse if none ran."""
    valid = [
        (entry["score"], -i)
        for i, entry in enumerate(result.scores)
        if entry["error"] is None and np.isfinite(entry["score"])
    ]
    if not valid:
        raise TrainingDivergedError(f"every point of {result.strategy}'s tuning grid diverged")
    result.chosen = dict(result.scores[-max(valid)[1]]["params"])
    return result


def _check_done_searches(
    done: dict[str, TuningResult], fixed: dict[str, dict[str, Any]], tasks: int, fraction: float
) -> dict[str, TuningResult]:
    """The earlier searches of ``done`` that belong to this one; any other is an error."""
    from perennial.bench import _jsonable

    kept: dict[str, TuningResult] = {}
    for name, result in done.items():
        where = f"the earlier search of {name}"
        if name not in fixed:
            raise InvalidParameterError(
                f"{where} is not of a strategy named now ({', '.join(fixed)}): name it too, or "
                "keep its results apart"
            )
        if result.fraction != fraction or result.tasks != tasks:
            raise InvalidParameterError(
                f"{where} held out {result.fraction:g} of {result.tasks} task(s), and now it "
                f"would hold out {fraction:g} of {tasks}: the same --tune-tasks and "
                "--tune-fraction are needed to go on"
            )
        searched = [_jsonable(entry["params"]) for entry in result.scores]
        if searched != _jsonable(grid_points(name, fixed[name])):
            raise InvalidParameterError(
                f"{where} scored other grid points than its grid gives now (a value fixed on "
                "the command line is not searched): the same options are needed to go on"
            )
        kept[name] = result
    return kept


def add_to_report(directory: str | Path, results: Sequence[TuningResult]) -> None:
    """Append :func:`describe`'s section to the ``report.md`` and ``report.html`` of ``directory``."""
    folder = Path(directory)
    section = describe(results)
    markdown = folder / "report.md"
    if markdown.exists():
        markdown.write_text(
            markdown.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + section, encoding="utf-8"
        )
    page = folder / "report.html"
    if page.exists():
        items = []
        for result in results:
            points = "".join(
                "<li>"
                + html.escape(", ".join(f"{k}={v}" for k, v in entry["params"].items()))
                + ": "
                + ("diverged" if entry["error"] else f"{100 * entry['score']:.2f}%")
                + "</li>"
                for entry in result.scores
            )
            chosen = ", ".join(f"{k}={v}" for k, v in result.chosen.items())
            items.append(
                f"<li><b>{html.escape(result.strategy)}</b>: {html.escape(chosen)}"
                f"<ul>{points}</ul></li>"
            )
        block = (
            "<h2>Hyperparameters chosen by --tune</h2><p>Each strategy's grid was scored on a "
            "validation stream carved from the training data of the first tasks (never the test "
            f"data).</p><ul>{''.join(items)}</ul>"
        )
        text = page.read_text(encoding="utf-8")
        page.write_text(text.replace("</body>", block + "</body>", 1), encoding="utf-8")
