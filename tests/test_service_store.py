"""The service's journal and model store, without HTTP: durability, recovery, versions.

The reference for every recovered model is a LifelongClassifier fed exactly the acknowledged
updates, in the same batches; "equal" means the same classes and counts and decision scores and
novelty within 1e-6 (recovery solves from scratch where the live model used rank updates).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from perennial.exceptions import (
    CorruptedJournalError,
    CorruptedModelError,
    FeatureDimensionError,
    InputTypeError,
    InvalidInputError,
    InvalidParameterError,
    LabelLengthError,
    ModelMismatchError,
    NonFiniteInputError,
    NotFittedError,
    PersistenceError,
    ServiceUnavailableError,
    UnknownLabelError,
)
from perennial.heads import RidgeHead
from perennial.service.auth import KeyRing
from perennial.service.journal import MAGIC, Journal, Record, frame
from perennial.service.metrics import Metrics
from perennial.service.refresher import prediction_copy, warm
from perennial.service.review import ReviewQueue
from perennial.service.store import ModelStore
from test_service_support import RIDGE, clusters, reference

N_FEATURES = 64
PROBES = np.random.default_rng(99).normal(0.0, 2.0, (12, 8))


def record(version: int, n: int = 2, label: str = "a", dim: int = 3) -> Record:
    features = np.arange(n * dim, dtype=np.float32).reshape(n, dim) + version
    return Record(version, "learn", (label,) * n, features)


# --- the journal ---------------------------------------------------------------------------------------
def test_records_round_trip_through_a_reopened_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    journal, found = Journal.open(path, create=True)
    assert found == []
    written = [
        record(1),
        Record(2, "forget", ("a",)),
        Record(3, "unlearn", ("b",), np.ones((1, 3), np.float32)),
    ]
    for item in written:
        journal.append(item)
    journal.close()
    journal, found = Journal.open(path)
    journal.close()
    assert found == written
    assert found[0].features is not None and found[0].features.dtype == np.float32


def torn(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "cut":
        path.write_bytes(data[:-7])  # the last record cut short
    elif how == "header":
        path.write_bytes(data + b"\x10\x00\x00")  # a frame header cut short
    elif how == "crc":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # last byte garbled
    elif how == "zeros":
        path.write_bytes(data + bytes(64))  # space allocated, never written


@pytest.mark.parametrize("how", ["cut", "header", "crc", "zeros"])
def test_a_torn_last_record_is_ignored_with_a_warning(tmp_path: Path, how: str, caplog) -> None:
    path = tmp_path / "journal.log"
    journal, _ = Journal.open(path, create=True)
    for version in (1, 2, 3):
        journal.append(record(version))
    journal.close()
    torn(path, how)
    with caplog.at_level(logging.WARNING, logger="perennial.service"):
        journal, found = Journal.open(path)
    kept = [1, 2] if how in ("cut", "crc") else [1, 2, 3]
    assert [r.version for r in found] == kept
    assert "torn last record" in caplog.text
    # The tail is cut off, so the next append follows a valid record.
    journal.append(record(kept[-1] + 1))
    journal.close()
    _, again = Journal.open(path)
    assert [r.version for r in again] == [*kept, kept[-1] + 1]


def test_damage_before_the_last_record_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    journal, _ = Journal.open(path, create=True)
    journal.append(record(1))
    journal.append(record(2))
    journal.close()
    data = bytearray(path.read_bytes())
    data[len(MAGIC) + 20] ^= 0x01  # inside the first record's payload
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptedJournalError, match="fails its CRC32 check and is followed"):
        Journal.open(path)
    assert path.read_bytes() == bytes(data)  # nothing cut, nothing rewritten


def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    path.write_bytes(b"hello, world: not a journal")
    with pytest.raises(CorruptedJournalError, match="not a perennial journal"):
        Journal.open(path)


def test_an_impossible_length_mid_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    path.write_bytes(MAGIC + frame(record(1).encode()) + b"\xff\xff\xff\xff\x00\x00\x00\x00abc")
    with pytest.raises(CorruptedJournalError, match="impossible length"):
        Journal.open(path)


def test_compaction_keeps_only_newer_records(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    journal, _ = Journal.open(path, create=True)
    for version in range(1, 6):
        journal.append(record(version))
    assert journal.compact(3) == 3
    journal.append(record(6))
    journal.close()
    _, found = Journal.open(path)
    assert [r.version for r in found] == [4, 5, 6]
    assert found[0] == record(4)


# --- the store ------------------------------------------------------------------------------------------------
def open_store(path: Path, **options) -> ModelStore:
    """A store on identity features, its refresher in a thread unless ``isolate=True``."""
    options.setdefault("encoder", "identity")
    options.setdefault("head_params", {"n_features": N_FEATURES, "ridge": RIDGE})
    options.setdefault("isolate", False)
    return ModelStore.open(path, **options)


def assert_same_model(store: ModelStore, batches: list) -> None:
    served = store.wait_served(store.version, timeout=30)
    assert served.model is not None
    expected = reference(batches, N_FEATURES)
    model = served.model
    assert sorted(model.classes_) == sorted(expected.classes_)
    order = [model.classes_.index(label) for label in expected.classes_]
    np.testing.assert_allclose(
        model.decision_scores(PROBES)[:, order],
        expected.decision_scores(PROBES),
        rtol=1e-6,
        atol=1e-9,
    )
    try:
        novelty = expected.novelty_scores(PROBES)
    except NotFittedError:  # forget() leaves the ridge head's n_seen; open-set is then off
        with pytest.raises(NotFittedError):
            model.novelty_scores(PROBES)
    else:
        np.testing.assert_allclose(model.novelty_scores(PROBES), novelty, rtol=1e-6)
    assert dict(store.classes()[1]) == dict(
        zip(expected.classes_, expected.head._class_counts().tolist(), strict=True)
    )


def updates(seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    batches: list = []
    for step in range(6):
        X, y = clusters(rng, ["a", "b", "c"][: 2 + step % 2], 3)
        batches.append(("learn", X, y))
    X, y = clusters(rng, ["d"], 4)
    batches.append(("learn", X, y))
    batches.append(("unlearn", batches[0][1][:2], batches[0][2][:2]))
    batches.append(("forget", None, "d"))
    return batches


def apply(store: ModelStore, batches: list) -> list[int]:
    versions = []
    for operation, X, y in batches:
        if operation == "learn":
            versions.append(store.learn(X, y))
        elif operation == "unlearn":
            versions.append(store.unlearn(X, y))
        else:
            versions.append(store.forget(y))
    return versions


@pytest.mark.parametrize(("snapshot_every", "isolate"), [(1000, False), (3, False), (3, True)])
def test_recovery_gives_the_model_of_the_acknowledged_updates(
    tmp_path: Path, snapshot_every: int, isolate: bool
) -> None:
    batches = updates()
    store = open_store(tmp_path / "model", snapshot_every=snapshot_every, isolate=isolate)
    assert apply(store, batches) == list(range(1, len(batches) + 1))
    assert_same_model(store, batches)
    store.close(snapshot=False)  # as after a crash: whatever the journal holds
    again = open_store(tmp_path / "model", snapshot_every=snapshot_every, isolate=isolate)
    assert again.version == len(batches)
    assert_same_model(again, batches)
    more = updates(seed=1)[:2]
    apply(again, more)
    again.close()  # a clean shutdown snapshots
    third = ModelStore.open(tmp_path / "model", isolate=isolate)
    assert third.status()["journal_records"] == 0
    assert_same_model(third, batches + more)
    third.close()


def test_a_crash_between_snapshot_and_journal_compaction_is_harmless(tmp_path: Path) -> None:
    batches = updates()
    store = open_store(tmp_path / "model")
    apply(store, batches)
    store.wait_served(store.version, timeout=30)
    journal_before = (tmp_path / "model" / "journal.log").read_bytes()
    store.close()  # snapshot, service.json, then compaction
    # Put back the journal as it was before compaction: the snapshot already holds its records.
    (tmp_path / "model" / "journal.log").write_bytes(journal_before)
    again = open_store(tmp_path / "model")
    assert again.version == len(batches)
    assert_same_model(again, batches)
    again.close(snapshot=False)


def test_a_version_gap_in_the_journal_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path / "model")
    apply(store, updates()[:3])
    store.close(snapshot=False)
    path = tmp_path / "model" / "journal.log"
    journal, _ = Journal.open(path)
    journal.append(record(7, dim=8))
    journal.close()
    with pytest.raises(
        CorruptedJournalError, match="expected the record of version 4, found version 7"
    ):
        open_store(tmp_path / "model")


@pytest.mark.parametrize("isolate", [False, True])
def test_a_corrupted_snapshot_is_refused_and_left_alone(tmp_path: Path, isolate: bool) -> None:
    store = open_store(tmp_path / "model")
    apply(store, updates()[:3])
    store.close()
    (arrays,) = (tmp_path / "model").glob("snapshot-*/state-*.safetensors")
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrays.write_bytes(bytes(data))
    before = {p: p.read_bytes() for p in (tmp_path / "model").rglob("*") if p.is_file()}
    with pytest.raises(CorruptedModelError, match=r"refusing to start: the snapshot .* is damaged"):
        open_store(tmp_path / "model", isolate=isolate)
    after = {p: p.read_bytes() for p in (tmp_path / "model").rglob("*") if p.is_file()}
    assert after == before


def test_a_directory_of_another_encoder_is_refused(tmp_path: Path) -> None:
    open_store(tmp_path / "model").close()
    with pytest.raises(ModelMismatchError, match="written with the 'identity' encoder"):
        ModelStore.open(tmp_path / "model", encoder="text", isolate=False)
    with pytest.raises(ModelMismatchError, match="n_features=64, not 128"):
        ModelStore.open(tmp_path / "model", head_params={"n_features": 128}, isolate=False)


def test_a_foreign_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(PersistenceError, match="not a model directory"):
        open_store(tmp_path)


def test_a_saved_model_is_adopted_as_version_zero(tmp_path: Path) -> None:
    batches = updates()[:4]
    reference(batches, N_FEATURES).save(tmp_path / "model")
    store = ModelStore.open(tmp_path / "model", isolate=False)
    assert store.version == 0
    assert_same_model(store, batches)
    more = updates(seed=3)[:2]
    apply(store, more)
    store.close()
    again = ModelStore.open(tmp_path / "model", isolate=False)
    assert_same_model(again, batches + more)
    again.close()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda s: s.learn(np.ones((2, 5)), ["a", "b"]),
            FeatureDimensionError,
            "expected 8 features",
        ),
        (lambda s: s.learn(np.ones((2, 8)), ["a"]), LabelLengthError, "2 inputs but 1 labels"),
        (lambda s: s.learn(np.full((1, 8), np.nan), ["a"]), NonFiniteInputError, "non-finite"),
        (lambda s: s.learn(np.full((1, 8), 1e300), ["a"]), NonFiniteInputError, "non-finite"),
        (lambda s: s.learn(np.ones((1, 8)), [7]), InputTypeError, "labels must be strings"),
        (lambda s: s.unlearn(np.ones((1, 8)), ["zebra"]), UnknownLabelError, "'zebra'"),
        (
            lambda s: s.unlearn(np.ones((99, 8)), ["a"] * 99),
            InvalidInputError,
            "99 examples of 'a'",
        ),
        (lambda s: s.forget("zebra"), UnknownLabelError, "cannot forget 'zebra'"),
    ],
)
def test_bad_updates_change_nothing(tmp_path: Path, call, error, message) -> None:
    store = open_store(tmp_path / "model")
    batches = updates()[:3]
    apply(store, batches)
    journal = (tmp_path / "model" / "journal.log").read_bytes()
    with pytest.raises(error, match=message):
        call(store)
    assert store.version == 3
    assert (tmp_path / "model" / "journal.log").read_bytes() == journal
    assert_same_model(store, batches)
    store.close(snapshot=False)


def test_published_versions_are_read_only_copies(tmp_path: Path) -> None:
    store = open_store(tmp_path / "model")
    batches = updates()
    apply(store, batches[:4])
    served = store.wait_served(4, timeout=30)
    before = served.model.decision_scores(PROBES)
    apply(store, batches[4:])
    later = store.wait_served(store.version, timeout=30)
    assert later.version == len(batches) and served.version == 4
    np.testing.assert_array_equal(served.model.decision_scores(PROBES), before)
    assert served.model.head.gram_ is None  # the copy dropped what learning writes in place
    store.close(snapshot=False)


def test_prediction_copy_predicts_like_the_model() -> None:
    rng = np.random.default_rng(5)
    X, y = clusters(rng, ["a", "b", "c"], 10)
    model = reference([("learn", X, y)], 128)
    warm(model)
    copied = prediction_copy(model)
    assert copied.head.projection_ is model.head.projection_
    for a, b in zip(copied.predict_detailed(PROBES), model.predict_detailed(PROBES), strict=True):
        assert a == b


def test_concurrent_updates_get_distinct_consecutive_versions(tmp_path: Path) -> None:
    store = open_store(tmp_path / "model")
    rng = np.random.default_rng(2)
    X, y = clusters(rng, ["a", "b"], 5)
    seen: list[int] = []
    lock = threading.Lock()

    def writer() -> None:
        for _ in range(5):
            version = store.learn(X[:3], y[:3])
            with lock:
                seen.append(version)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == list(range(1, 21))
    assert store.wait_served(20, timeout=30).n_seen == 60
    store.close(snapshot=False)


def test_wait_served_refuses_a_future_version(tmp_path: Path) -> None:
    store = open_store(tmp_path / "model")
    with pytest.raises(InvalidInputError, match="min_version 5 is ahead"):
        store.wait_served(5, timeout=1)
    store.close(snapshot=False)


def test_invalid_store_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="snapshot_every"):
        open_store(tmp_path / "a", snapshot_every=0)
    with pytest.raises(InvalidParameterError, match="unknown_rate"):
        open_store(tmp_path / "b", unknown_rate=1.5)


def test_service_record_names_the_snapshot(tmp_path: Path) -> None:
    store = open_store(tmp_path / "model", snapshot_every=2)
    apply(store, updates()[:5])
    store.close()
    record_ = json.loads((tmp_path / "model" / "service.json").read_text())
    assert record_["snapshot_version"] == 5
    assert os.path.isdir(tmp_path / "model" / record_["snapshot"])
    assert [p.name for p in (tmp_path / "model").glob("snapshot-*")] == [record_["snapshot"]]


# --- the small parts ------------------------------------------------------------------------------------------
def test_review_items_expire_and_are_bounded() -> None:
    now = [0.0]
    queue = ReviewQueue(ttl=10, max_items=2, clock=lambda: now[0])
    first = queue.add("one", {"label": "x"}, version=1)
    queue.add("two", {"label": "x"}, version=1)
    assert queue.add("three", {"label": "x"}, version=1) is None and queue.dropped == 1
    item = queue.claim(first)
    queue.restore(item)
    now[0] = 11.0
    assert queue.items() == [] and queue.expired == 2
    with pytest.raises(UnknownLabelError, match="no review item"):
        queue.claim(first)
    assert ReviewQueue(ttl=0).add("x", {}, version=1) is None


def test_keys_file_is_parsed_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# comment\n\nreader-key-123 read\nwriter-key-456 write\n")
    ring = KeyRing.from_file(path)
    assert ring.role_of("reader-key-123") == "read" and ring.role_of("writer-key-456") == "write"
    assert ring.role_of("reader-key-12") is None
    assert "reader" not in repr(ring)
    path.write_text("only-a-key\n")
    with pytest.raises(InvalidParameterError, match="line 1: expected 'KEY ROLE'"):
        KeyRing.from_file(path)
    path.write_text("k1 admin\n")
    with pytest.raises(InvalidParameterError, match="role 'admin'"):
        KeyRing.from_file(path)


def test_metrics_render_prometheus_text() -> None:
    metrics = Metrics()
    for seconds in (0.002, 0.02, 3.0):
        metrics.observe_request("POST", "/v1/predict", 200, seconds)
    metrics.increment("perennial_learned_examples_total", 4)
    text = metrics.render({"perennial_model_version": ("Version.", 7)})
    lines = text.splitlines()
    route = 'method="POST",route="/v1/predict"'
    assert f'perennial_requests_total{{{route},status="200"}} 3' in lines
    assert f'perennial_request_duration_seconds_bucket{{{route},le="0.0025"}} 1' in lines
    assert f'perennial_request_duration_seconds_bucket{{{route},le="0.025"}} 2' in lines
    assert f'perennial_request_duration_seconds_bucket{{{route},le="+Inf"}} 3' in lines
    assert f"perennial_request_duration_seconds_count{{{route}}} 3" in lines
    assert "perennial_learned_examples_total 4" in lines
    assert "perennial_model_version 7" in lines
    assert "# TYPE perennial_model_version gauge" in lines


def test_reference_head_matches_the_service_default(tmp_path: Path) -> None:
    # assert_same_model compares the store with reference(): both must hold the same head, built
    # here by the store from head_params={"n_features": N_FEATURES} and there by the test.
    store = open_store(tmp_path / "model")
    try:
        apply(store, updates()[:1])
        served = store.wait_served(1, timeout=30)
        assert served.model is not None
        head = served.model.head
        assert type(head) is RidgeHead
        assert head.get_params()["n_features"] == N_FEATURES  # the value configured above
        assert head.get_params() == reference([], N_FEATURES).head.get_params()
        record = json.loads((tmp_path / "model" / "service.json").read_text(encoding="utf-8"))
        assert record["model"]["head"] == "ridge"
        assert record["model"]["head_params"]["n_features"] == N_FEATURES
    finally:
        store.close()


def test_a_failed_update_stops_writes_but_not_predictions(tmp_path: Path, monkeypatch) -> None:
    from perennial.service import refresher

    store = open_store(tmp_path / "model")
    batches = updates()
    apply(store, batches[:3])
    served = store.wait_served(3, timeout=30)
    original = refresher._apply

    def broken(model, record) -> None:
        if record.version == 4:
            raise RuntimeError("disk on fire")
        original(model, record)

    monkeypatch.setattr(refresher, "_apply", broken)
    version = store.learn(*batches[3][1:])  # acknowledged: it is in the journal
    with pytest.raises(ServiceUnavailableError, match="disk on fire"):
        store.wait_served(version, timeout=30)
    with pytest.raises(ServiceUnavailableError, match="restart the service"):
        store.learn(*batches[4][1:])
    assert store.served is served  # predictions go on with the last good version
    assert store.status()["failure"] == "disk on fire"
    store.close()  # no snapshot of a model that missed an update
    monkeypatch.setattr(refresher, "_apply", original)
    again = open_store(tmp_path / "model")  # the journal still has the update
    assert again.version == version
    assert_same_model(again, batches[:4])
    again.close(snapshot=False)


def test_a_directory_serves_one_service_at_a_time(tmp_path: Path) -> None:
    store = open_store(tmp_path / "model")
    with pytest.raises(PersistenceError, match="in use by another perennial serve"):
        open_store(tmp_path / "model")
    store.close()
    open_store(tmp_path / "model").close()


def test_the_batching_encoder_shares_forward_passes_and_isolates_errors() -> None:
    from perennial.service.batching import BatchingEncoder

    release = threading.Event()
    calls: list[list[str]] = []

    class Slow:
        name = "slow"

        def encode(self, texts: list[str]) -> np.ndarray:
            calls.append(list(texts))
            release.wait(10)
            if "bad" in texts:
                raise InvalidInputError("bad text")
            return np.array([[float(len(t))] for t in texts], dtype=np.float32)

    encoder = BatchingEncoder(Slow(), max_rows=8)
    results: dict[str, object] = {}

    def ask(texts: list[str]) -> None:
        try:
            results[texts[0]] = encoder.encode(texts)[:, 0].tolist()
        except InvalidInputError as error:
            results[texts[0]] = str(error)

    first = threading.Thread(target=ask, args=(["a"],))
    first.start()
    while not calls:  # the worker is busy with the first request...
        threading.Event().wait(0.01)
    others = [threading.Thread(target=ask, args=(t,)) for t in (["bb", "ccc"], ["bad"], ["dddd"])]
    for thread in others:
        thread.start()
    threading.Event().wait(0.2)  # ... while the others queue up
    release.set()
    for thread in [first, *others]:
        thread.join()
    encoder.close()
    assert results == {"a": [1.0], "bb": [2.0, 3.0], "bad": "bad text", "dddd": [4.0]}
    assert sorted(map(len, calls[1:2])) == [4]  # the three queued requests shared one batch


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_refresher_can_run_at_a_lower_priority(tmp_path: Path) -> None:
    # The refresher thread starts at the nice value of the thread that opens the store (this
    # one, pytest's main thread), whatever the suite runs under (`nice -n 5 pytest`), and lowers
    # it by 3; Linux clamps a nice value at 19.
    opener = threading.get_native_id()
    base = os.getpriority(os.PRIO_PROCESS, opener)
    store = open_store(tmp_path / "model", background_nice=3)
    apply(store, updates()[:2])
    store.wait_served(2, timeout=30)
    thread = store._link._thread.native_id
    assert thread is not None and thread != opener
    assert os.getpriority(os.PRIO_PROCESS, thread) == min(base + 3, 19)
    assert os.getpriority(os.PRIO_PROCESS, opener) == base  # the serving thread is untouched
    assert_same_model(store, updates()[:2])
    store.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
@pytest.mark.parametrize("isolate", [False, True])
def test_the_refresher_rebuilds_on_idle_cpu_time_only(tmp_path: Path, isolate: bool) -> None:
    # Applying and publishing must not wait for idle CPU time, or the served version falls
    # behind under load; the long decompositions do, in a process of their own (see
    # test_ridge_rebuilds.py), and none runs here.
    store = open_store(tmp_path / "model", background_idle=True, isolate=isolate)
    try:
        if isolate:
            pid = store._link._process.pid
            threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        else:
            threads = [store._link._thread.native_id]
        assert threads and not any(os.sched_getscheduler(t) == os.SCHED_IDLE for t in threads)
        assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the serving process is untouched
        apply(store, updates()[:3])
        assert_same_model(store, updates()[:3])  # it still learns, on an idle machine at once
    finally:
        store.close()


def test_batched_predictions_are_split_per_request() -> None:
    from perennial.encoders import IdentityEncoder
    from perennial.service.batching import BatchingEncoder

    rng = np.random.default_rng(8)
    X, y = clusters(rng, ["a", "b", "c"], 10)
    model = reference([("learn", X, y)], 128)
    calls: list[int] = []

    def predict(features: np.ndarray, top: int) -> tuple[int, list]:
        calls.append(len(features))
        if features.shape[1] != 8:
            raise InvalidInputError(f"width {features.shape[1]}")
        return 7, model.predict_detailed(features, top=top)

    batching = BatchingEncoder(IdentityEncoder(), predict=predict)
    gate = threading.Event()
    slow = batching.encoder.encode
    batching.encoder.encode = lambda batch: (gate.wait(10), slow(batch))[1]  # type: ignore[method-assign]
    futures = [
        batching.submit(PROBES[:2], top=1),
        batching.submit(PROBES[2:5], top=3),
        batching.submit(np.ones((1, 3)), top=2),  # another width: fails alone
        batching.submit(PROBES[5:6]),  # encode only
    ]
    gate.set()
    expected = model.predict_detailed(PROBES[:5], top=3)

    def tops(rows: list) -> list:
        return [[(t["label"], round(t["score"], 9)) for t in row["top"]] for row in rows]

    version, rows = futures[0].result(10)
    assert version == 7 and tops(rows) == [t[:1] for t in tops(expected[:2])]
    version, rows = futures[1].result(10)
    assert version == 7 and tops(rows) == tops(expected[2:5])
    with pytest.raises(InvalidInputError, match="width 3"):
        futures[2].result(10)
    np.testing.assert_array_equal(futures[3].result(10), PROBES[5:6].astype(np.float32))
    batching.close()
