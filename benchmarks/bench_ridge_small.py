"""Small models and predict-then-learn loops of the default head (RidgeHead, M=4096) on 384-d features.

Prints each figure beside the target it is held to (issue 13); nothing here is a test.
Run with one BLAS thread and with the default threads:
  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ridge_small.py
  .venv/bin/python benchmarks/bench_ridge_small.py
(a few minutes on 2 cores)
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_ridge_cost import DIM, M, timed, unit_rows  # run from benchmarks/
from perennial.heads import RidgeHead
from perennial.persistence import write_model_files


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def main() -> None:
    rng = np.random.default_rng(0)

    # (a) and (b): a model of 3 examples of 3 classes.
    head = RidgeHead(n_features=M)
    three = unit_rows(rng, 3)
    head.learn_many(three, ["a", "b", "c"])
    first_prediction = timed(lambda: head.predict_many(three[:1]))
    meta, arrays = head.get_state()
    with tempfile.TemporaryDirectory() as tmp:
        write_model_files(Path(tmp) / "m", {"head": {"state": meta}}, arrays)
        saved = directory_bytes(Path(tmp) / "m")
    small_state = head.state_bytes

    # (c): predict-then-learn one example at a time, 2,000 examples of 50 classes after 500.
    stream = unit_rows(rng, 2500)
    labels = [f"w{i % 50}" for i in range(2500)]

    def loop(predict: bool) -> list[float]:
        looped = RidgeHead(n_features=M)
        looped.learn_many(stream[:500], labels[:500])
        looped.predict_many(stream[:1])
        steps = []
        for i in range(500, 2500):
            start = time.perf_counter()
            if predict:
                looped.predict_many(stream[i : i + 1])
            looped.learn_one(stream[i], labels[i])
            steps.append(time.perf_counter() - start)
        return steps

    with_predictions = loop(predict=True)
    learn_alone = loop(predict=False)
    dual_steps = with_predictions[: 1024 - 500]
    primal_steps = with_predictions[1024 - 500 :]

    # (d): learning cost per example, as in bench_ridge_cost.py, on a primal head.
    primal = RidgeHead(n_features=M)
    primal.learn_many(unit_rows(rng, 2000), [f"w{i % 50}" for i in range(2000)])
    primal.predict_many(stream[:1])
    singles = []
    for k in range(30):
        x = unit_rows(rng, 1)[0]
        singles.append(timed(lambda x=x, k=k: primal.learn_one(x, f"w{k % 50}")))
    batch_100 = [
        timed(lambda: primal.learn_many(unit_rows(rng, 100), [f"w{k}" for k in range(100)])) / 100
        for _ in range(5)
    ]

    ratio = statistics.mean(with_predictions) / statistics.mean(learn_alone)
    rows = [
        ("(a) state bytes after 3 examples", small_state / 1e6, "MB", 5.0),
        ("(a) saved directory after 3 examples", saved / 1e6, "MB", 5.0),
        ("(b) first prediction after 3 examples", first_prediction, "s", 0.5),
        ("(c) predict+learn step, mean over 2,000", 1e3 * statistics.mean(with_predictions), "ms", None),
        ("(c)   of which dual steps (n <= 1024), mean", 1e3 * statistics.mean(dual_steps), "ms", None),
        ("(c)   of which primal steps, mean", 1e3 * statistics.mean(primal_steps), "ms", None),
        ("(c) learn_one alone, mean over the same 2,000", 1e3 * statistics.mean(learn_alone), "ms", None),
        ("(c) step / learn alone", ratio, "x", 3.0),
        ("(d) learn_one on a primal head (median of 30)", 1e3 * statistics.median(singles), "ms", None),
        ("(d) learn_many(100), per example", 1e3 * statistics.mean(batch_100), "ms", None),
    ]  # fmt: skip
    threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    print(
        f"RidgeHead(n_features={M}) on {DIM}-d unit features; BLAS threads: {threads or 'default'}"
    )
    for name, value, unit, target in rows:
        verdict = (
            ""
            if target is None
            else f"target {target:g} {unit}: " + ("ok" if value <= target else "OVER")
        )
        print(f"  {name:<48} {value:>10.3f} {unit:<3} {verdict}")
    print(json.dumps({name: value for name, value, _, _ in rows}))


if __name__ == "__main__":
    main()
