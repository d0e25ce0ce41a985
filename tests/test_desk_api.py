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
    # Only the file itself is left: no temporary file of the write (nor of the hand-overs').
    assert sorted(p.name for p in server.model.glob("*desk-replies*")) == ["desk-replies.json"]
    assert list(server.model.glob("desk-handovers/.*")) == []
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
        ("post", "/v1/desk/review/zzz", {"label": ""}, 422, "label is blank ('')"),
        ("post", "/v1/desk/review/zzz", {"label": "ok", "answer": " "}, 422, "answer is empty"),
        ("post", "/v1/desk/conversations/zzz/answer", {"text": ""}, 422, "text is empty"),
        ("post", "/v1/desk/try", {"text": ""}, 422, "text is empty"),
        ("post", "/v1/desk/try", {"text": " \n "}, 422, "text is empty"),
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


# --- hand-overs kept across a restart ----------------------------------------------------------------
def _handed_over_desk(directory: Path, clock: Any) -> tuple[Any, Any, str, str]:
    """A desk with one handed-over conversation whose item waits: (desk, queue, talk, item)."""
    from perennial.service.desk import Desk
    from perennial.service.review import ReviewQueue

    review = ReviewQueue(ttl=600, clock=clock)
    desk = Desk(directory, ttl=600, clock=clock, version=lambda: 7)
    desk.keep(review, lambda version: [])
    talk = desk.start()
    desk.post(talk, "customer", NEW_TOPIC)
    item = review.add(NEW_TOPIC, {"label": None, "score": 0.1}, version=7, size=42)
    desk.hand_over(talk, review.get(item))
    desk.post(talk, "bot", "Let me bring in a colleague.", handed_over=True)
    return desk, review, talk, str(item)


def _restarted(directory: Path, clock: Any, records: Any) -> tuple[Any, Any]:
    from perennial.service.desk import Desk
    from perennial.service.review import ReviewQueue

    review = ReviewQueue(ttl=600, clock=clock)
    desk = Desk(directory, ttl=600, clock=clock)
    desk.keep(review, records)
    return desk, review


@pytest.mark.parametrize(
    ("journal", "learned"),
    [
        ("the learning", True),  # it reached the model: never learned again
        ("other learnings", False),  # it did not: the item waits again
        ("nothing", False),
        ("compacted", True),  # cannot tell: counted learned (logged), never learned twice
    ],
)
def test_an_item_being_learned_at_a_crash_is_settled_by_the_journal(
    tmp_path: Path, journal: str, learned: bool
) -> None:
    import numpy as np

    from perennial.service.journal import Record

    now = [1000.0]
    desk, review, talk, item_id = _handed_over_desk(tmp_path, lambda: now[0])
    item = review.claim(item_id)
    features = np.full((1, 4), 0.25, dtype=np.float32)
    desk.labelling(item, "age_limit", features)  # then the process dies before settled()
    other = Record(8, "learn", ("age_limit",), np.zeros((1, 4), dtype=np.float32))
    mine = Record(9, "learn", ("age_limit",), features.copy())
    records = {
        "the learning": [other, mine],
        "other learnings": [other, Record(9, "learn", ("other",), features.copy())],
        "nothing": [],
        "compacted": None,
    }[journal]
    asked = []

    def records_after(version: int) -> Any:
        asked.append(version)
        return records

    now[0] += 60
    desk, review = _restarted(tmp_path, lambda: now[0], records_after)
    assert asked == [7]  # the version recorded before the learning
    assert (review.get(item_id) is None) is learned
    if not learned:  # back with its id, text and first expiry time
        assert review.get(item_id) == item
    (kept,) = desk.handed_over({i.id for i in review.items()})
    assert kept["id"] == talk and kept["pending"] == ([] if learned else [item_id])
    assert [m["text"] for m in kept["messages"]] == [NEW_TOPIC, "Let me bring in a colleague."]
    # The file now says so too: a second restart gives the same queue, asking nothing.
    desk, review = _restarted(tmp_path, lambda: now[0], lambda version: pytest.fail("asked"))
    assert (review.get(item_id) is None) is learned


