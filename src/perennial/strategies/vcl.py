"""Variational continual learning (Nguyen et al., 2018): the last posterior is the next prior."""

from __future__ import annotations

import itertools
from typing import Any, Unpack

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from perennial.scenarios.base import Experience, LabelArray
from perennial.strategies.base import (
    CommonParams,
    GradientStrategy,
    as_rows,
    check_int,
    check_number,
    to_tensor,
)
from perennial.strategies.trainer import Progress, Trainer

__all__ = ["VCL", "BayesianLinear", "gaussian_kl"]


def gaussian_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """``KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p))`` summed over independent coordinates."""
    return (
        0.5
        * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1.0).sum()
    )


class BayesianLinear(nn.Module):
    """A linear layer with a mean-field Gaussian over its weights and biases, and a prior.

    :meth:`forward` samples the outputs by the local reparameterisation trick (Kingma, Salimans
    & Welling, 2015): each output is Gaussian with mean ``x mu_W^T + mu_b`` and variance
    ``x^2 sigma_W^2^T + sigma_b^2``, so one draw per output replaces one draw per weight.
    """

    prior_weight_mu: Tensor
    prior_bias_mu: Tensor
    prior_weight_logvar: Tensor
    prior_bias_logvar: Tensor

    def __init__(self, linear: nn.Linear, init_logvar: float) -> None:
        super().__init__()
        self.weight_mu = nn.Parameter(linear.weight.detach().clone())
        self.bias_mu = nn.Parameter(linear.bias.detach().clone())
        self.weight_logvar = nn.Parameter(torch.full_like(linear.weight, init_logvar))
        self.bias_logvar = nn.Parameter(torch.full_like(linear.bias, init_logvar))
        # The prior of the first task: N(0, 1) for every parameter (Nguyen et al., 2018).
        self.register_buffer("prior_weight_mu", torch.zeros_like(linear.weight))
        self.register_buffer("prior_bias_mu", torch.zeros_like(linear.bias))
        self.register_buffer("prior_weight_logvar", torch.zeros_like(linear.weight))
        self.register_buffer("prior_bias_logvar", torch.zeros_like(linear.bias))
        self.generator: torch.Generator | None = None

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of the outputs for inputs ``x``."""
        mean = x @ self.weight_mu.T + self.bias_mu
        variance = (x * x) @ self.weight_logvar.exp().T + self.bias_logvar.exp()
        return mean, variance

    def forward(self, x: Tensor) -> Tensor:
        mean, variance = self.moments(x)
        noise = torch.randn(mean.shape, generator=self.generator)
        return mean + variance.sqrt() * noise

    def kl(self) -> Tensor:
        """KL divergence of the posterior from the prior, over all of the layer's parameters."""
        return gaussian_kl(
            self.weight_mu, self.weight_logvar, self.prior_weight_mu, self.prior_weight_logvar
        ) + gaussian_kl(self.bias_mu, self.bias_logvar, self.prior_bias_mu, self.prior_bias_logvar)

    def posterior_to_prior(self) -> None:
        """The posterior becomes the prior of the next task."""
        with torch.no_grad():
            self.prior_weight_mu.copy_(self.weight_mu)
            self.prior_bias_mu.copy_(self.bias_mu)
            self.prior_weight_logvar.copy_(self.weight_logvar)
            self.prior_bias_logvar.copy_(self.bias_logvar)


