"""``perennial learn``, ``predict`` and ``info`` on saved models and service directories, the help
texts, and options refused before any work (and without changing anything).

References: a LifelongClassifier fed the same examples through the library (saved models), and
one fed the acknowledged updates in the same batches (service directories), as the store tests
build it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from perennial import LifelongClassifier, __version__
from perennial.cli import build_parser, main
from perennial.service.store import ModelStore
from test_service_support import RIDGE, clusters, reference

N_FEATURES = 64
PROBES = np.random.default_rng(7).normal(0.0, 2.0, (6, 8))


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (lock files included) and its bytes."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def as_cli(row: np.ndarray) -> str:
    return ",".join(repr(float(v)) for v in row)


# --- a saved text model: arguments, CSV and standard input in; JSON lines out -----------------------
def test_learn_and_predict_a_text_model_like_the_library(tmp_path, capsys, monkeypatch):
    model_dir = tmp_path / "support"
    card = ["I lost my card", "my card is gone, I can't find it"]
    csv_rows = [
        ("where is my new card", "card_arrival"),
        ("the card has not arrived yet", "card_arrival"),
        ("I want my money back", "refund"),
        ("please refund the order", "refund"),
    ]
    (tmp_path / "more.csv").write_text(
        "category,text\n" + "".join(f'{label},"{text}"\n' for text, label in csv_rows),
        encoding="utf-8",
    )
    euro = ["what's the exchange rate for euros?", "euro to dollar rate today"]

    assert run(capsys, "learn", "--model", str(model_dir), "--label", "lost_card", *card)[0] == 0
    assert (
        run(capsys, "learn", "--model", str(model_dir), "--csv", str(tmp_path / "more.csv"))[0] == 0
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(euro[0] + "\n\n" + euro[1] + "\n"))
    status, out, _ = run(capsys, "learn", "--model", str(model_dir), "--label", "exchange_rate")
    assert status == 0 and "1 new: exchange_rate" in out

    expected = LifelongClassifier("text", unknown_rate=0.02)
    expected.learn_many(card, ["lost_card"] * 2)
    expected.learn_many([t for t, _ in csv_rows], [label for _, label in csv_rows])
    expected.learn_many(euro, ["exchange_rate"] * 2)

    queries = ["someone stole my card", "euro rate please", "refund me"]
    status, out, _ = run(capsys, "predict", "--model", str(model_dir), "--json", *queries)
    assert status == 0
    rows = [json.loads(line) for line in out.splitlines()]
    reference_rows = expected.predict_detailed(queries, top=3)
    assert [row["input"] for row in rows] == queries
    assert [row["label"] for row in rows] == [row["label"] for row in reference_rows]
    np.testing.assert_allclose(
        [row["score"] for row in rows], [row["score"] for row in reference_rows], rtol=1e-5
    )
    assert [row["label"] for row in rows][:2] == ["lost_card", "exchange_rate"]

    status, out, _ = run(capsys, "info", "--model", str(model_dir), "--json")
    info = json.loads(out)
    assert info["class_counts"] == {
        "lost_card": 2,
        "card_arrival": 2,
        "refund": 2,
        "exchange_rate": 2,
    }
    assert info["format_version"] == 1 and info["kind"] == "saved model"
    assert info["encoder"]["kind"] == "text" and info["head"]["name"] == "ridge"
    assert info["disk_bytes"] == sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(model_dir)
        for name in names
    )


# --- a service directory -------------------------------------------------------------------------------
def service_updates(seed: int) -> list:
    rng = np.random.default_rng(seed)
    batches = []
    for step in range(5):
        X, y = clusters(rng, ["a", "b", "c"][: 2 + step % 2], 3)
        batches.append(("learn", X, y))
    batches.append(("unlearn", batches[0][1][:2], batches[0][2][:2]))
    return batches


def apply(store: ModelStore, batches: list) -> None:
    for operation, X, y in batches:
        (store.learn if operation == "learn" else store.unlearn)(X, y)


@pytest.fixture(scope="module")
def service_dir(tmp_path_factory) -> tuple[Path, list]:
    """A directory served twice: a snapshot, then journal records beyond it (as after a crash)."""
    path = tmp_path_factory.mktemp("service") / "model"
    first, second = service_updates(0), service_updates(1)[:3]
    options = {"encoder": "identity", "head_params": {"n_features": N_FEATURES, "ridge": RIDGE}}
    store = ModelStore.open(path, isolate=False, **options)
    apply(store, first)
    store.close()  # a clean stop snapshots
    store = ModelStore.open(path, isolate=False, **options)
    apply(store, second)
    store.close(snapshot=False)  # the journal holds these three
    return path, first + second


def assert_like(model: LifelongClassifier, expected: LifelongClassifier) -> None:
    assert sorted(model.classes_) == sorted(expected.classes_)
    order = [model.classes_.index(label) for label in expected.classes_]
    np.testing.assert_allclose(
        model.decision_scores(PROBES)[:, order], expected.decision_scores(PROBES), rtol=1e-6
    )
    np.testing.assert_allclose(
        model.novelty_scores(PROBES), expected.novelty_scores(PROBES), rtol=1e-6
    )


def test_load_reads_a_service_directory_snapshot_and_journal_without_writing(service_dir):
    path, batches = service_dir
    before = tree(path)
    model = LifelongClassifier.load(path)
    assert tree(path) == before
    assert_like(model, reference(batches, N_FEATURES))
    # The snapshot alone would miss the journal's three updates.
    record = json.loads((path / "service.json").read_text())
    assert record["snapshot_version"] == len(batches) - 3


def test_a_saved_model_a_service_adopted_loads_with_its_journal(tmp_path):
    first, more = service_updates(2)[:3], service_updates(3)[:2]
    reference(first, N_FEATURES).save(tmp_path / "model")
    store = ModelStore.open(tmp_path / "model", isolate=False)  # the snapshot is the directory
    apply(store, more)
    store.close(snapshot=False)
    assert json.loads((tmp_path / "model" / "service.json").read_text())["snapshot"] == "."
    assert_like(LifelongClassifier.load(tmp_path / "model"), reference(first + more, N_FEATURES))


def test_info_and_predict_on_a_service_directory(service_dir, capsys):
    path, batches = service_dir
    before = tree(path)
    status, out, _ = run(capsys, "info", "--model", str(path), "--json")
    info = json.loads(out)
    expected = reference(batches, N_FEATURES)
    assert status == 0 and info["kind"] == "service directory"
    assert info["service"] == {
        "version": len(batches),
        "snapshot": json.loads((path / "service.json").read_text())["snapshot"],
        "snapshot_version": len(batches) - 3,
        "journal_records_replayed": 3,
        "running": False,
        "format_version": 1,
    }
    assert info["format_version"] == 1  # the snapshot's model format
    assert info["class_counts"] == dict(
        zip(expected.classes_, expected.head._class_counts().tolist(), strict=True)
    )
    status, out, _ = run(capsys, "predict", "--model", str(path), "--", *map(as_cli, PROBES))
    assert status == 0
    assert [line.split("\t")[1] for line in out.splitlines()] == [
        "unknown" if label is None else label for label in expected.predict_many(PROBES)
    ]
    assert tree(path) == before


def test_learn_into_a_service_directory_is_replayed_by_the_service(service_dir, tmp_path, capsys):
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(service_dir[0], path)
    batches = list(service_dir[1])
    rng = np.random.default_rng(5)
    X, y = clusters(rng, ["d"], 3)
    status, out, _ = run(
        capsys, "learn", "--model", str(path), "--label", "d", "--", *map(as_cli, X)
    )
    assert status == 0 and f"version {len(batches) + 1}" in out
    batches.append(("learn", X, y))
    store = ModelStore.open(path, isolate=False)
    try:
        assert store.version == len(batches)
        served = store.wait_served(store.version, timeout=30)
        assert served.model is not None
        assert_like(served.model, reference(batches, N_FEATURES))
        # While the service runs, learning into its directory is refused and writes nothing.
        before = tree(path)
        status, _, err = run(
            capsys, "learn", "--model", str(path), "--label", "e", "1,2,3,4,5,6,7,8"
        )
        assert status == 2 and "running 'perennial serve'" in err and "/v1/learn" in err
        assert tree(path) == before
        # Reading it meanwhile is allowed, and says that a service runs.
        status, out, _ = run(capsys, "info", "--model", str(path), "--json")
        assert json.loads(out)["service"]["running"] is True
        assert tree(path) == before
    finally:
        store.close(snapshot=False)


# --- options refused before any work, changing nothing -------------------------------------------------
@pytest.fixture
def feature_model(tmp_path, capsys) -> Path:
    path = tmp_path / "features"
    status, _, err = run(
        capsys,
        "learn",
        "--model",
        str(path),
        "--encoder",
        "identity",
        "--label",
        "a",
        "1,0",
        "0.9,0.1",
    )
    assert status == 0, err
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--head", "ncm", "--label", "b", "0,1"], "--head describes a new model"),
        (["--encoder", "text", "--label", "b", "0,1"], "--encoder describes a new model"),
        (["--csv", "x.csv", "--label", "b"], "--csv brings its own"),
        (["0,1"], "--label LABEL"),
        (["--label", "b", "0,1,2"], "expected 2 features"),
        (["--label", "b\nc", "0,1"], "control character"),
        (["--label", "b", "0,x"], "comma-separated numbers"),
    ],
)
def test_refused_learning_changes_nothing(feature_model, capsys, argv, message):
    before = tree(feature_model)
    status, _, err = run(capsys, "learn", "--model", str(feature_model), *argv)
    assert status == 2
    assert message in err
    assert tree(feature_model) == before


def test_a_csv_with_one_bad_row_teaches_nothing(feature_model, tmp_path, capsys):
    (tmp_path / "rows.csv").write_text('text,category\n"0,1",b\n"1,1",\n', encoding="utf-8")
    before = tree(feature_model)
    status, _, err = run(
        capsys, "learn", "--model", str(feature_model), "--csv", str(tmp_path / "rows.csv")
    )
    assert status == 2 and "blank" in err
    assert tree(feature_model) == before


@pytest.mark.parametrize("command", ["learn", "fit"])
@pytest.mark.parametrize("target", ["file", "folder"])
def test_a_file_or_a_foreign_folder_is_refused_before_any_data_is_read(
    command, target, tmp_path, capsys, monkeypatch
):
    import perennial.datasets

    def never(*args, **kwargs):
        raise AssertionError("data was read before --model was checked")

    monkeypatch.setattr(perennial.datasets, "load_dataset", never)
    monkeypatch.setattr(LifelongClassifier, "__init__", never)
    path = tmp_path / "model"
    if target == "file":
        path.write_text("not a model")
    else:
        path.mkdir()
        (path / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    extra = ["--data", "clinc150"] if command == "fit" else ["--label", "a", "some text"]
    status, _, err = run(capsys, command, "--model", str(path), *extra)
    assert status == 2
    assert (
        str(path) in err and ("is a file" if target == "file" else "not a model directory") in err
    )
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["incremental", "--data", "clinc150", "--test-fraction", "2"],
            "--test-fraction: expected",
        ),
        (["incremental", "--data", "clinc150", "--step", "0"], "--step: expected a positive"),
        (
            ["bench", "--scenario", "split-mnist", "--strategies", "naive", "--seeds", "0"],
            "--seeds",
        ),
        (["fit", "--data", "clinc150", "--model", "m", "--workers", "0"], "--workers"),
        (["predict", "--model", "m", "--top", "0", "x"], "--top"),
    ],
)
def test_bad_numbers_are_refused_by_the_parser(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_library_names_in_errors_are_written_as_options(capsys):
    status, _, err = run(
        capsys, "bench", "--scenario", "split-mnist", "--strategies", "naive", "--tasks", "4",
        "--classes-per-task", "3",
    )  # fmt: skip
    assert status == 2
    assert "--tasks 4" in err and "--classes-per-task 3" in err
    assert "n_tasks" not in err and "classes_per_task" not in err


def status_of(capsys, argv: list[str]) -> tuple[int, str]:
    """The exit status and standard error of ``perennial ARGV``, parser errors included."""
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = int(exit_.code or 0)
    return status, capsys.readouterr().err


@pytest.fixture
def no_loading(monkeypatch):
    """Data loaders, scenario builders and clusters that fail the test if anything calls them."""
    import perennial.datasets
    import perennial.distributed
    import perennial.scenarios
    import perennial.scenarios.mnist

    def never(*args, **kwargs):
        raise AssertionError("work started before every option was checked")

    monkeypatch.setattr(perennial.datasets, "load_dataset", never)
    monkeypatch.setattr(perennial.scenarios.mnist, "load_mnist", never)
    monkeypatch.setattr(perennial.scenarios, "make_scenario", never)
    monkeypatch.setattr(perennial.distributed, "dask_client", never)


BENCH = ["bench", "--scenario", "split-mnist", "--strategies", "naive,er"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tune-tasks", "0"], "--tune-tasks: expected a positive integer"),
        (["--tune-tasks", "two"], "--tune-tasks: expected a positive integer"),
        (["--tune-fraction", "1.5"], "--tune-fraction: expected a number strictly between"),
        (["--tune-fraction", "0"], "--tune-fraction: expected a number strictly between"),
        (["--tune", "--lr", "-1"], "--lr must be"),
        (["--tune", "--epochs", "2", "--hidden", "0"], "--hidden must be"),
        (["--tune", "--scheduler", "garbage"], "--scheduler must be an address"),
        (["--json", "missing/results.json"], "the folder 'missing' does not exist"),
        (["--json", "folder"], "--json folder is a directory"),
        (["--report", "notes.txt"], "--report notes.txt is a file"),
        (["--report", "notes.txt/report"], "'notes.txt' is a file"),
    ],
)
def test_bench_options_are_checked_before_any_data_is_loaded(
    extra, message, tmp_path, capsys, monkeypatch, no_loading
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    status, err = status_of(capsys, [*BENCH, *extra])
    assert status == 2
    assert message in err
    assert tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "folder",
        "notes.txt",
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_bench_refuses_a_folder_it_cannot_write_into_before_any_work(
    tmp_path, capsys, monkeypatch, no_loading
):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for option, path in [("--json", locked / "r.json"), ("--report", locked / "report")]:
            status, err = status_of(capsys, [*BENCH, option, str(path)])
            assert status == 2 and "is not writable" in err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_bench_writes_where_the_checks_allowed(tmp_path, monkeypatch):
    """The checks refuse no destination a run can write: a new report folder (parents
    included) and a JSON file in an existing folder, relative or absolute."""
    from perennial.cli import _check_file_destination, _check_folder_destination

    monkeypatch.chdir(tmp_path)
    _check_file_destination("results.json", "--json")
    _check_file_destination(str(tmp_path / "results.json"), "--json")
    _check_folder_destination("new/deeper/report", "--report")
    _check_folder_destination(str(tmp_path), "--report")
    assert list(tmp_path.iterdir()) == []


def test_fit_checks_the_scheduler_address_before_loading(tmp_path, capsys, monkeypatch, no_loading):
    monkeypatch.chdir(tmp_path)
    status, err = status_of(
        capsys, ["fit", "--data", "clinc150", "--model", "m", "--scheduler", "tcp://nohost"]
    )
    assert status == 2 and "--scheduler must be an address" in err
    assert list(tmp_path.iterdir()) == []


#: A Python identifier with an underscore (max_waiters, wait_seconds, ...) in a message.
PYTHON_NAME = re.compile(r"(?<![\w-])[a-z]+(?:_[a-z]+)+\b")


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["serve", "--model", "m", "--port", "70000"], "--port"),
        (["serve", "--model", "m", "--port", "-1"], "--port"),
        (["serve", "--model", "m", "--max-waiters", "0"], "--max-waiters"),
        (["serve", "--model", "m", "--max-waiters-per-client", "0"], "--max-waiters-per-client"),
        (["serve", "--model", "m", "--wait-seconds", "0"], "--wait-seconds"),
        (["serve", "--model", "m", "--shutdown-seconds", "-1"], "--shutdown-seconds"),
        (["serve", "--model", "m", "--review-ttl", "-5"], "--review-ttl"),
        (["serve", "--model", "m", "--max-batch", "0"], "--max-batch"),
        ([*BENCH, "--tune-fraction", "2"], "--tune-fraction"),
        ([*BENCH, "--tune-tasks", "-3"], "--tune-tasks"),
        ([*BENCH, "--lr", "0"], "--lr"),
        (["bench", "--scenario", "class-incremental", "--strategies", "naive"], "--data"),
        (["fit", "--data", "clinc150", "--model", "m", "--scheduler", "nowhere"], "--scheduler"),
        (["fit", "--data", "clinc150", "--model", "m", "--timeout", "0"], "--timeout"),
    ],
)
def test_errors_name_the_option_not_the_python_parameter(
    argv, option, tmp_path, capsys, monkeypatch
):
    import perennial.datasets

    def never(*args, **kwargs):
        raise AssertionError("data was loaded before the options were checked")

    monkeypatch.setattr(perennial.datasets, "load_dataset", never)
    monkeypatch.chdir(tmp_path)
    status, err = status_of(capsys, argv)
    message = err.strip().splitlines()[-1]  # the error itself, after any usage line
    assert status == 2
    assert re.search(rf"(?<![\w-]){re.escape(option)}\b(?!-)", message), message
    assert PYTHON_NAME.search(message) is None, message
    assert list(tmp_path.iterdir()) == []


def test_every_serving_limit_has_a_cli_spelling():
    """The library's own checks of the service's limits, should they speak, speak CLI."""
    from perennial.cli import cli_spelling
    from perennial.service.app import Limits

    options = vars(dict(parsers())["perennial serve"].parse_args(["--model", "m"]))
    names = [name for name in vars(Limits()) if name in options]  # those the CLI sets
    assert len(names) >= 6
    for name in [*names, "shutdown_seconds", "review_ttl", "snapshot_every"]:
        spelled = cli_spelling(f"{name} must be a positive number, got 0")
        assert spelled.startswith("--" + name.replace("_", "-")), spelled
        assert PYTHON_NAME.search(spelled) is None, spelled
    assert cli_spelling("class-incremental needs data=: a data set") == (
        "class-incremental needs --data: a data set"
    )
    assert (
        cli_spelling("the data set and its training data") == "the data set and its training data"
    )


# --- help -----------------------------------------------------------------------------------------------
def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    found = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        found.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child_name, child in action.choices.items():
                    walk(child, f"{name} {child_name}")

    walk(build_parser(), "perennial")
    return found


def option_help(parser: argparse.ArgumentParser, option: str) -> str:
    """The help lines of ``option`` in the parser's --help, joined."""
    text = parser.format_help()
    lines = text.splitlines()
    start = next(
        i for i, line in enumerate(lines) if re.match(rf"\s+{re.escape(option)}(?=[\s,]|$)", line)
    )
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if re.match(r"\s{2,}-", line) or not line.startswith(" " * 10):
            break
        block.append(line)
    return " ".join(" ".join(block).split())


