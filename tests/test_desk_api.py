"""The support desk's API (``perennial.service.desk``) without a browser.

A real ``perennial serve`` on loopback with the real all-MiniLM-L6-v2 encoder (int8 ONNX, offline),
taught six BANKING77 intents; the browser tests (``test_desk_browser.py``) drive the same pages.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from perennial.datasets import data_root
from test_service_support import Server

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("onnxruntime")

INTENTS = [
    "exchange_rate",
    "top_up_failed",
    "card_arrival",
    "lost_or_stolen_card",
    "cash_withdrawal_charge",
    "change_pin",
]
OPERATOR, READER = "operator-key-0123456789", "chat-key-0123456789"
#: A topic none of INTENTS covers, asked twice in other words (checked unknown, then known).
NEW_TOPIC = "How old do I need to be to open an account?"
NEW_TOPIC_AGAIN = "What age do I need to be to open an account?"
KNOWN = {
    "What is the exchange rate for euros?": "exchange_rate",
    "I want to change my PIN": "change_pin",
}


def banking(per_class: int) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    counts = dict.fromkeys(INTENTS, 0)
    with open(data_root() / "banking77" / "train.csv", newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            label = row["category"]
            if label in counts and counts[label] < per_class:
                texts.append(row["text"])
                labels.append(label)
                counts[label] += 1
    return texts, labels


def start_desk(directory: Path) -> Server:
    """A text server with an operator key and a read (chat) key, taught the six intents."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = directory / "keys"
    keys.write_text(f"{OPERATOR} write\n{READER} read\n", encoding="utf-8")
    os.chmod(keys, 0o600)
    server = Server(
        directory / "model",
        "--encoder",
        "text",
        "--unknown-rate",
        "0.1",
        "--keys",
        str(keys),
        "--shutdown-seconds",
        "60",
    ).start()
    texts, labels = banking(20)
    with server.client(OPERATOR) as client:
        for i in range(0, len(texts), 60):
            response = client.post(
                "/v1/learn", json={"inputs": texts[i : i + 60], "labels": labels[i : i + 60]}
            )
            assert response.status_code == 200, response.text
    return server


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return dict(response.json())


