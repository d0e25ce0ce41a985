"""The support desk (``/chat``, ``/console``) under load, on loopback: the targets of issue 18.

Starts ``perennial serve`` on a new model directory (text encoder, int8 ONNX; API keys), teaches
it ``--intents`` BANKING77 intents (``--per-class`` training texts each), then measures:

* **label to next prediction**: a customer asks a question of an intent the model has not
  learned (a BANKING77 test text); it is handed over; the operator assigns the intent
  (``POST /v1/desk/review/{id}``, with an answer); the next customer asks the same question.
  The figure is the time from sending the label to the bot's reply naming the new intent: the
  label's request plus the next chat request (which waits until the served model holds the
  acknowledged version). Target: under 1 s. A third customer then asks another test text of
  that intent: how often one example suffices is printed beside it.
* **4 chats and 1 operator**: ``--chats`` customer threads, each sending a test text of any
  BANKING77 intent, reading its reply, polling its conversation (as the page does), and
  waiting ``--think`` seconds; one operator thread polling the queue and the figures once a
  second, assigning the true intent to every handed-over message with an answer. For
  ``--seconds`` seconds. Prints p50/p99 of a chat reply (``POST /v1/chat``) and of the polls.

Nothing here is a test; figures depend on what else runs on the machine (the load average is
printed).

Run: .venv/bin/python benchmarks/bench_desk.py [--seconds 30] [--chats 4] [--think 0.5]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from perennial.datasets import load_banking77

OPERATOR, CHAT = "bench-operator-key", "bench-chat-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    keys = directory / "keys"
    keys.write_text(f"{OPERATOR} write\n{CHAT} read\n", encoding="utf-8")
    os.chmod(keys, 0o600)
    port = free_port()
    command = [sys.executable, "-m", "perennial.cli", "serve", "--model", str(directory / "m")]
    command += ["--encoder", "text", "--unknown-rate", "0.1", "--keys", str(keys)]
    command += ["--port", str(port), "--log-level", "warning"]
    log = open(directory / "serve.log", "wb")  # noqa: SIM115 - open for the server's life
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError((directory / "serve.log").read_text())


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--chats", type=int, default=4)
    parser.add_argument("--think", type=float, default=0.5, help="seconds between messages")
    parser.add_argument("--intents", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--new-topics", type=int, default=10)
    args = parser.parse_args()

    data = load_banking77()
    train_texts, train_labels = list(data.train.inputs), [str(y) for y in data.train.labels]
    test_texts, test_labels = list(data.test.inputs), [str(y) for y in data.test.labels]
    names = sorted(set(train_labels))
    rng = random.Random(0)
    rng.shuffle(names)
    known, fresh = names[: args.intents], names[args.intents : args.intents + args.new_topics]
    texts: list[str] = []
    labels: list[str] = []
    for label in known:
        rows = [t for t, y in zip(train_texts, train_labels, strict=True) if y == label]
        texts += rows[: args.per_class]
        labels += [label] * len(rows[: args.per_class])
    by_label: dict[str, list[str]] = {}
    for text, label in zip(test_texts, test_labels, strict=True):
        by_label.setdefault(label, []).append(text)

    with tempfile.TemporaryDirectory() as folder:
        process, url = start(Path(folder))
        try:
            operator = httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=60
            )
            for i in range(0, len(texts), 64):
                operator.post(
                    "/v1/learn", json={"inputs": texts[i : i + 64], "labels": labels[i : i + 64]}
                ).raise_for_status()
            print(f"model: {len(known)} intents x {args.per_class} texts; load {os.getloadavg()}")
            latency(url, operator, fresh, by_label)
            load(url, operator, by_label, args)
        finally:
            process.terminate()
            process.wait(timeout=60)


def latency(
    url: str, operator: httpx.Client, fresh: list[str], by_label: dict[str, list[str]]
) -> None:
    customer = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {CHAT}"}, timeout=60)
    figures, reached, paraphrased = [], 0, 0
    for label in fresh:
        question = by_label[label][0]
        first = customer.post("/v1/chat", json={"text": question}).json()
        if not first["prediction"]["unknown"]:
            continue  # taken for a known intent: no hand-over to time
        item = operator.get("/v1/desk/queue").json()["conversations"]
        pending = [p for c in item if c["id"] == first["conversation"] for p in c["pending"]]
        started = time.perf_counter()
        taught = operator.post(
            f"/v1/desk/review/{pending[0]['id']}", json={"label": label, "answer": f"About {label}"}
        ).json()
        # The next customer asks the same: predicted at (at least) the version the label made.
        again = customer.post("/v1/chat", json={"text": question}).json()
        figures.append(time.perf_counter() - started)
        assert again["version"] >= taught["version"]
        reached += again["prediction"]["label"] == label
        other = customer.post("/v1/chat", json={"text": by_label[label][1]}).json()
        paraphrased += other["prediction"]["label"] == label
    print(
        f"label -> next prediction: p50 {percentile(figures, 50):.0f} ms, max "
        f"{max(figures) * 1000:.0f} ms over {len(figures)} new intents (target < 1000 ms); "
        f"the same question got the new intent {reached}/{len(figures)} times, another "
        f"question of the intent {paraphrased}/{len(figures)} (one example learned)"
    )


def load(
    url: str, operator: httpx.Client, by_label: dict[str, list[str]], args: argparse.Namespace
) -> None:
    pool = [(text, label) for label, rows in by_label.items() for text in rows[2:]]
    replies: list[float] = []
    polls: list[float] = []
    console: list[float] = []
    errors: list[str] = []
    stop = time.monotonic() + args.seconds

    def customer(seed: int) -> None:
        rng = random.Random(seed)
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {CHAT}"})
        conversation = None
        while time.monotonic() < stop:
            text, _ = rng.choice(pool)
            started = time.perf_counter()
            answer = client.post("/v1/chat", json={"conversation": conversation, "text": text})
            replies.append(time.perf_counter() - started)
            if answer.status_code != 200:
                errors.append(answer.text)
                continue
            conversation = answer.json()["conversation"]
            started = time.perf_counter()
            client.get(f"/v1/chat/{conversation}", params={"after": 0})
            polls.append(time.perf_counter() - started)
            time.sleep(args.think)

    def operate() -> None:
        truth = {text: label for text, label in pool}
        while time.monotonic() < stop:
            started = time.perf_counter()
            queue = operator.get("/v1/desk/queue").json()
            operator.get("/v1/desk/intents")
            operator.get("/v1/desk/stats")
            console.append(time.perf_counter() - started)
            for talk in queue["conversations"]:
                for item in talk["pending"]:
                    label = truth.get(item["input"], "other")
                    answer = operator.post(
                        f"/v1/desk/review/{item['id']}", json={"label": label, "answer": "ok"}
                    )
                    if answer.status_code != 200:
                        errors.append(answer.text)
            time.sleep(1.0)

    threads = [threading.Thread(target=customer, args=(i,)) for i in range(args.chats)]
    threads.append(threading.Thread(target=operate))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(
        f"{args.chats} chats + 1 operator for {args.seconds:g} s (think {args.think:g} s): "
        f"chat reply p50 {percentile(replies, 50):.0f} ms, p99 {percentile(replies, 99):.0f} ms "
        f"over {len(replies)} messages; chat poll p50 {percentile(polls, 50):.0f} ms, p99 "
        f"{percentile(polls, 99):.0f} ms; console refresh (queue + intents + figures) p50 "
        f"{percentile(console, 50):.0f} ms, p99 {percentile(console, 99):.0f} ms; "
        f"{len(errors)} errors; load {os.getloadavg()}"
    )
    for error in errors[:3]:
        print("  error:", error[:200])


if __name__ == "__main__":
    main()
