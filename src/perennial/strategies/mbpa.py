"""Memory-based parameter adaptation (Sprechmann et al., 2018): adapt the output layer per input."""

from __future__ import annotations

from typing import Any, Unpack

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.nn.functional import log_softmax

from perennial.exceptions import InvalidParameterError
from perennial.scenarios.base import Experience, LabelArray, Scenario
from perennial.strategies.base import (
    CommonParams,
    GradientStrategy,
    as_rows,
    check_int,
    check_number,
    to_tensor,
)
from perennial.strategies.buffers import ReservoirBuffer

__all__ = ["MbPA", "adapted_logits"]

#: Test rows adapted at once (each carries its own copy of the output layer).
CHUNK = 256


def adapted_logits(
    queries: Tensor,
    keys: Tensor,
    labels: Tensor,
    weight: Tensor,
    bias: Tensor,
    *,
    neighbours: int,
    steps: int,
    lr: float,
    strength: float,
    key_outputs: Tensor | None = None,
) -> Tensor:
    """Logits of each query with the output layer adapted to its nearest stored examples.

    For each query embedding ``h`` the ``neighbours`` nearest keys ``h_k`` (Euclidean) get the
    weights ``w_k = 1 / (1e-3 + ||h - h_k||^2)``, normalised to sum to 1 (Sprechmann et al.,
    2018, section 2), and a copy ``(W', b')`` of the output layer takes ``steps`` gradient steps
    of size ``lr`` on

        sum_k w_k CE(W' h_k + b', y_k) + strength / 2 * (||W' - W||^2 + ||b' - b||^2),

    starting from ``(W, b)``. ``key_outputs``: for each key, a boolean row of the outputs its
    cross-entropy sees (its task's classes, in a task-incremental stream), or None for all.
    Returns ``W' h + b'`` per query.
    """
    count = min(neighbours, int(keys.shape[0]))
    distances = torch.cdist(queries, keys) ** 2
    near, index = torch.topk(distances, count, dim=1, largest=False)
    kernel = 1.0 / (1e-3 + near)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    h = keys[index]  # (n, k, H)
    y = labels[index]  # (n, k)
    W = weight.detach().expand(len(queries), -1, -1).clone().requires_grad_(True)
    b = bias.detach().expand(len(queries), -1).clone().requires_grad_(True)
    for _ in range(steps):
        logits = torch.einsum("nch,nkh->nkc", W, h) + b[:, None, :]
        if key_outputs is not None:
            logits = logits.masked_fill(~key_outputs[index], -torch.inf)
        nll = -log_softmax(logits, dim=2).gather(2, y[:, :, None]).squeeze(2)
        loss = (kernel * nll).sum() + 0.5 * strength * (
            ((W - weight.detach()) ** 2).sum() + ((b - bias.detach()) ** 2).sum()
        )
        gW, gb = torch.autograd.grad(loss, (W, b))
        with torch.no_grad():
            W -= lr * gW
            b -= lr * gb
    with torch.no_grad():
        return torch.einsum("nch,nh->nc", W, queries) + b