def refused(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return str(response.json()["error"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    running = start_desk(tmp_path_factory.mktemp("desk-api"))
    yield running
    running.stop()


def test_the_desk_loop_over_the_api(server: Server) -> None:
    customer, operator = server.client(READER), server.client(OPERATOR)
    # A known intent gets its (default) reply; nothing is queued.
    for text, intent in KNOWN.items():
        body = ok(customer.post("/v1/chat", json={"text": text}))
        assert body["prediction"]["label"] == intent
        assert [m["from"] for m in body["messages"]] == ["customer", "bot"]
        assert body["messages"][1]["text"] == f"I can help with that: {intent.replace('_', ' ')}."
    # A new topic is handed over, and appears in the operator's queue with its conversation.
    body = ok(customer.post("/v1/chat", json={"text": NEW_TOPIC}))
    talk = body["conversation"]
    assert body["prediction"]["unknown"] is True
    assert body["messages"][-1]["text"] == "Let me bring in a colleague."
    queue = ok(operator.get("/v1/desk/queue"))
    mine = next(c for c in queue["conversations"] if c["id"] == talk)
    (item,) = mine["pending"]
    assert item["input"] == NEW_TOPIC
    assert item["id"] in [i["id"] for i in ok(operator.get("/v1/review"))["items"]]
    # A read key can chat but cannot see the queue or teach.
    assert "'read' role" in refused(customer.get("/v1/desk/queue"), 403)
    assert "'read' role" in refused(
        customer.post(f"/v1/desk/review/{item['id']}", json={"label": "age_limit"}), 403
    )
    # The operator answers and assigns a new intent in one action.
    answer = "You can open an account from the age of 18."
    taught = ok(
        operator.post(
            f"/v1/desk/review/{item['id']}", json={"label": "age_limit", "answer": answer}
        )
    )
    assert taught["learned"] == 1
    # The same item from a second tab: refused, nothing learned twice.
    error = refused(
        operator.post(f"/v1/desk/review/{item['id']}", json={"label": "age_limit"}), 404
    )
    assert "labelled or discarded already" in error
    counts = {c["label"]: c["count"] for c in ok(operator.get("/v1/classes"))["classes"]}
    assert counts["age_limit"] == 1
    # The customer sees the operator's answer; a second customer asking in other words gets it.
    seen = ok(customer.get(f"/v1/chat/{talk}", params={"after": 2}))["messages"]
    assert [(m["from"], m["text"]) for m in seen][-1] == ("operator", answer)
    second = ok(customer.post("/v1/chat", json={"text": NEW_TOPIC_AGAIN}))
    assert second["version"] >= taught["version"]
    assert second["prediction"]["label"] == "age_limit"
    assert second["messages"][-1]["text"] == answer
    # The reply is saved in the model's directory.
    saved = json.loads((server.model / "desk-replies.json").read_text(encoding="utf-8"))
    assert saved["age_limit"] == answer
    # Forgetting the intent hands its questions over again and drops its reply.
    ok(operator.delete("/v1/desk/intents/age_limit"))
    third = ok(customer.post("/v1/chat", json={"text": NEW_TOPIC_AGAIN}))
    assert third["prediction"]["unknown"] is True
    assert "age_limit" not in json.loads((server.model / "desk-replies.json").read_text())


def test_try_predicts_without_queueing(server: Server) -> None:
    operator = server.client(OPERATOR)
    before = len(ok(operator.get("/v1/review"))["items"])
    body = ok(operator.post("/v1/desk/try", json={"text": "Tell me about mortgages for a yacht"}))
    assert body["prediction"]["unknown"] is True and len(body["prediction"]["top"]) == 5
    assert body["reply"] == "Let me bring in a colleague."
    assert len(ok(operator.get("/v1/review"))["items"]) == before
    # The figures the chart draws come from the service's own counters.
    stats = ok(operator.get("/v1/desk/stats"))
    metrics = operator.get("/metrics").text
    line = next(x for x in metrics.splitlines() if x.startswith("perennial_predicted_inputs_total"))
    assert float(line.split()[-1]) == stats["predicted"]


def test_replies_are_saved_atomically(server: Server) -> None:
    operator = server.client(OPERATOR)
    ok(operator.put("/v1/desk/replies/top_up_failed", json={"text": "Try the top-up again."}))
    saved = json.loads((server.model / "desk-replies.json").read_text(encoding="utf-8"))
    assert saved["top_up_failed"] == "Try the top-up again."
    # Only the file itself is left: no temporary file of the write.
    assert sorted(p.name for p in server.model.glob("*desk*")) == ["desk-replies.json"]
    intents = {i["label"]: i for i in ok(operator.get("/v1/desk/intents"))["intents"]}
    assert intents["top_up_failed"]["reply"] == "Try the top-up again."
    assert intents["top_up_failed"]["custom"] is True
    assert intents["exchange_rate"] == {
        "label": "exchange_rate",
        "count": 20,
        "reply": "I can help with that: exchange rate.",
        "custom": False,
    }
    # (That replies survive a restart is checked in test_desk_browser.py, which restarts.)


def test_a_corrupted_replies_file_is_named_at_start(tmp_path: Path) -> None:
    from perennial.exceptions import PersistenceError
    from perennial.service.desk import Desk

    (tmp_path / "desk-replies.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(PersistenceError, match=r"desk-replies\.json"):
        Desk(tmp_path)
    (tmp_path / "desk-replies.json").write_text('["a list"]', encoding="utf-8")
    with pytest.raises(PersistenceError, match="JSON object of texts"):
        Desk(tmp_path)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("post", "/v1/chat", {"text": "   "}, 422, "text is empty"),
        ("post", "/v1/chat", {"text": "x" * 2001}, 413, "over the limit of 2000"),
        ("post", "/v1/chat", {"conversation": "nope", "text": "hi"}, 404, "no conversation"),
        ("put", "/v1/desk/replies/card_arrival", {"text": ""}, 422, "text is empty"),
        ("put", "/v1/desk/replies/no_such", {"text": "hi"}, 404, "no intent 'no_such'"),
        ("post", "/v1/desk/review/zzz", {"label": "   "}, 422, "label"),
        ("post", "/v1/desk/review/zzz", {"label": "y" * 10_000}, 413, "10000 characters"),
        ("post", "/v1/desk/review/zzz", {"label": "ok"}, 404, "no review item 'zzz'"),
        ("post", "/v1/desk/conversations/zzz/answer", {"text": "hi"}, 404, "no conversation"),
        ("delete", "/v1/desk/intents/no_such", None, 404, "no such class"),
    ],
)
def test_bad_requests_are_refused_by_name_and_change_nothing(
    server: Server, method: str, path: str, body: Any, status: int, message: str
) -> None:
    operator = server.client(OPERATOR)
    before = ok(operator.get("/v1/desk/intents"))
    kwargs = {"json": body} if body is not None else {}
    assert message in refused(operator.request(method.upper(), path, **kwargs), status)
    assert ok(operator.get("/v1/desk/intents")) == before


def test_the_pages_load_only_their_own_files(server: Server) -> None:
    for page in ("/chat", "/console"):
        response = httpx.get(server.url + page)
        assert response.status_code == 200
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert "http" not in response.text.replace(server.url, "")  # no CDN
    assert httpx.get(server.url + "/desk/console.js").status_code == 200
    assert httpx.get(server.url + "/desk/..%2Fdesk.py").status_code == 404
