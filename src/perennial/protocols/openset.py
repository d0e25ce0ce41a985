"""The open-set protocol: learn in-scope classes step by step, then meet out-of-scope queries.

Classes arrive in random order in steps, as in :mod:`perennial.protocols.incremental`. After each step the
learner answers the test queries of the classes seen so far and every out-of-scope query, with the
unknown threshold calibrated for the target in-scope rejection rate from the training stream alone:
no out-of-scope example is used. The final figures are the ones of Larson et al. (2019, "An
Evaluation Dataset for Intent Classification and Out-of-Scope Prediction", EMNLP): in-scope
accuracy (an in-scope query called unknown counts as wrong) and out-of-scope recall, plus the
threshold-free AUROC and the false-positive rate at 95% true-positive rate, in-scope being the
positive class.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import numpy as np

from perennial.datasets.base import Dataset
from perennial.encoders.base import Encoder, Precomputed
from perennial.encoders.cache import FeatureCache
from perennial.exceptions import DatasetError, InvalidParameterError
from perennial.heads.base import Head
from perennial.learner import LifelongClassifier
from perennial.protocols.incremental import _say, encode_split

__all__ = ["OpenSetResult", "auroc", "fpr_at_tpr", "run_open_set"]


def auroc(inside: Any, outside: Any) -> float:
    """Probability that an out-of-scope query is more novel than an in-scope one (ties count half).

    Examples
    --------
    >>> auroc([0.1, 0.2, 0.3], [0.25, 0.9])
    0.8333333333333334
    """
    from scipy.stats import rankdata

    a, b = np.asarray(inside, dtype=float), np.asarray(outside, dtype=float)
    if len(a) == 0 or len(b) == 0:
        raise InvalidParameterError("auroc needs in-scope and out-of-scope scores")
    ranks = rankdata(np.concatenate([a, b]))
    u = ranks[len(a) :].sum() - len(b) * (len(b) + 1) / 2
    return float(u / (len(a) * len(b)))


def fpr_at_tpr(inside: Any, outside: Any, tpr: float = 0.95) -> float:
    """Share of out-of-scope queries accepted when ``tpr`` of in-scope ones are accepted.

    Examples
    --------
    >>> fpr_at_tpr(np.arange(100), [10, 96, 200])
    0.3333333333333333
    """
    threshold = float(np.quantile(np.asarray(inside, dtype=float), tpr))
    return float(np.mean(np.asarray(outside, dtype=float) <= threshold))


@dataclass
class OpenSetResult:
    """Figures of one open-set run (fractions, not percent)."""

    dataset: str
    encoder: str
    head: str
    unknown_rate: float
    n_classes: int
    n_in_scope: int
    n_out_of_scope: int
    in_scope_accuracy: float = 0.0
    closed_set_accuracy: float = 0.0
    oos_recall: float = 0.0
    in_scope_rejection: float = 0.0
    auroc: float = 0.0
    fpr_at_95tpr: float = 0.0
    threshold: float = 0.0
    seconds: float = 0.0
    novelty_score: str = "relative"
    steps: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_open_set(
    dataset: Dataset,
    encoder: Encoder,
    head: Head,
    *,
    unknown_rate: float = 0.02,
    step: int = 10,
    seed: int = 0,
    oos_split: str = "oos_test",
    cache: FeatureCache | None = None,
    progress: TextIO | None = sys.stderr,
    novelty_score: str = "auto",
) -> OpenSetResult:
    """Learn ``dataset.train`` class-incrementally and evaluate against ``extra[oos_split]``."""
    if oos_split not in dataset.extra:
        raise DatasetError(
            f"{dataset.name} has no out-of-scope split {oos_split!r} "
            f"(splits: {', '.join(['train', 'test', *dataset.extra]) or 'none'})"
        )
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise InvalidParameterError(f"step must be a positive int, got {step!r}")
    started = time.perf_counter()
    train_labels = np.asarray(dataset.train.labels.tolist(), dtype=object)
    test_labels = np.asarray(dataset.test.labels.tolist(), dtype=object)
    classes = sorted(set(train_labels.tolist()), key=str)
    order = [classes[i] for i in np.random.default_rng(seed).permutation(len(classes))]
    _say(progress, f"encoding with {encoder.name}")
    X_train = encode_split(encoder, dataset.train.inputs, cache, progress=progress, what="train")
    X_test = encode_split(encoder, dataset.test.inputs, cache, progress=progress, what="test")
    X_out = encode_split(
        encoder, dataset.extra[oos_split].inputs, cache, progress=progress, what=oos_split
    )
    model = LifelongClassifier(
        encoder=Precomputed(encoder),
        head=head.clone(),
        unknown_rate=unknown_rate,
        novelty_score=novelty_score,
    )
    result = OpenSetResult(
        dataset=dataset.name,
        encoder=encoder.name,
        head=repr(head),
        unknown_rate=unknown_rate,
        n_classes=len(classes),
        n_in_scope=int(np.isin(test_labels, np.asarray(classes, dtype=object)).sum()),
        n_out_of_scope=len(X_out),
        novelty_score=model.gate_.score if model.gate_ is not None else novelty_score,
    )
    _say(progress, "  step  classes  in-scope acc  oos recall  in-scope rejected  threshold")
    for start in range(0, len(order), step):
        known = order[: start + step]
        batch = np.isin(train_labels, np.asarray(order[start : start + step], dtype=object))
        model.learn_many(X_train[batch], train_labels[batch].tolist())
        seen = np.isin(test_labels, np.asarray(known, dtype=object))
        row = _evaluate(model, X_test[seen], test_labels[seen], X_out)
        row["classes"] = float(len(known))
        result.steps.append(row)
        _say(
            progress,
            f"  {start // step + 1:>4}  {len(known):>7}  {100 * row['in_scope_accuracy']:>11.2f}%"
            f"  {100 * row['oos_recall']:>9.2f}%  {100 * row['in_scope_rejection']:>16.2f}%"
            f"  {row['threshold']:>9.2f}",
        )
    final = result.steps[-1]
    for key in ("in_scope_accuracy", "closed_set_accuracy", "oos_recall", "in_scope_rejection"):
        setattr(result, key, final[key])
    seen = np.isin(test_labels, np.asarray(classes, dtype=object))
    inside = model.novelty_scores(X_test[seen])
    outside = model.novelty_scores(X_out)
    result.auroc = auroc(inside, outside)
    result.fpr_at_95tpr = fpr_at_tpr(inside, outside)
    result.threshold = final["threshold"]
    result.seconds = time.perf_counter() - started
    return result


def _evaluate(
    model: LifelongClassifier, X_in: np.ndarray, y_in: np.ndarray, X_out: np.ndarray
) -> dict[str, float]:
    rows_in = model.predict_detailed(X_in, top=1)
    rows_out = model.predict_detailed(X_out, top=1)
    unknown_in = np.array([r["unknown"] for r in rows_in])
    best_in = np.array([r["top"][0]["label"] for r in rows_in], dtype=object)
    correct = best_in == y_in
    return {
        "in_scope_accuracy": float(np.mean(correct & ~unknown_in)),
        "closed_set_accuracy": float(np.mean(correct)),
        "oos_recall": float(np.mean([r["unknown"] for r in rows_out])),
        "in_scope_rejection": float(np.mean(unknown_in)),
        "threshold": float(model.unknown_threshold_ or 0.0),
    }
