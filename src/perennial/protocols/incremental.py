"""The class-incremental experiment: classes arrive in steps, each learned in a single pass.

After each step the model is evaluated on the test examples of every class seen so far. At the end
the instant learner is compared with offline joint logistic regression on the same frozen features
(the upper bound) and with a softmax head trained by SGD in the same class-incremental order
(which shows catastrophic forgetting).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from perennial.audit import raw_bytes_stored
from perennial.baselines import SGDSoftmaxHead, joint_logistic_regression
from perennial.datasets import Dataset
from perennial.encoders import Encoder, FeatureCache, Precomputed
from perennial.exceptions import InvalidParameterError
from perennial.heads import Head
from perennial.learner import LifelongClassifier

__all__ = ["IncrementalResult", "encode_split", "run_incremental"]


@dataclass
class IncrementalResult:
    """What :func:`run_incremental` measured; ``to_dict`` gives the command's JSON."""

    dataset: str
    encoder: str
    head: str
    n_classes: int
    n_train: int
    n_test: int
    step: int
    seed: int
    steps: list[dict[str, float]] = field(default_factory=list)
    final_accuracy: float = 0.0
    joint_accuracy: float | None = None
    joint_c: float | None = None
    sgd_finetune_accuracy: float | None = None
    learn_us_per_example: float = 0.0
    learn_ms_per_class: float = 0.0
    state_bytes: int = 0
    raw_bytes_stored: int = 0
    encode_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def encode_split(
    encoder: Encoder,
    inputs: Any,
    cache: FeatureCache | None,
    batch_size: int = 1024,
    progress: TextIO | None = None,
    what: str = "inputs",
) -> np.ndarray:
    """Encode ``inputs`` in chunks (through ``cache`` when given), reporting progress.

    The progress (a :class:`perennial.progress.ProgressBar` on ``progress``) counts the chunks
    read from the cache apart from those encoded, so its rate is that of the encoder.
    """
    from perennial.progress import ProgressBar

    chunks = []
    with ProgressBar(len(inputs), f"  encoding {what}", unit="inputs", output=progress) as bar:
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start : start + batch_size]
            read = False
            if cache is not None:
                features, read = cache.read_or_encode(encoder, chunk)
            else:
                features = encoder.encode(chunk)
            chunks.append(features)
            bar.update(len(chunk), cached=len(chunk) if read else 0)
    return np.vstack(chunks)


def _say(stream: TextIO | None, text: str) -> None:
    if stream is not None:
        print(text, file=stream, flush=True)


