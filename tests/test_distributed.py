"""Distributed fitting on a real Dask ``LocalCluster`` against a fit in one process.

"The same model" means: the same classes in the same order (first appearance in the data), the
same counts and statistics (integers exactly, floats to within rounding), and decision scores
within 1e-6 relative on held-out rows. The reference is the head learning the whole data in one
``learn_many`` call in this process, with no partitions and no merges.

The worker-death tests kill worker processes for real (``os._exit`` inside a task). They come
last: the cluster's nannies restart the workers, and each test waits for both to be back.
"""

from __future__ import annotations

import csv
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

from perennial import LifelongClassifier  # noqa: E402
from perennial.cli import main  # noqa: E402
from perennial.datasets import data_root, load_mnist  # noqa: E402
from perennial.distributed import (  # noqa: E402
    fit_distributed,
    learn_partition,
    merge_pair,
    partition_bounds,
)
from perennial.encoders import FunctionEncoder, IdentityEncoder  # noqa: E402
from perennial.exceptions import (  # noqa: E402
    ClusterError,
    InvalidParameterError,
    LabelLengthError,
)
from perennial.heads import NCMHead, RidgeEnsembleHead, RidgeHead, SLDAHead  # noqa: E402
from perennial.heads.base import Head  # noqa: E402

BANKING_CLASSES = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "top_up_failed"]


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """Two worker processes, one thread each; a task may kill its worker once and be rerun.

    ``allowed-failures`` is 1 (Dask's default is 3) so that a task that always kills its worker
    fails after two deaths rather than four: the same path, less waiting.
    """
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
    assert cluster.scheduler.allowed_failures == 1
    client = distributed.Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3,000 real MNIST training digits (uint8 pixels) and 500 test digits."""
    dataset = load_mnist()
    return dataset.train.inputs[:3000], dataset.train.labels[:3000], dataset.test.inputs[:500]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def assert_same_model(got: Head, expected: Head, X_test: Any) -> None:
    assert got.classes_ == expected.classes_  # same labels, same order of first appearance
    assert got.n_seen_ == expected.n_seen_ and got.dim_ == expected.dim_
    got_meta, got_arrays = got.get_state()
    meta, arrays = expected.get_state()
    assert got_meta == meta
    assert got_arrays.keys() == arrays.keys()
    for name, value in arrays.items():
        if value.dtype.kind == "i":  # counts
            np.testing.assert_array_equal(got_arrays[name], value, err_msg=name)
        else:
            scale = max(float(np.max(np.abs(value))), 1e-300)
            assert np.max(np.abs(got_arrays[name] - value)) <= 1e-9 * scale, name
    features = IdentityEncoder().encode(X_test)
    scores, reference = got.decision_scores(features), expected.decision_scores(features)
    assert np.max(np.abs(scores - reference)) <= 1e-6 * np.max(np.abs(reference))
    if isinstance(expected, RidgeHead):
        assert isinstance(got, RidgeHead)
        assert got.ridge_ == pytest.approx(expected.ridge_, rel=1e-9)  # GCV saw the same sums


def blobs(n: int = 600, dim: int = 16, n_classes: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 3.0, (n_classes, dim))
    labels = rng.integers(0, n_classes, n)
    return centers[labels] + rng.normal(0.0, 1.0, (n, dim)), [f"c{k}" for k in labels]


def dying_encoder(trigger: np.ndarray, marker: Path | None) -> FunctionEncoder:
    """Identity features, except that the worker process meeting ``trigger`` exits on the spot.

    With a ``marker`` path it dies only once: it creates the marker as it goes, and the rerun
    finds it. The function is local, so cloudpickle sends it by value to the workers.
    """

    def encode(batch: Any) -> np.ndarray:
        rows = np.asarray(batch, dtype=np.float64)
        if np.all(rows == trigger, axis=1).any() and (marker is None or not marker.exists()):
            if marker is not None:
                marker.touch()
            os._exit(1)
        return rows

    return FunctionEncoder(encode, name="dies-on-one-row")


# --- the pieces, in this process ------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_partition_bounds_cover_the_data_like_array_split(n):
    for partitions in range(1, n + 1):
        bounds = partition_bounds(n, partitions)
        expected = [(int(p[0]), int(p[-1]) + 1) for p in np.array_split(np.arange(n), partitions)]
        assert bounds == expected


@pytest.mark.parametrize(
    ("n", "partitions", "message"),
    [(5, 6, "at most 5"), (5, 0, "partitions must be a positive int"), (0, 1, "n must be")],
)
def test_partition_bounds_refuse_impossible_cuts(n, partitions, message):
    with pytest.raises(InvalidParameterError, match=message):
        partition_bounds(n, partitions)


def test_partitions_learned_apart_and_merged_in_a_tree_equal_one_batch(mnist):
    X, y, X_test = mnist
    head = RidgeHead(n_features=64)
    parts = [
        learn_partition(None, head, X[a:b], y[a:b], chunk_size=300)
        for a, b in partition_bounds(len(y), 5)
    ]
    before = parts[0].head.get_state()[1]["gram"].copy()
    merged = merge_pair(
        merge_pair(parts[0], parts[1]), merge_pair(parts[2], merge_pair(*parts[3:]))
    )
    np.testing.assert_array_equal(parts[0].head.get_state()[1]["gram"], before)  # inputs intact
    reference = head.clone()
    reference.learn_many(IdentityEncoder().encode(X), y)
    assert_same_model(merged.head, reference, X_test)


def test_bad_arguments_are_refused_before_any_cluster_is_contacted():
    X, y = blobs(20)
    unanswered = f"tcp://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(LabelLengthError, match="20 inputs but 19 labels"):
        fit_distributed(X, y[:-1], scheduler=unanswered, timeout=30)
    with pytest.raises(InvalidParameterError, match=r"either scheduler .* or workers"):
        fit_distributed(X, y, scheduler=unanswered, workers=2)
    with pytest.raises(InvalidParameterError, match="partitions must be a positive int, got 0"):
        fit_distributed(X, y, scheduler=unanswered, partitions=0)
    with pytest.raises(InvalidParameterError, match="'localhost'"):
        fit_distributed(X, y, scheduler="localhost")  # no port
    # Waiting for the unanswered address would take a whole timeout (30 s, also the default):
    # bounded by that, not by a wall-time budget that a loaded or niced machine could miss.
    assert time.monotonic() - start < 30


def test_an_unanswered_scheduler_is_a_cluster_error_within_the_timeout():
    address = f"tcp://127.0.0.1:{free_port()}"
    X, y = blobs(20)
    start = time.monotonic()
    with pytest.raises(ClusterError, match=f"no Dask scheduler answered at '{address}' within 1 s"):
        fit_distributed(X, y, scheduler=address, timeout=1)
    assert time.monotonic() - start < 10


# --- on the cluster ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make_head", "partitions", "by_label"),
    [
        (lambda: RidgeHead(n_features=64), 5, False),
        (lambda: RidgeHead(n_features=64), 3, True),  # classes first seen in later partitions
        (lambda: SLDAHead(), 4, False),
        (lambda: NCMHead(), None, True),
        (lambda: RidgeEnsembleHead(n_members=2, n_features=32), 2, False),
    ],
    ids=["ridge", "ridge-sorted", "slda", "ncm-default-partitions", "ridge-ensemble"],
)
def test_distributed_fit_equals_the_single_process_fit(
    client, mnist, make_head, partitions, by_label
):
    X, y, X_test = mnist
    if by_label:
        order = np.argsort(y, kind="stable")
        X, y = X[order], y[order]
    messages: list[str] = []
    model = fit_distributed(
        X,
        y,
        encoder="identity",
        head=make_head(),
        client=client,
        partitions=partitions,
        progress=messages.append,
    )
    reference = make_head()
    reference.learn_many(IdentityEncoder().encode(X), y)
    assert_same_model(model.head, reference, X_test)
    expected_partitions = partitions or 4  # default: two per worker thread, 2 x 1 here
    # One line per partition (examples learned, rate, time left), then the summary line.
    assert [m.rsplit(" partitions learned: ", 1)[-1] for m in messages[:-1]] == [
        f"{i}/{expected_partitions}" for i in range(1, expected_partitions + 1)
    ]
    assert messages[-2].startswith(f"fit: {len(y)}/{len(y)} examples (")
    assert messages[-1].startswith(f"fit: {len(y)}/{len(y)} examples in ")
    assert client.status == "running"  # a client passed in is left open


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> Path:
    """Four BANKING77 intents, 50 training texts each (200), as a text,category CSV."""
    rows = []
    counts = dict.fromkeys(BANKING_CLASSES, 0)
    with open(data_root() / "banking77" / "train.csv", newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            if row["category"] in counts and counts[row["category"]] < 50:
                counts[row["category"]] += 1
                rows.append({"text": row["text"], "category": row["category"]})
    path = tmp_path_factory.mktemp("data") / "small.csv"
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PERENNIAL_DATA": str(data_root())}
    return subprocess.run(
        [sys.executable, "-m", "perennial.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_cli_fit_on_two_local_workers_saves_the_single_process_model(small_csv, tmp_path):
    from perennial.datasets import load_intent_csv
    from perennial.encoders.text import TextEncoder

    model_dir = tmp_path / "model"
    done = run_cli(
        "fit",
        "--data",
        str(small_csv),
        "--model",
        str(model_dir),
        "--workers",
        "2",
        "--partitions",
        "4",
        "--n-features",
        "256",
    )
    assert done.returncode == 0, done.stderr
    assert "learned 200 examples of 4 classes" in done.stdout
    assert "partitions learned: 4/4" in done.stderr
    # transformers' "Loading weights" bar (drawn by each worker) and Dask's shutdown warnings
    # are silenced.
    assert "Loading weights" not in done.stderr and "still alive" not in done.stderr
    saved = LifelongClassifier.load(model_dir)
    texts = load_intent_csv(small_csv, small_csv).train
    encoder = TextEncoder()
    # The workers encoded the four partitions separately: encode them the same way here, so
    # that the comparison is of the learning, not of float32 rounding in other batch shapes.
    features = np.vstack(
        [encoder.encode(texts.inputs[a:b]) for a, b in partition_bounds(len(texts), 4)]
    )
    reference = RidgeHead(n_features=256)
    reference.learn_many(features, texts.labels)
    assert saved.head.classes_ == reference.classes_
    assert_same_model(saved.head, reference, features)


def test_cli_with_an_unanswered_scheduler_exits_2_within_the_timeout(small_csv, tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.monotonic()
    done = run_cli(
        "fit",
        "--data",
        str(small_csv),
        "--model",
        str(tmp_path / "model"),
        "--scheduler",
        address,
        "--timeout",
        "2",
    )
    assert done.returncode == 2
    assert f"no Dask scheduler answered at '{address}' within 2 s" in done.stderr
    assert time.monotonic() - start < 30  # 2 s of waiting plus the interpreter's start
    assert not (tmp_path / "model").exists()


# --- workers dying (last: they restart the cluster's workers) ----------------------------------------
def test_a_worker_dying_mid_fit_is_replaced_and_the_model_is_complete(client, tmp_path):
    X, y = blobs(600)
    marker = tmp_path / "died-once"
    encoder = dying_encoder(X[450], marker)  # first row of the last of four partitions
    model = fit_distributed(
        X, y, encoder=encoder, head=RidgeHead(n_features=32), client=client, partitions=4
    )
    assert marker.exists()  # a worker process did die
    reference = RidgeHead(n_features=32)
    reference.learn_many(X.astype(np.float32), y)  # what FunctionEncoder hands the head
    assert_same_model(model.head, reference, X)
    client.wait_for_workers(2, timeout=60)


def test_workers_dying_every_time_fail_the_fit_and_save_nothing(
    client, small_csv, tmp_path, monkeypatch, capsys
):
    from perennial import cli
    from perennial.datasets import load_intent_csv

    texts = load_intent_csv(small_csv, small_csv).train.inputs
    trigger = texts[170]  # in the last of four partitions

    def encode(batch: Any) -> np.ndarray:
        if trigger in batch:
            os._exit(1)
        return np.array([[len(t), t.count(" "), t.count("?")] for t in batch], dtype=float)

    monkeypatch.setattr(cli, "_encoder_for", lambda args, kind: FunctionEncoder(encode, "dies"))
    model_dir = tmp_path / "model"
    earlier = LifelongClassifier(head=NCMHead())
    earlier.learn_many([[1.0, 2.0, 3.0]], ["earlier"])
    earlier.save(model_dir)
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}

    address = client.cluster.scheduler_address
    status = main(
        [
            *("fit", "--data", str(small_csv), "--model", str(model_dir)),
            *("--partitions", "4", "--scheduler", address, "--timeout", "10"),
        ]
    )
    assert status == 2
    err = capsys.readouterr().err
    # Usually the partition that kills its worker is named; on a loaded machine another
    # partition that was on the same worker when it died can reach Dask's limit first.
    assert re.search(
        r"\d+ worker processes died running partition [1-4] of 4 \(examples \d+ to \d+\)", err
    ), err
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before  # untouched
    client.wait_for_workers(2, timeout=60)
