"""Stable SGD (Mirzadeh et al., 2020): dropout, a learning rate that decays task by task."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TypedDict, Unpack

import torch
from torch import Tensor, nn

from perennial.scenarios.base import Experience
from perennial.strategies.base import GradientStrategy, check_number
from perennial.strategies.trainer import Progress, Trainer

__all__ = ["StableParams", "StableSGD", "dropout_mlp"]


def dropout_mlp(
    n_features: int, hidden: tuple[int, ...], n_classes: int, dropout: float, seed: int
) -> nn.Sequential:
    """:func:`~perennial.strategies.models.mlp` with ``nn.Dropout(dropout)`` after each ReLU.

    The linear layers get the same initial weights as ``mlp`` with the same seed (dropout has no
    parameters), so Stable SGD and Naive start from the same network.
    """
    widths = [n_features, *hidden, n_classes]
    layers: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            if i:
                layers += [nn.ReLU(), nn.Dropout(dropout)]
            layers.append(nn.Linear(width_in, width_out))
    return nn.Sequential(*layers)


class _OtherParams(TypedDict, total=False):
    """:class:`~perennial.strategies.base.CommonParams` but ``lr``, whose default differs here."""

    hidden: Sequence[int]
    epochs: int
    batch_size: int
    momentum: float
    seed: int
    threads: int | None


class StableParams(_OtherParams, total=False):
    """The keywords of :class:`StableSGD`, for methods trained in its regime (MC-SGD)."""

    dropout: float
    decay: float
    lr: float


class StableSGD(GradientStrategy):
    """Stable SGD: plain SGD in a training regime that widens the minima it finds.

    No memory and no penalty: the network has dropout after every hidden layer, and the
    learning rate of experience ``t`` (from 0) is ``lr * decay ** t``, with small batches. In
    "Understanding the Role of Training Regimes in Continual Learning" (Mirzadeh, Farajtabar,
    Pascanu & Ghasemzadeh, 2020, NeurIPS) these three choices alone move SGD from the bottom of
    the table to above EWC, A-GEM and ER on permuted MNIST; the values were chosen per benchmark
    by a grid search (``perennial bench --tune`` does the same here).

    Parameters
    ----------
    dropout
        Dropout probability after each hidden ReLU; default 0.5.
    decay
        Factor of the learning rate from one experience to the next; default 0.8.
    lr
        Learning rate of the first experience; default 0.1 (the other strategies' default is
        0.01: Stable SGD starts high and decays).
    **common
        The other keywords of :class:`~perennial.strategies.base.GradientStrategy`.

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario(n_tasks=3)
    >>> strategy = StableSGD(hidden=(16,), decay=0.5)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> strategy.learning_rates_
    [0.1, 0.05, 0.025]
    """

    def __init__(
        self,
        *,
        dropout: float = 0.5,
        decay: float = 0.8,
        lr: float = 0.1,
        **common: Unpack[_OtherParams],
    ) -> None:
        super().__init__(lr=lr, **common)
        self.dropout = dropout
        self.decay = decay

    def check_params(self) -> None:
        super().check_params()
        check_number("dropout", self.dropout, 0.0, maximum=0.95)
        check_number("decay", self.decay, 0.0, strict=True, maximum=1.0)

    def new_trainer(self) -> Trainer:
        model = dropout_mlp(
            self.n_features_, tuple(self.hidden), self.n_classes_, float(self.dropout), self.seed
        )
        trainer = Trainer(model, lr=float(self.lr), momentum=float(self.momentum), seed=self.seed)
        trainer.blocked = getattr(self, "blocked_", None)
        self.learning_rates_: list[float] = []
        return trainer

    def _fit(self, experience: Experience, x: Tensor, y: Tensor, progress: Progress | None) -> None:
        rate = float(self.lr) * float(self.decay) ** self.n_experiences_
        for group in self.trainer_.optimizer.param_groups:
            group["lr"] = rate
        self.learning_rates_.append(rate)
        # Dropout draws from torch's global generator: seed it for this experience inside a
        # forked state, so that a run reproduces and the caller's random state is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 100_003 + self.n_experiences_)
            super()._fit(experience, x, y, progress)
