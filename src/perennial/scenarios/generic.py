"""Class-incremental and domain-incremental streams from any labelled data.

The data may be a :class:`~perennial.datasets.Dataset` (or the name or CSV path that
``load_dataset`` understands), numpy arrays (:func:`from_arrays`) or a data frame
(:func:`from_dataframe`). Texts become features through an encoder; images from the image loaders
become pixels in ``[0, 1]``; numeric arrays are used as they are. Only the examples a stream uses
are encoded, once each, after every option has been checked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from perennial.datasets.base import Dataset, Split, check_test_fraction, stratified_split
from perennial.encoders.cache import FeatureCache
from perennial.exceptions import (
    EmptyInputError,
    InputTypeError,
    InvalidInputError,
    InvalidParameterError,
    LabelLengthError,
)
from perennial.scenarios.assembly import (
    EncoderLike,
    Group,
    LabelSpace,
    assemble,
    check_finite_inputs,
    check_flag,
    check_optional_count,
    check_seed,
    input_kind,
    resolve_cache,
    resolve_dataset,
    resolve_encoder,
    resolve_order,
    task_layout,
)
from perennial.scenarios.base import Scenario

__all__ = ["class_incremental", "domain_incremental", "from_arrays", "from_dataframe"]

DataLike = Dataset | str | os.PathLike[str]


# ----------------------------------------------------------------------------- class-incremental


def class_incremental(
    data: DataLike | None = None,
    *,
    n_tasks: int | None = None,
    classes_per_task: int | None = None,
    examples_per_task: int | None = None,
    seed: int = 0,
    class_order: Sequence[Any] | None = None,
    task_labels: bool = False,
    encoder: EncoderLike = None,
    cache: FeatureCache | str | os.PathLike[str] | None = None,
) -> Scenario:
    """Split the classes of a labelled data set into tasks that arrive one after another.

    Parameters
    ----------
    data
        A :class:`~perennial.datasets.Dataset`, or a name or CSV path for ``load_dataset``
        (required; None raises an error that says so).
    n_tasks, classes_per_task
        The layout; give one or both. Given one, the classes must divide evenly; given both,
        the stream uses the first ``n_tasks * classes_per_task`` classes of the order.
    examples_per_task
        Draw this many training examples per task (seeded, stratified by class); None keeps
        all. Test sets are kept whole.
    seed
        Fixes the class order (unless ``class_order`` is given) and the draws.
    class_order
        The classes in the order they arrive, as labels of the data or class names.
    task_labels
        True for a task-incremental stream (the task is known at test time).
    encoder
        An encoder, a registry name (``"text"``, ``"image"``, ``"identity"``) or a callable.
        None: texts go through :class:`~perennial.encoders.text.TextEncoder`, images become
        pixels in ``[0, 1]``, numeric inputs stay as they are.
    cache
        A :class:`~perennial.encoders.FeatureCache` (or its folder) for the encoded features.

    Returns
    -------
    Scenario
        Labels index ``class_names`` over all classes of the data: its
        ``metadata["label_names"]`` when they cover every label, else the sorted distinct
        training labels as strings. ``Experience.classes`` are sorted;
        ``metadata["class_order"]`` lists the classes used, in order.

    Raises
    ------
    InvalidParameterError
        An impossible layout, a bad count or seed, or an unknown class in ``class_order``.
    InvalidInputError
        A task without training or test examples, or non-finite inputs.

    Examples
    --------
    >>> import numpy as np
    >>> from perennial.datasets import Dataset, Split
    >>> rng = np.random.default_rng(0)
    >>> train = Split(rng.normal(size=(60, 4)), np.arange(60) % 6)
    >>> test = Split(rng.normal(size=(30, 4)), np.arange(30) % 6)
    >>> scenario = class_incremental(Dataset("toy", train, test), n_tasks=3, seed=1)
    >>> [e.classes for e in scenario]
    [(0, 4), (1, 2), (3, 5)]
    """
    return split_classes(
        data,
        name="class-incremental",
        n_tasks=n_tasks,
        classes_per_task=classes_per_task,
        examples_per_task=examples_per_task,
        seed=seed,
        class_order=class_order,
        task_labels=task_labels,
        encoder=encoder,
        cache=cache,
    )


def split_classes(
    data: Any,
    *,
    name: str,
    n_tasks: int | None,
    classes_per_task: int | None,
    examples_per_task: int | None,
    seed: int,
    class_order: Sequence[Any] | None,
    task_labels: bool,
    encoder: EncoderLike,
    cache: Any,
    n_known_classes: int | None = None,
) -> Scenario:
    """The class-incremental builder behind :func:`class_incremental` and the split scenarios.

    ``n_known_classes`` lets a builder whose class count is known (10 for MNIST) check the
    layout before loading anything.
    """
    n_tasks = check_optional_count(n_tasks, "n_tasks")
    classes_per_task = check_optional_count(classes_per_task, "classes_per_task")
    examples_per_task = check_optional_count(examples_per_task, "examples_per_task")
    seed = check_seed(seed)
    task_labels = check_flag(task_labels, "task_labels")
    feature_cache = resolve_cache(cache)
    encoder = resolve_encoder(encoder, "")  # a bad encoder fails before the data is loaded
    if n_known_classes is not None and class_order is None:
        task_layout(n_tasks, classes_per_task, n_known_classes, name)
    dataset = resolve_dataset(data, name)
    check_finite_inputs(dataset)
    labels = LabelSpace.of(dataset)
    order = resolve_order(
        class_order,
        lambda label: labels.index(label, "class_order"),
        labels.n_classes,
        seed,
        "class_order",
    )
    n_tasks, classes_per_task = task_layout(
        n_tasks, classes_per_task, len(order), f"the data set {dataset.name!r}"
    )
    chosen_encoder = resolve_encoder(encoder, input_kind(dataset))
    groups = []
    for t in range(n_tasks):
        classes = tuple(sorted(order[t * classes_per_task : (t + 1) * classes_per_task]))
        shown = ", ".join(labels.class_names[c] for c in classes)
        groups.append(
            Group(
                name=f"classes {shown}",
                classes=classes,
                train_idx=np.flatnonzero(np.isin(labels.train_y, classes)).astype(np.int64),
                test_idx=np.flatnonzero(np.isin(labels.test_y, classes)).astype(np.int64),
            )
        )
    return assemble(
        dataset,
        labels,
        groups,
        name=name,
        encoder=chosen_encoder,
        cache=feature_cache,
        examples_per_task=examples_per_task,
        seed=seed,
        task_labels=task_labels,
        metadata={
            "n_tasks": n_tasks,
            "classes_per_task": classes_per_task,
            "class_order": [labels.class_names[c] for c in order[: n_tasks * classes_per_task]],
        },
    )


# ----------------------------------------------------------------------------- domain-incremental


def domain_incremental(
    data: DataLike | None = None,
    *,
    domains: Mapping[str, Sequence[Any]] | None = None,
    n_tasks: int | None = None,
    examples_per_task: int | None = None,
    seed: int = 0,
    domain_order: Sequence[str] | None = None,
    task_labels: bool = False,
    encoder: EncoderLike = None,
    cache: FeatureCache | str | os.PathLike[str] | None = None,
) -> Scenario:
    """One experience per domain, each domain a group of the data's classes.

    Labels stay global: they index ``class_names`` over every class of the data (all 150
    intents for CLINC150), and ``Experience.classes`` lists the domain's.

    Parameters
    ----------
    data
        A :class:`~perennial.datasets.Dataset`, or a name or CSV path for ``load_dataset``
        (required; None raises an error that says so).
    domains
        Each domain mapped to its classes (labels of the data or class names); a class may
        belong to one domain only. None: ``data.metadata["domains"]`` (CLINC150 has it).
    n_tasks
        Use only the first ``n_tasks`` domains of the order; None: all.
    examples_per_task
        Draw this many training examples per domain (seeded, stratified by class).
    seed
        Fixes the domain order (unless ``domain_order`` is given) and the draws.
    domain_order
        The domains in the order they arrive.
    task_labels
        True if the domain is known at test time (predictions restricted to its classes).
    encoder, cache
        As in :func:`class_incremental`.

    Returns
    -------
    Scenario
        ``Experience.name`` is ``"domain: <name>"``; ``metadata["domain_order"]`` lists the
        domains used.

    Raises
    ------
    InvalidParameterError
        No domains, a class in two domains or not in the data, a bad count, order or seed.
    InvalidInputError
        A domain without training or test examples.

    Examples
    --------
    >>> import numpy as np
    >>> from perennial.datasets import Dataset, Split
    >>> rng = np.random.default_rng(0)
    >>> labels = np.array(["cat", "dog", "car", "bus"] * 5, dtype=object)
    >>> data = Dataset("toy", Split(rng.normal(size=(20, 3)), labels),
    ...                Split(rng.normal(size=(8, 3)), labels[:8]))
    >>> scenario = domain_incremental(
    ...     data, domains={"animals": ["cat", "dog"], "vehicles": ["car", "bus"]}, seed=0)
    >>> [(e.name, e.classes) for e in scenario], scenario.class_names
    ([('domain: animals', (2, 3)), ('domain: vehicles', (0, 1))], ('bus', 'car', 'cat', 'dog'))
    """
    n_tasks = check_optional_count(n_tasks, "n_tasks")
    examples_per_task = check_optional_count(examples_per_task, "examples_per_task")
    seed = check_seed(seed)
    task_labels = check_flag(task_labels, "task_labels")
    feature_cache = resolve_cache(cache)
    encoder = resolve_encoder(encoder, "")  # a bad encoder fails before the data is loaded
    if domains is not None:
        _check_domain_mapping(domains)
    dataset = resolve_dataset(data, "domain-incremental")
    if domains is None:
        domains = dataset.metadata.get("domains")
        if domains is None:
            raise InvalidParameterError(
                f"the data set {dataset.name!r} has no metadata['domains']; pass domains= "
                "mapping each domain to its classes"
            )
        _check_domain_mapping(domains)
    check_finite_inputs(dataset)
    labels = LabelSpace.of(dataset)
    owner: dict[int, str] = {}
    candidates = []
    for domain, members in domains.items():
        classes = sorted({labels.index(m, f"domains[{domain!r}]") for m in members})
        for c in classes:
            if c in owner:
                raise InvalidParameterError(
                    f"the class {labels.class_names[c]!r} is in two domains, {owner[c]!r} and "
                    f"{domain!r}; expected each class in one domain"
                )
            owner[c] = domain
        candidates.append(
            Group(
                name=f"domain: {domain}",
                classes=tuple(classes),
                train_idx=np.flatnonzero(np.isin(labels.train_y, classes)).astype(np.int64),
                test_idx=np.flatnonzero(np.isin(labels.test_y, classes)).astype(np.int64),
            )
        )
    return _domain_scenario(
        dataset,
        labels,
        list(domains),
        candidates,
        n_tasks=n_tasks,
        examples_per_task=examples_per_task,
        seed=seed,
        domain_order=domain_order,
        task_labels=task_labels,
        encoder=encoder,
        cache=feature_cache,
    )


def _check_domain_mapping(domains: Any) -> None:
    if not isinstance(domains, Mapping) or not domains:
        raise InvalidParameterError(
            f"expected domains to be a non-empty mapping of domain names to lists of classes, "
            f"got {domains!r:.80}"
        )
    for domain, members in domains.items():
        if (
            isinstance(members, (str, bytes))
            or not isinstance(members, Sequence | np.ndarray)
            or len(members) == 0
        ):
            raise InvalidParameterError(
                f"expected domains[{domain!r}] to be a non-empty list of classes, got {members!r}"
            )


def _domain_scenario(
    dataset: Dataset,
    labels: LabelSpace,
    names: list[str],
    candidates: list[Group],
    *,
    n_tasks: int | None,
    examples_per_task: int | None,
    seed: int,
    domain_order: Sequence[str] | None,
    task_labels: bool,
    encoder: EncoderLike,
    cache: FeatureCache | None,
) -> Scenario:
    def position(domain: Any) -> int:
        if isinstance(domain, str) and domain in names:
            return names.index(domain)
        raise InvalidParameterError(
            f"domain_order names the domain {domain!r}, which is not one of {', '.join(names)}"
        )

    order = resolve_order(domain_order, position, len(names), seed, "domain_order")
    if n_tasks is None:
        n_tasks = len(order)
    elif n_tasks > len(order):
        raise InvalidParameterError(
            f"n_tasks={n_tasks} is more than the {len(order)} domains available "
            f"({', '.join(names[i] for i in order)})"
        )
    groups = [candidates[i] for i in order[:n_tasks]]
    return assemble(
        dataset,
        labels,
        groups,
        name="domain-incremental",
        encoder=resolve_encoder(encoder, input_kind(dataset)),
        cache=cache,
        examples_per_task=examples_per_task,
        seed=seed,
        task_labels=task_labels,
        metadata={"n_tasks": n_tasks, "domain_order": [names[i] for i in order[:n_tasks]]},
    )


# ----------------------------------------------------------------------------- arrays and frames


def from_arrays(
    X: Any,
    y: Any,
    *,
    n_tasks: int | None = None,
    classes_per_task: int | None = None,
    examples_per_task: int | None = None,
    test_x: Any = None,
    test_y: Any = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    class_order: Sequence[Any] | None = None,
    domains: Any = None,
    test_domains: Any = None,
    domain_order: Sequence[str] | None = None,
    task_labels: bool = False,
    encoder: EncoderLike = None,
    cache: FeatureCache | str | os.PathLike[str] | None = None,
) -> Scenario:
    """A stream from labelled arrays: class-incremental, or domain-incremental with ``domains``.

    Parameters
    ----------
    X
        Numeric inputs of shape ``(n, ...)`` (flattened, used as float32 unchanged: scale
        images yourself), or a list of ``n`` texts (encoded with ``encoder``).
    y
        ``n`` labels, integers or strings.
    n_tasks, classes_per_task, examples_per_task, seed, class_order, task_labels, encoder, cache
        As in :func:`class_incremental`. With ``domains``, ``n_tasks`` is the number of domains
        used and ``classes_per_task`` does not apply.
    test_x, test_y
        A test set. Without one, ``test_fraction`` of each class (of each domain and class,
        with ``domains``) is held out, seeded by ``seed``.
    test_fraction
        Share held out when no test set is given.
    domains, test_domains
        One domain per example (of ``X`` and of ``test_x``): each distinct domain becomes an
        experience holding its examples of every class, in an order shuffled by ``seed``
        unless ``domain_order`` is given.
    domain_order
        The domains in the order they arrive.

    Returns
    -------
    Scenario
        Class names are the sorted distinct labels of ``y``, as strings.

    Raises
    ------
    LabelLengthError
        ``X`` and ``y`` (or ``test_x`` and ``test_y``, or a domains array) differ in length.
    NonFiniteInputError
        NaN or infinity in ``X`` or ``test_x``.
    InputTypeError
        Inputs that are neither numeric nor texts.
    InvalidParameterError
        An impossible layout or a bad option (see :func:`class_incremental`).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(200, 5)), rng.integers(0, 4, size=200)
    >>> scenario = from_arrays(X, y, n_tasks=2, examples_per_task=40, seed=0)
    >>> [(e.classes, e.n_train) for e in scenario], scenario.input_shape
    ([((0, 2), 40), ((1, 3), 40)], (5,))
    """
    check_optional_count(n_tasks, "n_tasks")
    check_optional_count(classes_per_task, "classes_per_task")
    check_optional_count(examples_per_task, "examples_per_task")
    seed = check_seed(seed)
    if domains is None:
        for option, value in (("test_domains", test_domains), ("domain_order", domain_order)):
            if value is not None:
                raise InvalidParameterError(
                    f"{option} applies only with domains= (a domain per example), got {value!r:.80}"
                )
    else:
        for option, value in (("classes_per_task", classes_per_task), ("class_order", class_order)):
            if value is not None:
                raise InvalidParameterError(
                    f"{option}={value!r:.80} does not apply to a domain-incremental stream "
                    "(domains= given): every domain keeps all its classes"
                )
    train_inputs = _as_inputs(X, "X")
    _check_length(train_inputs, y, "X", "y")
    train_domains = None if domains is None else _as_domains(domains, len(train_inputs), "domains")
    if (test_x is None) != (test_y is None):
        raise InvalidParameterError(
            "expected test_x and test_y together (or neither, to hold out test_fraction), "
            f"got only {'test_x' if test_y is None else 'test_y'}"
        )
    kind = "text" if isinstance(train_inputs, list) else "features"
    if test_x is None:
        if test_domains is not None:
            raise InvalidParameterError("test_domains applies only with test_x and test_y")
        fraction = check_test_fraction(test_fraction)
        whole = Split(inputs=train_inputs, labels=y)
        keys: Any = whole.labels
        if train_domains is not None:
            keys = [
                f"{d}\x1f{label}" for d, label in zip(train_domains, keys.tolist(), strict=True)
            ]
        train_idx, test_idx = stratified_split(keys, fraction, seed)
        train, test = whole.subset(train_idx), whole.subset(test_idx)
        if train_domains is not None:
            test_domain_list: list[str] | None = [train_domains[i] for i in test_idx.tolist()]
            train_domains = [train_domains[i] for i in train_idx.tolist()]
        else:
            test_domain_list = None
    else:
        test_inputs = _as_inputs(test_x, "test_x")
        _check_length(test_inputs, test_y, "test_x", "test_y")
        if isinstance(test_inputs, list) != isinstance(train_inputs, list):
            raise InputTypeError("expected X and test_x of one kind (both texts or both numeric)")
        if train_domains is not None:
            if test_domains is None:
                raise InvalidParameterError(
                    "expected test_domains (a domain per test example) with domains and test_x"
                )
            test_domain_list = _as_domains(test_domains, len(test_inputs), "test_domains")
        else:
            test_domain_list = None
        train = Split(inputs=train_inputs, labels=y)
        test = Split(inputs=test_inputs, labels=test_y)
    dataset = Dataset(name="arrays", train=train, test=test, metadata={"kind": kind})
    if train_domains is None:
        return split_classes(
            dataset,
            name="class-incremental",
            n_tasks=n_tasks,
            classes_per_task=classes_per_task,
            examples_per_task=examples_per_task,
            seed=seed,
            class_order=class_order,
            task_labels=task_labels,
            encoder=encoder,
            cache=cache,
        )
    assert test_domain_list is not None  # set with train_domains on both branches
    return _domains_by_example(
        dataset,
        train_domains,
        test_domain_list,
        n_tasks=n_tasks,
        examples_per_task=examples_per_task,
        seed=seed,
        domain_order=domain_order,
        task_labels=task_labels,
        encoder=encoder,
        cache=cache,
    )


def _domains_by_example(
    dataset: Dataset,
    train_domains: list[str],
    test_domains: list[str],
    *,
    n_tasks: int | None,
    examples_per_task: int | None,
    seed: int,
    domain_order: Sequence[str] | None,
    task_labels: bool,
    encoder: EncoderLike,
    cache: Any,
) -> Scenario:
    task_labels = check_flag(task_labels, "task_labels")
    feature_cache = resolve_cache(cache)
    encoder = resolve_encoder(encoder, "")
    check_finite_inputs(dataset)
    labels = LabelSpace.of(dataset)
    names = sorted(set(train_domains))
    unseen = sorted(set(test_domains) - set(names))
    if unseen:
        raise InvalidInputError(
            f"test domain {unseen[0]!r} never appears among the training domains "
            f"({', '.join(names)})"
        )
    train_array, test_array = (
        np.array(train_domains, dtype=object),
        np.array(test_domains, dtype=object),
    )
    candidates = []
    for domain in names:
        train_idx = np.flatnonzero(train_array == domain).astype(np.int64)
        candidates.append(
            Group(
                name=f"domain: {domain}",
                classes=tuple(sorted(set(labels.train_y[train_idx].tolist()))),
                train_idx=train_idx,
                test_idx=np.flatnonzero(test_array == domain).astype(np.int64),
            )
        )
    return _domain_scenario(
        dataset,
        labels,
        names,
        candidates,
        n_tasks=n_tasks,
        examples_per_task=examples_per_task,
        seed=seed,
        domain_order=domain_order,
        task_labels=task_labels,
        encoder=encoder,
        cache=feature_cache,
    )


def _as_inputs(X: Any, name: str) -> list[str] | NDArray[Any]:
    """Texts as a list of str, anything else as a numeric array of shape (n, ...)."""
    if isinstance(X, (str, bytes)):
        raise InputTypeError(f"expected {name} to hold one row per example, got a single string")
    if isinstance(X, (list, tuple)) and X and any(isinstance(item, str) for item in X):
        if not all(isinstance(item, str) for item in X):
            raise InputTypeError(f"expected {name} to be all texts or all numbers, got a mix")
        return list(X)
    try:
        array = np.asarray(X)
    except (TypeError, ValueError) as error:
        raise InputTypeError(f"expected {name} as an array of shape (n, d): {error}") from error
    if array.dtype.kind in "US" or (
        array.dtype == object and array.ndim == 1 and all(isinstance(v, str) for v in array)
    ):
        if array.ndim != 1:
            raise InputTypeError(
                f"expected numeric {name} or a list of texts, got an array of dtype "
                f"{array.dtype} and shape {array.shape}"
            )
        return [str(v) for v in array.tolist()]
    if array.dtype.kind not in "biuf":
        raise InputTypeError(f"expected numeric {name} or a list of texts, got dtype {array.dtype}")
    if array.ndim < 2:
        raise InvalidInputError(
            f"expected {name} of shape (n, d), one row per example, got shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise EmptyInputError(f"expected at least one row in {name}, got shape {array.shape}")
    return array


def _check_length(
    inputs: Sequence[Any] | NDArray[Any], labels: Any, x_name: str, y_name: str
) -> None:
    if labels is None or isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
        raise InputTypeError(f"expected {y_name} to be a sequence of labels, got {labels!r:.80}")
    if len(inputs) != len(labels):
        raise LabelLengthError(
            f"expected one label per example: {x_name} has {len(inputs)} rows but {y_name} has "
            f"{len(labels)} labels"
        )


def _as_domains(domains: Any, n: int, name: str) -> list[str]:
    if isinstance(domains, (str, bytes)) or not hasattr(domains, "__len__"):
        raise InputTypeError(f"expected {name} to be one domain per example, got {domains!r:.80}")
    values = [str(d) for d in np.asarray(domains, dtype=object).tolist()]
    if len(values) != n:
        raise LabelLengthError(
            f"expected one domain per example: {n} examples but {len(values)} in {name}"
        )
    return values


def from_dataframe(
    df: Any,
    label_column: str = "label",
    feature_columns: str | Sequence[str] | None = None,
    *,
    test_df: Any = None,
    domain_column: str | None = None,
    n_tasks: int | None = None,
    classes_per_task: int | None = None,
    examples_per_task: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    class_order: Sequence[Any] | None = None,
    domain_order: Sequence[str] | None = None,
    task_labels: bool = False,
    encoder: EncoderLike = None,
    cache: FeatureCache | str | os.PathLike[str] | None = None,
) -> Scenario:
    """A stream from a data frame: one row per example, a label column and feature columns.

    Works with a pandas (or polars) DataFrame, or any mapping of column names to equal-length
    columns; pandas is not imported.

    Parameters
    ----------
    df, test_df
        The training rows, and optionally test rows with the same columns.
    label_column
        The column of labels.
    feature_columns
        The input columns; None: every column but the label and domain columns. Numeric
        columns are stacked into features; a single column of texts is encoded with ``encoder``.
    domain_column
        If given, a domain-incremental stream: one experience per distinct value.
    n_tasks, classes_per_task, examples_per_task, test_fraction, seed, class_order, \
