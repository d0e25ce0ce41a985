"""The ``perennial`` command: one function per subcommand, no learning logic of its own."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perennial.exceptions import InvalidParameterError, PerennialError, PersistenceError

__all__ = ["main"]


#: Head options of the command line, by the constructor parameter each one sets.
_HEAD_OPTIONS = {"n_features": "--n-features", "n_members": "--members", "ridge": "--ridge"}

#: Encoder options of the command line, by the encoder kind that takes them.
_ENCODER_OPTIONS = {
    "text": ("pooling", "backend"),
    "image": ("image_size", "resize", "backend"),
    "identity": (),
}


def _head_takes(name: str) -> frozenset[str]:
    """The constructor parameters of the head registered as ``name``."""
    from perennial.heads import HEADS

    return frozenset(inspect.signature(HEADS[name]).parameters)


def _head_params(args: argparse.Namespace) -> dict[str, Any]:
    """Constructor parameters of the head named by ``--head``, from the head options.

    An option given for a head that does not take it is an error; an option left out takes the
    command's default (``args.head_defaults``) where the head takes it. ``--seed`` seeds the heads
    that take a seed. Without ``--head`` (``perennial serve``) the options are checked against
    the ridge head, a new model's default.
    """
    from perennial.heads import HEADS

    name = args.head or "ridge"
    takes = _head_takes(name)
    params: dict[str, Any] = {}
    for param, option in _HEAD_OPTIONS.items():
        value = getattr(args, param)
        if value is None:
            value = args.head_defaults.get(param)
            if value is not None and param in takes:
                params[param] = value
        elif param in takes:
            params[param] = value
        else:
            takers = [repr(head) for head in HEADS if param in _head_takes(head)]
            raise InvalidParameterError(
                f"{option} {value!r} does not apply to the {name!r} head; it applies to "
                f"{' and '.join(takers) or 'no head'}"
            )
    seed = getattr(args, "seed", None)
    if seed is not None and "seed" in takes:
        params["seed"] = seed
    return params


def _encoder_kind(name: str) -> str:
    """The encoder kind an ``--encoder`` name means (a text model's name: ``text``)."""
    from perennial.encoders import resolve_encoder

    return resolve_encoder(name)[0]


def _encoder_for(args: argparse.Namespace, kind: str) -> Any:
    from perennial.encoders import make_encoder

    name = args.encoder
    if name == "auto":
        name = "image" if kind == "image" else "text"
    params = {option: getattr(args, option) for option in _ENCODER_OPTIONS[_encoder_kind(name)]}
    return make_encoder(name, **params)


def cmd_incremental(args: argparse.Namespace) -> int:
    from perennial.datasets import load_dataset
    from perennial.encoders import FeatureCache
    from perennial.heads import make_head
    from perennial.protocols.incremental import format_summary, run_incremental

    models = _selection_models(args)
    args.pooling = args.pooling or "mean-layers"
    args.head = args.head or "ridge"
    head = make_head(args.head, **_head_params(args))  # checked before any data is read
    dataset = load_dataset(
        args.data, test=args.test, test_fraction=args.test_fraction, seed=args.seed
    )
    kind = str(dataset.metadata.get("kind", "text"))
    encoder = _encoder_for(args, kind)
    # With --select, one pass of each model keeps every layer's token means for all poolings.
    cache = None if args.no_cache else FeatureCache(args.cache_dir, per_layer=args.select)
    selection = None
    if models:
        if kind != "text":
            raise InvalidParameterError(
                f"--select chooses among text encoders, and {args.data!r} is an {kind} data set"
            )
        encoder, head, selection = _select_text_configuration(args, dataset, models, cache)
    result = run_incremental(
        dataset,
        encoder,
        head,
        step=args.step,
        seed=args.seed,
        cache=cache,
        baselines=not args.no_baselines,
        progress=sys.stderr if args.json else sys.stdout,
    )
    if args.json:
        document = result.to_dict()
        if selection is not None:
            document["selection"] = selection.to_dict()
        print(json.dumps(document, indent=2))
    else:
        print(format_summary(result))
    return 0


def _selection_models(args: argparse.Namespace) -> list[str]:
    """The text models ``--select`` chooses among (none without ``--select``), checked early."""
    from perennial.encoders.text_models import text_model

    if args.select_models is not None and not args.select:
        raise InvalidParameterError(
            "--select-models names the models --select chooses among: add --select"
        )
    if not args.select:
        return []
    for option in ("pooling", "head"):
        if getattr(args, option) is not None:
            raise InvalidParameterError(
                f"--select chooses the {option} itself: drop --{option} {getattr(args, option)}"
            )
    if args.select_models is not None:
        names = [name.strip() for name in args.select_models.split(",") if name.strip()]
        if not names:
            raise InvalidParameterError("--select-models needs at least one model name")
    elif args.encoder in ("auto", "text"):
        names = ["all-MiniLM-L6-v2"]
    else:
        names = [args.encoder]
    models = []
    for name in names:
        try:
            models.append(text_model(name).name)
        except InvalidParameterError as error:
            raise InvalidParameterError(f"--select-models: {error}") from None
    if len(set(models)) != len(models):
        raise InvalidParameterError(f"--select-models names a model twice: {args.select_models}")
    return models


def _select_text_configuration(
    args: argparse.Namespace, dataset: Any, models: list[str], cache: Any
) -> tuple[Any, Any, Any]:
    """``--select``: the text model, pooling and head with the best held-out accuracy on 10%
    of the *training* split; the test split is not read."""
    from perennial.selection import select_by_holdout, text_candidates

    candidates = text_candidates(models, backend=args.backend)
    out = sys.stderr if args.json else sys.stdout
    print(
        f"choosing among {len(candidates)} configurations on 10% of the training split "
        f"({', '.join(models)})",
        file=out,
        flush=True,
    )
    choice = select_by_holdout(
        dataset.train.inputs,
        dataset.train.labels.tolist(),
        candidates,
        seed=args.seed,
        cache=cache,
        progress=out,
    )
    print(f"chose {choice.best_name}", file=out, flush=True)
    best = candidates[choice.best]
    return best.encoder, best.head, choice


def cmd_fit(args: argparse.Namespace) -> int:
    import time

    from perennial.datasets import load_dataset
    from perennial.distributed import dask_client, fit_distributed
    from perennial.heads import make_head

    # A CSV file is learned whole (given as its own test file, so nothing is held out); a named
    # data set contributes its training split.
    is_csv = str(args.data).strip().lower().endswith(".csv")
    head = make_head(args.head, **_head_params(args))
    # The model directory is checked before the cluster starts or any data is read: a fit of
    # an hour must not end in "cannot save there".
    if _model_kind(Path(args.model)) == "service":
        raise PersistenceError(
            f"--model {args.model} is a service's directory; fit into a new directory and serve "
            "that, or send the examples to the service"
        )
    if args.scheduler is not None:
        from perennial.distributed import check_address

        check_address(args.scheduler, "--scheduler")  # its form; the cluster is asked later
    dataset = load_dataset(args.data, test=args.data if is_csv else None)
    train = dataset.train
    encoder = _encoder_for(args, str(dataset.metadata.get("kind", "text")))

    started = time.perf_counter()
    with dask_client(args.scheduler, workers=args.workers, timeout=args.timeout) as client:
        n_workers = len(client.nthreads())  # type: ignore[no-untyped-call]
        ready = time.perf_counter()
        model = fit_distributed(
            train.inputs,
            train.labels,
            encoder=encoder,
            head=head,
            client=client,
            partitions=args.partitions,
            progress=sys.stderr,  # drawn in place on a terminal
            timeout=args.timeout,
        )
        seconds = time.perf_counter() - ready
    # Saved only now, when every partition has been learned and merged; the save is atomic.
    path = model.save(args.model)
    n = len(train)
    print(
        f"learned {n} examples of {len(model.classes_)} classes in {seconds:.1f} s "
        f"({n / seconds:.0f} examples/s) on {n_workers} Dask workers "
        f"(cluster ready in {ready - started:.1f} s)"
    )
    print(f"model saved to {path}")
    return 0


def cmd_openset(args: argparse.Namespace) -> int:
    from perennial.datasets import load_dataset
    from perennial.encoders import FeatureCache
    from perennial.heads import make_head
    from perennial.protocols.openset import run_open_set

    head = make_head(args.head, **_head_params(args))
    if not 0 < args.unknown_rate < 1:
        raise InvalidParameterError(
            f"--unknown-rate must be strictly between 0 and 1, got {args.unknown_rate!r}"
        )
    dataset = load_dataset(args.data)
    encoder = _encoder_for(args, str(dataset.metadata.get("kind", "text")))
    result = run_open_set(
        dataset,
        encoder,
        head,
        unknown_rate=args.unknown_rate,
        step=args.step,
        seed=args.seed,
        oos_split=args.oos_split,
        novelty_score=args.novelty_score,
        cache=None if args.no_cache else FeatureCache(args.cache_dir),
        progress=sys.stderr if args.json else sys.stdout,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(
            f"{result.dataset}: {result.n_classes} classes, {result.n_in_scope} in-scope and "
            f"{result.n_out_of_scope} out-of-scope test queries; threshold for "
            f"{100 * result.unknown_rate:g}% in-scope rejection, from the training stream"
        )
        print(
            f"  in-scope accuracy   {100 * result.in_scope_accuracy:6.2f}%  (closed set {100 * result.closed_set_accuracy:.2f}%)"
        )
        print(f"  out-of-scope recall {100 * result.oos_recall:6.2f}%")
        print(f"  in-scope rejected   {100 * result.in_scope_rejection:6.2f}%")
        print(f"  AUROC               {100 * result.auroc:6.2f}%")
        print(f"  FPR at 95% TPR      {100 * result.fpr_at_95tpr:6.2f}%")
    return 0


#: Scenario options of ``perennial bench``, by the scenario parameter (and JSON key) each sets.
_SCENARIO_OPTIONS = {
    "tasks": "n_tasks",
    "classes_per_task": "classes_per_task",
    "examples_per_task": "examples_per_task",
    "data": "data",
}


def cmd_bench(args: argparse.Namespace) -> int:
    from perennial.bench import aggregate, check_strategies, failures, run_benchmark
    from perennial.report import format_table, write_report

    strategies = args.strategies  # checked against the registry by the parser
    scenario_options: dict[str, Any] = {}
    for option, key in _SCENARIO_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            scenario_options[key] = value
    strategy_params: dict[str, Any] = {}
    for option in (
        "epochs",
        "batch_size",
        "memory_per_class",
        "lr",
        "threads",
        "n_features",
        "ridge",
    ):
        value = getattr(args, option)
        if value is not None:
            strategy_params[option] = value
    if args.hidden is not None:
        strategy_params["hidden"] = _int_tuple(args.hidden, "--hidden")
    # Every option is checked before a cluster starts or any data is loaded: the strategies are
    # built with their options (--lr -1 fails here, with --tune too), the address is read, and
    # the destinations of --json and --report are checked, which are written only at the end.
    check_strategies(strategies, strategy_params)
    if args.scheduler is not None:
        from perennial.distributed import check_address

        check_address(args.scheduler, "--scheduler")
    if args.resume and not args.json:
        raise InvalidParameterError(
            "--resume goes on from the file of --json: give --json PATH (it is written after "
            "every run, so an interrupted benchmark can resume)"
        )
    if args.json:
        _check_file_destination(args.json, "--json")
    if args.report:
        _check_folder_destination(args.report, "--report")
    config = {"scenario": args.scenario, "seeds": args.seeds, **scenario_options, **strategy_params}
    if args.tune:
        config["tune"] = f"first {args.tune_tasks} tasks, {args.tune_fraction:.0%} held out"
    earlier_runs, earlier_searches = _earlier_bench(args, scenario_options)

    def note(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    # The searches read back are saved with every new one, so that a resumed bench that stops
    # after a search (interrupted, or a run refused) still holds all of them.
    tuned: dict[str, Any] = dict(earlier_searches)
    new_runs: list[Any] = []

    def save(runs: list[Any], *, complete: bool) -> None:
        # Written after every search and every run (atomically), and once more at the end.
        if not args.json:
            return
        document: dict[str, Any] = {
            "config": {key: list(v) if isinstance(v, tuple) else v for key, v in config.items()},
            "complete": complete,
            "results": aggregate(runs),
            "failures": failures(runs),
            "runs": [run.to_json() for run in runs],
        }
        if tuned:
            document["tuning"] = {name: result.to_json() for name, result in tuned.items()}
        _write_text(args.json, json.dumps(document, indent=2))

    def searched(result: Any) -> None:
        tuned[result.strategy] = result
        save(earlier_runs, complete=False)

    def ran(run: Any) -> None:
        new_runs.append(run)
        save([*earlier_runs, *new_runs], complete=False)

    def run(client: Any = None) -> list[Any]:
        if args.tune:
            from perennial.tuning import tune_strategies

            tuned.update(
                tune_strategies(
                    args.scenario,
                    strategies,
                    scenario_options=scenario_options,
                    strategy_params=strategy_params,
                    tasks=args.tune_tasks,
                    fraction=args.tune_fraction,
                    progress=sys.stderr,  # drawn in place on a terminal
                    client=client,
                    done=earlier_searches,
                    on_result=searched,
                )
            )
            for name, result in tuned.items():
                chosen = ", ".join(f"{k}={v}" for k, v in result.chosen.items())
                note(f"tuned {name}: {chosen}")
        return run_benchmark(
            args.scenario,
            strategies,
            args.seeds,
            scenario_options=scenario_options,
            strategy_params=strategy_params,
            progress=sys.stderr,  # drawn in place on a terminal
            curves=args.curves,
            client=client,
            overrides={name: result.chosen for name, result in tuned.items()},
            done=earlier_runs,
            on_run=ran,
        )

    if args.scheduler is not None or args.workers is not None:
        from perennial.distributed import dask_client

        with dask_client(args.scheduler, workers=args.workers) as client:
            runs = run(client)
    else:
        runs = run()
    results = aggregate(runs)
    print(
        f"{args.scenario}: mean [90% bootstrap interval] over {args.seeds} seed(s); "
        "accuracies in percent"
    )
    print(format_table(results))
    for name, failed in failures(runs).items():
        seeds = ", ".join(str(entry["seed"]) for entry in failed)
        print(f"{name}: training diverged on seed(s) {seeds}; means are over the other seeds")
    if args.json:
        save(runs, complete=True)
        print(f"JSON written to {args.json}")
    if args.report:
        path = write_report(
            runs, results, args.report, title=f"perennial bench: {args.scenario}", config=config
        )
        if tuned:
            from perennial.tuning import add_to_report

            add_to_report(args.report, list(tuned.values()))
        print(f"report written to {path}")
    return 0


def _earlier_bench(
    args: argparse.Namespace, scenario_options: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """With ``--resume``, the runs and searches of the ``--json`` file, if it exists.

    The file must be a ``perennial bench --json`` document of the same scenario and scenario
    options; whether each run and search matches the strategies' options is checked by
    :func:`perennial.bench.run_benchmark` and :func:`perennial.tuning.tune_strategies`.
    """
    from pathlib import Path

    from perennial.bench import RunResult

    path = Path(args.json) if args.json else None
    if not args.resume or path is None or not path.exists():
        return [], {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        config = dict(document["config"])
        runs = [RunResult.from_json(record) for record in document["runs"]]
        searches = dict(document.get("tuning") or {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise PersistenceError(
            f"--resume: cannot read {args.json!r} as perennial bench results: {error}"
        ) from error
    wanted = {"scenario": args.scenario, **scenario_options}
    for key in ("scenario", *_SCENARIO_OPTIONS.values()):
        if config.get(key) != wanted.get(key):
            raise InvalidParameterError(
                f"--resume: {args.json!r} holds runs with {key}={config.get(key)!r}, and "
                f"this command asks for {key}={wanted.get(key)!r}: give the same scenario "
                "options, or another --json path"
            )
    if searches and not args.tune:
        raise InvalidParameterError(
            f"--resume: {args.json!r} holds tuned runs (--tune), and this command does not tune: "
            "add --tune, or give another --json path"
        )
    if args.tune and runs and not searches:
        raise InvalidParameterError(
            f"--resume: {args.json!r} holds untuned runs, and this command tunes: drop --tune, "
            "or give another --json path"
        )
    from perennial.tuning import TuningResult

    try:
        tuned = {name: TuningResult.from_json(record) for name, record in searches.items()}
    except (ValueError, KeyError, TypeError) as error:
        raise PersistenceError(
            f"--resume: cannot read the searches of {args.json!r}: {error}"
        ) from error
    print(
        f"--resume: {len(runs)} run(s) and {len(tuned)} search(es) read from {args.json}",
        file=sys.stderr,
        flush=True,
    )
    return runs, tuned


def cmd_serve(args: argparse.Namespace) -> int:
    from perennial.encoders import resolve_encoder
    from perennial.service.app import Limits
    from perennial.service.server import serve

    encoder_params: dict[str, Any] = {}
    for options in _ENCODER_OPTIONS.values():
        for option in options:
            value = getattr(args, option)
            if value is not None:
                encoder_params[option] = value
    encoder = None  # the store's "as recorded"
    if args.encoder != "auto":
        # --encoder mpnet: the text encoder with model="all-mpnet-base-v2".
        encoder, encoder_params = resolve_encoder(args.encoder, encoder_params)
    kind = _served_kind(args.model, encoder or ("image" if args.pretrained else None))
    if args.backend is None and _is_new_model(args.model) and kind in ("text", "image"):
        # A new model serves through the int8 ONNX backend: for text 2.4 times the texts per
        # second of torch for under 0.15 points of accuracy; for images 3 to 4 times the images
        # per second, every figure of bench_camera.py unchanged (benchmarks/RESULTS.md). Feature
        # vectors (identity) have no backend.
        encoder_params["backend"] = "onnx"
    if args.encoder_threads is not None:
        encoder_params["num_threads"] = args.encoder_threads
    elif kind in ("text", "image"):
        # One thread per forward pass leaves the other core to the background solver.
        encoder_params["num_threads"] = 1
    head_params = _head_params(args)
    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        max_batch=args.max_batch,
        max_text_chars=args.max_text_chars,
        wait_seconds=args.wait_seconds,
        max_waiters=args.max_waiters,
        max_waiters_per_client=args.max_waiters_per_client,
    )
    return serve(
        args.model,
        encoder=encoder,
        encoder_params=encoder_params,
        head=args.head,
        head_params=head_params,
        unknown_rate=args.unknown_rate,
        pretrained=args.pretrained,
        host=args.host,
        port=args.port,
        keys_file=args.keys,
        limits=limits,
        review_ttl=args.review_ttl,
        snapshot_every=args.snapshot_every,
        background_nice=args.background_nice,
        background_idle=args.background_idle,
        log_level=args.log_level,
        shutdown_seconds=args.shutdown_seconds,
    )


def _camera_model(args: argparse.Namespace) -> tuple[Any, bool]:
    """The model of ``--model``, or a new one from the camera options (see ``open_model``)."""
    from perennial.camera import open_model
    from perennial.heads import make_head

    if _model_kind(Path(args.model)) == "service":
        raise PersistenceError(
            f"--model {args.model} is a service's directory: send the images to the service "
            "(POST /v1/learn/upload), or give the camera a directory of its own"
        )
    encoder_params = {
        option: getattr(args, option)
        for option in _ENCODER_OPTIONS["image"]
        if getattr(args, option, None) is not None
    }
    if args.backend is None:
        # A new camera model encodes with int8 ONNX: a new class from 10 files in about a
        # third of torch's time, the same answers on bench_camera.py (benchmarks/RESULTS.md).
        encoder_params["backend"] = "onnx"
    head = make_head(args.head or "ridge", **_head_params(args))
    return open_model(
        args.model,
        pretrained=not args.no_pretrained,
        encoder_params=encoder_params,
        head=head,
    )


def _describe_model(model: Any, created: bool, directory: str) -> str:
    pretrained = model.pretrained_ is not None
    known = f"{len(model.classes_)} classes" + (" (ImageNet's included)" if pretrained else "")
    return f"{'new' if created else 'loaded'} model {directory}: {known}"


def cmd_camera_learn(args: argparse.Namespace) -> int:
    from perennial.camera import StepResult, class_folders, learn_class_folders

    class_folders(args.folder)  # the folders are checked before a model is built or loaded
    model, created = _camera_model(args)
    print(_describe_model(model, created, args.model), flush=True)

    def progress(step: StepResult) -> None:
        line = (
            f"learned {step.label!r}: {step.images} images in {1000 * step.seconds:.0f} ms "
            "(reading and encoding included)"
        )
        if step.accuracy is not None:
            line += f"; test accuracy {100 * step.accuracy:.1f}% on {step.tested} images"
        print(line, flush=True)

    steps = learn_class_folders(
        model, args.folder, test=args.test, save_to=args.model, progress=progress
    )
    images = sum(step.images for step in steps)
    print(
        f"{len(steps)} classes, {images} images; model saved to {args.model} "
        f"({len(model.classes_)} classes)"
    )
    return 0


def cmd_camera_watch(args: argparse.Namespace) -> int:
    import signal

    from perennial.camera import FolderWatcher

    if args.interval <= 0:
        raise InvalidParameterError(f"--interval must be positive, got {args.interval!r}")
    model, created = _camera_model(args)
    if created:
        model.save(args.model)
    print(_describe_model(model, created, args.model), flush=True)

    stop: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        stop.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    watcher = FolderWatcher(
        model, args.folder, save_to=args.model, report=lambda line: print(line, flush=True)
    )
    print(
        f"watching {args.folder} every {args.interval:g} s: sub-folders are learned as classes, "
        f"files at the top level predicted (then moved to {watcher.done}); Ctrl-C stops",
        flush=True,
    )
    try:
        watcher.run(args.interval, should_stop=lambda: bool(stop))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        model.save(args.model)
    print(f"stopped ({stop[0] if stop else 'done'}); model saved to {args.model}", flush=True)
    return 0


def cmd_camera_predict(args: argparse.Namespace) -> int:
    from perennial import LifelongClassifier
    from perennial.camera import format_prediction, predict_files

    model = LifelongClassifier.load(args.model)
    rows = predict_files(model, args.files)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        for row in rows:
            print(format_prediction(row["file"], row))
    return 0


# --- saved models: learn, predict, info ------------------------------------------------------------
def _model_kind(directory: Path) -> str:
    """``"service"``, ``"saved"``, ``"new"`` (missing or empty), or an error for anything else.

    Checked before any input is read or any model built.
    """
    from perennial.persistence import META_FILE
    from perennial.service.refresher import SERVICE_FILE

    if directory.exists() and not directory.is_dir():
        raise PersistenceError(f"--model {directory} is a file, expected a model directory")
    if (directory / SERVICE_FILE).is_file():
        return "service"
    if (directory / META_FILE).is_file():
        return "saved"
    if not directory.exists():
        return "new"
    visible = sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
    if visible:
        raise PersistenceError(
            f"--model {directory} is not a model directory (no {META_FILE} or {SERVICE_FILE}) "
            f"and not empty (it holds {', '.join(visible[:5])}); choose an empty or new directory"
        )
    return "new"


def _read_lines(source: str) -> list[str]:
    """Non-blank lines of ``source`` (a file, or ``-`` for standard input), without newlines."""
    try:
        stream = sys.stdin if source == "-" else None
        text = stream.read() if stream else Path(source).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidParameterError(f"cannot read --file {source!r}: {error}") from error
    return [line.rstrip("\r\n") for line in text.splitlines() if line.strip()]


def _cli_inputs(args: argparse.Namespace, *, command: str) -> list[str]:
    """The unlabelled inputs of ``learn --label`` or ``predict``: arguments, --file or stdin."""
    if args.inputs and args.file is not None:
        raise InvalidParameterError(
            f"give inputs as arguments or with --file, not both (perennial {command} --help)"
        )
    if args.inputs:
        return list(args.inputs)
    if args.file is not None:
        inputs = _read_lines(args.file)
        where = "standard input" if args.file == "-" else repr(args.file)
    elif not sys.stdin.isatty():
        inputs, where = _read_lines("-"), "standard input"
    else:
        raise InvalidParameterError(
            f"nothing to {command}: give inputs as arguments, --file FILE (one per line), or "
            "pipe them on standard input"
        )
    if not inputs:
        raise InvalidParameterError(f"nothing to {command}: {where} holds no non-blank line")
    return inputs


def _labelled_csv(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Inputs and labels of ``learn --csv``; an image column's relative paths from its folder."""
    import csv

    path = Path(args.csv)
    try:
        with open(path, encoding="utf-8-sig", newline="") as stream:
            rows = list(csv.DictReader(stream))
            header = list(rows[0]) if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InvalidParameterError(f"cannot read --csv {str(path)!r}: {error}") from error
    missing = [c for c in (args.input_column, args.label_column) if c not in header]
    if not rows or missing:
        raise InvalidParameterError(
            f"--csv {str(path)!r} must have a header row and at least one row with the columns "
            f"{args.input_column!r} (--input-column) and {args.label_column!r} (--label-column); "
            f"it has {header or 'no rows'}"
        )
    inputs, labels = [], []
    for number, row in enumerate(rows, start=2):
        value, label = row.get(args.input_column), row.get(args.label_column)
        if value is None or label is None:
            raise InvalidParameterError(f"--csv {str(path)!r}: line {number} has too few fields")
        inputs.append(value)
        labels.append(label)
    return inputs, labels


def _as_inputs(model: Any, inputs: list[str], base: Path | None = None) -> list[Any]:
    """Command-line strings as the model's inputs: texts, image paths, or comma-separated numbers."""
    kind = getattr(model._encoder, "kind", None)
    if kind == "image" and base is not None:
        return [str(p if Path(p).is_absolute() else base / p) for p in inputs]
    if kind == "identity":
        rows = []
        for text in inputs:
            try:
                rows.append([float(part) for part in text.split(",")])
            except ValueError:
                raise InvalidParameterError(
                    f"a feature model's input is comma-separated numbers, got {text!r}"
                ) from None
        return rows
    return inputs


#: The options of ``perennial learn`` that describe a new model, by their ``args`` attribute.
_NEW_MODEL_OPTIONS = {
    "encoder": "--encoder",
    "head": "--head",
    "n_members": "--members",
    "n_features": "--n-features",
    "ridge": "--ridge",
    "pooling": "--pooling",
    "backend": "--backend",
    "image_size": "--image-size",
    "resize": "--resize",
    "unknown_rate": "--unknown-rate",
    "seed": "--seed",
}


def _new_model(args: argparse.Namespace) -> Any:
    from perennial import LifelongClassifier
    from perennial.heads import make_head

    head = make_head(args.head or "ridge", **_head_params(args))
    name = "text" if args.encoder == "auto" else args.encoder
    encoder_params = {
        option: getattr(args, option)
        for option in _ENCODER_OPTIONS[_encoder_kind(name)]
        if getattr(args, option) is not None
    }
    from perennial.encoders import make_encoder

    rate = 0.02 if args.unknown_rate is None else args.unknown_rate
    return LifelongClassifier(make_encoder(name, **encoder_params), head, unknown_rate=rate or None)


def cmd_learn(args: argparse.Namespace) -> int:
    from perennial import LifelongClassifier

    directory = Path(args.model)
    kind = _model_kind(directory)
    # Every option is checked before the model or the inputs are read.
    given = [
        flag
        for attr, flag in _NEW_MODEL_OPTIONS.items()
        if getattr(args, attr) not in (None, "auto")
    ]
    if kind != "new" and given:
        raise InvalidParameterError(
            f"{', '.join(given)} {'describes' if len(given) == 1 else 'describe'} a new model; "
            f"{directory} already holds one "
            "(perennial info --model DIR shows how it was made)"
        )
    if args.unknown_rate is not None and not 0 <= args.unknown_rate < 1:
        raise InvalidParameterError(
            f"--unknown-rate must be in [0, 1) (0: open set off), got {args.unknown_rate!r}"
        )
    if args.csv is not None and (args.inputs or args.file is not None or args.label is not None):
        raise InvalidParameterError(
            "--csv brings its own inputs and labels: give no inputs, --file or --label with it"
        )
    if args.csv is None and args.label is None:
        raise InvalidParameterError(
            "say what the inputs are: --label LABEL (the label of every input), or --csv FILE "
            "(a column of inputs and a column of labels)"
        )
    if kind == "service":
        from perennial.service.directory import service_running

        if service_running(directory):
            raise PersistenceError(
                f"{directory} is served by a running 'perennial serve' now: send the examples "
                "to its POST /v1/learn, or stop it first"
            )
    if kind == "new":
        _head_params(args)  # a head option the head does not take is refused now
    # The inputs are read (cheap) before the model is built or loaded (seconds).
    if args.csv is not None:
        texts, labels = _labelled_csv(args)
    else:
        texts = _cli_inputs(args, command="learn")
        labels = [args.label] * len(texts)
    model = _new_model(args) if kind == "new" else LifelongClassifier.load(directory)
    base = None if args.csv is None else Path(args.csv).parent
    inputs = _as_inputs(model, texts, base=base)
    before = set(model.classes_)
    progress = _encoding_progress(len(inputs))
    if kind == "service":
        from perennial.service.directory import append_learned

        version = append_learned(directory, model.encode(inputs, progress=progress), labels)
        where = f"journaled as version {version} of the service in {directory}"
    else:
        model.learn_many(inputs, labels, progress=progress)
        model.save(directory)
        where = f"saved to {directory}"
        version = None
    new = sorted({str(label) for label in labels} - {str(label) for label in before})
    print(
        f"learned {_count(len(labels), 'example')} of {_count(len(set(labels)), 'class')}"
        + (
            f" ({len(new)} new: {', '.join(new[:5])}{', ...' if len(new) > 5 else ''})"
            if new
            else ""
        )
        + f"; {where}"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from perennial import LifelongClassifier

    directory = Path(args.model)
    if _model_kind(directory) == "new":
        raise PersistenceError(f"no model at {directory}: 'perennial learn' makes one")
    texts = _cli_inputs(args, command="predict")
    model = LifelongClassifier.load(directory)
    rows = model.predict_detailed(
        _as_inputs(model, texts), top=args.top, progress=_encoding_progress(len(texts))
    )
    for text, row in zip(texts, rows, strict=True):
        if args.json:
            print(json.dumps({"input": text, **row}, default=_json_value))
        else:
            label = "unknown" if row.get("unknown") else row["label"]
            source = f"{row['source']}, " if "source" in row else ""
            print(f"{text}\t{label}\t({source}{row['score']:.3f})")
    return 0


def _encoding_progress(n: int) -> Any:
    """Where ``learn`` and ``predict`` report encoding ``n`` inputs: standard error (drawn in
    place on a terminal) when they fill more than one chunk, else nowhere (one chunk is quick,
    and a line per call would drown a script's output)."""
    from perennial.learner import ENCODE_CHUNK

    return sys.stderr if n > ENCODE_CHUNK else None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def _json_value(value: Any) -> Any:
    """numpy scalars and the like, for ``json.dumps``."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def model_info(directory: str | Path) -> dict[str, Any]:
    """What ``perennial info`` prints: a model's classes, counts, parts and size, as JSON values."""
    from perennial import LifelongClassifier
    from perennial.encoders.base import encoder_spec
    from perennial.heads import registered_name
    from perennial.persistence import META_FILE

    path = Path(directory)
    kind = _model_kind(path)
    if kind == "new":
        raise PersistenceError(f"no model at {path}: 'perennial learn' makes one")
    model = LifelongClassifier.load(path)
    head = model.head
    counts = head._class_counts().tolist() if head.is_fitted else []
    disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    info: dict[str, Any] = {
        "model": str(path),
        "kind": "service directory" if kind == "service" else "saved model",
        "encoder": encoder_spec(model._encoder),
        "head": {"name": registered_name(head), "params": head.get_params()},
        "classes": len(model.classes_),
        "examples": int(model.n_seen_),
        "class_counts": dict(zip(map(str, head.classes_), counts, strict=True)),
        "open_set": model.open_set_status_,
        "unknown_rate": model.unknown_rate,
        "state_bytes": int(model.state_bytes),
        "disk_bytes": disk,
        "pretrained": None,
    }
    if model.pretrained_ is not None:
        pretrained = model.pretrained_.record()
        info["pretrained"] = {
            "name": pretrained.get("name"),
            "classes": len(model.pretrained_.names),
            "forgotten": len(model.pretrained_.names) - len(model.pretrained_.visible),
        }
    if kind == "service":
        from perennial.service.directory import read_service_directory

        state = read_service_directory(path)
        snapshot = path / str(state.snapshot) if state.snapshot is not None else None
        meta = None if snapshot is None else snapshot / META_FILE
        info.update(
            format_version=_format_version(meta),
            service={
                "version": state.version,
                "snapshot": state.snapshot,
                "snapshot_version": state.snapshot_version,
                "journal_records_replayed": state.version - state.snapshot_version,
                "running": state.running,
                "format_version": state.record.get("format_version"),
            },
        )
    else:
        info["format_version"] = _format_version(path / META_FILE)
    return info


def _format_version(meta: Path | None) -> int | None:
    if meta is None:
        return None
    try:
        return int(json.loads(meta.read_text(encoding="utf-8"))["format_version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def cmd_info(args: argparse.Namespace) -> int:
    info = model_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2, default=_json_value))
        return 0
    encoder, head = info["encoder"], info["head"]
    if "service" in info:
        snapshot = info["format_version"]
        print(
            f"{info['model']}: {info['kind']} (service format {info['service']['format_version']}"
            + (f", snapshot in model format {snapshot})" if snapshot else ", no snapshot yet)")
        )
    else:
        print(f"{info['model']}: {info['kind']}, format version {info['format_version']}")
    print(f"  encoder    {encoder['name']} ({encoder['kind']}, {_params(encoder.get('params'))})")
    print(f"  head       {head['name']} ({_params(head['params'])})")
    print(f"  learned    {info['examples']} examples of {len(info['class_counts'])} classes")
    if info["pretrained"] is not None:
        p = info["pretrained"]
        print(
            f"  pretrained {p['name']}: {p['classes'] - p['forgotten']} of {p['classes']} classes "
            f"answerable; {info['classes']} classes in all"
        )
    print(f"  open set   {info['open_set']} (unknown rate {info['unknown_rate']})")
    print(
        f"  size       {_size(info['state_bytes'])} in memory, {_size(info['disk_bytes'])} on disk"
    )
    if "service" in info:
        s = info["service"]
        print(
            f"  service    version {s['version']}: the snapshot of version "
            f"{s['snapshot_version']} plus {s['journal_records_replayed']} journal records"
            + ("; a service is running on it now" if s["running"] else "")
        )
    width = max((len(label) for label in info["class_counts"]), default=0)
    for label, count in info["class_counts"].items():
        print(f"    {label:<{width}}  {count}")
    return 0


def _params(params: Any) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(dict(params or {}).items())) or "no parameters"


def _is_new_model(directory: str) -> bool:
    """Whether ``perennial serve`` would create the model in ``directory`` (missing or empty)."""
    path = Path(directory)
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def _served_kind(directory: str, asked: str | None) -> str | None:
    """The encoder kind ``perennial serve`` will use for ``directory``, if it can tell."""
    if asked is not None:
        return asked
    if _is_new_model(directory):
        return "text"
    try:
        from perennial.service.refresher import SERVICE_FILE

        record = json.loads((Path(directory) / SERVICE_FILE).read_text(encoding="utf-8"))
        return str(record["encoder"]["kind"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the store reports what is wrong with the directory


#: Python parameter names in library messages, and the options that set them on the command line.
_CLI_SPELLINGS = {
    "n_tasks": "--tasks",
    "classes_per_task": "--classes-per-task",
    "examples_per_task": "--examples-per-task",
    "memory_per_class": "--memory-per-class",
    "batch_size": "--batch-size",
    "test_fraction": "--test-fraction",
    "unknown_rate": "--unknown-rate",
    "n_features": "--n-features",
    "n_members": "--members",
    "image_size": "--image-size",
    "lr": "--lr",
    "max_body_bytes": "--max-body-bytes",
    "max_batch": "--max-batch",
    "max_text_chars": "--max-text-chars",
    "wait_seconds": "--wait-seconds",
    "max_waiters": "--max-waiters",
    "max_waiters_per_client": "--max-waiters-per-client",
    "shutdown_seconds": "--shutdown-seconds",
    "review_ttl": "--review-ttl",
    "snapshot_every": "--snapshot-every",
    "background_nice": "--background-nice",
    "encoder_threads": "--encoder-threads",
}

#: Names too common as words to be replaced anywhere: only as ``name=`` ("needs data=").
_CLI_SPELLINGS_WITH_EQUALS = {"data": "--data", "port": "--port", "seeds": "--seeds"}


def cli_spelling(message: str) -> str:
    """``message`` with the library's parameter names written as the options that set them.

    Examples
    --------
    >>> cli_spelling("classes_per_task=3 is more than the 2 classes; pass n_tasks=1 as well")
    '--classes-per-task 3 is more than the 2 classes; pass --tasks 1 as well'
    >>> cli_spelling("class-incremental needs data=: a data set name")
    'class-incremental needs --data: a data set name'
    """
    import re

    # Longer names first, so that max_waiters_per_client is not read as max_waiters.
    names = sorted(_CLI_SPELLINGS, key=len, reverse=True)
    pattern = r"(?<![\w-])(" + "|".join(names) + r")\b(=?)"
    equals = r"(?<![\w-])(" + "|".join(_CLI_SPELLINGS_WITH_EQUALS) + r")(=)"

    def option(spellings: dict[str, str]) -> Any:
        def replace(match: re.Match[str]) -> str:
            after = match.string[match.end() : match.end() + 1]
            space = " " if match.group(2) and after not in ("", ":", ",", ";", ".", ")") else ""
            return spellings[match.group(1)] + space

        return replace

    message = re.sub(pattern, option(_CLI_SPELLINGS), message)
    return re.sub(equals, option(_CLI_SPELLINGS_WITH_EQUALS), message)


def _int_tuple(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise InvalidParameterError(
            f"{option} must be comma-separated positive integers, got {text!r}"
        )
    return values


def _check_file_destination(path: str, option: str) -> None:
    """Refuse, before any work, a file ``path`` that could not be written at the end.

    Nothing is created: the folder must exist and be writable, and ``path`` must not be a
    folder.
    """
    import os

    target = Path(path)
    if target.is_dir():
        raise InvalidParameterError(f"{option} {path} is a directory, expected a file path")
    folder = target.parent
    if not folder.is_dir():
        raise InvalidParameterError(
            f"{option} {path}: the folder {str(folder)!r} does not exist; create it first"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidParameterError(f"{option} {path}: the folder {str(folder)!r} is not writable")


def _check_folder_destination(path: str, option: str) -> None:
    """Refuse, before any work, a folder ``path`` that could not be written at the end.

    ``path`` may be missing (it is created at the end, parents included): then its nearest
    existing ancestor must be a writable folder. Nothing is created now.
    """
    import os

    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InvalidParameterError(f"{option} {path} is a file, expected a folder")
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InvalidParameterError(
            f"{option} {path}: {str(existing)!r} is a file, so no folder can be made below it"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidParameterError(f"{option} {path}: {str(existing)!r} is not writable")


def _write_text(path: str, text: str) -> None:
    from pathlib import Path

    from perennial.persistence import atomic_write_bytes

    try:
        atomic_write_bytes(Path(path), text.encode("utf-8"))
    except OSError as error:
        raise PersistenceError(f"cannot write {path!r}: {error}") from error


# --- option groups, each written once and shared through argparse parents -----------------------
# Each function returns a fresh parser: argparse shares a parent's actions with its children, so a
# parent built once and reused would carry one command's defaults into another.


def _data_help() -> str:
    from perennial.datasets import DATASET_NAMES

    return f"{', '.join(DATASET_NAMES)}, or a text,category CSV"


def _encoder_options(*, serving: bool = False, new_onnx: bool = True) -> argparse.ArgumentParser:
    """--encoder and the encoders' own options; ``serving``: only for a new model, no defaults.

    ``new_onnx``: with ``serving``, whether a new model takes the int8 ONNX backend (``serve``)
    or torch, the library's default (``learn``).
    """
    from perennial.encoders import ENCODER_NAMES
    from perennial.encoders.text import BACKENDS, POOLINGS

    group = argparse.ArgumentParser(
        add_help=False, parents=[_image_encoder_options(serving=serving)]
    )
    if serving:
        group.add_argument(
            "--encoder",
            default="auto",
            choices=("auto", *ENCODER_NAMES),
            help="auto (the default): the model's own encoder, text for a new model; another "
            "name chooses a new model's encoder, and an existing model must have been written "
            "with it. text is all-MiniLM-L6-v2; mpnet (all-mpnet-base-v2) is the text encoder "
            "of the larger model, needs its weights (requirements-mpnet.txt) and is about 7 "
            "times slower",
        )
    else:
        group.add_argument(
            "--encoder",
            default="auto",
            choices=("auto", *ENCODER_NAMES),
            help="auto (the default): image for an image data set, else text (all-MiniLM-L6-v2); "
            "mpnet (all-mpnet-base-v2): the text encoder of the larger model, which needs its "
            "weights (requirements-mpnet.txt) and is about 7 times slower",
        )
    group.add_argument(
        "--pooling",
        default=None if serving else "mean-layers",
        choices=POOLINGS,
        help="text encoder pooling: average of the layers (mean-layers, the default), last "
        "layer, or all layers concatenated",
    )
    group.add_argument(
        "--backend",
        default=None if serving else "torch",
        choices=BACKENDS,
        help="text or image encoder runtime: torch, the reference; onnx, ONNX Runtime with "
        "int8 weights (fastest; features within about 0.98 cosine of torch's); or onnx-fp32, "
        "ONNX Runtime with float32 weights (torch's features to about 1e-5, faster than torch) "
        "(default "
        + (
            "onnx for a new model: int8, 2.4x torch's throughput on text, 3-4x on images)"
            if serving and new_onnx
            else "torch)"
        ),
    )
    return group


def _image_encoder_options(*, serving: bool = False) -> argparse.ArgumentParser:
    """The image encoder's options; ``serving``: only for a new model, no defaults."""
    from perennial.encoders.image import RESIZE_MODES

    group = argparse.ArgumentParser(add_help=False)
    group.add_argument(
        "--image-size",
        type=_positive_int,
        default=None if serving else 224,
        help="image encoder input size (default 224)",
    )
    group.add_argument(
        "--resize",
        default=None if serving else "crop",
        choices=RESIZE_MODES,
        help="how images reach the square input: crop (default), the centre crop and bicubic "
        "resize the weights were evaluated with; stretch, the whole image squeezed (models "
        "saved before this option existed)",
    )
    return group


#: One line per head for ``--head``'s help (a head not listed shows its docstring's first line).
_HEAD_HELP = {
    "ridge": "exact ridge regression on random ReLU features of them",
    "ridge-ensemble": "the average of --members ridge heads, each with its own random features",
    "slda": "class means with one shared covariance (streaming LDA)",
    "ncm": "the nearest class mean",
}


def _head_options(*, serving: bool = False) -> argparse.ArgumentParser:
    """--head and its parameters (read by :func:`_head_params`); ``serving``: for a new model."""
    from perennial.heads import HEADS

    group = argparse.ArgumentParser(add_help=False)
    heads = "; ".join(
        f"{name}, {_HEAD_HELP.get(name) or _first_line(HEADS[name].__doc__)}" for name in HEADS
    )
    group.add_argument(
        "--head",
        default=None if serving else "ridge",
        choices=tuple(HEADS),
        help=("for a new model: " if serving else "")
        + f"the classifier learned on the encoder's features: {heads} (default ridge)",
    )
    group.add_argument(
        "--members",
        dest="n_members",
        type=int,
        default=None,
        help="ridge heads in a ridge-ensemble (default 2)",
    )
    group.add_argument(
        "--n-features",
        type=int,
        default=None,
        help="random features of the ridge heads (default 4096)",
    )
    group.add_argument(
        "--ridge", type=float, default=None, help="fixed ridge strength (default: GCV)"
    )
    # A serving model takes each head's own defaults; an experiment states the CLI's.
    group.set_defaults(head_defaults={} if serving else {"n_features": 4096, "n_members": 2})
    return group


def _seed_option(seeds: str = "the class order, a CSV's test split and") -> argparse.ArgumentParser:
    """``--seed``: the one seed of a run, of everything random in it; ``seeds`` lists what."""
    group = argparse.ArgumentParser(add_help=False)
    group.add_argument(
        "--seed",
        type=int,
        default=0,
        help=f"seed of the run, of everything random in it: {seeds} the ridge heads' random "
        "projection",
    )
    return group


def _stream_options() -> argparse.ArgumentParser:
    """Options of the commands that learn a data set class by class and print a summary."""
    group = argparse.ArgumentParser(add_help=False)
    group.add_argument("--step", type=_positive_int, default=10, help="classes per step")
    group.add_argument(
        "--json", action="store_true", help="print one JSON object (progress to stderr)"
    )
    group.add_argument(
        "--cache-dir",
        default=None,
        help="feature cache (default $PERENNIAL_CACHE or ~/.cache/perennial)",
    )
    group.add_argument("--no-cache", action="store_true", help="encode without the feature cache")
    return group


def _unknown_rate_option(*, serving: bool = False) -> argparse.ArgumentParser:
    group = argparse.ArgumentParser(add_help=False)
    group.add_argument(
        "--unknown-rate",
        type=float,
        default=None if serving else 0.02,
        help="open set: target share of in-scope inputs called unknown (default 0.02"
        + ("; 0: off)" if serving else ")"),
    )
    return group


def _cluster_options() -> argparse.ArgumentParser:
    group = argparse.ArgumentParser(add_help=False)
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler",
        default=None,
        help="run on the Dask scheduler at this address (tcp://host:port) (default: none)",
    )
    where.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="run on a local Dask cluster of this many processes (default: fit starts 2 "
        "processes; bench runs in this process)",
    )
    return group


def _registry_name(text: str) -> str:
    """Registry names are matched case-insensitively, as :func:`make_scenario` does."""
    return text.strip().lower()


def _strategy_names(text: str) -> list[str]:
    """``--strategies``: comma-separated names, checked against the strategies' registry."""
    from perennial.bench import check_strategy_names

    try:
        return check_strategy_names([name.strip() for name in text.split(",") if name.strip()])
    except InvalidParameterError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (examples keep their lines); each option's help ends with its
    default, unless the help already states it or there is none to state (an option left out
    is then off, or its help says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


def _positive_int(text: str) -> int:
    """An option's value that counts something: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _finite_float(text: str, zero_allowed: bool) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
        wanted = "a number of at least 0" if zero_allowed else "a positive number"
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    """An option's value that measures something (seconds): a finite number above 0."""
    return _finite_float(text, zero_allowed=False)


def _non_negative_float(text: str) -> float:
    """A finite number of at least 0 (0 turns something off)."""
    return _finite_float(text, zero_allowed=True)


def _port(text: str) -> int:
    """A TCP port: an integer from 0 to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port from 0 to 65535, got {text!r}")
    return value


def _fraction(text: str) -> float:
    """A share strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a number strictly between 0 and 1, got {text!r}"
        )
    return value


def _version() -> str:
    from perennial import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The ``perennial`` parser; choices come from the registries of heads, encoders, ..."""
    from perennial.novelty import SCORES
    from perennial.scenarios import SCENARIO_NAMES

    parser = argparse.ArgumentParser(
        prog="perennial", description="Lifelong learning with frozen encoders and exact heads."
    )
    parser.add_argument("--version", action="version", version=f"perennial {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    inc = commands.add_parser(
        "incremental",
        parents=[_stream_options(), _seed_option(), _head_options(), _encoder_options()],
        help="class-incremental learning in steps, compared with joint training and SGD fine-tuning",
        description=(
            "Classes arrive in random order in steps; each is learned in a single pass. Prints the "
            "accuracy on all classes seen after each step, then compares with offline joint "
            "logistic regression and with a softmax head fine-tuned by SGD in the same order."
        ),
    )
    inc.add_argument("--data", required=True, help=_data_help())
    inc.add_argument(
        "--test",
        default=None,
        help="test CSV for a CSV --data (default: none, a stratified split of --data)",
    )
    inc.add_argument(
        "--test-fraction",
        type=_fraction,
        default=0.2,
        help="share of each class of a CSV --data held out for testing, without --test",
    )
    inc.add_argument(
        "--no-baselines", action="store_true", help="skip joint LR and SGD fine-tuning"
    )
    inc.add_argument(
        "--select",
        action="store_true",
        help="choose the text encoder's pooling and the head (a ridge head, two, or one twice as wide) by "
        "accuracy on 10%% of the training split, held out; the test split only scores the "
        "choice. Each model encodes the training texts once (every layer kept in the cache)",
    )
    inc.add_argument(
        "--select-models",
        default=None,
        help="with --select, the text models to choose among too, comma-separated, cheapest "
        "first (ties go to the earlier), e.g. minilm,mpnet (default: the --encoder's model)",
    )
    # Given or not is told apart for --select (which chooses both); filled in by the command.
    inc.set_defaults(handler=cmd_incremental, pooling=None, head=None)

    fit = commands.add_parser(
        "fit",
        parents=[
            _cluster_options(),
            _seed_option(seeds="a CSV's test split (none: a CSV is learned whole) and"),
            _head_options(),
            _encoder_options(),
        ],
        help="learn a data set on a Dask cluster (local or remote) and save the model",
        description=(
            "Cuts the training data into partitions; Dask workers encode and learn one each, and "
            "the statistics are added pairwise into one model, saved to --model only when "
            "everything succeeded. Without --scheduler, a local cluster of --workers processes "
            "(default 2) is started and closed afterwards."
        ),
    )
    fit.add_argument(
        "--data", required=True, help=f"{_data_help()} (named sets: their train split)"
    )
    fit.add_argument(
        "--model",
        required=True,
        help="directory to save the model to: new, empty, or a saved model to replace",
    )
    fit.add_argument(
        "--partitions",
        type=_positive_int,
        default=None,
        help="data partitions (default: two per worker thread, at most 10,000 examples each)",
    )
    fit.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        help="seconds to wait for the scheduler and a first worker (default 30)",
    )
    fit.set_defaults(handler=cmd_fit)

    openset = commands.add_parser(
        "openset",
        parents=[
            _stream_options(),
            _seed_option(),
            _unknown_rate_option(),
            _head_options(),
            _encoder_options(),
        ],
        help="open-set recognition: in-scope accuracy and out-of-scope recall (CLINC150)",
        description=(
            "Learns the in-scope classes step by step, calibrating the unknown threshold from "
            "the training stream alone (no out-of-scope example), then reports in-scope "
            "accuracy, out-of-scope recall, AUROC and FPR at 95% TPR on the test splits."
        ),
    )
    openset.add_argument("--data", default="clinc150", help="a data set with an oos split")
    openset.add_argument("--oos-split", default="oos_test", help="out-of-scope test split")
    openset.add_argument(
        "--novelty-score",
        default="auto",
        choices=("auto", *SCORES),
        help=(
            "auto (default): combined for text embeddings, relative otherwise; relative "
            "Mahalanobis; or combined with per-class diagonal Gaussians"
        ),
    )
    openset.set_defaults(handler=cmd_openset)

    bench = commands.add_parser(
        "bench",
        parents=[_cluster_options()],
        help="continual-learning strategies side by side on a scenario, over seeds",
        description=(
            "Trains each strategy on the scenario's experiences in order, measures the accuracy "
            "matrix, and prints the mean and 90% confidence interval over seeds of average "
            "accuracy, forgetting, backward and forward transfer, training time and memory. "
            "With --scheduler or --workers the runs are spread over a Dask cluster."
        ),
        epilog=_bench_epilog(),
    )
    bench.add_argument(
        "--scenario",
        required=True,
        type=_registry_name,
        choices=SCENARIO_NAMES,
        metavar="SCENARIO",
        help="the stream of experiences, one of the scenarios listed below",
    )
    bench.add_argument(
        "--strategies",
        required=True,
        type=_strategy_names,
        help="comma-separated strategy names (listed below), e.g. naive,ewc,er",
    )
    bench.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        help="how many runs: one per seed 0, 1, ..., K-1, the seed of each run's class "
        "order, data subsets and network initialisation",
    )
    bench.add_argument(
        "--tasks",
        type=_positive_int,
        default=None,
        help="number of experiences (default: the scenario's own, e.g. 10 for permuted-mnist, "
        "5 for split-mnist)",
    )
    bench.add_argument(
        "--classes-per-task",
        type=_positive_int,
        default=None,
        help="classes in each experience of a class-split scenario (default: the scenario's "
        "own, e.g. 2 for split-mnist)",
    )
    bench.add_argument(
        "--examples-per-task",
        type=_positive_int,
        default=None,
        help="training examples drawn for each experience (default: all of them)",
    )
    bench.add_argument(
        "--data",
        default=None,
        help=f"for class-/domain-incremental: {_data_help()} (default: none)",
    )
    bench.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help=f"epochs per experience ({_strategy_default('epochs')})",
    )
    bench.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help=f"SGD minibatch size ({_strategy_default('batch_size')})",
    )
    bench.add_argument(
        "--lr", type=float, default=None, help=f"SGD learning rate ({_strategy_default('lr')})"
    )
    bench.add_argument(
        "--hidden",
        default=None,
        help=f"hidden layer sizes of the network, e.g. 256,256 ({_strategy_default('hidden')})",
    )
    bench.add_argument(
        "--memory-per-class",
        type=_positive_int,
        default=None,
        help="examples per class a replay strategy keeps in memory "
        f"({_strategy_default('memory_per_class')})",
    )
    bench.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch threads per run (default: torch's own setting)",
    )
    bench.add_argument(
        "--n-features",
        type=_positive_int,
        default=None,
        help="width of the lifelong strategy's random expansion: random ReLU features of its "
        f"ridge head ({_strategy_default('n_features')}); its memory grows as the square "
        "(G is n x n float64) and its solves as the cube",
    )
    bench.add_argument(
        "--ridge",
        type=_positive_float,
        default=None,
        help="fixed ridge strength of the lifelong strategy's head (default: chosen by "
        "generalised cross-validation at each solve)",
    )
    bench.add_argument(
        "--tune",
        action="store_true",
        help="choose each strategy's hyperparameters first, from its grid "
        "(perennial.tuning.GRIDS), on a validation split of the first tasks' training data; "
        "options given on the command line are kept, not searched",
    )
    bench.add_argument(
        "--tune-tasks",
        type=_positive_int,
        default=3,
        help="tasks of the validation stream (default 3)",
    )
    bench.add_argument(
        "--tune-fraction",
        type=_fraction,
        default=0.1,
        help="share of each task's training data held out for validation (default 0.1)",
    )
    bench.add_argument(
        "--curves",
        action="store_true",
        help="also sample learning curves for Continual World's forward transfer (ft_auc)",
    )
    bench.add_argument(
        "--json",
        default=None,
        help="write results as JSON to this path, again after every run and search so that "
        "an interrupted benchmark keeps its work (default: none)",
    )
    bench.add_argument(
        "--resume",
        action="store_true",
        help="go on from the --json file of an earlier, interrupted or shorter, run of this "
        "command: its runs and searches are kept where they match the options given now, the "
        "rest are run (more --seeds add seeds); a file of other options is refused",
    )
    bench.add_argument(
        "--report",
        default=None,
        help="write report.html, report.md and plots to this folder (default: none)",
    )
    bench.set_defaults(handler=cmd_bench)

    _add_camera_parser(commands)
    _add_model_parsers(commands)

    from perennial.pretrained import PRETRAINED

    serve = commands.add_parser(
        "serve",
        parents=[
            _unknown_rate_option(serving=True),
            _head_options(serving=True),
            _encoder_options(serving=True),
        ],
        help="serve a model over HTTP: predict, learn while serving, review unknown inputs",
        description=(
            "Serves the model in --model (an empty directory starts a new model) with a JSON "
            "API; see /docs once running. Every learn, unlearn or forget is journaled and "
            "synced to disk before it is acknowledged. Without --keys no key is asked, so only "
            "a loopback --host is allowed. The head and encoder options apply to a new model; "
            "an existing model must match those given."
        ),
    )
    serve.add_argument("--model", required=True, help="model directory (created if missing)")
    serve.add_argument(
        "--pretrained",
        default=None,
        choices=PRETRAINED,
        help="for a new image model: keep this pretrained classifier's classes (ImageNet's "
        "1,000) beside the learned ones; --encoder image is then the default. A model saved "
        "with one (perennial camera learn) is served with it without this option (default: none)",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s, loopback)"
    )
    serve.add_argument(
        "--port", type=_port, default=8000, help="TCP port to listen on, 0 to 65535 (0: any free)"
    )
    serve.add_argument(
        "--keys",
        default=None,
        help="file of 'KEY ROLE' lines; roles: read (predict, list), write (default: none, no "
        "key asked, loopback only)",
    )
    serve.add_argument(
        "--encoder-threads",
        type=_positive_int,
        default=None,
        help="threads of one forward pass of the encoder (default 1: the other core solves)",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=1 << 20,
        help="largest request body, uploads included (default: 1048576, 1 MiB; 413 beyond)",
    )
    serve.add_argument(
        "--max-batch", type=_positive_int, default=64, help="most inputs in one request"
    )
    serve.add_argument(
        "--max-text-chars", type=_positive_int, default=2000, help="longest text, in characters"
    )
    serve.add_argument(
        "--wait-seconds",
        type=_positive_float,
        default=30.0,
        help="longest a prediction waits for its min_version (default 30)",
    )
    serve.add_argument(
        "--max-waiters",
        type=_positive_int,
        default=256,
        help="predictions that may wait for a min_version at once (default 256; 429 beyond)",
    )
    serve.add_argument(
        "--max-waiters-per-client",
        type=_positive_int,
        default=32,
        help="of those, from one API key, or one address without keys (default 32)",
    )
    serve.add_argument(
        "--review-ttl",
        type=_non_negative_float,
        default=3600.0,
        help="seconds an unknown input waits for review (0: no queue)",
    )
    serve.add_argument(
        "--snapshot-every",
        type=_positive_int,
        default=256,
        help="journal records between snapshots",
    )
    serve.add_argument(
        "--background-nice",
        type=int,
        default=10,
        help="run model solving and snapshots at this much lower CPU priority, single-threaded "
        "(Linux; default 10; 0: as predictions)",
    )
    serve.add_argument(
        "--background-idle",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the model's long re-solves only on CPU time requests leave unused (Linux "
        "SCHED_IDLE; the default): steady prediction latency under full load; applying updates "
        "and publishing versions keep --background-nice, so the served version keeps up",
    )
    serve.add_argument(
        "--shutdown-seconds",
        type=_positive_float,
        default=10.0,
        help="most a shutdown takes (default 10); what the last snapshot cannot take in that "
        "time stays in the journal, replayed at the next start",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="least important log messages shown",
    )
    serve.set_defaults(handler=cmd_serve)
    _use_formatter(parser)
    return parser


def _add_model_parsers(commands: Any) -> None:
    """``perennial learn``, ``predict`` and ``info``: work with a saved model or a service's."""
    formatter = argparse.RawDescriptionHelpFormatter
    where = (
        "--model is a directory written by 'perennial learn', LifelongClassifier.save, "
        "'perennial fit' or\n'perennial camera', or a directory 'perennial serve' serves "
        "(its latest snapshot plus its journal)."
    )

    def model_option(help_text: str) -> argparse.ArgumentParser:
        group = argparse.ArgumentParser(add_help=False)
        group.add_argument("--model", required=True, metavar="DIR", help=help_text)
        return group

    def input_options(verb: str) -> argparse.ArgumentParser:
        group = argparse.ArgumentParser(add_help=False)
        group.add_argument(
            "inputs",
            nargs="*",
            metavar="INPUT",
            help=f"inputs to {verb}: texts, image files (image models) or comma-separated "
            "numbers (feature models); none: read --file, or standard input; put -- before "
            "inputs that begin with -",
        )
        group.add_argument(
            "--file",
            default=None,
            metavar="FILE",
            help="read the inputs from FILE, one per line ('-': standard input) (default: none)",
        )
        return group

    learn = commands.add_parser(
        "learn",
        parents=[
            model_option("model directory; a missing or empty one gets a new model"),
            input_options("learn, all with --label"),
            _head_options(serving=True),
            _encoder_options(serving=True, new_onnx=False),
        ],
        formatter_class=formatter,
        help="teach a saved (or new) model labelled inputs, and save it",
        description=(
            "Learns labelled inputs into the model in --model and saves it (atomically).\n"
            + where
            + "\nA service directory gets the examples as journal records, which the service "
            "replays when it\nstarts; learning into one is refused while a service runs on it "
            "(use its POST /v1/learn).\nThe encoder and head options describe a new model and "
            "are refused for an existing one.\n\n"
            "examples:\n"
            "  perennial learn --model models/support --label lost_card 'I lost my card' "
            "'my card is gone'\n"
            "  perennial learn --model models/support --csv more.csv     # columns text,category\n"
            "  cut -d, -f1 refunds.csv | perennial learn --model models/support --label refund\n"
            "  perennial learn --model models/cats --encoder image --label tabby tom.jpg felix.png"
        ),
    )
    learn.add_argument(
        "--label", default=None, help="the label of every input given (default: none; use --csv)"
    )
    learn.add_argument(
        "--csv",
        default=None,
        metavar="FILE",
        help="learn a CSV file with a header row: inputs in --input-column, labels in "
        "--label-column; image paths are relative to the file's folder (default: none)",
    )
    learn.add_argument(
        "--input-column", default="text", help="the inputs' column of --csv (default: %(default)s)"
    )
    learn.add_argument(
        "--label-column",
        default="category",
        help="the labels' column of --csv (default: %(default)s)",
    )
    learn.add_argument(
        "--unknown-rate",
        type=float,
        default=None,
        help="for a new model: open set, the share of in-scope inputs to call unknown "
        "(default 0.02; 0: off)",
    )
    learn.add_argument(
        "--seed",
        type=int,
        default=None,
        help="for a new model: seed of the ridge heads' random projection (default 0)",
    )
    learn.set_defaults(handler=cmd_learn)

    predict = commands.add_parser(
        "predict",
        parents=[model_option("model directory"), input_options("label")],
        formatter_class=formatter,
        help="label inputs with a saved model",
        description=(
            "Prints one line per input: the input, its label ('unknown' for an input the open-set "
            "gate\nrejects) and the score of that label; --json prints one JSON object per line "
            "instead, with the\nnovelty and the --top best labels. " + where + "\n\nexamples:\n"
            "  perennial predict --model models/support 'someone stole my card'\n"
            "  perennial predict --model models/support --json < questions.txt"
        ),
    )
    predict.add_argument(
        "--json", action="store_true", help="print JSON lines: {input, label, score, ...}"
    )
    predict.add_argument(
        "--top",
        type=_positive_int,
        default=3,
        help="best labels listed with --json (default: %(default)s)",
    )
    predict.set_defaults(handler=cmd_predict)

    info = commands.add_parser(
        "info",
        parents=[model_option("model directory")],
        formatter_class=formatter,
        help="what a saved model holds: classes and counts, encoder, head, size, format version",
        description=(
            "Prints the model's classes with their example counts, its encoder and head with "
            "their parameters,\nits open-set state, its size in memory and on disk, the format "
            "version and its pretrained\nclassifier, if any. " + where
        ),
    )
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(handler=cmd_info)


def _strategy_default(param: str) -> str:
    """``default: X`` for a strategy parameter, naming the strategies whose default differs."""
    from collections import Counter

    from perennial.strategies import STRATEGIES

    values: dict[str, str] = {}
    for name, cls in STRATEGIES.items():
        if param not in cls.param_names():
            continue
        for klass in cls.__mro__:  # the first constructor that states a default for it
            found = inspect.signature(vars(klass).get("__init__", object)).parameters.get(param)
            if found is not None and found.default is not inspect.Parameter.empty:
                value = found.default
                values[name] = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
                break
    if not values:
        return "default: none"
    common = Counter(values.values()).most_common(1)[0][0]
    others = [f"{name} {value}" for name, value in values.items() if value != common]
    return f"default: {common}" + (f"; {', '.join(others)}" if others else "")


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].replace("``", "") if text else ""


def _bench_epilog() -> str:
    """The scenarios and strategies, one line each, from their registries' docstrings."""
    from perennial.scenarios.registry import _BUILDERS
    from perennial.strategies import STRATEGIES

    width = max(map(len, [*_BUILDERS, *STRATEGIES]))
    lines = ["scenarios (--scenario):"]
    lines += [
        f"  {name:<{width}}  {_first_line(_BUILDERS[name].__doc__)}" for name in sorted(_BUILDERS)
    ]
    lines += ["", "strategies (--strategies):"]
    lines += [f"  {name:<{width}}  {_first_line(cls.__doc__)}" for name, cls in STRATEGIES.items()]
    return "\n".join(lines)


def _use_formatter(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every sub-command's parser :class:`_HelpFormatter`."""
    parser.formatter_class = _HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                _use_formatter(child)


def _add_camera_parser(commands: Any) -> None:
    """``perennial camera`` and its sub-commands ``learn``, ``watch`` and ``predict``."""
    camera = commands.add_parser(
        "camera",
        help="the factory camera: teach an image model new classes from folders, and watch one",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Image classes from folders: a class folder holds one sub-folder per class, named "
            "after its label.\nA new model keeps EfficientNet-Lite0's 1,000 ImageNet classes "
            "(--no-pretrained: only what it learns).\n\n"
            "examples:\n"
            "  perennial camera learn --model models/candy photos/train --test photos/test\n"
            "  perennial camera watch --model models/candy inbox/ --interval 1\n"
            "  perennial camera predict --model models/candy shot1.jpg shot2.png"
        ),
    )
    actions = camera.add_subparsers(dest="camera_command", required=True)

    def model_options(*, creating: bool) -> argparse.ArgumentParser:
        group = argparse.ArgumentParser(add_help=False)
        group.add_argument(
            "--model",
            required=True,
            help="model directory" + (" (created if missing or empty)" if creating else ""),
        )
        return group

    def new_model_options() -> argparse.ArgumentParser:
        group = argparse.ArgumentParser(
            add_help=False,
            parents=[_image_encoder_options(serving=True), _head_options(serving=True)],
        )
        from perennial.encoders.image import BACKENDS as IMAGE_BACKENDS

        group.add_argument(
            "--backend",
            default=None,
            choices=IMAGE_BACKENDS,
            help="for a new model: image encoder runtime, ONNX Runtime with int8 weights (onnx, "
            "the default: 3-4x torch's images per second) or float32 weights (onnx-fp32, "
            "torch's numbers), or torch",
        )
        group.add_argument(
            "--no-pretrained",
            action="store_true",
            help="for a new model: only the classes it learns (default: ImageNet's 1,000 too)",
        )
        group.set_defaults(seed=None)
        return group

    formatter = argparse.RawDescriptionHelpFormatter
    learn = actions.add_parser(
        "learn",
        parents=[model_options(creating=True), new_model_options()],
        formatter_class=formatter,
        help="learn a folder of class sub-folders, one class at a time",
        description=(
            "Learns FOLDER's sub-folders one at a time, in name order (sub-folder name = label), "
            "printing the time\neach class took (reading and encoding included) and, with "
            "--test, the accuracy on the test\nimages of the classes learned so far. The model "
            "is saved (atomically) after each class;\nan existing model learns the classes "
            "besides what it knows.\n\n"
            "example:\n"
            "  perennial camera learn --model models/candy photos/train --test photos/test\n"
            "  (photos/train/red/*.jpg, photos/train/green/*.jpg, ...)"
        ),
    )
    learn.add_argument("folder", metavar="FOLDER", help="one sub-folder of images per class")
    learn.add_argument(
        "--test",
        default=None,
        metavar="FOLDER",
        help="held-out images, in the same layout (default: none, no test)",
    )
    learn.set_defaults(handler=cmd_camera_learn)

    watch = actions.add_parser(
        "watch",
        parents=[model_options(creating=True), new_model_options()],
        formatter_class=formatter,
        help="follow a folder a camera writes into: learn its sub-folders, predict its files",
        description=(
            "Scans FOLDER every --interval seconds. Images in a sub-folder FOLDER/LABEL/ are "
            "learned as LABEL\n(a new sub-folder is a new class), the model saved, and the "
            "files moved to FOLDER/done/learned/LABEL/.\nAn image at the top level is predicted, "
            "its answer printed (label, the head that answered:\npretrained or instant, and its "
            "confidence) and the file moved to FOLDER/done/predicted/.\nA file is taken once its "
            "size stayed the same for one interval (still being written: it waits).\nAn image "
            "that cannot be read is reported by name and nothing is learned from its batch;\n"
            "watching goes on. No failure of a file or class folder stops it (files or folders\n"
            "removed mid-scan, unreadable folders, failed moves or saves are reported);\n"
            "if FOLDER itself disappears, it waits for it to come back.\n"
            "Ctrl-C or SIGTERM stops it, saving the model.\n\n"
            "example:\n"
            "  perennial camera watch --model models/candy inbox/ --interval 1\n"
            "  mkdir inbox/green && cp green*.jpg inbox/green/   # a new class\n"
            "  cp shot.jpg inbox/                                # prints: shot.jpg: green (instant, 0.93) -> ..."
        ),
    )
    watch.add_argument("folder", metavar="FOLDER", help="the folder the camera writes into")
    watch.add_argument(
        "--interval", type=float, default=1.0, help="seconds between scans (default 1)"
    )
    watch.set_defaults(handler=cmd_camera_watch)

    predict = actions.add_parser(
        "predict",
        parents=[model_options(creating=False)],
        formatter_class=formatter,
        help="label image files with a saved model",
        description=(
            "Prints one line per file: its label, the head that answered (pretrained or "
            "instant) and its\nconfidence; --json prints the details (top labels, novelty) "
            "instead.\n\n"
            "example:\n"
            "  perennial camera predict --model models/candy shot1.jpg shot2.png\n"
            "  shot1.jpg: green (instant, 0.93)"
        ),
    )
    predict.add_argument("files", nargs="+", metavar="FILE", help="image files")
    predict.add_argument(
        "--json", action="store_true", help="print a JSON list, one object per file"
    )
    predict.set_defaults(handler=cmd_camera_predict)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``perennial`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except PerennialError as error:
        print(f"perennial: error: {cli_spelling(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("perennial: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
