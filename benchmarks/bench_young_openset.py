"""A young model's "I don't know": open set on CLINC150 from 1, 3, 5 and 10 examples per class.

Issue 13 asks what the open-set gate answers before it has calibrated: a model learns a few
classes from a few examples each, one example at a time (as a service that learns from each
conversation does), and is asked about the test queries of those classes (in scope) and about
CLINC150's 1,000 out-of-scope test queries. Printed for each size: the rule the gate uses
(``open_set_status_``), the share of in-scope queries accepted and answered correctly, the share
rejected as unknown, and the out-of-scope recall. Default model: all-MiniLM-L6-v2 (mean-layers),
ridge head, ``unknown_rate=0.02``, the default (combined) novelty score. Several class draws
are averaged.

Run: .venv/bin/python benchmarks/bench_young_openset.py [--classes 10] [--draws 5]
(features are cached under $PERENNIAL_CACHE or ~/.cache/perennial after the first run)
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter

import numpy as np

from perennial import LifelongClassifier
from perennial.datasets import load_dataset
from perennial.encoders import FeatureCache, Precomputed
from perennial.encoders.text import TextEncoder
from perennial.protocols.incremental import encode_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=10, help="classes learned (default 10)")
    parser.add_argument("--draws", type=int, default=5, help="class draws averaged (default 5)")
    args = parser.parse_args()
    data = load_dataset("clinc150")
    encoder = TextEncoder()
    cache = FeatureCache()
    X_train = encode_split(encoder, data.train.inputs, cache)
    X_test = encode_split(encoder, data.test.inputs, cache)
    X_out = encode_split(encoder, data.extra["oos_test"].inputs, cache)
    train_labels = np.asarray(data.train.labels.tolist(), dtype=object)
    test_labels = np.asarray(data.test.labels.tolist(), dtype=object)
    intents = sorted(set(train_labels.tolist()))
    print(
        f"{args.classes} CLINC150 intents learned one example at a time; {args.draws} draws; "
        "in-scope = their test queries, out-of-scope = the 1,000 oos_test queries"
    )
    print(
        f"{'per class':>9} {'rule (draws)':<28} {'in-scope correct':>17} "
        f"{'in-scope rejected':>18} {'oos recall':>11}"
    )
    for per_class in (1, 3, 5, 10):
        rules: Counter[str] = Counter()
        correct, rejected, recall = [], [], []
        for draw in range(args.draws):
            rng = np.random.default_rng(draw)
            chosen = [intents[i] for i in rng.permutation(len(intents))[: args.classes]]
            rows = np.concatenate(
                [
                    rng.permutation(np.flatnonzero(train_labels == intent))[:per_class]
                    for intent in chosen
                ]
            )
            rows = rows[rng.permutation(len(rows))]
            model = LifelongClassifier(Precomputed(encoder), unknown_rate=0.02)
            for row in rows:
                model.learn_one(X_train[row], train_labels[row])
            rules[model.open_set_status_.split(":")[0]] += 1
            inside = np.isin(test_labels, np.asarray(chosen, dtype=object))
            answers = model.predict_many(X_test[inside])
            truth = test_labels[inside]
            correct.append(np.mean([a == t for a, t in zip(answers, truth, strict=True)]))
            rejected.append(np.mean([a is None for a in answers]))
            recall.append(np.mean([a is None for a in model.predict_many(X_out)]))
        rule = ", ".join(f"{name} ({n})" for name, n in rules.items())
        print(
            f"{per_class:>9} {rule:<28} {100 * statistics.mean(correct):>16.1f}% "
            f"{100 * statistics.mean(rejected):>17.1f}% {100 * statistics.mean(recall):>10.1f}%"
        )


if __name__ == "__main__":
    main()
