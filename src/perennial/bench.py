"""Run continual-learning strategies side by side on a scenario, over seeds.

One *run* is one strategy with one seed on the scenario built with that seed: it trains on the
experiences in order and, after each, measures the accuracy on every experience's test set, which
fills one row of the accuracy matrix. Runs are independent of each other, so they can be spread
over processes or a cluster; :func:`run_benchmark` runs them in turn and :func:`aggregate` turns
them into the mean and 90% confidence interval (percentile bootstrap over seeds) of each metric
per strategy.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from perennial.exceptions import InvalidParameterError, TrainingDivergedError
from perennial.metrics import (
    ResourceMeter,
    bootstrap_ci90,
    continual_world_forgetting,
    forward_transfer_auc,
    summarize,
)
from perennial.progress import ProgressBar

__all__ = [
    "METRICS",
    "RunResult",
    "aggregate",
    "check_done",
    "check_strategies",
    "check_strategy_names",
    "expected_params",
    "failures",
    "run_benchmark",
    "run_one",
]

#: How :func:`aggregate` computes its intervals, as the report and the JSON name it.
INTERVAL_METHOD = "90% percentile bootstrap of the mean over seeds (10,000 resamples)"

#: Metrics reported per strategy, in table order. Accuracies are fractions.
METRICS = (
    "average_accuracy",
    "forgetting",
    "bwt",
    "fwt",
    "cw_forgetting",
    "ft_auc",
    "train_seconds",
    "peak_memory_mb",
    "stored_mb",
)

Progress = Callable[[str], None]


@dataclass
class RunResult:
    """What one strategy did with one seed.

    ``matrix[i, j]`` is the accuracy on experience ``j`` after training experience ``i``;
    ``baseline[j]`` the accuracy of the untrained model on experience ``j`` (for forward
    transfer). A strategy that trains on the whole stream at once (joint training) has only its
    last row measured; the other rows are NaN, and so are the metrics that need them.
    ``params`` are the strategy's parameters as it ran (defaults included, seed left out).
    """

    strategy: str
    seed: int
    matrix: np.ndarray
    baseline: np.ndarray
    train_seconds: float
    peak_memory_bytes: int
    stored_bytes: int
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> RunResult:
        """Rebuild a run from :meth:`to_json` output (``null`` becomes NaN)."""

        def array(value: Any) -> np.ndarray:
            return np.array(value, dtype=float)  # None -> nan

        metrics = {k: math.nan if v is None else float(v) for k, v in record["metrics"].items()}
        return cls(
            strategy=str(record["strategy"]),
            seed=int(record["seed"]),
            matrix=array(record["accuracy_matrix"]),
            baseline=array(record["baseline"]),
            train_seconds=metrics.get("train_seconds", math.nan),
            peak_memory_bytes=int(metrics.get("peak_memory_mb", 0.0) * 2**20)
            if math.isfinite(metrics.get("peak_memory_mb", math.nan))
            else 0,
            stored_bytes=int(metrics.get("stored_mb", 0.0) * 2**20)
            if math.isfinite(metrics.get("stored_mb", math.nan))
            else 0,
            metrics=metrics,
            error=record.get("error"),
            params=dict(record.get("params") or {}),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "seed": self.seed,
            "error": self.error,
            "params": _jsonable(self.params),
            "accuracy_matrix": _nan_to_none(self.matrix.tolist()),
            "baseline": _nan_to_none(self.baseline.tolist()),
            "metrics": _nan_to_none(self.metrics),
        }


def check_strategy_names(names: Sequence[str]) -> list[str]:
    """Validate a list of strategy names before any work starts."""
    from perennial.strategies import STRATEGY_NAMES

    if not names:
        raise InvalidParameterError("strategies must name at least one strategy")
    unknown = [name for name in names if name not in STRATEGY_NAMES]
    if unknown:
        raise InvalidParameterError(
            f"unknown strategy {unknown[0]!r}; valid strategies: {', '.join(STRATEGY_NAMES)}"
        )
    if len(set(names)) != len(names):
        raise InvalidParameterError(f"strategies must not repeat, got {', '.join(names)}")
    return list(names)


def check_supported(names: Sequence[str], scenario: Any) -> None:
    """Refuse, before any work, the strategies the scenario does not suit.

    Task-incremental methods (``task_incremental_only``: PackNet, PNN) need the task of each
    test input; class-incremental ones (``class_incremental_only``: iCaRL) need each class to
    arrive in one experience only, which a domain-incremental stream such as permuted MNIST,
    whose every task brings the same ten digits again, does not give.
    """
    from perennial.strategies import STRATEGIES

    needing = [name for name in names if STRATEGIES[name].task_incremental_only]
    if needing and not scenario.task_labels:
        one = len(needing) == 1
        raise InvalidParameterError(
            f"{', '.join(needing)} need{'s' if one else ''} the task of each test input, and "
            f"the scenario {scenario.name!r} gives none: run {'it' if one else 'them'} on a "
            f"task-incremental scenario (split-mnist-task), or drop {'it' if one else 'them'} "
            "from --strategies"
        )
    splitting = [name for name in names if STRATEGIES[name].class_incremental_only]
    again = tuple(scenario.recurring_classes)
    if splitting and again:
        one = len(splitting) == 1
        labels = ", ".join(str(label) for label in again[:5])
        labels += f", ... ({len(again)} classes)" if len(again) > 5 else ""
        raise InvalidParameterError(
            f"{', '.join(splitting)} {'is a' if one else 'are'} class-incremental "
            f"method{'' if one else 's'}: each class must arrive in one experience only, and in "
            f"the scenario {scenario.name!r} later experiences bring classes {labels} again: "
            f"run {'it' if one else 'them'} on a class-split scenario (split-mnist, "
            "split-mnist-task, split-cifar10, split-cifar100, class-incremental), or drop "
            f"{'it' if one else 'them'} from --strategies"
        )


def check_strategies(
    names: Sequence[str],
    params: dict[str, Any] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Each strategy's parameters, every strategy built once with them to check them.

    ``params`` are shared (each strategy takes the ones it accepts), ``overrides`` per strategy
    name (they win). A bad name or value (``lr=-1``) fails here, before any data is loaded.
    """
    names = check_strategy_names(names)
    from perennial.strategies import make_strategy

    own = {name: {**(params or {}), **(overrides or {}).get(name, {})} for name in names}
    for name in names:
        make_strategy(name, **{**params_for(name, own[name]), "seed": 0})
    return own