@pytest.mark.parametrize(
    ("name", "parser"), parsers(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_option_explains_itself_and_shows_its_default(name, parser):
    text = parser.format_help()
    assert "%%" not in text and "%(" not in text
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        option = (
            action.option_strings[-1]
            if action.option_strings[0] == "-h"
            else action.option_strings[0]
        )
        shown = option_help(parser, option)
        words = shown.split(None, 1)
        # What the option is, besides its metavar and its default ("default ridge" is not help).
        explained = re.sub(r"\(?\bdefault\b:?\s*[^);]*\)?", "", words[1] if len(words) > 1 else "")
        if action.metavar is None and action.choices is not None:
            explained = explained.replace("{" + ",".join(map(str, action.choices)) + "}", "")
        explained = explained.replace(str(action.metavar or action.dest.upper()), "")
        assert len(re.findall(r"[a-z]{3,}", explained)) >= 2, (
            f"{name} {option} does not say what it is: {shown!r}"
        )
        default = action.default
        if action.required or isinstance(action, argparse._StoreTrueAction):
            continue
        if default is None:
            assert "default" in shown, f"{name} {option}: what happens without it? {shown!r}"
        elif isinstance(default, bool):
            assert "default" in shown, f"{name} {option}: {shown!r}"
        else:
            value = f"{default:g}" if isinstance(default, float) else str(default)
            assert "default" in shown and value in shown.replace(",", ""), (
                f"{name} {option}: default {value!r} not shown in {shown!r}"
            )


def test_bench_help_lists_every_scenario_and_strategy_with_a_line(capsys):
    from perennial.scenarios import SCENARIO_NAMES
    from perennial.strategies import STRATEGY_NAMES

    bench = dict(parsers())["perennial bench"]
    lines = bench.format_help().splitlines()
    for name in (*SCENARIO_NAMES, *STRATEGY_NAMES):
        line = next((line for line in lines if line.startswith(f"  {name} ")), None)
        assert line is not None and len(line.split()) > 3, name


@pytest.mark.parametrize("command", ["incremental", "fit", "openset", "serve", "learn"])
def test_head_help_says_what_a_head_is_and_names_every_head(command):
    from perennial.heads import HEADS

    shown = option_help(dict(parsers())[f"perennial {command}"], "--head")
    described = shown.split("}", 1)[1]  # after the choices
    assert "classifier" in described and "features" in described
    for head in HEADS:
        assert re.search(rf"(?<![\w-]){re.escape(head)}, \w+", described), (head, shown)
    assert "default ridge" in described


def test_the_backends_are_explained_and_serve_takes_encoder_auto():
    shown = option_help(dict(parsers())["perennial incremental"], "--backend")
    assert "onnx-fp32, ONNX Runtime with float32" in shown and "int8" in shown
    serve = dict(parsers())["perennial serve"]
    assert serve.parse_args(["--model", "m"]).encoder == "auto"
    assert "auto (the default)" in option_help(serve, "--encoder")


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"perennial {__version__}"


# --- an image model: image files as arguments and in a CSV ----------------------------------------------
def test_an_image_model_learns_files_and_a_csv_of_relative_paths(tmp_path, capsys):
    import skimage.data
    from PIL import Image

    from perennial.encoders import make_encoder

    photos = tmp_path / "photos"
    photos.mkdir()
    names = {"chelsea": "cat", "astronaut": "person", "coffee": "cup", "rocket": "rocket"}
    for name in names:
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(photos / f"{name}.png")
    (photos / "more.csv").write_text(
        "text,category\n"
        + "".join(f"{n}.png,{names[n]}\n" for n in ("astronaut", "coffee", "rocket"))
    )
    model_dir = tmp_path / "things"
    options = ["--encoder", "image", "--image-size", "64", "--backend", "torch"]
    cat = str(photos / "chelsea.png")
    status, _, err = run(
        capsys, "learn", "--model", str(model_dir), *options, "--label", "cat", cat
    )
    assert status == 0, err
    assert (
        run(capsys, "learn", "--model", str(model_dir), "--csv", str(photos / "more.csv"))[0] == 0
    )

    expected = LifelongClassifier(make_encoder("image", image_size=64, backend="torch"))
    expected.learn_many([cat], ["cat"])
    expected.learn_many(
        [str(photos / f"{n}.png") for n in ("astronaut", "coffee", "rocket")],
        ["person", "cup", "rocket"],
    )
    files = [str(photos / f"{name}.png") for name in names]
    status, out, _ = run(capsys, "predict", "--model", str(model_dir), "--json", *files)
    rows = [json.loads(line) for line in out.splitlines()]
    reference_rows = expected.predict_detailed(files)
    assert [row["label"] for row in rows] == [row["label"] for row in reference_rows]
    np.testing.assert_allclose(
        [row["score"] for row in rows], [row["score"] for row in reference_rows], rtol=1e-5
    )
    assert [row["label"] for row in rows] == list(names.values())
