"""The ``perennial incremental`` command, run as a real subprocess on real data."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from perennial.cli import main
from perennial.datasets import data_root, load_intent_csv
from perennial.encoders.text import TextEncoder
from perennial.heads import RidgeHead

CLASSES = [
    "card_arrival",
    "exchange_rate",
    "lost_or_stolen_card",
    "pending_transfer",
    "top_up_failed",
    "verify_my_identity",
]


@pytest.fixture(scope="module")
def small_banking_csv(tmp_path_factory) -> Path:
    """Six BANKING77 intents, 40 training texts each, as a text,category CSV."""
    rows = []
    with open(data_root() / "banking77" / "train.csv", newline="", encoding="utf-8") as stream:
        counts = dict.fromkeys(CLASSES, 0)
        for row in csv.DictReader(stream):
            if row["category"] in counts and counts[row["category"]] < 40:
                counts[row["category"]] += 1
                rows.append(row)
    path = tmp_path_factory.mktemp("data") / "small.csv"
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "category": r["category"]} for r in rows)
    return path


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PERENNIAL_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "perennial.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_incremental_json_matches_an_independent_batch_fit(small_banking_csv, tmp_path):
    done = run_cli(
        "incremental",
        "--data",
        str(small_banking_csv),
        "--step",
        "2",
        "--seed",
        "3",
        "--test-fraction",
        "0.25",
        "--n-features",
        "256",
        "--json",
        cache=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key in (
        "final_accuracy",
        "joint_accuracy",
        "sgd_finetune_accuracy",
        "steps",
        "learn_us_per_example",
        "state_bytes",
        "raw_bytes_stored",
    ):
        assert key in result
    assert [s["classes_seen"] for s in result["steps"]] == [2, 4, 6]
    assert result["raw_bytes_stored"] == 0
    # G and C (the projection is drawn again from the seed, not saved) and the counts.
    assert result["state_bytes"] == 8 * (256 * 256 + 256 * 6) + 8 * 6

    # Reference: the same split learned all at once; class-incremental learning must equal it.
    data = load_intent_csv(small_banking_csv, test_fraction=0.25, seed=3)
    encoder = TextEncoder()
    head = RidgeHead(n_features=256, seed=3)
    head.learn_many(encoder.encode(list(data.train.inputs)), list(data.train.labels))
    predicted = head.predict_many(encoder.encode(list(data.test.inputs)))
    expected = float(np.mean(np.asarray(predicted, dtype=object) == data.test.labels))
    assert result["final_accuracy"] == pytest.approx(expected, abs=1e-12)
    assert 0.0 <= result["sgd_finetune_accuracy"] < result["final_accuracy"]
    # The progress table went to stderr, one row per step, leaving stdout to the JSON alone.
    assert "accuracy" in done.stderr and "learn ms/class" in done.stderr
    assert all(f"{k}/3" in done.stderr for k in (1, 2, 3))


def test_incremental_table_output(small_banking_csv, tmp_path):
    done = run_cli(
        "incremental",
        "--data",
        str(small_banking_csv),
        "--step",
        "3",
        "--head",
        "ncm",
        "--no-baselines",
        cache=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "2/2" in done.stdout and "instant learner (NCMHead" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "imagenet"], "unknown data set 'imagenet'"),
        (["--data", "clinc150", "--step", "0"], "--step: expected a positive integer"),
        (["--data", "clinc150", "--test-fraction", "2"], "--test-fraction: expected a number"),
        (["--data", "clinc150", "--n-features", "0"], "--n-features"),
    ],
)
def test_bad_options_exit_2_with_a_message(args, message, tmp_path):
    done = run_cli("incremental", *args, "--no-baselines", cache=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr


# --- perennial serve: defaults of a new and an existing model ----------------------------------------
def captured_serve(monkeypatch, argv):
    """Run ``perennial serve ARGV`` with the server replaced by a recorder; its arguments."""
    import perennial.service.server as server

    seen: dict = {}

    def record(model, **kwargs):
        seen.update(kwargs, model=model)
        return 0

    monkeypatch.setattr(server, "serve", record)
    assert main(["serve", *argv]) == 0
    return seen


def test_a_new_text_model_is_served_through_onnx_with_one_encoder_thread(monkeypatch, tmp_path):
    seen = captured_serve(monkeypatch, ["--model", str(tmp_path / "new")])
    assert seen["encoder_params"] == {"backend": "onnx", "num_threads": 1}
    assert seen["background_nice"] == 10 and seen["background_idle"] is True
    # Asked for explicitly, torch stays torch, and the thread count is the user's.
    seen = captured_serve(
        monkeypatch,
        ["--model", str(tmp_path / "new"), "--backend", "torch", "--encoder-threads", "2"],
    )
    assert seen["encoder_params"] == {"backend": "torch", "num_threads": 2}


def test_a_new_model_with_a_pretrained_classifier_is_an_image_model(monkeypatch, tmp_path):
    argv = ["--model", str(tmp_path / "new"), "--pretrained", "efficientnet-lite0"]
    seen = captured_serve(monkeypatch, argv)
    assert seen["pretrained"] == "efficientnet-lite0"
    assert seen["encoder_params"] == {"backend": "onnx", "num_threads": 1}
    assert captured_serve(monkeypatch, ["--model", str(tmp_path / "new")])["pretrained"] is None
    # Feature vectors have no backend to choose, and no encoder threads.
    seen = captured_serve(monkeypatch, ["--model", str(tmp_path / "new"), "--encoder", "identity"])
    assert seen["encoder_params"] == {}
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--model", str(tmp_path / "new"), "--pretrained", "resnet50"])
    assert exited.value.code == 2


def test_an_existing_model_keeps_its_recorded_backend(monkeypatch, tmp_path):
    import json

    existing = tmp_path / "existing"
    existing.mkdir()
    record = {"encoder": {"kind": "text", "params": {"backend": "torch"}}}
    (existing / "service.json").write_text(json.dumps(record))
    seen = captured_serve(monkeypatch, ["--model", str(existing)])
    assert "backend" not in seen["encoder_params"]  # the store rebuilds the recorded one
    assert seen["encoder_params"]["num_threads"] == 1
    (existing / "service.json").write_text(json.dumps({"encoder": {"kind": "identity"}}))
    seen = captured_serve(monkeypatch, ["--model", str(existing)])
    assert seen["encoder_params"] == {}  # feature vectors: no encoder threads to set


def test_the_backend_option_reaches_the_image_encoder(monkeypatch, tmp_path):
    from perennial import cli
    from perennial.encoders.image import ImageEncoder

    seen = captured_serve(
        monkeypatch,
        ["--model", str(tmp_path / "new"), "--encoder", "image", "--backend", "onnx-fp32"],
    )
    assert seen["encoder_params"] == {"backend": "onnx-fp32", "num_threads": 1}
    seen = captured_serve(monkeypatch, ["--model", str(tmp_path / "new"), "--encoder", "image"])
    # A new image model, like a new text one, encodes with int8 ONNX unless asked otherwise.
    assert seen["encoder_params"] == {"backend": "onnx", "num_threads": 1}
    args = cli.build_parser().parse_args(["incremental", "--data", "mnist", "--backend", "onnx"])
    encoder = cli._encoder_for(args, "image")
    assert isinstance(encoder, ImageEncoder) and encoder.backend == "onnx"
    args = cli.build_parser().parse_args(["incremental", "--data", "mnist"])
    assert cli._encoder_for(args, "image").backend == "torch"


# --- the parser: choices from the registries, head options checked against the head -----------------
def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def offered(option: str, text: str) -> list[str] | None:
    """The choices ``--help`` lists for ``option``, or None if the command lacks it."""
    found = re.search(rf"{re.escape(option)} \{{([^}}]*)\}}", text)
    return found.group(1).split(",") if found else None


def test_every_command_offers_exactly_the_registered_heads_and_encoders(capsys):
    from perennial.encoders import ENCODER_NAMES as ENCODERS
    from perennial.heads import HEADS

    listed = re.search(r"\{([^}]*)\}", help_text(capsys))  # usage: perennial [-h] {...}
    assert listed is not None
    commands = listed.group(1).split(",")
    assert commands == [
        "incremental",
        "fit",
        "openset",
        "bench",
        "camera",
        "learn",
        "predict",
        "info",
        "serve",
    ]
    heads = {command: offered("--head", help_text(capsys, command)) for command in commands}
    assert heads == {
        "incremental": list(HEADS),
        "fit": list(HEADS),
        "openset": list(HEADS),
        "bench": None,
        "camera": None,  # its sub-commands learn and watch take --head for a new model
        "learn": list(HEADS),  # for a new model
        "predict": None,
        "info": None,
        "serve": list(HEADS),
    }
    for action in ("learn", "watch"):
        assert offered("--head", help_text(capsys, "camera", action)) == list(HEADS)
    encoders = {command: offered("--encoder", help_text(capsys, command)) for command in commands}
    assert encoders == {
        "incremental": ["auto", *ENCODERS],
        "fit": ["auto", *ENCODERS],
        "openset": ["auto", *ENCODERS],
        "bench": None,
        "camera": None,  # always the image encoder
        "learn": ["auto", *ENCODERS],
        "predict": None,
        "info": None,
        "serve": ["auto", *ENCODERS],
    }


@pytest.mark.parametrize("command", ["incremental", "fit", "openset", "serve"])
@pytest.mark.parametrize("option", ["--head", "--encoder"])
def test_an_unknown_head_or_encoder_is_refused_at_parse_time(command, option, capsys, monkeypatch):
    import perennial.cli as cli

    def never(args):  # the parser must refuse before any command starts
        raise AssertionError("the command ran")

    for name in ("cmd_incremental", "cmd_fit", "cmd_openset", "cmd_serve"):
        monkeypatch.setattr(cli, name, never)
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--data", "clinc150", "--model", "m", option, "foo"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: invalid choice: 'foo'" in err
    expected = ["ridge", "ridge-ensemble", "slda", "ncm"] if option == "--head" else ["identity"]
    assert all(f"'{name}'" in err for name in expected)


@pytest.mark.parametrize(
    ("argv", "params"),
    [
        # The documented defaults of the experiments: 4096 random features, 2 members, GCV.
        (["incremental", "--data", "x"], {"n_features": 4096, "seed": 0}),
        (
            ["fit", "--data", "x", "--model", "m", "--head", "ridge-ensemble", "--seed", "5"],
            {"n_features": 4096, "n_members": 2, "seed": 5},
        ),
        (
            ["openset", "--head", "ridge-ensemble", "--members", "3", "--ridge", "0.5"],
            {"n_features": 4096, "n_members": 3, "ridge": 0.5, "seed": 0},
        ),
        (["incremental", "--data", "x", "--head", "ncm"], {}),
        (["openset", "--head", "slda"], {}),
        # A served model keeps the head's own defaults: only what was given is passed on.
        (["serve", "--model", "m"], {}),
        (["serve", "--model", "m", "--n-features", "128"], {"n_features": 128}),
        (["serve", "--model", "m", "--head", "ridge-ensemble", "--members", "3"], {"n_members": 3}),
    ],
)
def test_head_parameters_from_the_options(argv, params):
    from perennial.cli import _head_params, build_parser

    assert _head_params(build_parser().parse_args(argv)) == params


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["incremental", "--data", "clinc150", "--head", "ncm", "--members", "3"],
            "--members 3 does not apply to the 'ncm' head; it applies to 'ridge-ensemble'",
        ),
        (
            ["openset", "--head", "slda", "--n-features", "512"],
            "--n-features 512 does not apply to the 'slda' head; "
            "it applies to 'ridge' and 'ridge-ensemble'",
        ),
        (
            ["serve", "--model", "m", "--head", "ridge", "--members", "2"],
            "--members 2 does not apply to the 'ridge' head",
        ),
    ],
)
def test_a_head_option_the_head_does_not_take_exits_2(argv, message, capsys, tmp_path):
    argv = [str(tmp_path / a) if a == "m" else a for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()  # refused before anything was written


def test_bench_checks_scenario_and_strategies_against_their_registries(capsys):
    from perennial.scenarios import SCENARIO_NAMES

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--scenario", "split-mnst", "--strategies", "naive"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'split-mnst'" in err and all(name in err for name in SCENARIO_NAMES)
    # Names are matched case-insensitively, as make_scenario does.
    from perennial.cli import build_parser

    args = build_parser().parse_args(["bench", "--scenario", "Split-MNIST", "--strategies", "er"])
    assert (args.scenario, args.strategies) == ("split-mnist", ["er"])
