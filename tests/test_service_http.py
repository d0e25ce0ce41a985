"""``perennial serve`` as a real process on a loopback port, driven over HTTP.

These tests use the identity encoder (inputs are feature vectors) so that the model's answers can
be checked exactly against a reference learner fed the same vectors; the text and image encoders
are tested end to end in ``test_service_encoders.py``.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from perennial.service.journal import Record, frame
from test_service_support import RIDGE, Server, clusters, reference, run_serve

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

N_FEATURES = 128
DIM = 8
ARGS = ("--encoder", "identity", "--n-features", str(N_FEATURES), "--ridge", str(RIDGE))
PROBES = np.random.default_rng(7).normal(0.0, 3.0, (10, DIM))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    # A budget for the last snapshot that a loaded machine cannot exhaust (the default is 10 s).
    path = tmp_path_factory.mktemp("http") / "model"
    running = Server(path, *ARGS, "--shutdown-seconds", "120").start()
    yield running
    assert running.stop() == -signal.SIGTERM
    assert "snapshot of version" in running.output()  # the clean shutdown snapshotted


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return dict(response.json())


def scores_by_label(prediction: dict[str, Any]) -> dict[str, float]:
    return {entry["label"]: entry["score"] for entry in prediction["top"]}


def assert_matches_reference(client: httpx.Client, version: int, batches: list) -> None:
    """Predictions at ``version`` equal a reference learner fed exactly ``batches``."""
    expected = reference(batches, N_FEATURES)
    body = ok(
        client.post(
            "/v1/predict", json={"inputs": PROBES.tolist(), "top": 20, "min_version": version}
        )
    )
    assert body["version"] >= version
    scores = expected.decision_scores(PROBES)
    novelty = expected.novelty_scores(PROBES)
    for i, prediction in enumerate(body["predictions"]):
        got = scores_by_label(prediction)
        assert sorted(got) == sorted(expected.classes_)
        want = [scores[i, expected.classes_.index(label)] for label in got]
        np.testing.assert_allclose(list(got.values()), want, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(prediction["novelty"], novelty[i], rtol=1e-6, atol=1e-9)


# --- the operator loop ---------------------------------------------------------------------------------
def test_the_operator_loop(server: Server) -> None:
    rng = np.random.default_rng(0)
    client = server.client()
    version = 0
    for label in ("a", "b", "c"):
        X, y = clusters(rng, [label], 20, DIM)
        # clusters() puts every label's centre on axis 0 when called one label at a time: shift.
        X = X + np.eye(DIM)["abc".index(label)] * 4.0 - np.eye(DIM)[0] * 4.0
        body = ok(client.post("/v1/learn", json={"inputs": X.tolist(), "labels": y}))
        assert body == {"version": version + 1, "learned": 20}
        version = body["version"]
    client.post("/v1/predict", json={"inputs": [[0.0] * DIM], "min_version": version})
    info = ok(client.get("/v1/model"))
    assert info["version"] == info["served_version"] == version
    assert info["classes"] == ["a", "b", "c"] and info["counts"] == {"a": 20, "b": 20, "c": 20}
    # 60 examples: past the dual limit, the rows until a rebuild beside the publishing forms G.
    assert info["examples"] == 60 and info["state_bytes"] >= 60 * DIM * 8
    assert info["open_set"]["state"] == "on"
    near, far = np.eye(DIM)[1] * 4.0, np.eye(DIM)[6] * 40.0
    body = ok(
        client.post(
            "/v1/predict", json={"inputs": [near.tolist(), far.tolist()], "min_version": version}
        )
    )
    assert body["version"] == version
    known, unknown = body["predictions"]
    assert known["label"] == "b" and known["unknown"] is False and known["review_id"] is None
    assert unknown["label"] is None and unknown["unknown"] is True
    assert unknown["top"][0]["label"] in {"a", "b", "c"}
    review_id = unknown["review_id"]
    assert review_id
    # The operator lists the queue: the raw input is there, with what the model said.
    items = ok(client.get("/v1/review"))["items"]
    item = next(i for i in items if i["id"] == review_id)
    assert item["input"] == far.tolist() and item["label"] == unknown["top"][0]["label"]
    assert item["version"] == version and item["expires_at"] > item["queued_at"]
    # ... and answers with a label, which the model learns durably.
    body = ok(client.post(f"/v1/review/{review_id}", json={"label": "far-away"}))
    assert body == {"id": review_id, "version": version + 1, "learned": 1}
    version += 1
    assert review_id not in [i["id"] for i in ok(client.get("/v1/review"))["items"]]
    again = client.post(f"/v1/review/{review_id}", json={"label": "far-away"})
    assert again.status_code == 404 and "no review item" in again.json()["error"]
    classes = ok(client.get("/v1/classes"))
    assert classes["version"] == version
    assert {c["label"]: c["count"] for c in classes["classes"]} == {
        "a": 20,
        "b": 20,
        "c": 20,
        "far-away": 1,
    }
    body = ok(client.post("/v1/predict", json={"inputs": [far.tolist()], "min_version": version}))
    assert body["predictions"][0]["label"] == "far-away"
    assert body["predictions"][0]["unknown"] is False
    # Discarding an item deletes it without teaching anything.
    other = np.eye(DIM)[7] * -40.0
    queued = ok(client.post("/v1/predict", json={"inputs": [other.tolist()]}))["predictions"][0]
    assert queued["unknown"] is True
    assert ok(client.delete(f"/v1/review/{queued['review_id']}")) == {
        "id": queued["review_id"],
        "discarded": True,
    }
    assert ok(client.get("/v1/model"))["version"] == version
    # Forgetting a class and unlearning examples are durable updates too.
    assert ok(client.delete("/v1/classes/far-away")) == {
        "version": version + 1,
        "forgotten": "far-away",
    }
    assert "far-away" not in [c["label"] for c in ok(client.get("/v1/classes"))["classes"]]


# --- bad input ---------------------------------------------------------------------------------------------
JSON = {"content-type": "application/json"}
GOOD_ROW = [1.0] * DIM
BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str]] = [
    (
        "POST",
        "/v1/predict",
        {"content": b'{"inputs": [[1, 2]', "headers": JSON},
        400,
        "malformed JSON",
    ),
    ("POST", "/v1/learn", {"content": b"not json at all", "headers": JSON}, 400, "malformed JSON"),
    (
        "POST",
        "/v1/predict",
        {"content": b'{"inputs": [[1]]}'},
        422,
        "Content-Type: application/json",
    ),
    ("POST", "/v1/predict", {"json": [GOOD_ROW]}, 422, "valid dictionary"),
    ("POST", "/v1/predict", {"json": {}}, 422, "inputs: Field required"),
    ("POST", "/v1/predict", {"content": b"", "headers": JSON}, 422, "no JSON body"),
    (
        "POST",
        "/v1/predict",
        {"json": {"inputs": "abc"}},
        422,
        "inputs: Input should be a valid list",
    ),
    ("POST", "/v1/predict", {"json": {"inputs": [["a", 1.0]]}}, 422, "inputs[0][0]"),
    ("POST", "/v1/predict", {"json": {"inputs": [[True] * DIM]}}, 422, "inputs[0][0]"),
    (
        "POST",
        "/v1/predict",
        {"json": {"inputs": [GOOD_ROW], "colour": 1}},
        422,
        "colour: Extra inputs",
    ),
    ("POST", "/v1/predict", {"json": {"inputs": []}}, 422, "inputs is empty"),
    ("POST", "/v1/predict", {"json": {"inputs": [[]]}}, 422, "inputs[0] is an empty vector"),
    (
        "POST",
        "/v1/predict",
        {"json": {"inputs": [GOOD_ROW, [1.0]]}},
        422,
        "inputs[1] has 1 numbers",
    ),
    (
        "POST",
        "/v1/predict",
        {"json": {"inputs": [[1.0, 2.0, 3.0]]}},
        422,
        f"expected vectors of {DIM}",
    ),
    (
        "POST",
        "/v1/predict",
        {"content": b'{"inputs": [[NaN, 1, 1, 1, 1, 1, 1, 1]]}', "headers": JSON},
        422,
        "finite number",
    ),
    ("POST", "/v1/predict", {"json": {"inputs": [[1e39] * DIM]}}, 422, "float32 range"),
    (
        "POST",
        "/v1/predict",
        {"json": {"inputs": [GOOD_ROW] * 65}},
        413,
        "limit of 64 inputs per request (max_batch)",
    ),
    (
        "POST",
        "/v1/learn",
        {"content": b"[" * (1 << 21), "headers": JSON},
        413,
        "1048576 bytes (max_body_bytes)",
    ),
    (
        "POST",
        "/v1/predict",
        {"json": {"inputs": [GOOD_ROW], "top": 0}},
        422,
        "top: Input should be greater",
    ),
    (
        "POST",
        "/v1/predict",
        {"json": {"inputs": [GOOD_ROW], "top": "3"}},
        422,
        "top: Input should be a valid integer",
    ),
    (
        "POST",
        "/v1/predict",
        {"json": {"inputs": [GOOD_ROW], "min_version": 10**6}},
        422,
        "min_version 1000000 is ahead",
    ),
    (
        "POST",
        "/v1/learn",
        {"json": {"inputs": [GOOD_ROW] * 2, "labels": ["a"]}},
        422,
        "got 2 inputs but 1 labels",
    ),
    ("POST", "/v1/learn", {"json": {"inputs": [GOOD_ROW]}}, 422, "labels: Field required"),
    (
        "POST",
        "/v1/learn",
        {"json": {"inputs": [GOOD_ROW], "labels": [1]}},
        422,
        "labels[0]: Input should be a valid string",
    ),
    (
        "POST",
        "/v1/learn",
        {"json": {"inputs": [GOOD_ROW], "labels": [" "]}},
        422,
        "labels[0] is blank",
    ),
    (
        "POST",
        "/v1/learn",
        {"json": {"inputs": [GOOD_ROW], "labels": ["x" * 201]}},
        413,
        "(max_label_chars)",
    ),
    (
        "POST",
        "/v1/learn",
        {"json": {"inputs": [[1.0, 2.0]], "labels": ["a"]}},
        422,
        f"expected vectors of {DIM}",
    ),
    ("POST", "/v1/unlearn", {"json": {"inputs": [GOOD_ROW], "labels": ["zebra"]}}, 404, "'zebra'"),
    (
        "POST",
        "/v1/unlearn",
        {"json": {"inputs": [GOOD_ROW] * 60, "labels": ["a"] * 60}},
        422,
        "60 examples of 'a'",
    ),
    ("DELETE", "/v1/classes/zebra", {}, 404, "cannot forget 'zebra'"),
    (
        "POST",
        "/v1/review/no-such-item",
        {"json": {"label": "a"}},
        404,
        "no review item 'no-such-item'",
    ),
    (
        "POST",
        "/v1/review/no-such-item",
        {"json": {"label": 5}},
        422,
        "label: Input should be a valid string",
    ),
    ("DELETE", "/v1/review/no-such-item", {}, 404, "no review item"),
    # Labels are one line of valid Unicode text: a JSON escape or the UTF-8 bytes of a lone
    # surrogate, a control character, a line separator are refused by name.
    (
        "POST",
        "/v1/learn",
        {"content": b'{"inputs": [[1,1,1,1,1,1,1,1]], "labels": ["\\ud800"]}', "headers": JSON},
        422,
        "labels[0] is not valid Unicode text: '\\ud800' holds a lone surrogate",
    ),
    (
        "POST",
        "/v1/learn",
        {
            "content": b'{"inputs": [[1,1,1,1,1,1,1,1]], "labels": ["a\xed\xb0\x80"]}',
            "headers": JSON,
        },
        422,
        "labels[0] is not valid Unicode text",
    ),
    (
        "POST",
        "/v1/unlearn",
        {"content": b'{"inputs": [[1,1,1,1,1,1,1,1]], "labels": ["a\\udfff"]}', "headers": JSON},
        422,
        "lone surrogate ('\\udfff') at character 1",
    ),
    (
        "POST",
        "/v1/learn",
        {"json": {"inputs": [GOOD_ROW] * 2, "labels": ["a", "a\nb"]}},
        422,
        "labels[1] holds a control character ('\\n')",
    ),
    (
        "POST",
        "/v1/learn",
        {"json": {"inputs": [GOOD_ROW], "labels": ["\u2028"]}},
        422,
        "labels[0] holds a control character",
    ),
    (
        "POST",
        "/v1/predict",
        {"content": b'{"inputs": [["\\ud800"]]}', "headers": JSON},
        422,
        "inputs[0][0]",
    ),
    (
        "POST",
        "/v1/predict",
        {"content": b'{"inputs": [[1,1,1,1,1,1,1,1]], "\\ud800": 1}', "headers": JSON},
        422,
        "the request body holds a key that is not valid Unicode text ('\\ud800')",
    ),
    ("DELETE", "/v1/classes/a%0Ab", {}, 422, "label holds a control character ('\\n')"),
    ("DELETE", "/v1/classes/a%09", {}, 422, "label holds a control character ('\\t')"),
    ("DELETE", "/v1/classes/%ED%A0%80", {}, 404, "cannot forget"),  # not UTF-8: U+FFFD
    (
        "POST",
        "/v1/review/no-such-item",
        {"content": b'{"label": "\\ud800"}', "headers": JSON},
        422,
        "label is not valid Unicode text",
    ),
    ("GET", "/v1/nothing", {}, 404, "no route GET /v1/nothing"),
    ("GET", "/v1/learn", {}, 405, "GET is not allowed on /v1/learn"),
]


def model_state(client: httpx.Client) -> tuple[Any, ...]:
    info = ok(client.get("/v1/model"))
    predictions = ok(client.post("/v1/predict", json={"inputs": PROBES.tolist(), "top": 20}))
    for row in predictions["predictions"]:
        row.pop("review_id", None)  # each unknown input predicted opens a new review item
    return (
        info["version"],
        info["served_version"],
        info["examples"],
        info["journal"],
        ok(client.get("/v1/classes")),
        predictions,
    )


def test_bad_requests_answer_4xx_json_and_change_nothing(server: Server) -> None:
    client = server.client()
    X, y = clusters(np.random.default_rng(1), ["a", "b"], 20, DIM)
    version = ok(client.post("/v1/learn", json={"inputs": X.tolist(), "labels": y}))["version"]
    client.post("/v1/predict", json={"inputs": [GOOD_ROW], "min_version": version})
    before = model_state(client)
    failures = []
    for method, path, options, status, message in BAD_REQUESTS:
        response = client.request(method, path, **options)
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            error = None
        if response.status_code != status or not isinstance(error, str) or message not in error:
            failures.append(
                f"{method} {path} {options}: {response.status_code} {response.text[:200]}"
            )
    assert failures == []
    assert model_state(client) == before


def test_labels_are_kept_in_nfc_and_found_by_any_spelling(tmp_path: Path) -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    running = Server(tmp_path / "model", *ARGS).start()
    try:
        client = running.client()
        rng = np.random.default_rng(6)
        X, y = clusters(rng, ["a", composed, "c"], 20, DIM)
        spelled = [decomposed if label == composed else label for label in y]
        batches: list = [("learn", X[::2], y[::2]), ("learn", X[1::2], y[1::2])]
        ok(client.post("/v1/learn", json={"inputs": X[::2].tolist(), "labels": spelled[::2]}))
        ok(client.post("/v1/learn", json={"inputs": X[1::2].tolist(), "labels": y[1::2]}))
        classes = ok(client.get("/v1/classes"))["classes"]
        assert {c["label"]: c["count"] for c in classes} == {"a": 20, composed: 20, "c": 20}
        body = ok(
            client.post(
                "/v1/unlearn", json={"inputs": X[20:22].tolist(), "labels": [decomposed] * 2}
            )
        )
        batches.append(("unlearn", X[20:22], [composed] * 2))
        assert_matches_reference(client, body["version"], batches)
        # An unknown input labelled by the operator in the other spelling joins the class.
        far = (np.eye(DIM)[6] * 40.0).tolist()
        query = {"inputs": [far], "min_version": body["version"]}
        review_id = ok(client.post("/v1/predict", json=query))["predictions"][0]["review_id"]
        assert review_id
        ok(client.post(f"/v1/review/{review_id}", json={"label": decomposed}))
        batches.append(("learn", np.asarray([far]), [composed]))
        assert ok(client.get("/v1/model"))["counts"][composed] == 19
        # Forgotten by its decomposed spelling in the path; the answer names the class kept.
        body = ok(client.delete("/v1/classes/cafe%CC%81"))
        assert body["forgotten"] == composed
        batches.append(("forget", None, composed))
        assert_matches_reference(client, body["version"], batches)
        assert [c["label"] for c in ok(client.get("/v1/classes"))["classes"]] == ["a", "c"]
    finally:
        assert running.stop() == -signal.SIGTERM


def test_head_healthz_answers_like_get_without_a_body(server: Server) -> None:
    with server.client() as client:
        response = client.head("/healthz")
        assert response.status_code == 200 and response.content == b""
        assert response.headers["content-type"] == "application/json"
        assert int(response.headers["content-length"]) == len(client.get("/healthz").content)


def test_a_chunked_body_over_the_limit_answers_413(server: Server) -> None:
    before = ok(server.client().get("/v1/model"))["version"]
    # Sent in chunks, without Content-Length: the limit is found while reading.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.putrequest("POST", "/v1/learn")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        chunk = b"[" * 65536
        for _ in range(32):  # 2 MiB, twice the limit
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        assert response.status == 413
        assert "1048576 bytes (max_body_bytes)" in json.loads(response.read())["error"]
        # The connection and the service carry on.
        connection.request("GET", "/healthz")
        again = connection.getresponse()
        assert again.status == 200 and json.loads(again.read())["version"] == before
    finally:
        connection.close()


def test_an_error_quoting_a_lone_surrogate_is_still_answered() -> None:
    from perennial.service.app import _error

    response = _error(422, "labels[0] is 'a\ud800'")
    assert json.loads(response.body) == {"error": "labels[0] is 'a\\ud800'"}


# --- concurrency -------------------------------------------------------------------------------------------
def test_concurrent_predictions_see_consistent_versions(tmp_path: Path) -> None:
    running = Server(tmp_path / "model", *ARGS).start()
    try:
        rng = np.random.default_rng(3)
        labels = ["p", "q", "r", "s"]
        X, y = clusters(rng, labels, 8, DIM)
        batches: list = [("learn", X, y)]
        client = running.client()
        assert (
            ok(client.post("/v1/learn", json={"inputs": X.tolist(), "labels": y}))["version"] == 1
        )
        # Publishing is asynchronous: wait until version 1 is served before the clients start.
        first = {"inputs": [PROBES[0].tolist()], "min_version": 1}
        assert ok(client.post("/v1/predict", json=first))["version"] >= 1
        # Run for at least 3 s and until there is enough to check (at most 60 s), so that a
        # busy machine makes the test slower, not flaky.
        start = time.monotonic()
        errors: list[str] = []
        learned: list[tuple[int, Any, Any]] = []
        seen: list[list[tuple[int, int, dict[str, float]]]] = [[] for _ in range(4)]

        def enough() -> bool:
            elapsed = time.monotonic() - start
            return elapsed > 60.0 or (
                elapsed > 3.0 and len(learned) >= 5 and all(len(s) >= 20 for s in seen)
            )

        def learner() -> None:
            local = np.random.default_rng(4)
            with running.client() as http:
                while not enough():
                    Xb, yb = clusters(
                        local, [labels[local.integers(4)]], int(local.integers(1, 4)), DIM
                    )
                    response = http.post("/v1/learn", json={"inputs": Xb.tolist(), "labels": yb})
                    if response.status_code != 200:
                        errors.append(response.text)
                        return
                    learned.append((response.json()["version"], Xb, yb))

        def predictor(slot: int) -> None:
            local = np.random.default_rng(10 + slot)
            with running.client() as http:
                while not enough():
                    i = int(local.integers(len(PROBES)))
                    response = http.post(
                        "/v1/predict", json={"inputs": [PROBES[i].tolist()], "top": 20}
                    )
                    if response.status_code != 200:
                        errors.append(response.text)
                        return
                    body = response.json()
                    seen[slot].append((body["version"], i, scores_by_label(body["predictions"][0])))

        threads = [threading.Thread(target=learner)] + [
            threading.Thread(target=predictor, args=(slot,)) for slot in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert [v for v, _, _ in learned] == list(range(2, 2 + len(learned)))
        assert len(learned) >= 5 and all(len(s) >= 20 for s in seen)
        for observations in seen:
            versions = [v for v, _, _ in observations]
            assert versions == sorted(versions)  # a client never goes back in time
        batches += [("learn", Xb, yb) for _, Xb, yb in learned]
        # Each prediction is exactly the model of its version: check one per version seen.
        by_version: dict[int, tuple[int, dict[str, float]]] = {}
        for observations in seen:
            for version, i, scores in observations:
                by_version.setdefault(version, (i, scores))
        assert len(by_version) >= 3
        for version, (i, scores) in sorted(by_version.items())[-8:]:
            expected = reference(batches[:version], N_FEATURES)
            want = expected.decision_scores(PROBES[i : i + 1])[0]
            np.testing.assert_allclose(
                [scores[label] for label in expected.classes_], want, rtol=1e-6, atol=1e-9
            )
    finally:
        running.stop()


# --- crashes -------------------------------------------------------------------------------------------------
def test_every_acknowledged_update_survives_a_crash(tmp_path: Path) -> None:
    model = tmp_path / "model"
    running = Server(model, *ARGS, "--snapshot-every", "7").start()
    acknowledged: list[tuple[str, Any, Any]] = []
    in_flight: list[tuple[str, Any, Any]] = []
    rng = np.random.default_rng(5)
    labels = ["w", "x", "y", "z"]

    def stream() -> None:
        with running.client() as http:
            while True:
                X, y = clusters(rng, [labels[rng.integers(4)]], int(rng.integers(1, 4)), DIM)
                X = X + rng.normal(0.0, 1.0, X.shape)
                in_flight[:] = [("learn", X, y)]
                try:
                    response = http.post("/v1/learn", json={"inputs": X.tolist(), "labels": y})
                except httpx.HTTPError:
                    return  # the server died with this request in flight
                assert response.status_code == 200, response.text
                assert response.json()["version"] == len(acknowledged) + 1
                acknowledged.append(("learn", X, y))
                in_flight.clear()

    thread = threading.Thread(target=stream)
    thread.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    running.kill()  # SIGKILL in the middle of the stream
    thread.join()
    assert len(acknowledged) >= 40
    # A write torn by the crash: the start of a frame promising more bytes than the file holds.
    update = Record(len(acknowledged) + 2, "learn", ("w",), np.ones((1, DIM), np.float32))
    with open(model / "journal.log", "ab") as journal:
        journal.write(frame(update.encode())[:30])
    restarted = Server(model, *ARGS, "--snapshot-every", "7").start()
    try:
        assert "ignored a torn last record" in restarted.output()
        client = restarted.client()
        version = ok(client.get("/v1/model"))["version"]
        # The request in flight at the kill may have become durable before its answer was lost.
        assert version in (len(acknowledged), len(acknowledged) + 1)
        history = acknowledged + (in_flight if version > len(acknowledged) else [])
        assert_matches_reference(client, version, history)
        # The recovered service goes on learning from there.
        X, y = clusters(rng, ["new"], 3, DIM)
        body = ok(client.post("/v1/learn", json={"inputs": X.tolist(), "labels": y}))
        assert body["version"] == version + 1
        assert_matches_reference(client, version + 1, [*history, ("learn", X, y)])
    finally:
        assert restarted.stop() == -signal.SIGTERM


# --- security ------------------------------------------------------------------------------------------------
def test_keys_and_roles(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("reader-0123456789 read\nwriter-0123456789 write\n")
    keys.chmod(0o600)
    running = Server(tmp_path / "model", *ARGS, "--keys", str(keys)).start()
    try:
        anonymous, reader = running.client(), running.client("reader-0123456789")
        writer, stranger = running.client("writer-0123456789"), running.client("reader-012345678")
        X, y = clusters(np.random.default_rng(2), ["a", "b"], 5, DIM)
        learn = {"inputs": X.tolist(), "labels": y}
        response = anonymous.post("/v1/learn", json=learn)
        assert response.status_code == 401 and "Bearer" in response.json()["error"]
        assert response.headers["www-authenticate"] == "Bearer"
        assert stranger.post("/v1/learn", json=learn).status_code == 401
        response = reader.post("/v1/learn", json=learn)
        assert response.status_code == 403 and "'read' role" in response.json()["error"]
        assert writer.post("/v1/learn", json=learn).status_code == 200
        predict = {"inputs": X[:1].tolist(), "min_version": 1}
        assert anonymous.post("/v1/predict", json=predict).status_code == 401
        assert reader.post("/v1/predict", json=predict).status_code == 200
        assert writer.post("/v1/predict", json=predict).status_code == 200
        assert reader.get("/v1/review").status_code == 403
        assert reader.delete("/v1/classes/a").status_code == 403
        assert anonymous.get("/metrics").status_code == 401
        assert reader.get("/metrics").status_code == 200
        assert anonymous.get("/healthz").status_code == 200
        schemes = anonymous.get("/openapi.json").json()["components"]["securitySchemes"]
        assert schemes["HTTPBearer"]["scheme"] == "bearer"
        assert ok(reader.get("/v1/model"))["version"] == 1  # refused requests changed nothing
    finally:
        running.stop()


def roles_of_routes(tmp_path: Path) -> dict[tuple[str, str], set[str]]:
    """Every (method, path) of the app with the roles its dependencies ask for."""
    from perennial.service.app import create_app
    from perennial.service.store import ModelStore

    store = ModelStore.open(
        tmp_path, encoder="identity", head_params={"n_features": 8}, isolate=False
    )
    try:
        app = create_app(store)
    finally:
        store.close(snapshot=False)

    def roles(dependant: Any) -> set[str]:
        found = {getattr(dependant.call, "role", None)}
        for inner in dependant.dependencies:
            found |= roles(inner)
        return found - {None}

    routes = {}
    for route in app.routes:
        dependant = getattr(route, "dependant", None)
        for method in getattr(route, "methods", None) or ():
            routes[(method, route.path_format)] = roles(dependant) if dependant else set()
    return routes


def test_every_route_that_needs_the_write_role_refuses_a_read_key(tmp_path: Path) -> None:
    routes = roles_of_routes(tmp_path / "app")
    writes = sorted(key for key, roles in routes.items() if "write" in roles)
    assert set(writes) >= {
        ("POST", "/v1/learn"),
        ("POST", "/v1/unlearn"),
        ("DELETE", "/v1/classes/{label}"),
        ("GET", "/v1/review"),
        ("POST", "/v1/review/{item_id}"),
        ("DELETE", "/v1/review/{item_id}"),
    }
    # Nothing but the health check and the API's documents is open without a key.
    public = {key for key, roles in routes.items() if not roles}
    assert {path for _, path in public} <= {
        "/healthz",
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
    }
    keys = tmp_path / "keys"
    keys.write_text("reader-0123456789 read\nwriter-0123456789 write\n")
    keys.chmod(0o600)
    running = Server(tmp_path / "model", *ARGS, "--keys", str(keys)).start()
    try:
        reader, writer = running.client("reader-0123456789"), running.client("writer-0123456789")
        X, y = clusters(np.random.default_rng(8), ["w"], 3, DIM)
        ok(writer.post("/v1/learn", json={"inputs": X.tolist(), "labels": y}))
        requests = [
            (method, re.sub(r"\{[^}]*\}", "w", path), {"json": {}} if method == "POST" else {})
            for method, path in writes
        ]
        for method, url, body in requests:
            response = reader.request(method, url, **body)
            assert response.status_code == 403, (method, url, response.text)
            assert "this key has the 'read' role; this needs 'write'" in response.json()["error"]
        assert ok(reader.get("/v1/model"))["counts"] == {"w": 3}  # and nothing changed
        # The role is what refused them: with a write key the same requests get further.
        for method, url, body in requests:
            assert writer.request(method, url, **body).status_code != 403, (method, url)
    finally:
        running.stop()


def test_serve_refuses_unsafe_or_mismatched_settings(tmp_path: Path) -> None:
    result = run_serve(tmp_path / "a", "--encoder", "identity", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert "refusing to listen on '0.0.0.0' without --keys" in result.stderr
    # A directory written with another encoder.
    from perennial.service.store import ModelStore

    ModelStore.open(tmp_path / "b", encoder="identity", head_params={"n_features": 16}).close()
    result = run_serve(tmp_path / "b", "--encoder", "text")
    assert result.returncode == 2
    assert "was written with the 'identity' encoder" in result.stderr
    # A damaged snapshot is refused, never replaced.
    store = ModelStore.open(tmp_path / "c", encoder="identity", head_params={"n_features": 16})
    store.learn(np.eye(3), ["a", "b", "c"])
    store.close()
    (arrays,) = (tmp_path / "c").glob("snapshot-*/state-*.safetensors")
    arrays.write_bytes(arrays.read_bytes()[:-10])
    result = run_serve(tmp_path / "c")
    assert result.returncode == 2
    assert "refusing to start: the snapshot" in result.stderr and "damaged" in result.stderr


# --- metrics and the OpenAPI document -----------------------------------------------------------------------
def test_metrics_in_prometheus_text_format(server: Server) -> None:
    client = server.client()
    X, y = clusters(np.random.default_rng(9), ["m", "n"], 4, DIM)
    version = ok(client.post("/v1/learn", json={"inputs": X.tolist(), "labels": y}))["version"]
    ok(client.post("/v1/predict", json={"inputs": X[:2].tolist(), "min_version": version}))
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    values: dict[str, float] = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    route = 'method="POST",route="/v1/predict",status="200"'
    assert values[f"perennial_requests_total{{{route}}}"] >= 1
    assert (
        values[
            'perennial_request_duration_seconds_bucket{method="POST",route="/v1/learn",le="+Inf"}'
        ]
        >= 1
    )
    assert values["perennial_model_version"] == ok(client.get("/v1/model"))["version"]
    assert values["perennial_learned_examples_total"] >= len(y)
    assert values["perennial_predicted_inputs_total"] >= 2


def test_the_openapi_document_describes_the_contract(server: Server) -> None:
    document = server.client().get("/openapi.json").json()
    paths = document["paths"]
    for path, method in [
        ("/v1/predict", "post"),
        ("/v1/learn", "post"),
        ("/v1/unlearn", "post"),
        ("/v1/classes", "get"),
        ("/v1/classes/{label}", "delete"),
        ("/v1/review", "get"),
        ("/v1/review/{item_id}", "post"),
        ("/v1/model", "get"),
        ("/healthz", "get"),
        ("/metrics", "get"),
    ]:
        assert method in paths[path], (path, method)
    schemas = document["components"]["schemas"]
    assert schemas["PredictRequest"]["properties"]["inputs"]["maxItems"] == 64
    assert set(schemas["Prediction"]["required"]) >= {"label", "score", "unknown", "top"}
    assert schemas["LearnResponse"]["required"] == ["version", "learned"]
    json.dumps(document)  # the document is plain JSON


def test_fuzzing_the_openapi_document_finds_no_server_error(tmp_path: Path) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    running = Server(tmp_path / "model", *ARGS).start()
    try:
        client = running.client()
        X, y = clusters(np.random.default_rng(4), ["a", "b", "c"], 10, DIM)
        ok(client.post("/v1/learn", json={"inputs": X.tolist(), "labels": y}))
        schema = schemathesis.openapi.from_url(running.url + "/openapi.json")
        calls = 0
        statuses: dict[int, int] = {}
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (
                schemathesis.GenerationMode.POSITIVE,
                schemathesis.GenerationMode.NEGATIVE,
            ):

                @settings(
                    max_examples=12,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy(generation_mode=mode))
                def call(case: Any) -> None:
                    nonlocal calls
                    calls += 1
                    response = case.call_and_validate(
                        base_url=running.url,
                        checks=[not_a_server_error, response_schema_conformance],
                    )
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

                try:
                    call()
                except Unsatisfiable:
                    # No request can break the schema of an operation without parameters.
                    assert mode == schemathesis.GenerationMode.NEGATIVE
        assert calls >= 100
        assert statuses.get(200, 0) >= 20 and max(statuses) < 500, statuses
        assert ok(client.get("/healthz"))["status"] == "ok"
    finally:
        running.stop()


def test_novelty_is_null_until_the_threshold_is_calibrated(tmp_path: Path) -> None:
    running = Server(tmp_path / "model", *ARGS).start()
    try:
        client = running.client()
        X = np.eye(DIM)[:3] * 3.0
        body = ok(client.post("/v1/learn", json={"inputs": X[:1].tolist(), "labels": ["p"]}))
        query = {"inputs": [X[0].tolist()], "min_version": body["version"]}
        prediction = ok(client.post("/v1/predict", json=query))["predictions"][0]
        open_set = ok(client.get("/v1/model"))["open_set"]
        assert open_set["state"] == "calibrating"  # one class: no novelty is defined
        assert open_set["status"].startswith("calibrating: novelty needs two")
        assert prediction["label"] == "p" and prediction["unknown"] is False
        assert prediction["novelty"] is None
        # Two classes of one example: the young-model rule answers, with no held-out score yet.
        body = ok(client.post("/v1/learn", json={"inputs": X[1:3].tolist(), "labels": ["q", "r"]}))
        far = (np.ones(DIM) * -6.0).tolist()
        query = {"inputs": [X[0].tolist(), far], "min_version": body["version"]}
        near_row, far_row = ok(client.post("/v1/predict", json=query))["predictions"]
        open_set = ok(client.get("/v1/model"))["open_set"]
        assert open_set["state"] == "on" and open_set["status"].startswith("on (young model)")
        assert near_row["label"] == "p" and near_row["unknown"] is False
        assert far_row["unknown"] is True and far_row["novelty"] > open_set["threshold"]
    finally:
        running.stop()


# --- unlearning what was never learned ---------------------------------------------------------------------
def three_classes(seed: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Classes 'a', 'b', 'c' of 25 examples each, and 24 off-topic inputs far from all of them."""
    rng = np.random.default_rng(seed)
    X, y = clusters(rng, ["a", "b", "c"], 25, DIM)
    return X, y, rng.normal(0.0, 1.0, (24, DIM)) + np.eye(DIM)[7] * 30.0


