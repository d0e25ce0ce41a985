"""What learning and predicting cost through LifelongClassifier, against the head alone.

Issue 13's targets, each printed beside its limit (nothing here is a test):

1. ``learn_one`` and ``learn_many`` (batches of 100) through ``LifelongClassifier`` with the
   features given: at most 1.1x the head alone, closed set; at most 1.5x with open set on. Every
   head, 384-d features (the text encoder's width), one BLAS thread.
2. ``pooling="layers"`` (2,304-d features), open set on, default ridge head (4,096 random
   features): ``learn_one`` at most 60 ms.
3. Predict-then-learn, one example at a time, default head: a step at most 3x a learn alone,
   while the ridge head is in its dual form and after it turned primal (the primal window spans
   a rebuild of ``G``, which is spread over up to 1,024 examples).
4. The README's first snippet (three sentences, the text encoder loaded): the saved model at
   most 5 MB, the first prediction at most 0.5 s.

The same examples go to the head alone and to each model, interleaved one call at a time, so
the machine's other load falls on all columns alike. Features are unit-norm Gaussian vectors
(the cost does not depend on their values); part 4 uses the real text encoder.

Run: .venv/bin/python benchmarks/bench_learner_cost.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from perennial import LifelongClassifier
from perennial.encoders import IdentityEncoder
from perennial.heads import HEADS, Head, make_head


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def learner(head: Head, open_set: bool) -> LifelongClassifier:
    return LifelongClassifier(IdentityEncoder(), head, unknown_rate=0.02 if open_set else None)


def compare_heads(dim: int, warm: int, repeats: int, classes: int) -> list[tuple[str, ...]]:
    """Per-example cost of learn_one and of batches of 100: head alone, closed, open."""
    rows = []
    for name in sorted(HEADS):
        rng = np.random.default_rng(0)
        X = unit_rows(rng, warm, dim)
        y = [f"c{i % classes}" for i in range(warm)]
        alone = make_head(name)
        closed, opened = learner(make_head(name), False), learner(make_head(name), True)
        for target in (alone, closed, opened):
            target.learn_many(X, y)
        for what, size, count in (("learn_one", 1, repeats), ("learn_many(100)", 100, 8)):
            times: dict[str, list[float]] = {"alone": [], "closed": [], "open": []}
            for k in range(count):
                batch = unit_rows(rng, size, dim)
                labels = [f"c{(k * size + j) % classes}" for j in range(size)]
                targets = {"alone": alone, "closed": closed, "open": opened}
                for key, target in targets.items():
                    if size == 1:
                        times[key].append(timed(partial(target.learn_one, batch[0], labels[0])))
                    else:
                        times[key].append(timed(partial(target.learn_many, batch, labels)))
            per = {key: 1e3 * statistics.median(value) / size for key, value in times.items()}
            rows.append(
                (
                    f"{name:<15} {what:<16}",
                    f"{per['alone']:9.3f}",
                    f"{per['closed']:9.3f}",
                    f"{per['closed'] / per['alone']:6.2f}x",
                    f"{per['open']:9.3f}",
                    f"{per['open'] / per['alone']:6.2f}x",
                )
            )
    return rows


def layers_learn_one(warm: int, repeats: int) -> tuple[float, float]:
    """learn_one on 2,304-d features, open set on, default head: median and worst, in ms."""
    rng = np.random.default_rng(1)
    model = learner(make_head("ridge"), True)
    X = unit_rows(rng, warm, 2304)
    model.learn_many(X, [f"c{i % 50}" for i in range(warm)])
    times = []
    for k in range(repeats):
        x = unit_rows(rng, 1, 2304)[0]
        times.append(timed(lambda x=x, k=k: model.learn_one(x, f"c{k % 50}")))
    return 1e3 * statistics.median(times), 1e3 * max(times)


def predict_then_learn(
    warm: int, steps: int, dim: int = 384, max_pending: int | None = None
) -> tuple[float, float]:
    """The online loop on the default model: mean step cost and mean learn-alone cost, in ms."""
    rng = np.random.default_rng(2)
    X = unit_rows(rng, warm + steps, dim)
    y = [f"c{i % 50}" for i in range(warm + steps)]
    params = {} if max_pending is None else {"max_pending": max_pending}
    loop, alone = (LifelongClassifier(head=make_head("ridge", **params)) for _ in range(2))
    for model in (loop, alone):
        model.learn_many(X[:warm], y[:warm])
        model.predict_one(X[0])  # both start from a solved model
    step_times, learn_times = [], []
    for i in range(warm, warm + steps):

        def step(i: int = i) -> None:
            loop.predict_one(X[i])
            loop.learn_one(X[i], y[i])

        step_times.append(timed(step))
        learn_times.append(timed(lambda i=i: alone.learn_one(X[i], y[i])))
    return 1e3 * statistics.mean(step_times), 1e3 * statistics.mean(learn_times)


def hello_world() -> tuple[float, float, float]:
    """The README's first snippet: saved size (MB), first prediction and encoder load (s)."""
    from perennial.encoders.text import TextEncoder

    encoder = TextEncoder()
    started = time.perf_counter()
    encoder.encode(["warm up"])
    loaded = time.perf_counter() - started
    model = LifelongClassifier(encoder)
    model.learn_many(["I lost my card", "my card never arrived"], ["lost_card", "card_arrival"])
    model.learn_one("what's the exchange rate for euros?", "exchange_rate")
    first = timed(lambda: model.predict_one("someone stole my card"))
    with tempfile.TemporaryDirectory() as directory:
        path = model.save(Path(directory) / "support")
        size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    return size / 1e6, first, loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument(
        "--max-pending",
        type=int,
        default=None,
        help="the ridge head's max_pending in part 3 (default: the head's default)",
    )
    args = parser.parse_args()
    repeats = 15 if args.quick else 60
    with threadpool_limits(limits=1):
        rows = compare_heads(dim=384, warm=1500, repeats=repeats, classes=150)
        print("1. per example, ms (median), one BLAS thread, 384-d features, 150 classes")
        print(
            f"{'head / call':<32} {'alone':>9} {'closed':>9} {'ratio':>7} {'open':>9} {'ratio':>7}"
        )
        for row in rows:
            print(" ".join(row))
        print("   limits: closed <= 1.10x, open <= 1.50x\n")
        median, worst = layers_learn_one(warm=600, repeats=max(10, repeats // 3))
        print(
            f"2. layers pooling (2,304-d), open set on, ridge M=4096, learn_one: "
            f"median {median:.1f} ms, worst {worst:.1f} ms (limit 60 ms)\n"
        )
    for form, warm, steps in (("dual form", 200, 300), ("primal form", 1500, 1100)):
        if args.quick:
            steps = min(steps, 100)
        step, learn = predict_then_learn(warm=warm, steps=steps, max_pending=args.max_pending)
        print(
            f"3. predict-then-learn, default model, 384-d, default threads, {form} "
            f"({warm} -> {warm + steps} examples): step {step:.2f} ms, learn alone {learn:.2f} ms, "
            f"ratio {step / learn:.2f}x (limit 3x)"
        )
    print()
    size, first, loaded = hello_world()
    print(
        f"4. README first snippet: saved model {size:.2f} MB (limit 5 MB), first prediction "
        f"{first:.3f} s (limit 0.5 s), encoder load and warm-up {loaded:.1f} s (not counted)"
    )


if __name__ == "__main__":
    main()
