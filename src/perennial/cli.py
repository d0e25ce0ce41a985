"""The ``perennial`` command: one function per subcommand, no learning logic of its own."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from perennial.exceptions import PerennialError

__all__ = ["main"]


def _head_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.head in ("ridge", "ridge-ensemble"):
        params["n_features"] = args.n_features
        params["seed"] = args.seed
        if args.ridge is not None:
            params["ridge"] = args.ridge
    if args.head == "ridge-ensemble":
        params["n_members"] = args.members
    return params


def _encoder_for(args: argparse.Namespace, kind: str) -> Any:
    from perennial.encoders import make_encoder

    name = args.encoder
    if name == "auto":
        name = "image" if kind == "image" else "text"
    params: dict[str, Any] = {}
    if name == "image":
        params["image_size"] = args.image_size
    if name == "text":
        params["pooling"] = args.pooling
        params["backend"] = args.backend
    return make_encoder(name, **params)


def cmd_incremental(args: argparse.Namespace) -> int:
    from perennial.datasets import load_dataset
    from perennial.encoders import FeatureCache
    from perennial.heads import make_head
    from perennial.incremental import format_summary, run_incremental

    dataset = load_dataset(
        args.data, test=args.test, test_fraction=args.test_fraction, seed=args.seed
    )
    kind = str(dataset.metadata.get("kind", "text"))
    encoder = _encoder_for(args, kind)
    head = make_head(args.head, **_head_params(args))
    cache = None if args.no_cache else FeatureCache(args.cache_dir)
    result = run_incremental(
        dataset,
        encoder,
        head,
        step=args.step,
        seed=args.seed,
        cache=cache,
        baselines=not args.no_baselines,
        progress=sys.stderr if args.json else sys.stdout,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_summary(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perennial", description="Lifelong learning with frozen encoders and exact heads."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    inc = commands.add_parser(
        "incremental",
        help="class-incremental learning in steps, compared with joint training and SGD fine-tuning",
        description=(
            "Classes arrive in random order in steps; each is learned in a single pass. Prints the "
            "accuracy on all classes seen after each step, then compares with offline joint "
            "logistic regression and with a softmax head fine-tuned by SGD in the same order."
        ),
    )
    inc.add_argument(
        "--data",
        required=True,
        help="clinc150, banking77, mnist, cifar10, cifar100, or a text,category CSV",
    )
    inc.add_argument(
        "--test", default=None, help="test CSV for a CSV --data (else a stratified split)"
    )
    inc.add_argument("--head", default="ridge", choices=["ridge", "ridge-ensemble", "slda", "ncm"])
    inc.add_argument("--members", type=int, default=2, help="ridge heads in a ridge-ensemble")
    inc.add_argument("--step", type=int, default=10, help="classes per step (default 10)")
    inc.add_argument("--seed", type=int, default=0)
    inc.add_argument("--test-fraction", type=float, default=0.2, help="for a CSV without --test")
    inc.add_argument(
        "--json", action="store_true", help="print one JSON object (progress to stderr)"
    )
    inc.add_argument("--encoder", default="auto", choices=["auto", "text", "image", "identity"])
    inc.add_argument(
        "--n-features", type=int, default=4096, help="random features of the ridge head"
    )
    inc.add_argument(
        "--ridge", type=float, default=None, help="fixed ridge strength (default: GCV)"
    )
    inc.add_argument(
        "--pooling",
        default="mean-layers",
        choices=["mean-layers", "last", "layers"],
        help="text encoder pooling: average of the six layers (default), last layer, or all six concatenated",
    )
    inc.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnx", "onnx-fp32"],
        help="text encoder runtime: torch (reference) or ONNX Runtime with int8 weights",
    )
    inc.add_argument("--image-size", type=int, default=224, help="image encoder input size")
    inc.add_argument(
        "--cache-dir",
        default=None,
        help="feature cache (default $PERENNIAL_CACHE or ~/.cache/perennial)",
    )
    inc.add_argument("--no-cache", action="store_true", help="encode without the feature cache")
    inc.add_argument(
        "--no-baselines", action="store_true", help="skip joint LR and SGD fine-tuning"
    )
    inc.set_defaults(handler=cmd_incremental)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``perennial`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except PerennialError as error:
        print(f"perennial: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("perennial: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
