"""Class-incremental accuracy of the instant learner against joint logistic regression.

For each intent dataset: classes arrive in random order in steps of 10, each learned in a single
pass; the final accuracy on all classes is printed beside offline joint logistic regression on the
same frozen all-MiniLM-L6-v2 features (the upper bound the issue sets as the target) and beside a
softmax head fine-tuned by SGD in the same order. Features are cached on disk after the first run.

Run: .venv/bin/python benchmarks/bench_incremental.py [--datasets clinc150,banking77] [--head ridge]

With ``--select``, the pooling and head are chosen per data set by held-out accuracy on 10% of
its *training* split (:func:`perennial.selection.select_by_holdout` over
:func:`perennial.selection.text_candidates`); with ``--select-models minilm,mpnet`` the text
model too. The test set is used only to report the chosen configuration's accuracy. Each model
encodes the training texts once: the cache keeps every layer's token means for all poolings.
"""

from __future__ import annotations

import argparse
import json
import sys

from perennial.datasets import load_dataset
from perennial.encoders import FeatureCache
from perennial.encoders.text import TextEncoder
from perennial.heads import make_head
from perennial.protocols.incremental import run_incremental
from perennial.selection import select_by_holdout, text_candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="clinc150,banking77")
    parser.add_argument("--head", default="ridge", help="ridge, ridge-ensemble, slda or ncm")
    parser.add_argument("--members", type=int, default=2, help="members of a ridge-ensemble")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--encoder",
        default="all-MiniLM-L6-v2",
        help="the text model: all-MiniLM-L6-v2 (default), or mpnet (all-mpnet-base-v2)",
    )
    parser.add_argument(
        "--pooling", default="mean-layers", choices=["mean-layers", "last", "layers"]
    )
    parser.add_argument(
        "--select",
        action="store_true",
        help="choose pooling and head per data set on 10%% of its training split",
    )
    parser.add_argument(
        "--select-models",
        default=None,
        help="with --select, the text models to choose among, e.g. minilm,mpnet "
        "(default: --encoder)",
    )
    args = parser.parse_args()
    summary = {}
    for name in args.datasets.split(","):
        data = load_dataset(name)
        encoder = TextEncoder(args.encoder, pooling=args.pooling)
        head = make_head(
            args.head, **({"n_members": args.members} if args.head == "ridge-ensemble" else {})
        )
        cache = FeatureCache(per_layer=args.select)
        if args.select:
            models = (args.select_models or args.encoder).split(",")
            options = text_candidates(models)
            print(f"{name}: choosing on 10% of the training split", file=sys.stderr, flush=True)
            choice = select_by_holdout(
                data.train.inputs, data.train.labels.tolist(), options, cache=cache
            )
            print(f"{name}: chose {choice.best_name} {choice.to_dict()}", flush=True)
            encoder, head = options[choice.best].encoder, options[choice.best].head
        result = run_incremental(
            data,
            encoder,
            head,
            step=10,
            seed=args.seed,
            cache=cache,
            progress=sys.stderr,
        )
        summary[name] = result.to_dict()
        if args.select:
            summary[name]["chosen"] = choice.best_name
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
                        "encoder",
                        "chosen",
                    )
                    if m in v
                }
                for k, v in summary.items()
            }
        )
    )


if __name__ == "__main__":
    main()