class VCL(GradientStrategy):
    """VCL: Bayesian inference task after task, with the previous posterior as the prior.

    The network's weights have a mean-field Gaussian posterior (:class:`BayesianLinear` layers).
    Experience ``t`` maximises its evidence lower bound, the expected log-likelihood of its
    examples (one sample per minibatch, local reparameterisation) minus ``KL(q_t || q_{t-1}) /
    N_t``, with ``q_0 = N(0, I)``; then ``q_t`` becomes the prior ("Variational Continual
    Learning", Nguyen, Li, Bui & Turner, 2018, ICLR, equation 4). Predictions average the
    softmax over ``samples`` draws of the weights (from a generator seeded with ``seed``, so they
    reproduce). This is VCL without the coreset (the paper's "VCL" rows; its coreset variant
    replays stored examples).

    Parameters
    ----------
    samples
        Monte Carlo draws per prediction; default 10.
    init_logvar
        Initial log-variance of every weight; default -6 (a posterior that starts nearly at its
        means, the network's usual initial weights).
    **common
        The keywords of :class:`~perennial.strategies.base.GradientStrategy`.

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = VCL(hidden=(16,), epochs=3)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> strategy.predict(scenario[0].test_x[:4]).shape
    (4,)
    """

    def __init__(
        self, *, samples: int = 10, init_logvar: float = -6.0, **common: Unpack[CommonParams]
    ) -> None:
        super().__init__(**common)
        self.samples = samples
        self.init_logvar = init_logvar

    def check_params(self) -> None:
        super().check_params()
        check_int("samples", self.samples, 1)
        check_number("init_logvar", self.init_logvar, -30.0, maximum=5.0)

    def new_trainer(self) -> Trainer:
        widths = [self.n_features_, *self.hidden, self.n_classes_]
        layers: list[nn.Module] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for i, (a, b) in enumerate(itertools.pairwise(widths)):
                if i:
                    layers.append(nn.ReLU())
                layers.append(BayesianLinear(nn.Linear(a, b), float(self.init_logvar)))
        model = nn.Sequential(*layers)
        trainer = Trainer(model, lr=float(self.lr), momentum=float(self.momentum), seed=self.seed)
        trainer.blocked = getattr(self, "blocked_", None)
        self._noise = torch.Generator().manual_seed(self.seed + 1)
        for layer in self._bayesian(model):
            layer.generator = self._noise
        return trainer

    @staticmethod
    def _bayesian(model: nn.Module) -> list[BayesianLinear]:
        return [m for m in model.modules() if isinstance(m, BayesianLinear)]

    def kl(self) -> Tensor:
        """KL divergence of the whole posterior from the prior."""
        return torch.stack([layer.kl() for layer in self._bayesian(self.trainer_.model)]).sum()

    def loss(self, x: Tensor, y: Tensor, n: int) -> Tensor:
        """The negative ELBO of a minibatch of an experience of ``n`` examples, per example.

        The minibatch's mean cross-entropy under one draw of the weights, plus ``KL(q || prior)
        / n``.
        """
        return self.trainer_.loss(self.trainer_.model(x), y) + self.kl() / n

    def _fit(self, experience: Experience, x: Tensor, y: Tensor, progress: Progress | None) -> None:
        n = int(y.shape[0])
        self.trainer_.fit_loss(
            n,
            lambda index: self.loss(x[index], y[index], n),
            epochs=int(self.epochs),
            batch_size=int(self.batch_size),
            progress=progress,
        )
        model = self.trainer_.model
        for layer in self._bayesian(model):
            layer.posterior_to_prior()

    def probabilities(self, x: NDArray[Any]) -> Tensor:
        """Softmax averaged over ``samples`` draws of the weights (seeded: reproducible)."""
        self._require_fitted()
        rows = to_tensor(as_rows(x, self.n_features_))
        model = self.trainer_.model
        draws = torch.Generator().manual_seed(self.seed + 2)
        layers = self._bayesian(model)
        for layer in layers:
            layer.generator = draws
        try:
            with torch.no_grad():
                total = torch.zeros(len(rows), self.n_classes_)
                for _ in range(int(self.samples)):
                    total += torch.softmax(model(rows), dim=1)
        finally:
            for layer in layers:
                layer.generator = self._noise
        return total / int(self.samples)

    def predict(self, x: NDArray[Any], experience: Experience | None = None) -> LabelArray:
        scores = self.probabilities(x)
        if self.task_labels_ and experience is not None:
            classes = torch.tensor(experience.classes, dtype=torch.int64)
            labels = classes[scores[:, classes].argmax(dim=1)]
        else:
            labels = scores.argmax(dim=1)
        return labels.numpy().astype(np.int64, copy=False)
