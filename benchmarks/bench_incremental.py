"""Class-incremental accuracy of the instant learner against joint logistic regression.

For each intent dataset: classes arrive in random order in steps of 10, each learned in a single
pass; the final accuracy on all classes is printed beside offline joint logistic regression on the
same frozen all-MiniLM-L6-v2 features (the upper bound the issue sets as the target) and beside a
softmax head fine-tuned by SGD in the same order. Features are cached on disk after the first run.

Run: .venv/bin/python benchmarks/bench_incremental.py [--datasets clinc150,banking77] [--head ridge]
"""

from __future__ import annotations

import argparse
import json
import sys

from perennial.datasets import load_dataset
from perennial.encoders import FeatureCache
from perennial.encoders.text import TextEncoder
from perennial.heads import make_head
from perennial.incremental import run_incremental


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="clinc150,banking77")
    parser.add_argument("--head", default="ridge", help="ridge, ridge-ensemble, slda or ncm")
    parser.add_argument("--members", type=int, default=2, help="members of a ridge-ensemble")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pooling", default="mean-layers", choices=["mean-layers", "last", "layers"]
    )
    args = parser.parse_args()
    encoder = TextEncoder(pooling=args.pooling)
    summary = {}
    for name in args.datasets.split(","):
        data = load_dataset(name)
        result = run_incremental(
            data,
            encoder,
            make_head(args.head),
            step=10,
            seed=args.seed,
            cache=FeatureCache(),
            progress=sys.stderr,
        )
        summary[name] = result.to_dict()
        gap = 100 * (result.final_accuracy - (result.joint_accuracy or 0.0))
        print(
            f"{name:<10} instant learner {100 * result.final_accuracy:6.2f}%  "
            f"joint LR {100 * (result.joint_accuracy or 0):6.2f}% (C={result.joint_c:g})  "
            f"gap {gap:+.2f} pt  {'ok' if gap >= 0 else 'BELOW TARGET'}  "
            f"SGD fine-tuning {100 * (result.sgd_finetune_accuracy or 0):6.2f}%  "
            f"learn {result.learn_us_per_example:.0f} us/example  raw bytes kept {result.raw_bytes_stored}",
            flush=True,
        )
    print(
        json.dumps(
            {
                k: {
                    m: v[m]
                    for m in (
                        "final_accuracy",
                        "joint_accuracy",
                        "sgd_finetune_accuracy",
                        "learn_us_per_example",
                        "state_bytes",
                        "raw_bytes_stored",
                    )
                }
                for k, v in summary.items()
            }
        )
    )


if __name__ == "__main__":
    main()