def run_incremental(
    dataset: Dataset,
    encoder: Encoder,
    head: Head,
    *,
    step: int = 10,
    seed: int = 0,
    cache: FeatureCache | None = None,
    baselines: bool = True,
    audit: bool = True,
    progress: TextIO | None = sys.stderr,
    clock: Callable[[], float] = time.perf_counter,
) -> IncrementalResult:
    """Run the class-incremental protocol and return its measurements.

    Parameters
    ----------
    step
        Classes per step; the class order is a random permutation drawn from ``seed``.
    cache
        Where encoded features are cached (None: encode every time).
    baselines
        Also fit joint logistic regression and the SGD fine-tuned softmax head.
    audit
        Measure the raw input bytes the final model holds in memory or writes on save.
    progress
        Stream for the progress table (None for silence).
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise InvalidParameterError(f"step must be a positive int, got {step!r}")
    train_labels = list(dataset.train.labels.tolist())
    test_labels = list(dataset.test.labels.tolist())
    classes = sorted(set(train_labels), key=str)
    test_mask = np.isin(np.asarray(test_labels, dtype=object), np.asarray(classes, dtype=object))
    rng = np.random.default_rng(seed)
    order = [classes[i] for i in rng.permutation(len(classes))]

    started = clock()
    _say(
        progress,
        f"encoding {len(train_labels)} train and {len(test_labels)} test inputs with {encoder.name}",
    )
    X_train = encode_split(encoder, dataset.train.inputs, cache, progress=progress, what="train")
    X_test = encode_split(encoder, dataset.test.inputs, cache, progress=progress, what="test")
    encode_seconds = clock() - started

    # The features are computed once above (and cached); the model takes them through the same
    # front door as any input, and still records the real encoder.
    model = LifelongClassifier(encoder=Precomputed(encoder), head=head)
    result = IncrementalResult(
        dataset=dataset.name,
        encoder=encoder.name,
        head=repr(head),
        n_classes=len(classes),
        n_train=len(train_labels),
        n_test=int(test_mask.sum()),
        step=step,
        seed=seed,
        encode_seconds=encode_seconds,
    )
    by_class: dict[Any, np.ndarray] = {}
    labels_array = np.asarray(train_labels, dtype=object)
    for label in classes:
        rows = np.flatnonzero(labels_array == label)
        by_class[label] = rows[rng.permutation(len(rows))]
    test_array = np.asarray(test_labels, dtype=object)

    _say(
        progress, f"{'step':>6} {'classes':>8} {'accuracy':>9} {'learn ms/class':>15} {'eval s':>7}"
    )
    learn_seconds = 0.0
    n_steps = (len(order) + step - 1) // step
    for index in range(n_steps):
        new_classes = order[index * step : (index + 1) * step]
        step_learn = 0.0
        for label in new_classes:
            rows = by_class[label]
            tick = clock()
            model.learn_many(X_train[rows], [label] * len(rows))
            step_learn += clock() - tick
        learn_seconds += step_learn
        seen = order[: (index + 1) * step]
        mask = np.isin(test_array, np.asarray(seen, dtype=object))
        tick = clock()
        predicted = model.predict_many(X_test[mask])
        eval_seconds = clock() - tick
        accuracy = float(np.mean(np.asarray(predicted, dtype=object) == test_array[mask]))
        result.steps.append(
            {
                "classes_seen": len(seen),
                "accuracy": accuracy,
                "learn_ms_per_class": 1e3 * step_learn / len(new_classes),
                "eval_seconds": eval_seconds,
            }
        )
        _say(
            progress,
            f"{index + 1:>3}/{n_steps:<3}{len(seen):>7} {100 * accuracy:>8.2f}% "
            f"{1e3 * step_learn / len(new_classes):>15.2f} {eval_seconds:>7.2f}",
        )
    result.final_accuracy = result.steps[-1]["accuracy"]
    result.learn_us_per_example = 1e6 * learn_seconds / len(train_labels)
    result.learn_ms_per_class = 1e3 * learn_seconds / len(classes)
    result.state_bytes = model.state_bytes

    if baselines:
        _say(progress, "offline joint logistic regression on the same features (upper bound)...")
        joint_predictions, joint_c = joint_logistic_regression(
            X_train, train_labels, X_test[test_mask], seed=seed
        )
        result.joint_accuracy = float(
            np.mean(np.asarray(joint_predictions, dtype=object) == test_array[test_mask])
        )
        result.joint_c = joint_c
        _say(progress, "softmax head fine-tuned by SGD in the same class-incremental order...")
        sgd = SGDSoftmaxHead(seed=seed)
        for index in range(n_steps):
            rows = np.concatenate([by_class[c] for c in order[index * step : (index + 1) * step]])
            rows = rows[rng.permutation(len(rows))]
            sgd.learn_many(X_train[rows], [train_labels[i] for i in rows])
        sgd_predictions = sgd.predict_many(X_test[test_mask])
        result.sgd_finetune_accuracy = float(
            np.mean(np.asarray(sgd_predictions, dtype=object) == test_array[test_mask])
        )
    if audit:
        result.raw_bytes_stored = raw_bytes_stored(model, list(dataset.train.inputs))
    return result


def format_summary(result: IncrementalResult) -> str:
    """The closing comparison table, as text."""
    lines = [
        "",
        f"{result.dataset}: {result.n_classes} classes in steps of {result.step}, "
        f"{result.n_train} training examples, single pass, seed {result.seed}",
        f"  {'model':<52} {'accuracy':>9}",
        f"  {'instant learner (' + result.head.split('(')[0] + ', class-incremental)':<52} "
        f"{100 * result.final_accuracy:>8.2f}%",
    ]
    if result.joint_accuracy is not None:
        lines.append(
            f"  {'joint logistic regression (offline, C=' + format(result.joint_c, 'g') + ')':<52} "
            f"{100 * result.joint_accuracy:>8.2f}%"
        )
    if result.sgd_finetune_accuracy is not None:
        lines.append(
            f"  {'softmax head, SGD fine-tuning (class-incr.)':<52} "
            f"{100 * result.sgd_finetune_accuracy:>8.2f}%"
        )
    lines += [
        f"  learning: {result.learn_us_per_example:.1f} us per example, "
        f"{result.learn_ms_per_class:.2f} ms per class (features given)",
        f"  state: {result.state_bytes / 2**20:.1f} MiB of statistics; raw input bytes stored: "
        f"{result.raw_bytes_stored}",
    ]
    return "\n".join(lines)