domain_order, task_labels, encoder, cache
        As in :func:`from_arrays`.

    Returns
    -------
    Scenario

    Raises
    ------
    InvalidParameterError
        A column that does not exist (the message lists those that do), or a bad option.
    InputTypeError
        A feature column that is neither numeric nor a single text column.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> columns = {"a": rng.normal(size=40), "b": rng.normal(size=40),
    ...            "label": ["x", "y", "z", "w"] * 10}
    >>> scenario = from_dataframe(columns, classes_per_task=2, seed=0)
    >>> scenario.class_names, scenario.input_shape, len(scenario)
    (('w', 'x', 'y', 'z'), (2,), 2)
    """
    names = _column_names(df, "df")
    if isinstance(feature_columns, str):
        feature_columns = [feature_columns]
    for option, column in (("label_column", label_column), ("domain_column", domain_column)):
        if column is not None and column not in names:
            raise InvalidParameterError(
                f"{option}={column!r} is not a column; the columns are {', '.join(map(str, names))}"
            )
    if feature_columns is None:
        features = [c for c in names if c not in (label_column, domain_column)]
    else:
        features = list(feature_columns)
        for column in features:
            if column not in names:
                raise InvalidParameterError(
                    f"feature column {column!r} is not a column; the columns are "
                    f"{', '.join(map(str, names))}"
                )
            if column in (label_column, domain_column):
                raise InvalidParameterError(
                    f"feature column {column!r} is also the label or domain column"
                )
    if not features:
        raise InvalidParameterError(
            f"expected at least one feature column besides {label_column!r}, got none"
        )
    X, y, domains = _frame_arrays(df, features, label_column, domain_column, "df")
    test_x = test_y = test_domains = None
    if test_df is not None:
        test_names = _column_names(test_df, "test_df")
        missing = [
            c
            for c in [*features, label_column, domain_column]
            if c is not None and c not in test_names
        ]
        if missing:
            raise InvalidParameterError(
                f"test_df lacks the column {missing[0]!r}; expected the columns of df"
            )
        test_x, test_y, test_domains = _frame_arrays(
            test_df, features, label_column, domain_column, "test_df"
        )
    return from_arrays(
        X,
        y,
        n_tasks=n_tasks,
        classes_per_task=classes_per_task,
        examples_per_task=examples_per_task,
        test_x=test_x,
        test_y=test_y,
        test_fraction=test_fraction,
        seed=seed,
        class_order=class_order,
        domains=domains,
        test_domains=test_domains,
        domain_order=domain_order,
        task_labels=task_labels,
        encoder=encoder,
        cache=cache,
    )


def _column_names(df: Any, name: str) -> list[Any]:
    if hasattr(df, "columns"):
        return list(df.columns)
    if isinstance(df, Mapping):
        return list(df.keys())
    raise InputTypeError(
        f"expected {name} to be a data frame or a mapping of column names to columns, "
        f"got {type(df).__name__}"
    )


def _frame_arrays(
    df: Any, features: list[Any], label_column: str, domain_column: str | None, name: str
) -> tuple[list[str] | NDArray[Any], NDArray[Any], NDArray[Any] | None]:
    columns = [np.asarray(df[c]) for c in features]
    if len(columns) == 1 and columns[0].dtype.kind in "OUS":
        only = columns[0]
        if all(isinstance(v, str) for v in only.tolist()):
            X: list[str] | NDArray[Any] = [str(v) for v in only.tolist()]
        else:
            raise InputTypeError(
                f"expected the feature column {features[0]!r} of {name} to hold numbers or texts"
            )
    else:
        for column, values in zip(features, columns, strict=True):
            if values.dtype.kind not in "biuf":
                raise InputTypeError(
                    f"expected numeric feature column {column!r} in {name}, got dtype "
                    f"{values.dtype} (a text column must be the only feature column)"
                )
        X = np.column_stack(columns)
    y = np.asarray(df[label_column])
    if y.dtype.kind == "O" or y.dtype.kind in "US":
        y = np.array([str(v) for v in y.tolist()], dtype=object)
    domains = None if domain_column is None else np.asarray(df[domain_column], dtype=object)
    return X, y, domains
