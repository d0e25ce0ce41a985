"""Waiting for a version, background failures and shutdown: the service never wedges.

Over HTTP, on a real ``perennial serve`` process whose refresher (a child process) is paused with
SIGSTOP where a test needs versions that do not come, and on the store and the journal directly
where a fault is injected with monkeypatch. Every recovered model is compared with a reference
learner fed exactly the acknowledged updates.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from perennial.service.journal import Journal
from test_service_http import ARGS, DIM, assert_matches_reference, ok
from test_service_store import apply, assert_same_model, open_store, record, updates
from test_service_support import Server, clusters

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds the refresher process in /proc"
)


def until(condition: Callable[[], Any], what: str, seconds: float = 120.0) -> Any:
    """Poll ``condition`` until it is true (its value) or ``seconds`` pass (a failure)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds:g} s: {what}")


def metric(client: httpx.Client, series: str) -> float:
    """The value of one series (name with its labels) of ``GET /metrics``."""
    text = ok_text(client.get("/metrics"))
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{series} is not in /metrics"
    return float(found.group(1))


def ok_text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.text


# --- finding 4: waiting for min_version holds no thread, and is bounded -----------------------------
@linux_only
def test_waiting_for_a_version_holds_no_thread_and_is_bounded_per_client(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("alpha-0123456789 read\nbeta-0123456789 read\nwriter-0123456789 write\n")
    keys.chmod(0o600)
    running = Server(
        tmp_path / "model",
        *ARGS,
        "--keys",
        str(keys),
        "--wait-seconds",
        "600",  # far beyond this test: every wait below ends by its version or by a refusal
        "--max-waiters",
        "50",
        "--max-waiters-per-client",
        "40",
    ).start()
    writer = running.client("writer-0123456789")
    rng = np.random.default_rng(11)
    X, y = clusters(rng, ["a", "b"], 10, DIM)
    batches: list = [("learn", X, y)]
    ok(writer.post("/v1/learn", json={"inputs": X.tolist(), "labels": y}))
    ok(writer.post("/v1/predict", json={"inputs": X[:1].tolist(), "min_version": 1}))
    answers: dict[str, list[httpx.Response]] = {"alpha": [], "beta": []}
    threads: list[threading.Thread] = []
    refresher = running.refresher_pid()
    os.kill(refresher, signal.SIGSTOP)  # from now on no version is published
    try:
        X2, y2 = clusters(rng, ["c"], 5, DIM)
        batches.append(("learn", X2, y2))
        version = ok(writer.post("/v1/learn", json={"inputs": X2.tolist(), "labels": y2}))[
            "version"
        ]
        assert version == 2 and ok(writer.get("/healthz"))["served_version"] == 1

        def wait(name: str) -> None:
            with running.client(f"{name}-0123456789") as http:
                query = {"inputs": X2[:1].tolist(), "min_version": version}
                answers[name].append(http.post("/v1/predict", json=query, timeout=600))

        def waiting() -> float:
            return metric(writer, "perennial_min_version_waiters")

        # One client asks 45 times: 40 wait, the 5 beyond its bound are refused at once.
        threads += [threading.Thread(target=wait, args=("alpha",)) for _ in range(45)]
        for thread in threads:
            thread.start()
        until(lambda: len(answers["alpha"]) == 5 and waiting() == 40, "40 waiting, 5 refused")
        for response in answers["alpha"]:
            assert response.status_code == 429, response.text
            assert "max_waiters_per_client" in response.json()["error"]
            assert response.headers["retry-after"] == "1"
        # Another client may still wait, up to the bound on all waits together.
        more = [threading.Thread(target=wait, args=("beta",)) for _ in range(15)]
        for thread in more:
            thread.start()
        threads += more
        until(lambda: len(answers["beta"]) == 5 and waiting() == 50, "50 waiting, 5 refused")
        for response in answers["beta"]:
            assert response.status_code == 429, response.text
            assert "(max_waiters)" in response.json()["error"]
        # While 50 requests wait, every other route answers at once.
        health = ok(writer.get("/healthz"))
        assert health == {"status": "ok", "version": 2, "served_version": 1, "problems": {}}
        classes = ok(writer.get("/v1/classes"))
        assert classes["version"] == 2
        assert {c["label"]: c["count"] for c in classes["classes"]} == {"a": 10, "b": 10, "c": 5}
        assert "perennial_requests_total" in ok_text(writer.get("/metrics"))
        X3, y3 = clusters(rng, ["d"], 3, DIM)
        batches.append(("learn", X3, y3))
        body = ok(writer.post("/v1/learn", json={"inputs": X3.tolist(), "labels": y3}))
        assert body == {"version": 3, "learned": 3}
        # ... and none of the waits has ended meanwhile: they wait for their version.
        assert len(answers["alpha"]) == 5 and len(answers["beta"]) == 5
    finally:
        os.kill(refresher, signal.SIGCONT)
    try:
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
        waited = answers["alpha"][5:] + answers["beta"][5:]
        assert len(waited) == 50
        for response in waited:  # each answered by the version it waited for, or a newer one
            assert ok(response)["version"] >= version
        assert waiting() == 0
        assert_matches_reference(writer, 3, batches)
    finally:
        running.stop()


# --- finding 5: background failures surface, are retried, and shutdown is bounded ----------------
def test_a_failing_compaction_is_reported_retried_and_loses_nothing(tmp_path: Path) -> None:
    model = tmp_path / "model"
    running = Server(model, *ARGS, "--snapshot-every", "2").start()
    try:
        client = running.client()
        rng = np.random.default_rng(12)
        batches: list = []

        def learn(label: str) -> int:
            X, y = clusters(rng, [label], 4, DIM)
            batches.append(("learn", X, y))
            return int(
                ok(client.post("/v1/learn", json={"inputs": X.tolist(), "labels": y}))["version"]
            )

        def health() -> dict[str, Any]:
            return ok(client.get("/healthz"))

        # The compaction's temporary file cannot be written: a directory holds its name.
        (model / "journal.log.tmp").mkdir()
        learn("a")
        learn("b")  # snapshot of version 2; its compaction fails
        until(lambda: health()["status"] == "degraded", "/healthz says degraded")
        problem = health()["problems"]["compaction"]
        assert "could not compact the journal through version 2" in problem
        assert "journal.log.tmp" in problem
        assert metric(client, 'perennial_background_failures_total{task="compaction"}') >= 1
        assert metric(client, 'perennial_background_failing{task="compaction"}') == 1
        # Predictions and updates go on: the served version follows the acknowledged one.
        learn("c")
        version = learn("a")
        assert_matches_reference(client, version, batches)
        assert ok(client.get("/v1/model"))["journal"]["records"] == 4  # nothing dropped
        # Once the fault is gone, a retry compacts the journal, without any new update.
        (model / "journal.log.tmp").rmdir()
        until(lambda: health()["status"] == "ok", "/healthz says ok again")
        assert health()["problems"] == {}
        journal = ok(client.get("/v1/model"))["journal"]
        assert journal["snapshot_version"] == 4 and journal["records"] == 0
        assert metric(client, 'perennial_background_failing{task="compaction"}') == 0
        assert metric(client, 'perennial_background_failures_total{task="compaction"}') >= 1
        version = learn("d")
        assert_matches_reference(client, version, batches)
    finally:
        running.kill()
    restarted = Server(model, *ARGS).start()
    try:
        client = restarted.client()
        assert ok(client.get("/v1/model"))["version"] == version
        assert_matches_reference(client, version, batches)
    finally:
        restarted.stop()


@linux_only
def test_a_shutdown_under_a_backlog_is_bounded_and_loses_nothing(tmp_path: Path) -> None:
    model = tmp_path / "model"
    running = Server(model, *ARGS, "--wait-seconds", "600").start()  # the default budget
    rng = np.random.default_rng(13)
    client = running.client()
    batches: list = []
    for label in ("a", "b"):
        X, y = clusters(rng, [label], 5, DIM)
        batches.append(("learn", X, y))
        ok(client.post("/v1/learn", json={"inputs": X.tolist(), "labels": y}))
    ok(client.post("/v1/predict", json={"inputs": X[:1].tolist(), "min_version": 2}))
    refresher = running.refresher_pid()
    os.kill(refresher, signal.SIGSTOP)  # a refresher that cannot keep up, at the extreme
    answers: list[httpx.Response | str] = []
    try:
        for step in range(150):
            X, y = clusters(rng, ["abc"[step % 3]], 2, DIM)
            X = X + rng.normal(0.0, 1.0, X.shape)
            batches.append(("learn", X, y))
            body = ok(client.post("/v1/learn", json={"inputs": X.tolist(), "labels": y}))
            assert body["version"] == len(batches)

        def wait() -> None:
            with running.client() as http:
                query = {"inputs": X[:1].tolist(), "min_version": len(batches)}
                try:
                    answers.append(http.post("/v1/predict", json=query, timeout=600))
                except httpx.HTTPError as error:
                    answers.append(repr(error))

        waiters = [threading.Thread(target=wait) for _ in range(5)]
        for thread in waiters:
            thread.start()
        until(lambda: metric(client, "perennial_min_version_waiters") == 5, "5 waiting")
        # SIGTERM: the waits end, and the server exits (cleanly) without the refresher.
        assert running.stop() == -signal.SIGTERM  # Server.stop waits 60 s, then SIGKILLs
    finally:
        if running.process is not None and running.process.poll() is None:
            os.kill(refresher, signal.SIGCONT)
            running.kill()
    for thread in waiters:
        thread.join(timeout=60)
    assert len(answers) == 5
    for answer in answers:
        assert isinstance(answer, httpx.Response), answer
        assert answer.status_code == 503 and "shutting down" in answer.json()["error"]
    assert "the refresher did not stop within" in running.output()
    restarted = Server(model, *ARGS).start()
    try:
        client = restarted.client()
        assert ok(client.get("/v1/model"))["version"] == len(batches)
        assert_matches_reference(client, len(batches), batches)
    finally:
        restarted.stop()


def test_a_failing_snapshot_is_reported_and_retried_without_new_updates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from perennial.service import refresher

    full = threading.Event()
    full.set()
    original = refresher.Refresher.snapshot

    def snapshot(self: refresher.Refresher) -> int | None:
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return original(self)

    monkeypatch.setattr(refresher.Refresher, "snapshot", snapshot)
    store = open_store(tmp_path / "model", snapshot_every=2)  # the refresher in a thread
    batches = updates()[:3]
    apply(store, batches)
    problems = until(lambda: store.status()["problems"], "the snapshot's failure is reported")
    assert "No space left on device" in problems["snapshot"]
    assert store.status()["background_failures"]["snapshot"] >= 1
    assert_same_model(store, batches)  # predictions go on with every update
    full.clear()

    def snapshotted() -> bool:
        status = store.status()
        return status["snapshot_version"] == 3 and status["journal_records"] == 0

    until(snapshotted, "a retry writes the snapshot and compacts the journal")
    assert store.status()["problems"] == {}
    store.close(snapshot=False)
    again = open_store(tmp_path / "model")
    assert again.version == 3 and again.status()["journal_records"] == 0
    assert_same_model(again, batches)
    again.close(snapshot=False)


def test_a_compaction_that_fails_after_its_rename_keeps_appends_in_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from perennial.service import journal as journal_module

    path = tmp_path / "journal.log"
    journal, _ = Journal.open(path, create=True)
    for version in range(1, 5):
        journal.append(record(version))
    real = journal_module.fsync_directory

    def failing(directory: Path) -> None:
        if not path.with_name("journal.log.tmp").exists():  # the rename is done
            raise OSError(errno.EIO, "Input/output error (injected)")
        real(directory)

    monkeypatch.setattr(journal_module, "fsync_directory", failing)
    with pytest.raises(OSError, match="injected"):
        journal.compact(2)
    # Until the rename is durable, nothing is appended (a crash could bring the old file back).
    with pytest.raises(OSError, match="injected"):
        journal.append(record(5))
    monkeypatch.setattr(journal_module, "fsync_directory", real)
    assert journal.compact(2) == 0  # a retry: the directory is synced, nothing more to drop
    journal.append(record(5))
    journal.close()
    _, found = Journal.open(path)
    assert [r.version for r in found] == [3, 4, 5]
    assert found[-1] == record(5)


def test_close_is_bounded_when_the_refresher_is_stuck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from perennial.service import refresher

    stuck, release = threading.Event(), threading.Event()
    original = refresher._learn_runs

    def slow(records: list) -> list:
        if records[-1].version > 3:  # an update that takes, say, minutes
            stuck.set()
            release.wait(300)
        return original(records)

    monkeypatch.setattr(refresher, "_learn_runs", slow)
    store = open_store(tmp_path / "model")
    batches = updates()
    apply(store, batches[:3])
    store.wait_served(3, timeout=30)
    apply(store, batches[3:])
    until(stuck.is_set, "the refresher is busy")
    errors: list[BaseException] = []

    def close() -> None:
        try:
            store.close()  # gives up on the refresher after 10 s, by default
        except BaseException as error:
            errors.append(error)

    closing = threading.Thread(target=close)
    closing.start()
    closing.join(timeout=60)  # generous
    stuck_at_close = closing.is_alive()
    release.set()
    closing.join()
    assert not stuck_at_close and errors == []
    # The refresher's thread finishes its solve, then sees its deadline gone: no snapshot. The
    # directory opens again once it has ended, with every acknowledged update.
    again = open_store(tmp_path / "model")
    assert again.version == len(batches)
    assert_same_model(again, batches)
    again.close(snapshot=False)


def test_a_cancelled_request_does_not_stop_the_encoder_worker() -> None:
    from perennial.service.batching import BatchingEncoder

    busy, release = threading.Event(), threading.Event()

    class Slow:
        name = "slow"

        def encode(self, rows: list) -> np.ndarray:
            busy.set()
            release.wait(60)
            return np.asarray(rows, dtype=np.float32)

    def predict(features: np.ndarray, top: int) -> tuple[int, list]:
        return 7, [{"sum": float(row.sum()), "top": []} for row in features]

    batching = BatchingEncoder(Slow(), predict=predict)
    first = batching.submit([[1.0, 2.0]], top=1)
    until(busy.is_set, "the worker is encoding")
    gone = batching.submit([[3.0, 4.0]], top=1)
    assert gone.cancel()  # its request was cancelled while it waited (client gone, shutdown)
    later = batching.submit([[5.0, 6.0]], top=1)
    release.set()
    assert first.result(60) == (7, [{"sum": 3.0, "top": []}])
    assert later.result(60) == (7, [{"sum": 11.0, "top": []}])
    assert batching.failures == 0 and batching.problem is None
    batching.close()
