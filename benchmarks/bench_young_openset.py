"""A young model's "I don't know": open set from a few examples per class.

Issues 13 and 14 ask what the open-set gate answers before it has much data: a model learns
classes from a few examples each, one example at a time (as a service that learns from each
conversation does), and is asked about the test queries of those classes (in scope) and about
CLINC150's 1,000 out-of-scope test queries. The classes come from CLINC150 (default: 10 intents
at 1, 3, 5 and 10 examples per class) or from BANKING77 (``--dataset banking77``: all 77 intents
at 5, 10 and 25 examples per class, the service's support-desk case; its out-of-scope queries are
CLINC150's, which no BANKING77 intent covers). Printed for each size: the rule the gate uses
(``open_set_status_``), the share of in-scope queries accepted and answered correctly, the share
rejected as unknown, and the out-of-scope recall. Default model: all-MiniLM-L6-v2 (mean-layers),
ridge head, ``unknown_rate=0.02``, the default (combined) novelty score. Several class draws
are averaged.

Run: .venv/bin/python benchmarks/bench_young_openset.py [--classes 10] [--draws 5]
     .venv/bin/python benchmarks/bench_young_openset.py --dataset banking77
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
    parser.add_argument(
        "--dataset",
        choices=("clinc150", "banking77"),
        default="clinc150",
        help="where the in-scope classes come from (default clinc150)",
    )
    parser.add_argument(
        "--classes",
        type=int,
        default=None,
        help="classes learned (default: 10; all 77 of banking77)",
    )
    parser.add_argument(
        "--sizes",
        default=None,
        help="examples per class, comma-separated (default: 1,3,5,10; 5,10,25 for banking77)",
    )
    parser.add_argument("--draws", type=int, default=5, help="class draws averaged (default 5)")
    args = parser.parse_args()
    banking = args.dataset == "banking77"
    sizes = [int(v) for v in (args.sizes or ("5,10,25" if banking else "1,3,5,10")).split(",")]
    clinc = load_dataset("clinc150")
    data = load_dataset("banking77") if banking else clinc
    encoder = TextEncoder()
    cache = FeatureCache()
    X_train = encode_split(encoder, data.train.inputs, cache)
    X_test = encode_split(encoder, data.test.inputs, cache)
    X_out = encode_split(encoder, clinc.extra["oos_test"].inputs, cache)
    train_labels = np.asarray(data.train.labels.tolist(), dtype=object)
    test_labels = np.asarray(data.test.labels.tolist(), dtype=object)
    intents = sorted(set(train_labels.tolist()))
    n_classes = min(args.classes or (len(intents) if banking else 10), len(intents))
    print(
        f"{n_classes} {args.dataset} intents learned one example at a time; {args.draws} draws; "
        "in-scope = their test queries, out-of-scope = CLINC150's 1,000 oos_test queries"
    )
    print(
        f"{'per class':>9} {'rule (draws)':<28} {'in-scope correct':>17} "
        f"{'in-scope rejected':>18} {'oos recall':>11}"
    )
    for per_class in sizes:
        rules: Counter[str] = Counter()
        correct, rejected, recall = [], [], []
        for draw in range(args.draws):
            rng = np.random.default_rng(draw)
            chosen = [intents[i] for i in rng.permutation(len(intents))[:n_classes]]
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
