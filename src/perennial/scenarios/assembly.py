"""The steps every scenario builder shares: option checks, the label space, seeded stratified
subsampling, and turning inputs into float32 features.

Builders call the checks first, so a bad option fails before any data is loaded, rotated or
encoded. Randomness comes from generators seeded by ``(seed, purpose, task)``: the class order,
the permutation of task 3 and the subsample of task 3 are each fixed by the seed alone, whatever
the number of tasks.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from perennial.datasets.base import Dataset, Split, check_seed
from perennial.encoders.base import Encoder, as_encoder
from perennial.encoders.cache import FeatureCache
from perennial.exceptions import (
    EncoderError,
    InputTypeError,
    InvalidInputError,
    InvalidParameterError,
    NonFiniteInputError,
)
from perennial.progress import Output, ProgressBar
from perennial.scenarios.base import Experience, FloatArray, LabelArray, Scenario

__all__ = [
    "CLASS_ORDER",
    "PERMUTATION",
    "SUBSAMPLE",
    "EncoderLike",
    "Group",
    "LabelSpace",
    "assemble",
    "check_count",
    "check_finite_inputs",
    "check_flag",
    "check_optional_count",
    "check_real",
    "check_seed",
    "featurize",
    "input_kind",
    "reporting_to",
    "resolve_cache",
    "resolve_dataset",
    "resolve_encoder",
    "resolve_order",
    "stratified_subsample",
    "task_layout",
    "task_rng",
]

#: Purposes of the seeded generators (the second entry of their seed).
CLASS_ORDER, SUBSAMPLE, PERMUTATION = 0, 1, 2

#: What builders accept as ``encoder``: an encoder, a registry name, a callable, or None.
EncoderLike = Encoder | str | Callable[[Any], Any] | None

_ENCODE_BATCH = 1024


# ----------------------------------------------------------------------------- option checks


def check_count(value: Any, name: str) -> int:
    """Return ``value`` as an int, or raise unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise InvalidParameterError(f"expected {name} to be a positive integer, got {value!r}")
    return int(value)


def check_optional_count(value: Any, name: str) -> int | None:
    """None, or ``value`` checked by :func:`check_count`."""
    return None if value is None else check_count(value, name)


