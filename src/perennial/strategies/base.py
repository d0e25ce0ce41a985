"""What every strategy answers to, and the base of the strategies trained by gradient descent.

:class:`Strategy` is the interface the runner uses: ``fit_experience`` (or ``fit_stream`` when
:attr:`~Strategy.whole_stream` is set), ``predict`` and ``stored_bytes``. Constructors store their
keyword arguments and nothing else; ``get_params``, ``clone`` and ``repr`` read them back from the
signatures, and :meth:`~Strategy.check_params` validates them before any training.

:class:`GradientStrategy` adds the common training keywords, the lazily built MLP and the one
training loop (:mod:`perennial.strategies.trainer`). A method is a subclass that overrides a few
hooks of that loop.
"""

from __future__ import annotations

import inspect
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, TypedDict, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from perennial.exceptions import (
    EmptyInputError,
    FeatureDimensionError,
    InvalidInputError,
    InvalidParameterError,
    NotFittedError,
    TrainingDivergedError,
)
from perennial.scenarios.base import Experience, LabelArray, Scenario
from perennial.strategies.models import mlp
from perennial.strategies.trainer import Progress, Trainer, TrainingHooks

__all__ = [
    "CommonParams",
    "GradientStrategy",
    "Strategy",
    "check_int",
    "check_number",
]

S = TypeVar("S", bound="Strategy")

#: Rows per forward pass in :meth:`GradientStrategy.predict`.
PREDICT_BATCH = 4096