def params_for(name: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The subset of the shared ``params`` that strategy ``name`` accepts.

    One command line sets options for several strategies at once: ``memory_per_class`` matters
    to the replay methods and is ignored by the others. A parameter that no strategy accepts is an
    error.
    """
    from perennial.strategies import STRATEGIES

    params = dict(params or {})
    known = {key for cls in STRATEGIES.values() for key in cls.param_names()}
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidParameterError(
            f"no strategy has a parameter {unknown[0]!r}; known parameters: {', '.join(sorted(known))}"
        )
    accepted = STRATEGIES[name].param_names()
    return {key: value for key, value in params.items() if key in accepted}


def _accuracy(strategy: Any, experience: Any) -> float:
    predicted = strategy.predict(experience.test_x, experience)
    return float(np.mean(predicted == experience.test_y))


def run_one(
    scenario: Any,
    strategy_name: str,
    seed: int,
    params: dict[str, Any] | None = None,
    progress: Progress | None = None,
    curves: bool = False,
) -> RunResult:
    """Train one strategy on ``scenario`` and measure its accuracy matrix.

    Besides the accuracy-matrix metrics, ``cw_forgetting`` is Continual World's mean forgetting
    (Wołczyk et al. 2021: accuracy on each task when its training ended minus at the end of the
    stream, averaged over all tasks). With ``curves=True`` the accuracy on the current task is
    also sampled at 11 points while it trains, and again for a fresh copy of the strategy trained
    on that task alone; ``ft_auc`` is then Continual World's forward transfer, the normalised
    gain in area under the first curve over the second. The sampling is not counted in
    ``train_seconds``.

    Parameters
    ----------
    scenario : perennial.scenarios.Scenario
        The stream, already built for this seed.
    strategy_name : str
        A name from ``perennial.strategies.STRATEGY_NAMES``.
    seed : int
        Seed of the strategy (model initialisation, shuffling, buffers).
    params : dict, optional
        Keyword arguments for the strategy (epochs, batch size, memory, ...).
    progress : callable, optional
        Called with a one-line message after each experience.
    curves : bool
        Sample the learning curves needed for ``ft_auc`` (costs one evaluation of the current
        task at each of 11 points per experience, plus one single-task run per experience).
    """
    from perennial.strategies import make_strategy

    own_params = {**params_for(strategy_name, params), "seed": seed}
    strategy = make_strategy(strategy_name, **own_params)
    own_curves: list[list[float]] = []
    n_tasks = len(scenario)
    matrix = np.full((n_tasks, n_tasks), np.nan)
    strategy.prepare(scenario)
    baseline = np.array([_accuracy(strategy, experience) for experience in scenario])
    seconds = 0.0
    peak = 0
    started = time.perf_counter()
    if strategy.whole_stream:
        with ResourceMeter() as meter:
            strategy.fit_stream(scenario)
        seconds, peak = meter.seconds, meter.peak_rss_increase_bytes
        matrix[-1] = [_accuracy(strategy, experience) for experience in scenario]
        if progress is not None:
            progress(
                f"{strategy_name} seed {seed}: whole stream trained in {seconds:.1f}s, "
                f"average accuracy {np.mean(matrix[-1]):.4f}"
            )
    else:
        for i, experience in enumerate(scenario):
            sampler = _CurveSampler(strategy, experience) if curves else None
            with ResourceMeter() as meter:
                strategy.fit_experience(experience, scenario, progress=sampler)
            seconds += meter.seconds - (sampler.seconds if sampler is not None else 0.0)
            if sampler is not None:
                own_curves.append(sampler.points)
            peak = max(peak, meter.peak_rss_increase_bytes)
            matrix[i] = [_accuracy(strategy, other) for other in scenario]
            if progress is not None:
                progress(
                    f"{strategy_name} seed {seed}: experience {i + 1}/{n_tasks} "
                    f"({time.perf_counter() - started:.1f}s) "
                    f"average so far {np.mean(matrix[i, : i + 1]):.4f}"
                )
    metrics = summarize(matrix if not strategy.whole_stream else _last_row_only(matrix))
    if n_tasks > 1 and not strategy.whole_stream:
        from perennial.metrics import forward_transfer

        metrics["fwt"] = forward_transfer(matrix, baseline)
    metrics["cw_forgetting"] = (
        math.nan
        if strategy.whole_stream or n_tasks < 2
        else float(np.mean(continual_world_forgetting(matrix.T, np.arange(n_tasks))))
    )
    metrics["ft_auc"] = math.nan
    if own_curves:
        transfers = []
        for experience, curve in zip(scenario, own_curves, strict=True):
            fresh = make_strategy(strategy_name, **own_params)
            fresh.prepare(scenario)
            reference = _CurveSampler(fresh, experience)
            fresh.fit_experience(experience, scenario, progress=reference)
            transfers.append(_auc_transfer(curve, reference.points))
        metrics["ft_auc"] = (
            float(np.nanmean(transfers)) if np.isfinite(transfers).any() else math.nan
        )
    metrics["train_seconds"] = seconds
    metrics["peak_memory_mb"] = peak / 2**20
    stored = int(strategy.stored_bytes())
    metrics["stored_mb"] = stored / 2**20
    return RunResult(
        strategy_name,
        seed,
        matrix,
        baseline,
        seconds,
        peak,
        stored,
        metrics,
        params=_run_params(strategy),
    )


def _run_params(strategy: Any) -> dict[str, Any]:
    return {key: value for key, value in strategy.get_params().items() if key != "seed"}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


class _CurveSampler:
    """A progress callback that records the accuracy on one experience at each point."""

    def __init__(self, strategy: Any, experience: Any) -> None:
        self.strategy, self.experience = strategy, experience
        self.points: list[float] = []
        self.seconds = 0.0

    def __call__(self, fraction: float) -> None:
        started = time.perf_counter()
        self.points.append(_accuracy(self.strategy, self.experience))
        self.seconds += time.perf_counter() - started


def _auc_transfer(curve: list[float], reference: list[float]) -> float:
    if len(curve) != len(reference) or len(curve) < 2:
        raise InvalidParameterError(
            f"learning curves need the same number of points (at least 2), got "
            f"{len(curve)} and {len(reference)}"
        )
    return forward_transfer_auc(curve, reference)


def _last_row_only(matrix: np.ndarray) -> np.ndarray:
    """A matrix a summary can read when only the final row was measured."""
    n = matrix.shape[0]
    if n == 1:
        return matrix
    # Only the average accuracy is defined: give summarize a one-task view of the final row.
    return np.array([[float(np.mean(matrix[-1]))]])


def run_benchmark(
    scenario_name: str,
    strategies: Sequence[str],
    seeds: int,
    *,
    scenario_options: dict[str, Any] | None = None,
    strategy_params: dict[str, Any] | None = None,
    progress: Progress | TextIO | None = None,
    curves: bool = False,
    client: Any = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    done: Sequence[RunResult] = (),
    on_run: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Run every strategy with seeds ``0 .. seeds-1``; the scenario is rebuilt for each seed.

    ``strategy_params`` are shared (each strategy takes the ones it accepts); ``overrides``
    holds values per strategy name (the choices of :func:`perennial.tuning.tune_strategies`),
    which win over the shared ones.

    Every name and option is checked, and the scenario for seed 0 is built, before any training.
    ``progress`` (a text stream, drawn in place on a terminal, or a callable taking one line)
    gets the encoding of the scenario's inputs (texts), then the experiences trained out of
    all, their rate and the time left, with the last run's news (see
    :class:`perennial.progress.ProgressBar`). With a Dask ``client`` (see :func:`perennial.distributed.dask_client`) each (strategy, seed)
    run is one task on the cluster; the worker builds the scenario itself, so no data is
    shipped, and the results come back in the same order as a serial run gives them.

    ``done`` holds runs finished earlier (read back from a JSON file with
    :meth:`RunResult.from_json`, on the same scenario and options): their (strategy, seed) pairs
    are not run again, and they are returned in their places. Each must be a run of a named
    strategy, with a seed below ``seeds`` and the parameters the strategy would run with now
    (:func:`check_done`). ``on_run`` is called with every new run as it finishes, so that a
    caller can save the work so far (``perennial bench --json`` does, and ``--resume`` goes on
    from it).
    """
    from perennial.scenarios import make_scenario

    names = check_strategy_names(strategies)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise InvalidParameterError(f"seeds must be a positive integer, got {seeds!r}")
    own = check_strategies(names, strategy_params, overrides)  # before the first run
    kept = check_done(done, names, seeds, own)
    options = dict(scenario_options or {})
    jobs = [(name, seed) for seed in range(seeds) for name in names if (name, seed) not in kept]
    # Bad options fail here; the encoding of inputs (texts) reports on ``progress``.
    first = make_scenario(scenario_name, seed=0, progress=progress, **options)
    check_supported(names, first)
    new: dict[tuple[str, int], RunResult] = {}

    def finished(run: RunResult) -> None:
        new[run.strategy, run.seed] = run
        if on_run is not None:
            on_run(run)

    total = len(jobs) * len(first)
    with ProgressBar(total, "bench", unit="experiences", output=progress) as bar:
        if kept:
            bar.update(0, note=f"{len(kept)} run(s) done earlier are kept, {len(jobs)} to run")
        if client is not None:
            _run_on_cluster(
                client, scenario_name, jobs, options, own, bar, curves, len(first), finished
            )
            jobs = []  # all run on the cluster
        for seed in sorted({seed for _, seed in jobs}):
            if seed == 0:
                scenario = first
            else:  # encoded under the open bar: its lines are the bar's news
                news = None if progress is None else _as_news(bar)
                scenario = make_scenario(scenario_name, seed=seed, progress=news, **options)
            for name in names:
                if (name, seed) in kept:
                    continue
                counted = bar.done
                report = None if progress is None else _RunProgress(bar, len(scenario), name)
                try:
                    finished(run_one(scenario, name, seed, own[name], report, curves))
                except TrainingDivergedError as error:
                    # A diverged run is a result, not a crash: keep it, flagged, and go on.
                    bar.update(
                        counted + len(scenario) - bar.done,
                        note=f"{name} seed {seed}: FAILED: {error}",
                    )
                    finished(_failed_run(scenario, name, seed, str(error), own[name]))
    every = {**kept, **new}
    return [every[name, seed] for seed in range(seeds) for name in names]


def expected_params(name: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The parameters a run of ``name`` records (:attr:`RunResult.params`) given ``params``,
    in their JSON form: defaults filled in, the seed left out."""
    from perennial.strategies import make_strategy

    strategy = make_strategy(name, **{**params_for(name, params), "seed": 0})
    return dict(_jsonable(_run_params(strategy)))


def check_done(
    done: Sequence[RunResult], names: Sequence[str], seeds: int, params: dict[str, dict[str, Any]]
) -> dict[tuple[str, int], RunResult]:
    """The earlier runs ``done`` by (strategy, seed), refused unless each belongs to this benchmark.

    A run belongs when its strategy is among ``names``, its seed below ``seeds``, it is the only
    run of its (strategy, seed), and it ran with exactly the parameters ``params[name]`` give now
    (defaults included). Anything else would mix two setups in one table, so it is an error that
    names the run and the first parameter that differs.
    """
    kept: dict[tuple[str, int], RunResult] = {}
    wanted = {name: expected_params(name, params.get(name)) for name in names}
    for run in done:
        where = f"the earlier run of {run.strategy} with seed {run.seed}"
        if run.strategy not in wanted:
            raise InvalidParameterError(
                f"{where} is not of a strategy named now ({', '.join(names)}): name it too, or "
                "keep its results apart"
            )
        if not 0 <= run.seed < seeds:
            raise InvalidParameterError(
                f"{where} has a seed outside 0..{seeds - 1}: ask for at least {run.seed + 1} seeds"
            )
        if (run.strategy, run.seed) in kept:
            raise InvalidParameterError(f"{where} appears twice")
        recorded = dict(_jsonable(run.params))
        if recorded != wanted[run.strategy]:
            keys = sorted(set(recorded) | set(wanted[run.strategy]))
            key = next(k for k in keys if recorded.get(k) != wanted[run.strategy].get(k))
            raise InvalidParameterError(
                f"{where} ran with {key}={recorded.get(key)!r}, and now it would run with "
                f"{key}={wanted[run.strategy].get(key)!r}: the same options are needed to go on"
            )
        kept[run.strategy, run.seed] = run
    return kept


def _as_news(bar: ProgressBar) -> Callable[[str], None]:
    """A progress output whose lines are shown as ``bar``'s news, without counting work."""

    def show(line: str) -> None:
        bar.update(0, note=line)

    return show


class _RunProgress:
    """``run_one``'s messages as steps of the benchmark's progress bar.

    ``run_one`` reports after each experience, or once for a strategy trained on the whole
    stream: that message counts for every experience of the stream.
    """

    def __init__(self, bar: ProgressBar, n_tasks: int, strategy: str) -> None:
        from perennial.strategies import STRATEGIES

        self.bar = bar
        self.step = n_tasks if STRATEGIES[strategy].whole_stream else 1

    def __call__(self, message: str) -> None:
        self.bar.update(self.step, note=message)


def _run_task(
    scenario_name: str,
    options: dict[str, Any],
    name: str,
    seed: int,
    params: dict[str, Any] | None,
    curves: bool,
) -> RunResult:
    """One (strategy, seed) run, self-contained so that a cluster worker can run it."""
    from perennial.scenarios import make_scenario

    scenario = make_scenario(scenario_name, seed=seed, **options)
    try:
        return run_one(scenario, name, seed, params, None, curves)
    except TrainingDivergedError as error:
        return _failed_run(scenario, name, seed, str(error), params)


def _run_on_cluster(
    client: Any,
    scenario_name: str,
    jobs: list[tuple[str, int]],
    options: dict[str, Any],
    params: dict[str, dict[str, Any]],
    bar: ProgressBar,
    curves: bool,
    n_tasks: int,
    finished: Callable[[RunResult], None],
) -> None:
    from distributed import as_completed

    futures = [
        client.submit(
            _run_task, scenario_name, options, name, seed, params[name], curves, pure=False
        )
        for name, seed in jobs
    ]
    in_order = as_completed(futures, loop=client.loop)  # type: ignore[no-untyped-call]
    for count, future in enumerate(in_order, start=1):
        run = future.result()
        status = (
            "FAILED: " + run.error
            if run.error
            else (f"average accuracy {run.metrics['average_accuracy']:.4f}")
        )
        bar.update(
            n_tasks,
            note=f"{run.strategy} seed {run.seed}: done on the cluster ({count}/{len(jobs)}) {status}",
        )
        finished(run)


def _failed_run(
    scenario: Any, name: str, seed: int, error: str, params: dict[str, Any] | None = None
) -> RunResult:
    from perennial.strategies import make_strategy

    n = len(scenario)
    metrics = dict.fromkeys(METRICS, math.nan)
    strategy = make_strategy(name, **{**params_for(name, params), "seed": seed})
    return RunResult(
        name,
        seed,
        np.full((n, n), np.nan),
        np.full(n, np.nan),
        math.nan,
        0,
        0,
        metrics,
        error,
        params=_run_params(strategy),
    )


def failures(runs: Sequence[RunResult]) -> dict[str, list[dict[str, Any]]]:
    """Failed runs (training diverged) by strategy: ``{name: [{"seed": s, "error": text}]}``."""
    failed: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if run.error is not None:
            failed.setdefault(run.strategy, []).append({"seed": run.seed, "error": run.error})
    return failed


def aggregate(runs: Sequence[RunResult]) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean and 90% confidence interval over seeds of each metric, per strategy.

    The interval is a percentile bootstrap (:func:`perennial.metrics.bootstrap_ci90`): it stays
    within the values' range, so seconds and MiB never get a negative lower bound and accuracies
    and forgetting never pass 100%.

    Undefined values (forgetting of a joint model, a single task's transfer) are ``None``. Failed
    runs (see :func:`failures`) are left out of the means, and ``runs`` / ``failed_runs`` give
    the counts, so a strategy that diverged on some seeds is never shown as if it had not.
    """
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name in dict.fromkeys(run.strategy for run in runs):
        mine = [run for run in runs if run.strategy == name]
        results[name] = {}
        for metric in METRICS:
            values = np.array([run.metrics.get(metric, math.nan) for run in mine], dtype=float)
            mean, (low, high) = bootstrap_ci90(values)
            results[name][metric] = _nan_to_none({"mean": mean, "ci90": [low, high]})
        failed = sum(run.error is not None for run in mine)
        results[name]["runs"] = {"mean": float(len(mine) - failed), "ci90": None}
        results[name]["failed_runs"] = {"mean": float(failed), "ci90": None}
    return results


def mean_matrix(runs: Sequence[RunResult], strategy: str) -> np.ndarray:
    """The accuracy matrix of one strategy averaged over its seeds."""
    stack = np.stack([run.matrix for run in runs if run.strategy == strategy])
    with warnings.catch_warnings():  # cells never measured (joint training) stay NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(np.nanmean(stack, axis=0))


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    return value