def check_real(value: Any, name: str) -> float:
    """Return ``value`` as a float, or raise unless it is a finite real number."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
    ):
        raise InvalidParameterError(f"expected {name} to be a finite number, got {value!r}")
    return float(value)


def task_layout(
    n_tasks: int | None, classes_per_task: int | None, n_classes: int, what: str
) -> tuple[int, int]:
    """Resolve ``(n_tasks, classes_per_task)`` for ``n_classes`` classes, or raise.

    Either may be None, not both. Given one, the other follows, and the classes must divide
    evenly (no class is dropped silently). Given both, their product may be less than
    ``n_classes``: the stream then uses the first ``n_tasks * classes_per_task`` classes.

    Examples
    --------
    >>> task_layout(5, None, 10, "mnist"), task_layout(None, 5, 100, "cifar100")
    ((5, 2), (20, 5))
    """
    if n_tasks is None and classes_per_task is None:
        raise InvalidParameterError(
            f"expected n_tasks or classes_per_task (or both) to split the {n_classes} classes "
            f"of {what} into tasks, got neither"
        )
    if classes_per_task is not None and classes_per_task > n_classes:
        raise InvalidParameterError(
            f"classes_per_task={classes_per_task} is more than the {n_classes} classes of {what}"
        )
    if n_tasks is not None and n_tasks > n_classes:
        raise InvalidParameterError(
            f"n_tasks={n_tasks} is more than the {n_classes} classes of {what} "
            "(each task needs at least one class)"
        )
    if n_tasks is None:
        assert classes_per_task is not None  # narrowed by the first check
        n_tasks, left = divmod(n_classes, classes_per_task)
        if left:
            raise InvalidParameterError(
                f"the {n_classes} classes of {what} do not split into tasks of "
                f"classes_per_task={classes_per_task} ({left} would be left over); pass "
                f"n_tasks={n_tasks} as well to use {n_tasks * classes_per_task} of them"
            )
    elif classes_per_task is None:
        classes_per_task, left = divmod(n_classes, n_tasks)
        if left:
            raise InvalidParameterError(
                f"the {n_classes} classes of {what} do not split evenly into n_tasks={n_tasks} "
                f"({left} would be left over); pass classes_per_task={classes_per_task} as well "
                f"to use {n_tasks * classes_per_task} of them"
            )
    elif n_tasks * classes_per_task > n_classes:
        raise InvalidParameterError(
            f"n_tasks={n_tasks} times classes_per_task={classes_per_task} is "
            f"{n_tasks * classes_per_task} classes, but {what} has only {n_classes}"
        )
    return n_tasks, classes_per_task


def task_rng(seed: int, purpose: int, task: int = 0) -> np.random.Generator:
    """The generator for one purpose (:data:`CLASS_ORDER`, ...) of one task."""
    return np.random.default_rng([seed, purpose, task])


def stratified_subsample(labels: LabelArray, size: int, rng: np.random.Generator) -> LabelArray:
    """Positions of ``size`` of ``labels``, drawn without replacement, class by class.

    Each class gets ``size * n_class / n`` positions rounded down, and the positions left over go
    to the classes with the largest remainders (ties to the smaller label). Positions come back
    sorted, so the source order is kept.

    Examples
    --------
    >>> labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    >>> chosen = stratified_subsample(labels, 5, np.random.default_rng(0))
    >>> np.bincount(labels[chosen]).tolist()
    [2, 3]
    """
    n = len(labels)
    if not 0 < size <= n:
        raise InvalidParameterError(f"cannot draw {size} of {n} examples")
    classes, counts = np.unique(labels, return_counts=True)
    exact = size * counts / n
    quota = np.floor(exact).astype(np.int64)
    extra = size - int(quota.sum())
    if extra:
        by_remainder = np.argsort(-(exact - quota), kind="stable")
        quota[by_remainder[:extra]] += 1
    parts = [
        rng.choice(np.flatnonzero(labels == label), size=int(k), replace=False)
        for label, k in zip(classes.tolist(), quota.tolist(), strict=True)
        if k
    ]
    return np.sort(np.concatenate(parts)).astype(np.int64)


# ----------------------------------------------------------------------------- data and labels


def resolve_dataset(data: Any, what: str) -> Dataset:
    """A :class:`Dataset` as given, built by a loader (a callable without arguments), or loaded
    by name or CSV path with ``load_dataset``."""
    if isinstance(data, Dataset):
        return data
    if callable(data):
        loaded = data()
        if not isinstance(loaded, Dataset):
            raise InputTypeError(
                f"expected the loader to return a Dataset, got {type(loaded).__name__}"
            )
        return loaded
    if data is None:
        raise InvalidParameterError(
            f"{what} needs data=: a Dataset, a data set name (for example clinc150) "
            "or the path of a text,category CSV file"
        )
    if isinstance(data, (str, os.PathLike)):
        from perennial.datasets import load_dataset

        return load_dataset(data)
    raise InputTypeError(
        f"expected data to be a Dataset, a data set name or a CSV path, got {type(data).__name__}"
    )


def input_kind(dataset: Dataset) -> str:
    """``"text"``, ``"image"`` (pixels, scaled to [0, 1]) or ``"features"`` (used as they are).

    Images are what ``metadata["kind"]`` says, or else uint8 arrays of shape ``(n, H, W)`` or
    ``(n, H, W, C)``; ``metadata["kind"] == "features"`` keeps any array as it is.
    """
    inputs = dataset.train.inputs
    if isinstance(inputs, list):
        return "text"
    kind = dataset.metadata.get("kind")
    if kind in ("image", "features"):
        return str(kind)
    return "image" if inputs.dtype == np.uint8 and inputs.ndim >= 3 else "features"


def check_finite_inputs(dataset: Dataset) -> None:
    """Raise :class:`NonFiniteInputError` if a numeric split holds NaN or infinity."""
    for split_name, split in (("train", dataset.train), ("test", dataset.test)):
        inputs = split.inputs
        if not isinstance(inputs, np.ndarray):
            continue
        if inputs.dtype.kind not in "biuf":
            raise InputTypeError(
                f"expected numeric {split_name} inputs, got an array of dtype {inputs.dtype}"
            )
        if inputs.dtype.kind == "f":
            bad = ~np.isfinite(inputs)
            if bad.any():
                where = tuple(int(i) for i in np.argwhere(bad)[0])
                raise NonFiniteInputError(
                    f"{split_name} inputs contain a non-finite value ({inputs[where]}) at index "
                    f"{where}; expected finite numbers"
                )


@dataclass(frozen=True, eq=False)
class LabelSpace:
    """Class names, and the labels of both splits as int64 indices into them."""

    class_names: tuple[str, ...]
    train_y: LabelArray
    test_y: LabelArray
    lookup: dict[Hashable, int]

    @classmethod
    def of(cls, dataset: Dataset) -> LabelSpace:
        """The label space of ``dataset``: its ``label_names`` when they cover every label,
        else the sorted distinct training labels. A test label outside it is an error."""
        train, test = dataset.train.labels, dataset.test.labels
        names = dataset.metadata.get("label_names")
        names = list(names) if isinstance(names, (list, tuple)) else None
        values: list[Any]
        if train.dtype == object:
            seen = sorted(set(train.tolist()))
            if names is not None and all(isinstance(n, str) for n in names):
                values = names if set(seen) <= set(names) else seen
            else:
                values = seen
            class_names = tuple(str(v) for v in values)
        else:
            seen = np.unique(train).tolist()
            if names is not None and seen and seen[0] >= 0 and seen[-1] < len(names):
                values = list(range(len(names)))
                class_names = tuple(str(n) for n in names)
            else:
                values = seen
                class_names = tuple(str(v) for v in values)
        lookup: dict[Hashable, int] = {value: i for i, value in enumerate(values)}
        if len(lookup) == 0:
            raise InvalidInputError("expected at least one training example, got none")
        return cls(
            class_names, _indices(train, lookup, "train"), _indices(test, lookup, "test"), lookup
        )

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def index(self, label: Any, what: str) -> int:
        """The index of ``label``, given as a label value of the data or as a class name."""
        key = label.item() if isinstance(label, np.generic) else label
        if isinstance(key, Hashable) and not isinstance(key, bool):
            if key in self.lookup:
                return self.lookup[key]
            if isinstance(key, str) and key in self.class_names:
                return self.class_names.index(key)
        shown = ", ".join(self.class_names[:10]) + (", ..." if self.n_classes > 10 else "")
        raise InvalidParameterError(
            f"{what} names the class {label!r}, which is not in the data (classes: {shown})"
        )


def _indices(labels: NDArray[Any], lookup: dict[Hashable, int], split: str) -> LabelArray:
    if labels.dtype != object:  # integer labels: the lookup keys are sorted integers
        keys = np.fromiter(lookup, dtype=np.int64, count=len(lookup))
        positions = np.minimum(np.searchsorted(keys, labels), len(keys) - 1)
        unknown = np.flatnonzero(keys[positions] != labels)
        if unknown.size:
            first = int(unknown[0])
            raise InvalidInputError(
                f"{split} label {labels[first].item()!r} (example {first}) never appears among "
                "the training labels"
            )
        return positions.astype(np.int64)
    out = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels.tolist()):
        try:
            out[i] = lookup[label]
        except KeyError:
            raise InvalidInputError(
                f"{split} label {label!r} (example {i}) never appears among the training labels"
            ) from None
    return out


def resolve_order(
    order: Sequence[Any] | None, resolve: Callable[[Any], int], n: int, seed: int, what: str
) -> list[int]:
    """An explicit order resolved to indices (distinct), or ``range(n)`` shuffled by ``seed``."""
    if order is None:
        return [int(i) for i in task_rng(seed, CLASS_ORDER).permutation(n)]
    if isinstance(order, (str, bytes)) or not isinstance(order, Sequence | np.ndarray):
        raise InvalidParameterError(f"expected {what} to be a list, got {order!r}")
    indices = [resolve(item) for item in order]
    if not indices:
        raise InvalidParameterError(f"expected a non-empty {what}, got {list(order)!r}")
    seen: set[int] = set()
    for item, index in zip(order, indices, strict=True):
        if index in seen:
            raise InvalidParameterError(f"{what} repeats {item!r}")
        seen.add(index)
    return indices


# ----------------------------------------------------------------------------- encoding


def resolve_cache(cache: Any) -> FeatureCache | None:
    """A :class:`FeatureCache` as given, one over a folder path, or None (no cache)."""
    if cache is None or isinstance(cache, FeatureCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return FeatureCache(os.fspath(cache))
    raise InvalidParameterError(
        f"expected cache to be a FeatureCache, a folder path or None, got {type(cache).__name__}"
    )


def check_flag(value: Any, name: str) -> bool:
    """Return ``value``, or raise unless it is a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidParameterError(f"expected {name} to be True or False, got {value!r}")
    return bool(value)