# --- parameter checks ------------------------------------------------------------------------------
def check_int(name: str, value: object, minimum: int) -> None:
    """Raise :class:`InvalidParameterError` unless ``value`` is an int ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidParameterError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_number(
    name: str,
    value: object,
    minimum: float = 0.0,
    *,
    strict: bool = False,
    maximum: float = math.inf,
) -> None:
    """Raise :class:`InvalidParameterError` unless ``value`` is a finite real in the range.

    The range is ``[minimum, maximum]``, or ``(minimum, maximum]`` when ``strict``.
    """
    number = (
        float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else None
    )
    if (
        number is None
        or not math.isfinite(number)
        or number < minimum
        or (strict and number == minimum)
        or number > maximum
    ):
        low = f"> {minimum}" if strict else f">= {minimum}"
        high = "" if maximum == math.inf else f" and <= {maximum}"
        raise InvalidParameterError(f"{name} must be a finite number {low}{high}, got {value!r}")


# --- the interface -------------------------------------------------------------------------------------
class Strategy(ABC):
    """A continual learner fed a stream of experiences one at a time.

    Subclasses store their keyword arguments in ``__init__`` and nothing else; learned state is
    created by the first fit and ends in ``_``.
    """

    #: True for strategies that must see the whole stream at once (:meth:`fit_stream`).
    whole_stream: ClassVar[bool] = False
    #: True for strategies that need the task of each test input (task-incremental streams).
    task_incremental_only: ClassVar[bool] = False
    #: True for class-incremental methods, which need each class to arrive in one experience
    #: only: a stream whose experiences bring a class again (``Scenario.recurring_classes``) is
    #: refused.
    class_incremental_only: ClassVar[bool] = False

    # --- parameters ----------------------------------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        """Names of the constructor keywords, from the signatures of the class and its bases."""
        names: list[str] = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            for parameter in inspect.signature(init).parameters.values():
                if parameter.name == "self" or parameter.kind in (
                    parameter.VAR_KEYWORD,
                    parameter.VAR_POSITIONAL,
                ):
                    continue
                if parameter.name not in names:
                    names.append(parameter.name)
        return names

    def get_params(self) -> dict[str, Any]:
        """Constructor keywords, read back from the attributes of the same name."""
        return {name: getattr(self, name) for name in self.param_names()}

    def clone(self: S) -> S:
        """A new, untrained strategy with the same parameters."""
        return type(self)(**self.get_params())

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in self.get_params().items())
        return f"{type(self).__name__}({params})"

    @abstractmethod
    def check_params(self) -> None:
        """Raise :class:`InvalidParameterError` naming the first invalid parameter."""

    # --- learning ------------------------------------------------------------------------------------
    @abstractmethod
    def prepare(self, scenario: Scenario) -> None:
        """Check the parameters and build the model for ``scenario``, untrained.

        Called by the fit methods; calling it first lets one predict before any training (the
        untrained baseline of forward transfer). Calling it again changes nothing, but a
        scenario of another shape raises :class:`~perennial.exceptions.FeatureDimensionError`.
        """

    @abstractmethod
    def fit_experience(
        self, experience: Experience, scenario: Scenario, progress: Progress | None = None
    ) -> None:
        """Learn one experience of ``scenario``.

        ``progress(fraction_done)`` is called at 11 evenly spaced points (0.0, 0.1, ..., 1.0) of
        the training on this experience; it costs nothing when None and never changes the result.
        """

    def fit_stream(self, scenario: Scenario, progress: Progress | None = None) -> None:
        """Learn the whole stream; by default one experience after the other."""
        count = len(scenario)
        for i, experience in enumerate(scenario):
            part = None if progress is None else _scaled_progress(progress, i, count)
            self.fit_experience(experience, scenario, part)

    # --- answers -------------------------------------------------------------------------------------
    @abstractmethod
    def predict(self, x: NDArray[Any], experience: Experience | None = None) -> LabelArray:
        """Labels (int64) of the rows of ``x``.

        In a task-incremental stream (``scenario.task_labels``) and with ``experience`` given,
        the answer is restricted to ``experience.classes``.
        """

    def stored_bytes(self) -> int:
        """Bytes of training examples the strategy holds (replay buffers); 0 if none."""
        return 0


def _scaled_progress(progress: Progress, index: int, count: int) -> Progress:
    """Progress of experience ``index`` of ``count``, reported as a fraction of the stream."""

    def report(fraction: float) -> None:
        progress((index + fraction) / count)

    return report


# --- shared input handling -----------------------------------------------------------------------------
def check_experience(experience: Experience, scenario: Scenario) -> None:
    """Raise a typed error if ``experience`` cannot be learned as part of ``scenario``."""
    n = experience.n_train
    if n == 0:
        raise EmptyInputError(f"experience {experience.index} has no training examples")
    x = experience.train_x
    if x.shape[0] != n or int(np.prod(x.shape[1:], dtype=np.int64)) != scenario.n_features:
        raise FeatureDimensionError(
            f"experience {experience.index}: expected training inputs of shape "
            f"({n}, {scenario.n_features}) or ({n}, *{scenario.input_shape}), got {x.shape}"
        )
    low, high = int(experience.train_y.min()), int(experience.train_y.max())
    if low < 0 or high >= scenario.n_classes:
        raise InvalidInputError(
            f"experience {experience.index}: labels must lie in [0, {scenario.n_classes}), "
            f"got labels from {low} to {high}"
        )


def as_rows(x: NDArray[Any], n_features: int) -> NDArray[np.float32]:
    """``x`` as a C-contiguous float32 array of shape ``(n, n_features)``."""
    array = np.asarray(x)
    if array.ndim == 1 and n_features != 1:
        array = array.reshape(1, -1)
    rows = np.ascontiguousarray(array.reshape(array.shape[0], -1), dtype=np.float32)
    if rows.shape[1] != n_features:
        raise FeatureDimensionError(
            f"expected {n_features} features per row, got an array of shape {array.shape}"
        )
    return rows


def to_tensor(array: NDArray[Any]) -> Tensor:
    """A tensor sharing ``array``'s memory when it is writable, else a copy."""
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


# --- gradient strategies -------------------------------------------------------------------------------
class CommonParams(TypedDict, total=False):
    """The keywords every :class:`GradientStrategy` accepts (see its documentation)."""

    hidden: Sequence[int]
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    seed: int
    threads: int | None