def test_unlearning_examples_never_learned_answers_422_and_changes_nothing(tmp_path: Path) -> None:
    model = tmp_path / "model"
    X, y, off_topic = three_classes(11)
    running = Server(model, *ARGS).start()
    try:
        client = running.client()
        history: list = []
        for start in (0, 25, 50):  # one class per request (at most 64 inputs each)
            Xc, yc = X[start : start + 25], y[start : start + 25]
            ok(client.post("/v1/learn", json={"inputs": Xc.tolist(), "labels": yc}))
            history.append(("learn", Xc, yc))
        ok(client.post("/v1/predict", json={"inputs": [GOOD_ROW], "min_version": 3}))
        before = model_state(client)
        # The request: 24 off-topic inputs labelled with a class of 25 examples.
        response = client.post(
            "/v1/unlearn", json={"inputs": off_topic.tolist(), "labels": ["a"] * 24}
        )
        assert response.status_code == 422, response.text
        assert "cannot unlearn these examples of 'a'" in response.json()["error"]
        assert model_state(client) == before
        assert ok(client.get("/healthz"))["status"] == "ok"
        # Examples it did learn are unlearned as before.
        body = ok(client.post("/v1/unlearn", json={"inputs": X[:24].tolist(), "labels": y[:24]}))
        assert body == {"version": 4, "unlearned": 24}
        history.append(("unlearn", X[:24], y[:24]))
        assert_matches_reference(client, 4, history)
    finally:
        assert running.stop() == -signal.SIGTERM
    restarted = Server(model, *ARGS).start()  # from the snapshot and its ledger
    try:
        client = restarted.client()
        assert_matches_reference(client, 4, history)
        response = client.post(
            "/v1/unlearn", json={"inputs": off_topic[:1].tolist(), "labels": ["a"]}
        )
        assert response.status_code == 422 and "'a'" in response.json()["error"]
        assert ok(client.get("/healthz")) == {
            "status": "ok",
            "version": 4,
            "served_version": 4,
            "problems": {},
        }
    finally:
        assert restarted.stop() == -signal.SIGTERM