def resolve_encoder(encoder: EncoderLike, kind: str) -> Encoder | None:
    """The encoder to apply, or None for inputs used as they are (pixels or features).

    Texts need one: without ``encoder`` they go through the project's text encoder (built now,
    loaded on first use). Builders call this with ``kind=""`` before loading data, to check a
    given encoder early, and again once the kind of input is known.
    """
    if encoder is None:
        if kind != "text":
            return None
        from perennial.encoders.text import TextEncoder

        return TextEncoder()
    return as_encoder(encoder)


#: Where the encoding of a scenario being built reports its progress (see :func:`reporting_to`).
_PROGRESS: ContextVar[Output] = ContextVar("perennial_scenario_progress", default=None)


@contextmanager
def reporting_to(progress: Output) -> Iterator[None]:
    """Inside the block, the scenarios built report their encoding to ``progress``.

    ``progress`` is what :class:`perennial.progress.ProgressBar` takes: a text stream (drawn in
    place on a terminal), a callable taking one line, or None (silence). Scoped to the block
    (and to the calling thread or task), so a builder's signature stays that of its data.
    :func:`perennial.scenarios.make_scenario` opens it for its ``progress`` argument.
    """
    token = _PROGRESS.set(progress)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def _encode(
    encoder: Encoder, inputs: Any, cache: FeatureCache | None, what: str = "inputs"
) -> FloatArray:
    chunks: list[FloatArray] = []
    with ProgressBar(len(inputs), f"encoding {what}", unit="inputs", output=_PROGRESS.get()) as bar:
        for start in range(0, len(inputs), _ENCODE_BATCH):
            chunk = inputs[start : start + _ENCODE_BATCH]
            if cache is not None:
                raw, read = cache.read_or_encode(encoder, chunk)
            else:
                raw, read = encoder.encode(chunk), False
            features = np.asarray(raw, dtype=np.float32)
            if features.ndim != 2 or features.shape[0] != len(chunk):
                raise EncoderError(
                    f"encoder {encoder.name!r} returned features of shape {features.shape} for "
                    f"{len(chunk)} inputs; expected ({len(chunk)}, dim)"
                )
            if not np.isfinite(features).all():
                raise EncoderError(f"encoder {encoder.name!r} returned non-finite features")
            chunks.append(features)
            bar.update(len(chunk), cached=len(chunk) if read else 0)
    return np.concatenate(chunks)


