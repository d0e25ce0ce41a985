"""Throughput of distributed fitting (``perennial.distributed.fit_distributed``) on 1 and 2 workers.

Fits the BANKING77 training texts (10,003) with the default text encoder (all-MiniLM-L6-v2,
``mean-layers``) and the default head (``RidgeHead(n_features=4096)``) on a fresh
``LocalCluster`` of 1, then 2, worker processes (one thread each), and prints examples/s and the
speed-up. Each fit is timed as a user sees it once the cluster is up: the data sent out, every
worker loading the encoder, encoding, learning, merging, the model coming back. Encoding is what
the workers share; on this 2-core machine 2 workers are the most that can help. For context, it
also times one process learning the same texts with torch using both cores (``--no-single`` to
skip), and checks that the two distributed models agree.

Run: .venv/bin/python benchmarks/bench_distributed.py [--texts N] [--n-features M] [--no-single]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from perennial import LifelongClassifier
from perennial.datasets import load_banking77
from perennial.distributed import dask_client, fit_distributed
from perennial.encoders.text import TextEncoder
from perennial.heads import RidgeHead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=None, help="first N texts (default: all)")
    parser.add_argument("--n-features", type=int, default=4096, help="ridge random features")
    parser.add_argument("--no-single", action="store_true", help="skip the one-process fit")
    args = parser.parse_args()

    train = load_banking77().train
    texts, labels = list(train.inputs), list(train.labels)
    if args.texts is not None:
        texts, labels = texts[: args.texts], labels[: args.texts]
    n = len(texts)
    print(f"cores available: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()}")
    print(
        f"BANKING77 train: {n:,} texts, {len(set(labels))} classes; encoder "
        f"{TextEncoder().name}; head RidgeHead(n_features={args.n_features})"
    )
    print(f"{'workers':>7} {'partitions':>10} {'cluster s':>9} {'fit s':>7} {'examples/s':>10}")
    rates: dict[int, float] = {}
    models: dict[int, LifelongClassifier] = {}
    for workers in (1, 2):
        started = time.perf_counter()
        with dask_client(workers=workers) as client:
            ready = time.perf_counter()
            messages: list[str] = []
            models[workers] = fit_distributed(
                texts,
                labels,
                encoder=TextEncoder(),
                head=RidgeHead(n_features=args.n_features),
                client=client,
                progress=messages.append,
            )
            seconds = time.perf_counter() - ready
        partitions = messages[-1].split("/")[1].split(" ")[0]
        rates[workers] = n / seconds
        print(
            f"{workers:>7} {partitions:>10} {ready - started:>9.1f} {seconds:>7.1f} "
            f"{rates[workers]:>10.0f}"
        )
    print(f"speed-up with 2 workers: {rates[2] / rates[1]:.2f}x (at most 2 on 2 cores)")

    one, two = models[1], models[2]
    probe = texts[:200]
    features = one.encode(probe)  # the same features for both heads
    gap = np.max(np.abs(one.head.decision_scores(features) - two.head.decision_scores(features)))
    scale = np.max(np.abs(one.head.decision_scores(features)))
    same = one.classes_ == two.classes_ and one.n_seen_ == two.n_seen_
    print(
        f"1- and 2-worker models: same classes and counts: {same}; "
        f"largest score gap {gap / scale:.1e} relative"
    )

    if not args.no_single:
        start = time.perf_counter()
        single = LifelongClassifier(TextEncoder(), RidgeHead(n_features=args.n_features))
        single.learn_many(texts, labels)
        seconds = time.perf_counter() - start
        print(
            f"one process, torch on all cores: {seconds:.1f} s, {n / seconds:.0f} examples/s "
            f"(2 workers: {rates[2] * seconds / n:.2f}x that)"
        )


if __name__ == "__main__":
    main()