class MbPA(GradientStrategy):
    """MbPA: a parametric network, plus a memory that adapts its output layer for each test input.

    The network trains as Naive does; every training example is offered once to a reservoir of
    ``memory_per_class`` slots per class of each experience (the replay strategies' budget).
    At test time each input's embedding (the last hidden layer) retrieves its nearest stored
    examples, and the output layer is adapted to them by a few gradient steps that stay close to
    the trained weights (:func:`adapted_logits`): "Memory-based Parameter Adaptation"
    (Sprechmann, Jayakumar, Rae, Pritzel, Puigdomenech Badia, Uria, Vinyals, Hassabis, Pascanu &
    Blundell, 2018, ICLR). The paper stores the embeddings when examples are written; here the
    inputs are stored and embedded by the current network at test time, so keys never go stale.

    Parameters
    ----------
    memory_per_class
        Reservoir slots per class of each experience; default 50.
    neighbours
        Stored examples each adaptation reads; default 20.
    adapt_steps, adapt_lr
        Gradient steps of the local adaptation and their size; defaults 5 and 0.1.
    adapt_strength
        Pull of the adapted layer towards the trained one; default 0.1.
    **common
        The keywords of :class:`~perennial.strategies.base.GradientStrategy`; ``hidden`` needs at
        least one layer (the embedding).

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = MbPA(memory_per_class=10, hidden=(16,), epochs=2)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> strategy.buffer_.size, strategy.predict(scenario[0].test_x[:3]).shape
    (40, (3,))
    """

    def __init__(
        self,
        *,
        memory_per_class: int = 50,
        neighbours: int = 20,
        adapt_steps: int = 5,
        adapt_lr: float = 0.1,
        adapt_strength: float = 0.1,
        **common: Unpack[CommonParams],
    ) -> None:
        super().__init__(**common)
        self.memory_per_class = memory_per_class
        self.neighbours = neighbours
        self.adapt_steps = adapt_steps
        self.adapt_lr = adapt_lr
        self.adapt_strength = adapt_strength

    def check_params(self) -> None:
        super().check_params()
        check_int("memory_per_class", self.memory_per_class, 1)
        check_int("neighbours", self.neighbours, 1)
        check_int("adapt_steps", self.adapt_steps, 0)
        check_number("adapt_lr", self.adapt_lr, 0.0)
        check_number("adapt_strength", self.adapt_strength, 0.0)
        if len(tuple(self.hidden)) == 0:
            raise InvalidParameterError(
                "MbPA needs at least one hidden layer (hidden=(256,), say): its memory is keyed "
                "by the last hidden layer's embedding"
            )

    buffer_: ReservoirBuffer

    def prepare(self, scenario: Scenario) -> None:
        first = getattr(self, "trainer_", None) is None
        super().prepare(scenario)
        if first:
            self.buffer_ = ReservoirBuffer(self.n_features_, seed=self.seed)

    def before_experience(
        self, model: nn.Module, experience: Experience, x: Tensor, y: Tensor
    ) -> None:
        self.buffer_.grow(self.memory_per_class * len(experience.classes))

    def after_experience(
        self, model: nn.Module, experience: Experience, x: Tensor, y: Tensor
    ) -> None:
        self.buffer_.add(x, y)

    def _embed(self, rows: Tensor) -> Tensor:
        model = self.trainer_.model
        assert isinstance(model, nn.Sequential)
        embedded: Tensor = model[:-1](rows)
        return embedded

    def predict(self, x: NDArray[Any], experience: Experience | None = None) -> LabelArray:
        if getattr(self, "trainer_", None) is None or self.buffer_.size == 0:
            return super().predict(x, experience)
        model = self.trainer_.model
        assert isinstance(model, nn.Sequential)
        output = model[-1]
        assert isinstance(output, nn.Linear)
        classes = None
        if self.task_labels_ and experience is not None:
            classes = torch.tensor(experience.classes, dtype=torch.int64)
        # In a task-incremental stream each stored example is fitted on its own task's outputs.
        key_outputs = None if self.blocked_ is None else ~self.blocked_[self.buffer_.y]
        rows = to_tensor(as_rows(x, self.n_features_))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                keys = self._embed(self.buffer_.x)
            parts = []
            for start in range(0, len(rows), CHUNK):
                with torch.no_grad():
                    queries = self._embed(rows[start : start + CHUNK])
                parts.append(
                    adapted_logits(
                        queries,
                        keys,
                        self.buffer_.y,
                        output.weight,
                        output.bias,
                        neighbours=int(self.neighbours),
                        steps=int(self.adapt_steps),
                        lr=float(self.adapt_lr),
                        strength=float(self.adapt_strength),
                        key_outputs=key_outputs,
                    )
                )
        finally:
            model.train(was_training)
        scores = torch.cat(parts)
        if classes is not None:
            labels = classes[scores[:, classes].argmax(dim=1)]
        else:
            labels = scores.argmax(dim=1)
        return labels.numpy().astype(np.int64, copy=False)

    def stored_bytes(self) -> int:
        return self.buffer_.nbytes if getattr(self, "trainer_", None) is not None else 0