def featurize(
    split: Split,
    indices: LabelArray,
    kind: str,
    encoder: Encoder | None,
    cache: FeatureCache | None,
    what: str = "inputs",
) -> FloatArray:
    """float32 features of ``split.inputs[indices]``, shape ``(len(indices), d)``.

    An encoder's work is reported as "encoding ``what``" (see :func:`reporting_to`).
    """
    subset = split.subset(indices).inputs
    if encoder is not None:
        return _encode(encoder, subset, cache, what)
    assert isinstance(subset, np.ndarray)  # resolve_encoder gives texts an encoder
    flat = subset.reshape(len(subset), -1)
    if kind == "image":
        return flat.astype(np.float32) / np.float32(255)
    return flat.astype(np.float32)


# ----------------------------------------------------------------------------- assembly


@dataclass(frozen=True, eq=False)
class Group:
    """One future experience: its name, its classes and its examples in the source splits."""

    name: str
    classes: tuple[int, ...]
    train_idx: LabelArray
    test_idx: LabelArray


def assemble(
    dataset: Dataset,
    labels: LabelSpace,
    groups: list[Group],
    *,
    name: str,
    encoder: Encoder | None,
    cache: FeatureCache | None,
    examples_per_task: int | None,
    seed: int,
    task_labels: bool,
    metadata: dict[str, Any],
) -> Scenario:
    """Subsample each group's training examples, encode what is used once, build the scenario.

    Raises :class:`InvalidParameterError` if ``examples_per_task`` exceeds a group's training
    examples and :class:`InvalidInputError` if a group has no training or no test examples;
    both before anything is encoded.
    """
    chosen: list[LabelArray] = []
    for t, group in enumerate(groups):
        train_idx = group.train_idx
        if len(train_idx) == 0 or len(group.test_idx) == 0:
            missing = "training" if len(train_idx) == 0 else "test"
            raise InvalidInputError(
                f"experience {t} ({group.name}) has no {missing} examples; the data set "
                f"{dataset.name!r} is too small for this split"
            )
        if examples_per_task is not None:
            if examples_per_task > len(train_idx):
                raise InvalidParameterError(
                    f"examples_per_task={examples_per_task} is more than the {len(train_idx)} "
                    f"training examples of experience {t} ({group.name})"
                )
            rng = task_rng(seed, SUBSAMPLE, t)
            train_idx = train_idx[
                stratified_subsample(labels.train_y[train_idx], examples_per_task, rng)
            ]
        chosen.append(train_idx)
    kind = input_kind(dataset)
    train_used = np.unique(np.concatenate(chosen))
    test_used = np.unique(np.concatenate([g.test_idx for g in groups]))
    train_x = featurize(dataset.train, train_used, kind, encoder, cache, f"{name} train")
    test_x = featurize(dataset.test, test_used, kind, encoder, cache, f"{name} test")
    if train_x.shape[1] != test_x.shape[1]:
        raise EncoderError(
            f"expected train and test features of one width, got {train_x.shape[1]} "
            f"and {test_x.shape[1]}"
        )
    experiences = []
    for t, (group, train_idx) in enumerate(zip(groups, chosen, strict=True)):
        rows = np.searchsorted(train_used, train_idx)
        test_rows = np.searchsorted(test_used, group.test_idx)
        experiences.append(
            Experience(
                index=t,
                train_x=train_x[rows],
                train_y=labels.train_y[train_idx],
                test_x=test_x[test_rows],
                test_y=labels.test_y[group.test_idx],
                classes=group.classes,
                name=group.name,
            )
        )
    facts: dict[str, Any] = {
        "dataset": dataset.name,
        "encoder": None if encoder is None else encoder.name,
        "seed": seed,
        "examples_per_task": examples_per_task,
    }
    if kind == "image" and isinstance(dataset.train.inputs, np.ndarray):
        facts["image_shape"] = tuple(int(s) for s in dataset.train.inputs.shape[1:])
    facts.update(metadata)
    return Scenario(
        name=name,
        experiences=tuple(experiences),
        n_classes=labels.n_classes,
        input_shape=(int(train_x.shape[1]),),
        task_labels=task_labels,
        class_names=labels.class_names,
        metadata=facts,
    )