class GradientStrategy(Strategy, TrainingHooks):
    """A strategy that trains an MLP by minibatch SGD through the shared training loop.

    The network (``n_features -> hidden... -> n_classes``, ReLU) is built from the first scenario
    seen, seeded with ``seed``; the data are shuffled by a generator seeded with ``seed`` too, so
    a run reproduces exactly. In a task-incremental stream each example's loss is restricted to
    the classes of its task (the union of the tasks seen so far that contain its label).

    Parameters
    ----------
    hidden
        Widths of the hidden layers; ``()`` gives a linear model.
    epochs
        Passes over each experience's training data.
    batch_size
        Examples per SGD step.
    lr, momentum
        Of ``torch.optim.SGD``.
    seed
        Seeds the initial weights, the shuffling and any sampling the strategy does.
    threads
        ``torch.set_num_threads(threads)`` before training; None leaves torch's setting. The
        default is 1: minibatches of 10 examples through a small MLP run fastest on one thread,
        and with two cores shared with other work, more threads stalled some runs for tens of
        seconds (OpenMP threads waiting on each other).
    """

    def __init__(
        self,
        *,
        hidden: Sequence[int] = (256, 256),
        epochs: int = 1,
        batch_size: int = 10,
        lr: float = 0.01,
        momentum: float = 0.0,
        seed: int = 0,
        threads: int | None = 1,
    ) -> None:
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.seed = seed
        self.threads = threads

    def check_params(self) -> None:
        if isinstance(self.hidden, (str, bytes)) or not isinstance(self.hidden, Sequence):
            raise InvalidParameterError(
                f"hidden must be a sequence of layer widths, got {self.hidden!r}"
            )
        for width in self.hidden:
            check_int("each hidden width", width, 1)
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_number("lr", self.lr, 0.0, strict=True)
        check_number("momentum", self.momentum, 0.0, maximum=1.0)
        check_int("seed", self.seed, 0)
        if self.threads is not None:
            check_int("threads", self.threads, 1)

    # --- state -----------------------------------------------------------------------------------------
    @property
    def model_(self) -> nn.Module:
        """The network being trained."""
        self._require_fitted()
        return self.trainer_.model

    def _require_fitted(self) -> None:
        if getattr(self, "trainer_", None) is None:
            raise NotFittedError(
                f"{type(self).__name__} has no model yet; call prepare(scenario) or fit an "
                "experience first"
            )

    def new_trainer(self) -> Trainer:
        """A freshly initialised network and optimiser (same seed, so the same weights)."""
        model = mlp(self.n_features_, tuple(self.hidden), self.n_classes_, self.seed)
        trainer = Trainer(model, lr=float(self.lr), momentum=float(self.momentum), seed=self.seed)
        trainer.blocked = getattr(self, "blocked_", None)
        return trainer

    def prepare(self, scenario: Scenario) -> None:
        self.check_params()
        if self.task_incremental_only and not scenario.task_labels:
            raise InvalidParameterError(
                f"{type(self).__name__} needs task labels at test time; scenario "
                f"{scenario.name!r} has none (use a task-incremental scenario, e.g. --scenario "
                "split-mnist-task)"
            )
        if self.class_incremental_only and scenario.recurring_classes:
            raise InvalidParameterError(
                f"{type(self).__name__} needs each class to arrive in one experience only; in "
                f"scenario {scenario.name!r} later experiences bring classes "
                f"{_listed(scenario.recurring_classes)} again (use a class-split scenario, e.g. "
                "--scenario split-mnist)"
            )
        if self.threads is not None:
            torch.set_num_threads(int(self.threads))
        if getattr(self, "trainer_", None) is None:
            self.n_features_ = scenario.n_features
            self.n_classes_ = scenario.n_classes
            self.task_labels_ = scenario.task_labels
            self.task_classes_: list[tuple[int, ...]] = []
            self.blocked_: Tensor | None = None
            self.n_experiences_ = 0
            self.trainer_ = self.new_trainer()
        elif (scenario.n_features, scenario.n_classes) != (self.n_features_, self.n_classes_):
            raise FeatureDimensionError(
                f"{type(self).__name__} was built for {self.n_features_} features and "
                f"{self.n_classes_} classes, got a scenario with {scenario.n_features} and "
                f"{scenario.n_classes}"
            )

    def _note_task(self, experience: Experience) -> None:
        """Record the experience's classes and update the task-incremental output mask."""
        if not self.task_labels_:
            return
        classes = tuple(int(c) for c in experience.classes)
        if classes not in self.task_classes_:
            self.task_classes_.append(classes)
        allowed = torch.zeros(self.n_classes_, self.n_classes_, dtype=torch.bool)
        for task in self.task_classes_:
            index = torch.tensor(task, dtype=torch.int64)
            allowed[index.unsqueeze(1), index] = True
        allowed[~allowed.any(dim=1)] = True  # labels of no task seen yet: no restriction
        self.blocked_ = ~allowed
        self.trainer_.blocked = self.blocked_

    def tensors(self, experience: Experience) -> tuple[Tensor, Tensor]:
        """The experience's training data as ``(n, n_features)`` float32 and int64 tensors."""
        x = to_tensor(as_rows(experience.train_x, self.n_features_))
        y = to_tensor(np.ascontiguousarray(experience.train_y, dtype=np.int64))
        return x, y

    # --- learning --------------------------------------------------------------------------------------
    def fit_experience(
        self, experience: Experience, scenario: Scenario, progress: Progress | None = None
    ) -> None:
        self.check_params()
        check_experience(experience, scenario)  # before anything is built or changed
        self.prepare(scenario)
        x, y = self.tensors(experience)
        self._note_task(experience)
        self._fit(experience, x, y, progress)
        self.check_finite(f"experience {experience.index}")
        self.n_experiences_ += 1

    def check_finite(self, where: str) -> None:
        """Raise :class:`TrainingDivergedError` if training left non-finite weights.

        SGD on a quadratic penalty diverges when ``lr * strength * importance`` exceeds 2; the
        error says so instead of letting NaN weights answer. The strategy is unusable after it.
        """
        if all(bool(torch.isfinite(p).all()) for p in self.trainer_.model.parameters()):
            return
        raise TrainingDivergedError(
            f"{self!r} diverged on {where}: its weights are no longer finite; "
            "lower lr or the strength of the penalty"
        )

    def _fit(self, experience: Experience, x: Tensor, y: Tensor, progress: Progress | None) -> None:
        """Train on one experience: the hooks around one run of the loop."""
        model = self.trainer_.model
        self.before_experience(model, experience, x, y)
        self.trainer_.fit(
            x, y, self, epochs=self.epochs, batch_size=self.batch_size, progress=progress
        )
        self.after_experience(model, experience, x, y)

    # --- answers ---------------------------------------------------------------------------------------
    def logits(self, x: NDArray[Any]) -> Tensor:
        """Network outputs for the rows of ``x`` (no gradient, evaluation mode)."""
        self._require_fitted()
        rows = to_tensor(as_rows(x, self.n_features_))
        model = self.trainer_.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                parts = [
                    model(rows[i : i + PREDICT_BATCH]) for i in range(0, len(rows), PREDICT_BATCH)
                ]
        finally:
            model.train(was_training)
        if not parts:
            return torch.empty(0, self.n_classes_)
        return torch.cat(parts)

    def predict(self, x: NDArray[Any], experience: Experience | None = None) -> LabelArray:
        scores = self.logits(x)
        if self.task_labels_ and experience is not None:
            classes = torch.tensor(experience.classes, dtype=torch.int64)
            labels = classes[scores[:, classes].argmax(dim=1)]
        else:
            labels = scores.argmax(dim=1)
        return labels.numpy().astype(np.int64, copy=False)


def _listed(labels: Sequence[int], shown: int = 5) -> str:
    """``0, 1, 2, 3, 4, ... (10 in all)`` for a long list, ``0, 3`` for a short one."""
    head = ", ".join(str(label) for label in labels[:shown])
    return head if len(labels) <= shown else f"{head}, ... ({len(labels)} in all)"


def total(terms: Iterable[Tensor]) -> Tensor:
    """The sum of scalar tensors (a differentiable 0-d tensor)."""
    return torch.stack(list(terms)).sum()


def tensor_bytes(*tensors: Tensor) -> int:
    """Bytes of the elements of ``tensors``."""
    return sum(t.element_size() * t.nelement() for t in tensors)