def test_kept_conversations_expire_and_leave_no_file(tmp_path: Path) -> None:
    now = [1000.0]
    desk, review, talk, item_id = _handed_over_desk(tmp_path, lambda: now[0])
    assert [p.name for p in (tmp_path / "desk-handovers").iterdir()] == [f"{talk}.json"]
    review.discard(item_id)  # discarded: it leaves the file
    desk, review = _restarted(tmp_path, lambda: now[0], lambda version: [])
    assert len(review) == 0 and len(desk) == 1
    now[0] += 601  # past the time-to-live after the last message
    desk, review = _restarted(tmp_path, lambda: now[0], lambda version: [])
    assert len(desk) == 0 and list((tmp_path / "desk-handovers").iterdir()) == []


def test_a_restart_keeps_the_hand_overs_and_learns_nothing_twice(server: Server) -> None:
    """A crash (SIGKILL) with two hand-overs: one waiting, one labelled just before."""
    customer, operator = server.client(READER), server.client(OPERATOR)
    waiting_question = "Can my teenager get a debit card of her own?"
    labelled_question = "Do you offer loans for buying a boat?"
    talks, items = {}, {}
    for question in (waiting_question, labelled_question):
        body = ok(customer.post("/v1/chat", json={"text": question}))
        assert body["prediction"]["unknown"] is True, question
        talks[question] = body["conversation"]
        queue = ok(operator.get("/v1/desk/queue"))
        mine = next(c for c in queue["conversations"] if c["id"] == body["conversation"])
        items[question] = mine["pending"][0]["id"]
    plain = ok(customer.post("/v1/chat", json={"text": next(iter(KNOWN))}))["conversation"]
    label = {"label": "boat_loan", "answer": "We do not lend for boats."}
    ok(operator.post(f"/v1/desk/review/{items[labelled_question]}", json=label))
    ok(
        operator.post(
            f"/v1/desk/conversations/{talks[waiting_question]}/answer", json={"text": "One moment."}
        )
    )
    before = ok(customer.get(f"/v1/chat/{talks[waiting_question]}"))["messages"]
    server.kill()
    server.start()
    customer, operator = server.client(READER), server.client(OPERATOR)
    # The operator still sees the waiting question, with its item, id and text.
    queue = ok(operator.get("/v1/desk/queue"))
    waiting = next(c for c in queue["conversations"] if c["id"] == talks[waiting_question])
    assert [(i["id"], i["input"]) for i in waiting["pending"]] == [
        (items[waiting_question], waiting_question)
    ]
    assert waiting["messages"] == before
    # The customer's page polls the same conversation and sees the operator's answers.
    assert ok(customer.get(f"/v1/chat/{talks[waiting_question]}"))["messages"] == before
    labelled = next(c for c in queue["conversations"] if c["id"] == talks[labelled_question])
    assert labelled["pending"] == []
    assert labelled["messages"][-1]["text"] == "We do not lend for boats."
    # The label sent before the crash, sent again: refused, learned once.
    for path in (
        f"/v1/desk/review/{items[labelled_question]}",
        f"/v1/review/{items[labelled_question]}",
    ):
        again = operator.post(path, json={"label": label["label"]})
        assert "labelled or discarded already" in refused(again, 404)
    counts = {c["label"]: c["count"] for c in ok(operator.get("/v1/classes"))["classes"]}
    assert counts["boat_loan"] == 1
    # The waiting item is taught after the restart, and its answer reaches the customer.
    answer = {"label": "child_card", "answer": "From the age of 13, with a parent."}
    ok(operator.post(f"/v1/desk/review/{items[waiting_question]}", json=answer))
    seen = ok(
        customer.get(f"/v1/chat/{talks[waiting_question]}", params={"after": before[-1]["seq"]})
    )
    assert [(m["from"], m["text"]) for m in seen["messages"]] == [("operator", answer["answer"])]
    counts = {c["label"]: c["count"] for c in ok(operator.get("/v1/classes"))["classes"]}
    assert counts["child_card"] == 1
    # A conversation never handed over lived in memory only.
    gone = customer.get(f"/v1/chat/{plain}")
    assert gone.status_code == 404 and "the service restarted" in gone.json()["error"]
