"""Progressive validation: perennial's river classifier beside river's own models, in one run.

Each model predicts every example of a stream, then learns it (river's
``evaluate.progressive_val_score``); the script prints each model's accuracy and seconds
(reading the stream included, the same for every model) and checks the two targets of issue 16:
perennial's default configuration for numeric data (``RiverClassifier()``: running
standardisation, then a ridge head on ``clip(16 d, 256, 4096)`` random features with balanced
class scores) is at least as
accurate as the best of river's GaussianNB, LogisticRegression and HoeffdingTree on each stream,
and takes at most 3 times GaussianNB's time.

Streams (nothing is downloaded):

- ``Phishing`` and ``ImageSegments`` ship in river's wheel (1,250 examples with 9 features and
  2 classes; 2,310 with 18 and 7). ``Bananas`` (5,300, 2, 2) is there too, on request.
- ``CLINC150``: the training split of CLINC150 from ``$PERENNIAL_DATA``, as frozen
  all-MiniLM-L6-v2 features (384 numbers, cached on disk after the first run), in
  class-incremental order: 10 tasks of 15 intents, the tasks one after the other, the examples
  of a task shuffled. ``--clinc-per-class`` keeps that many examples of each intent.

Run with the river extra:

  .venv/bin/python benchmarks/bench_progressive.py
  .venv/bin/python benchmarks/bench_progressive.py --streams Phishing --models default,river-gnb
  .venv/bin/python benchmarks/bench_progressive.py --json benchmarks/results/progressive.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from river import (
    datasets,
    evaluate,
    linear_model,
    metrics,
    multiclass,
    naive_bayes,
    preprocessing,
    tree,
)

from perennial.heads import RidgeHead
from perennial.river import RiverClassifier, auto_width

Stream = Callable[[], Iterator[tuple[dict[Any, float], Any]]]
RIVER_MODELS = ("river-gnb", "river-logistic", "river-hoeffding")


def clinc150_stream(per_class: int, seed: int) -> Stream:
    """CLINC150's training split as frozen text features, class-incremental (10 x 15 intents)."""
    from perennial.datasets import load_dataset
    from perennial.encoders import FeatureCache
    from perennial.encoders.text import TextEncoder

    data = load_dataset("clinc150")
    labels = np.asarray(data.train.labels)
    print("CLINC150: encoding the training split (cached after the first run)", file=sys.stderr)
    features = FeatureCache().encode(TextEncoder(), data.train.inputs)
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))
    order: list[int] = []
    for task in np.array_split(classes, 10):
        rows = np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in task]
        )
        order.extend(rng.permutation(rows).tolist())
    rows = [(dict(enumerate(features[i].astype(float).tolist())), str(labels[i])) for i in order]

    def stream() -> Iterator[tuple[dict[Any, float], Any]]:
        return iter(rows)

    return stream


def river_stream(name: str) -> Stream:
    return lambda: iter(getattr(datasets, name)())


def models() -> dict[str, Callable[[bool, int], Any]]:
    """Model builders by name; each takes whether the stream has more than two classes, and
    its number of features."""

    def logistic(multi: bool, width: int) -> Any:
        model = linear_model.LogisticRegression()
        return preprocessing.StandardScaler() | (
            multiclass.OneVsRestClassifier(model) if multi else model
        )

    return {
        "default": lambda multi, width: RiverClassifier(),
        "default-unbalanced": lambda multi, width: RiverClassifier(
            RidgeHead(n_features=auto_width(width))
        ),
        "slda": lambda multi, width: RiverClassifier("slda"),
        "ncm": lambda multi, width: RiverClassifier("ncm"),
        "ridge M=4096 unscaled": lambda multi, width: RiverClassifier("ridge", scale=False),
        "river-gnb": lambda multi, width: naive_bayes.GaussianNB(),
        "river-logistic": logistic,
        "river-hoeffding": lambda multi, width: tree.HoeffdingTreeClassifier(),
    }


def run(model: Any, stream: Stream) -> tuple[float, float]:
    start = time.perf_counter()
    accuracy = evaluate.progressive_val_score(stream(), model, metrics.Accuracy()).get()
    return float(accuracy), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--streams",
        default="Phishing,ImageSegments,CLINC150",
        help="comma-separated: Phishing, ImageSegments, Bananas, CLINC150",
    )
    parser.add_argument(
        "--models",
        default="default,default-unbalanced,slda,ncm,river-gnb,river-logistic,river-hoeffding",
        help=f"comma-separated names ({', '.join(models())}), or all",
    )
    parser.add_argument("--clinc-per-class", type=int, default=40, help="examples per intent")
    parser.add_argument("--seed", type=int, default=0, help="seeds the CLINC150 order")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    builders = models()
    names = list(builders) if args.models == "all" else args.models.split(",")
    unknown = [name for name in names if name not in builders]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(builders)}")
    results: dict[str, dict[str, dict[str, float]]] = {}
    verdicts: list[str] = []
    for stream_name in args.streams.split(","):
        if stream_name == "CLINC150":
            stream = clinc150_stream(args.clinc_per_class, args.seed)
        elif stream_name in ("Phishing", "ImageSegments", "Bananas"):
            stream = river_stream(stream_name)
        else:
            parser.error(f"unknown stream {stream_name!r}")
        examples = list(itertools.islice(stream(), None))
        n_classes, width = len({y for _, y in examples}), len(examples[0][0])
        print(
            f"\n{stream_name}: {len(examples):,} examples, {width} features, {n_classes} classes",
            flush=True,
        )
        print(f"  {'model':24s} {'accuracy':>9s} {'seconds':>9s}", flush=True)
        table = results.setdefault(stream_name, {})
        for name in names:
            accuracy, seconds = run(builders[name](n_classes > 2, width), stream)
            table[name] = {"accuracy": accuracy, "seconds": seconds}
            print(f"  {name:24s} {accuracy:9.2%} {seconds:9.2f}", flush=True)
        ours = table.get("default")
        theirs = {name: table[name] for name in RIVER_MODELS if name in table}
        if ours is not None and theirs:
            best = max(theirs, key=lambda name: theirs[name]["accuracy"])
            line = (
                f"{stream_name}: default {ours['accuracy']:.2%} against the best river model "
                f"({best}) {theirs[best]['accuracy']:.2%}: "
                f"{'met' if ours['accuracy'] >= theirs[best]['accuracy'] else 'NOT MET'}"
            )
            if "river-gnb" in table:
                ratio = ours["seconds"] / table["river-gnb"]["seconds"]
                line += f"; time {ratio:.2f}x GaussianNB's: {'met' if ratio <= 3 else 'NOT MET'}"
            verdicts.append(line)
    if verdicts:
        print("\nTargets (issue 16):")
        for line in verdicts:
            print("  " + line)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