def test_a_journal_holding_an_impossible_unlearn_still_opens_and_serves(tmp_path: Path) -> None:
    from perennial.service.journal import Journal, Record
    from perennial.service.store import ModelStore

    model = tmp_path / "model"
    X, y, off_topic = three_classes(12)
    store = ModelStore.open(
        model, encoder="identity", head_params={"n_features": N_FEATURES, "ridge": RIDGE}
    )
    store.learn(X, y)
    store.close()
    # Acknowledged by a service without the check (as before it existed): in the journal.
    journal, _ = Journal.open(model / "journal.log")
    journal.append(Record(2, "unlearn", ("a",) * 24, off_topic.astype(np.float32)))
    journal.close()
    running = Server(model, *ARGS).start()
    try:
        client = running.client()
        body = ok(client.post("/v1/predict", json={"inputs": PROBES.tolist(), "min_version": 2}))
        assert body["version"] == 2
        # The record was applied as acknowledged, whatever it left.
        expected = reference([("learn", X, y)], N_FEATURES)
        expected.unlearn_many(off_topic.astype(np.float32), ["a"] * 24, verify=False)
        scores = expected.decision_scores(PROBES)
        novelty = expected.novelty_scores(PROBES)
        for i, prediction in enumerate(body["predictions"]):
            got = scores_by_label(prediction)
            want = [scores[i, expected.classes_.index(label)] for label in got]
            np.testing.assert_allclose(list(got.values()), want, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(prediction["novelty"], novelty[i], rtol=1e-6)
        assert ok(client.get("/healthz")) == {
            "status": "ok",
            "version": 2,
            "served_version": 2,
            "problems": {},
        }
        # It goes on learning.
        more, labels = clusters(np.random.default_rng(13), ["d"], 5, DIM)
        assert (
            ok(client.post("/v1/learn", json={"inputs": more.tolist(), "labels": labels}))[
                "version"
            ]
            == 3
        )
        ok(client.post("/v1/predict", json={"inputs": [GOOD_ROW], "min_version": 3}))
        assert ok(client.get("/healthz"))["status"] == "ok"
    finally:
        assert running.stop() == -signal.SIGTERM


# --- forgetting keeps open set on ----------------------------------------------------------------------------
def test_after_a_forget_an_unknown_input_still_goes_to_review(tmp_path: Path) -> None:
    running = Server(tmp_path / "model", *ARGS).start()
    try:
        client = running.client()
        X, y = clusters(np.random.default_rng(14), ["a", "b", "c", "d"], 20, DIM)
        for start in (0, 40):
            batch = {"inputs": X[start : start + 40].tolist(), "labels": y[start : start + 40]}
            ok(client.post("/v1/learn", json=batch))
        assert ok(client.delete("/v1/classes/d")) == {"version": 3, "forgotten": "d"}
        far = np.eye(DIM)[6] * 40.0
        body = ok(client.post("/v1/predict", json={"inputs": [far.tolist()], "min_version": 3}))
        assert body["version"] == 3
        (prediction,) = body["predictions"]
        assert prediction["unknown"] is True and prediction["label"] is None
        assert prediction["top"][0]["label"] in {"a", "b", "c"}
        items = ok(client.get("/v1/review"))["items"]
        assert [item["input"] for item in items if item["id"] == prediction["review_id"]] == [
            far.tolist()
        ]
        info = ok(client.get("/v1/model"))
        assert info["open_set"]["state"] == "on" and info["classes"] == ["a", "b", "c"]
    finally:
        assert running.stop() == -signal.SIGTERM
