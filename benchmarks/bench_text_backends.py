"""Text encoder backends: torch (reference) against ONNX Runtime int8 (``backend="onnx"``).

Prints each figure beside its target (issue "encode twice as fast"): throughput on 2,000 real
CLINC150 training texts encoded in one call (median of 3 runs after a warm-up, the backends
taking turns so that both see the same load), single-text latency (median of 50 calls) and, with
``--accuracy``, the final class-incremental accuracy of the default instant learner with each
backend on CLINC150 and BANKING77 (a few minutes: every text is encoded with each backend, once;
features are then cached). Nothing here is a test; figures vary with what else runs on the machine
(the load average is printed).

Run: .venv/bin/python benchmarks/bench_text_backends.py [--accuracy] [--sweep 4,8,16,32,64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from perennial.datasets import load_banking77, load_clinc150
from perennial.encoders import FeatureCache
from perennial.encoders.text import TextEncoder
from perennial.heads import RidgeHead
from perennial.protocols.incremental import run_incremental


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def verdict(ok: bool) -> str:
    return "ok" if ok else "BELOW TARGET"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pooling", default="mean-layers", choices=["mean-layers", "last", "layers"]
    )
    parser.add_argument(
        "--encoder",
        default="all-MiniLM-L6-v2",
        help="the text model: all-MiniLM-L6-v2 (default), or mpnet (all-mpnet-base-v2)",
    )
    parser.add_argument("--texts", type=int, default=2000, help="texts per throughput run")
    parser.add_argument("--runs", type=int, default=3, help="throughput runs per backend")
    parser.add_argument("--calls", type=int, default=50, help="single-text calls per backend")
    parser.add_argument(
        "--onnx-dir", default=None, help="ONNX export cache (default: the user cache)"
    )
    parser.add_argument(
        "--sweep", default="", help="also time the ONNX backend at these batch sizes, e.g. 8,16,32"
    )
    parser.add_argument(
        "--accuracy", action="store_true", help="also run the incremental protocol per backend"
    )
    parser.add_argument(
        "--n-features",
        type=int,
        default=4096,
        help="random features of the ridge head in --accuracy (default 4096)",
    )
    parser.add_argument(
        "--call-size",
        type=int,
        default=64,
        help="also time calls of this many texts each, as a server's batches (default 64)",
    )
    parser.add_argument(
        "--step",
        type=int,
        default=10,
        help="classes per step in --accuracy (default 10). The examples are learned in the same "
        "order whatever the step, so the exact ridge head's final accuracy does not depend on "
        "it; a large step only skips the evaluations (and solves) between steps",
    )
    parser.add_argument(
        "--accuracy-only",
        action="store_true",
        help="with --accuracy: skip the speed figures (for a run beside other work)",
    )
    args = parser.parse_args()
    if args.accuracy_only and not args.accuracy:
        parser.error("--accuracy-only needs --accuracy")

    print(f"cores available: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()}")
    torch_encoder = TextEncoder(args.encoder, pooling=args.pooling)
    onnx_encoder = TextEncoder(
        args.encoder, pooling=args.pooling, backend="onnx", onnx_dir=args.onnx_dir
    )
    encoders = {"torch": torch_encoder, "onnx-int8": onnx_encoder}
    export_seconds = timed(lambda: onnx_encoder.encode(["warm up"]))
    print(
        f"ONNX export loaded or built in {export_seconds:.1f} s ({onnx_encoder.onnx_directory()})"
    )

    train = load_clinc150().train.inputs
    picked = np.random.default_rng(0).choice(len(train), size=args.texts, replace=False)
    texts = [str(train[i]) for i in picked]

    rate: dict[str, float] = {}
    call_rate: dict[str, float] = {}
    speedup = float("nan")
    latency: dict[str, float] = {}
    sweep: dict[int, float] = {}
    if not args.accuracy_only:
        # Throughput: one call with every text; the backends alternate run by run.
        for encoder in encoders.values():
            encoder.encode(texts[:200])
        seconds: dict[str, list[float]] = {name: [] for name in encoders}
        for _ in range(args.runs):
            for name, encoder in encoders.items():
                seconds[name].append(timed(lambda encoder=encoder: encoder.encode(texts)))
        rate = {name: len(texts) / statistics.median(values) for name, values in seconds.items()}
        for name, values in seconds.items():
            runs = ", ".join(f"{value:.2f}" for value in values)
            print(f"throughput {name:<9} {rate[name]:7.0f} texts/s  (runs {runs} s)")
        speedup = rate["onnx-int8"] / rate["torch"]
        print(
            f"throughput onnx-int8 / torch = {speedup:.2f}x  target >= 2x  {verdict(speedup >= 2)}"
        )

        # Calls of --call-size texts each (a service's batches), the backends taking turns.
        calls = [texts[i : i + args.call_size] for i in range(0, len(texts), args.call_size)]
        batched: dict[str, list[float]] = {name: [] for name in encoders}
        for _ in range(args.runs):
            for name, encoder in encoders.items():
                batched[name].append(
                    timed(lambda encoder=encoder: [encoder.encode(call) for call in calls])
                )
        call_rate = {
            name: len(texts) / statistics.median(values) for name, values in batched.items()
        }
        for name in encoders:
            print(
                f"throughput {name:<9} {call_rate[name]:7.0f} texts/s in calls of {args.call_size} "
                "texts"
            )

        # Single-text latency: one call per text, 5 warm-up calls first.
        for name, encoder in encoders.items():
            for text in texts[:5]:
                encoder.encode([text])
            calls = [
                timed(lambda text=text, encoder=encoder: encoder.encode([text]))
                for text in texts[: args.calls]
            ]
            latency[name] = 1000 * statistics.median(calls)
            print(
                f"latency {name:<9} {latency[name]:7.2f} ms per text (median of {len(calls)} calls)"
            )

        for size in [int(value) for value in args.sweep.split(",") if value]:
            encoder = TextEncoder(
                args.encoder,
                pooling=args.pooling,
                backend="onnx",
                onnx_dir=args.onnx_dir,
                batch_size=size,
            )
            encoder.encode(texts[:200])
            values = [
                timed(lambda encoder=encoder: encoder.encode(texts)) for _ in range(args.runs)
            ]
            sweep[size] = len(texts) / statistics.median(values)
            print(f"sweep onnx-int8 batch_size={size:<4} {sweep[size]:7.0f} texts/s")

    accuracy: dict[str, dict[str, float]] = {}
    if args.accuracy:
        for dataset in (load_clinc150(), load_banking77()):
            for name, encoder in encoders.items():
                result = run_incremental(
                    dataset,
                    encoder,
                    RidgeHead(n_features=args.n_features),
                    step=args.step,
                    seed=0,
                    cache=FeatureCache(per_layer=True),
                    baselines=False,
                    audit=False,
                    progress=None,
                )
                accuracy.setdefault(dataset.name, {})[name] = result.final_accuracy
                print(f"accuracy {dataset.name:<10} {name:<9} {100 * result.final_accuracy:6.2f}%")
            loss = 100 * (accuracy[dataset.name]["torch"] - accuracy[dataset.name]["onnx-int8"])
            print(
                f"accuracy {dataset.name:<10} loss with onnx-int8 {loss:+.2f} points  "
                f"target <= 0.3  {verdict(loss <= 0.3)}"
            )

    print(f"load average at the end {os.getloadavg()}")
    print(
        json.dumps(
            {
                "pooling": args.pooling,
                "texts_per_second": rate,
                f"texts_per_second_in_calls_of_{args.call_size}": call_rate,
                "speedup": speedup,
                "latency_ms": latency,
                "sweep_texts_per_second": sweep,
                "final_accuracy": accuracy,
            }
        )
    )


if __name__ == "__main__":
    main()
