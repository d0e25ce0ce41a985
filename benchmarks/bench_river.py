"""Progressive validation on river's bundled streams: perennial's heads beside river's models.

Each model predicts every example of the stream, then learns it (river's
``evaluate.progressive_val_score``); the script prints the accuracy and the seconds taken
(reading the stream included, the same for every model). Nothing is downloaded: the streams
ship in river's wheel. Run with the river extra:

  .venv/bin/python benchmarks/bench_river.py                      # every model, every stream
  .venv/bin/python benchmarks/bench_river.py --models slda,river-gnb --streams Phishing
  .venv/bin/python benchmarks/bench_river.py --blas-threads none  # perennial with BLAS as it is

A few minutes on 2 cores, most of it the default ridge head (M = 4096) on the longer streams.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

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
from perennial.river import RiverClassifier

STREAMS: dict[str, Callable[[], Any]] = {
    "Phishing": datasets.Phishing,  # 1,250 examples, 9 features, 2 classes
    "ImageSegments": datasets.ImageSegments,  # 2,310 examples, 18 features, 7 classes
    "Bananas": datasets.Bananas,  # 5,300 examples, 2 features, 2 classes
}


def models(blas_threads: int | None) -> dict[str, Callable[[bool], Any]]:
    """Model builders by name; each takes whether the stream has more than two classes."""

    def ours(head: Any) -> Callable[[bool], Any]:
        return lambda multi: RiverClassifier(head, blas_threads=blas_threads)

    def scaled(head: Any) -> Callable[[bool], Any]:
        return lambda multi: (
            preprocessing.StandardScaler() | RiverClassifier(head, blas_threads=blas_threads)
        )

    def logistic(multi: bool) -> Any:
        model = linear_model.LogisticRegression()
        return preprocessing.StandardScaler() | (
            multiclass.OneVsRestClassifier(model) if multi else model
        )

    return {
        "ridge (default M=4096)": ours("ridge"),
        "ridge M=512": ours(RidgeHead(n_features=512)),
        "scaler | ridge M=512": scaled(RidgeHead(n_features=512)),
        "slda": ours("slda"),
        "ncm": ours("ncm"),
        "scaler | ncm": scaled("ncm"),
        "river-gnb": lambda multi: naive_bayes.GaussianNB(),
        "river-logistic": logistic,
        "river-hoeffding": lambda multi: tree.HoeffdingTreeClassifier(),
    }


def run(model: Any, stream: Any) -> tuple[float, float]:
    start = time.perf_counter()
    accuracy = evaluate.progressive_val_score(stream, model, metrics.Accuracy()).get()
    return accuracy, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default=",".join(STREAMS))
    parser.add_argument("--models", default="all", help="comma-separated names, or all")
    parser.add_argument("--blas-threads", default="1", help="perennial's blas_threads, or none")
    args = parser.parse_args()
    threads = None if args.blas_threads == "none" else int(args.blas_threads)
    builders = models(threads)
    names = list(builders) if args.models == "all" else args.models.split(",")
    for stream_name in args.streams.split(","):
        n_classes = len({y for _, y in STREAMS[stream_name]()})
        print(f"\n{stream_name} ({n_classes} classes), blas_threads={threads}")
        print(f"  {'model':28s} {'accuracy':>9s} {'seconds':>9s}")
        for name in names:
            model = builders[name](n_classes > 2)
            accuracy, seconds = run(model, STREAMS[stream_name]())
            print(f"  {name:28s} {accuracy:9.2%} {seconds:9.2f}", flush=True)


if __name__ == "__main__":
    main()
