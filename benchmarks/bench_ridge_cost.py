"""Learning cost of the default head (RidgeHead, M=4096, float64) on 384-d features.

Prints each figure beside the limit it is held to (issue targets); nothing here is a test.
Run: .venv/bin/python benchmarks/bench_ridge_cost.py  (about a minute on 2 cores)
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np

from perennial.datasets import load_clinc150
from perennial.encoders.text import TextEncoder
from perennial.heads import RidgeHead

M = 4096
DIM = 384


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    rng = np.random.default_rng(0)
    head = RidgeHead(n_features=M)
    warm = unit_rows(rng, 2000)
    head.learn_many(warm, [f"w{i % 50}" for i in range(2000)])
    first_solve = timed(lambda: head.predict_many(warm[:1]))  # full eigendecomposition of G

    # Single examples on top of a current solution: one projection and one rank-1 update each.
    singles = []
    for k in range(30):
        x, label = unit_rows(rng, 1)[0], f"w{k % 50}"
        singles.append(timed(lambda x=x, label=label: head.learn_one(x, label)))
    predict_after_single = timed(lambda: head.predict_many(warm[:1]))

    # Batches of 100 and 1000 in a stream (no prediction in between).
    batch_100 = [
        timed(lambda: head.learn_many(unit_rows(rng, 100), [f"w{k}" for k in range(100)])) / 100
        for _ in range(10)
    ]
    batch_1000 = [
        timed(lambda: head.learn_many(unit_rows(rng, 1000), [f"w{k % 50}" for k in range(1000)]))
        / 1000
        for _ in range(3)
    ]
    resolve = timed(lambda: head.predict_many(warm[:1]))
    bytes_before = head.state_bytes
    head.learn_many(unit_rows(rng, 5000), [f"w{k % 50}" for k in range(5000)])
    bytes_after = head.state_bytes

    # New classes from 10 real texts each, encoding included, on a model that is serving.
    data = load_clinc150()
    encoder = TextEncoder()
    intents = [
        "pto_request",
        "credit_limit",
        "book_flight",
        "meaning_of_life",
        "oil_change_how",
        "timer",
    ]
    by_intent = {
        i: [t for t, y in zip(data.train.inputs, data.train.labels, strict=True) if y == i][:10]
        for i in intents
    }
    encoder.encode(by_intent[intents[0]])  # warm-up: the first call builds the network
    head.predict_many(warm[:1])
    encode_times, learn_times, predict_times = [], [], []
    for intent in intents[1:]:
        texts = by_intent[intent]
        start = time.perf_counter()
        features = encoder.encode(texts)
        encoded = time.perf_counter()
        head.learn_many(features, [intent] * len(texts))
        learned = time.perf_counter()
        head.predict_many(features[:1])
        encode_times.append(encoded - start)
        learn_times.append(learned - encoded)
        predict_times.append(time.perf_counter() - learned)
    new_class = [e + lt for e, lt in zip(encode_times, learn_times, strict=True)]

    rows = [
        (
            "batch of 100, learning per example (amortized)",
            1e3 * statistics.mean(batch_100),
            "ms",
            2.0,
        ),
        (
            "batch of 1000, learning per example (amortized)",
            1e3 * statistics.mean(batch_1000),
            "ms",
            2.0,
        ),
        ("single example, learn_one (median of 30)", 1e3 * statistics.median(singles), "ms", 30.0),
        (
            "new class from 10 texts: encode + learn (median of 5)",
            1e3 * statistics.median(new_class),
            "ms",
            100.0,
        ),
        ("new class from 10 texts: encode + learn (worst of 5)", 1e3 * max(new_class), "ms", None),
        (
            "  of which encoding 10 texts (median)",
            1e3 * statistics.median(encode_times),
            "ms",
            None,
        ),
        (
            "  of which learning 10 examples (median)",
            1e3 * statistics.median(learn_times),
            "ms",
            None,
        ),
        (
            "first prediction after a new class (median)",
            1e3 * statistics.median(predict_times),
            "ms",
            None,
        ),
        ("first prediction after one example", 1e3 * predict_after_single, "ms", None),
        ("full re-solve (eigh of G + GCV), after a stream", resolve, "s", None),
        ("first solve of a fresh model", first_solve, "s", None),
        ("state bytes after 2.0k / 17.4k examples", f"{bytes_before} / {bytes_after}", "B", None),
    ]
    print(f"RidgeHead(n_features={M}) on {DIM}-d features, float64; limits from the issue")
    for name, value, unit, limit in rows:
        shown = f"{value:.2f} {unit}" if isinstance(value, float) else f"{value} {unit}"
        verdict = (
            ""
            if limit is None
            else (f"limit {limit:g} {unit}: " + ("ok" if value <= limit else "OVER"))
        )
        print(f"  {name:<52} {shown:>16}   {verdict}")
    print(json.dumps({name: value for name, value, _, _ in rows}))


if __name__ == "__main__":
    main()
