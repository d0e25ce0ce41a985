"""Synaptic Intelligence (Zenke, Poole & Ganguli, 2017): importance from the loss's path integral."""

from __future__ import annotations

from typing import Unpack

import torch
from torch import Tensor, nn

from perennial.scenarios.base import Experience
from perennial.strategies.base import CommonParams, GradientStrategy, check_number, total

__all__ = ["SI"]


class SI(GradientStrategy):
    """Synaptic Intelligence: each weight's share of the drop in loss, measured along the way.

    During an experience every SGD step adds ``-g_i * delta_theta_i`` to the path integral
    ``omega_i``, ``g`` being the gradient of the task loss alone (without the penalty) and
    ``delta_theta`` the step's update. At the end, ``Omega_i += omega_i / (Delta_i^2 + xi)`` with
    ``Delta`` the total change of ``theta_i`` over the experience, and ``omega`` restarts at zero.
    Later experiences add ``c * sum_i Omega_i (theta_i - theta~_i)^2``, ``theta~`` the weights at
    the end of the previous experience (Zenke et al., 2017, "Continual learning through synaptic
    intelligence", ICML).

    Parameters
    ----------
    strength
        ``c``. The default 0.1 is the value Chaudhry et al. (2019, "Efficient lifelong learning
        with A-GEM", ICLR) select for SI on permuted MNIST in the single-epoch, batch-10 SGD
        regime of this package's defaults (their ``replicate_results_iclr19.sh``).
    damping
        ``xi``; default 0.1. It bounds ``Omega_i`` by ``omega_i / xi``. Chaudhry et al.'s
        implementation uses 1e-3; with it and plain SGD, training diverged on experience 9 of a
        20-task permuted MNIST stream, because weights that barely moved gained huge importances.
    **common
        The keywords of :class:`~perennial.strategies.base.GradientStrategy`.

    Notes
    -----
    With plain SGD the penalty is stable only while ``lr * strength * Omega_i < 1``; at
    ``lr=0.01`` on permuted MNIST, ``strength=1`` already diverges (training stops with an error).

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = SI(hidden=(16,), epochs=3)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> all(bool((o >= 0).float().mean() > 0.5) for o in strategy.importance_)
    True
    """

    def __init__(
        self, *, strength: float = 0.1, damping: float = 0.1, **common: Unpack[CommonParams]
    ) -> None:
        super().__init__(**common)
        self.strength = strength
        self.damping = damping

    def check_params(self) -> None:
        super().check_params()
        check_number("strength", self.strength, 0.0)
        check_number("damping", self.damping, 0.0, strict=True)

    #: ``Omega``: accumulated importance, one tensor per parameter.
    importance_: list[Tensor] | None = None
    #: ``theta~``: the weights at the end of the previous experience (None before the first).
    anchor_: list[Tensor] | None = None
    #: ``omega``: the running path integral of the current experience.
    path_: list[Tensor] | None = None

    def before_experience(
        self, model: nn.Module, experience: Experience, x: Tensor, y: Tensor
    ) -> None:
        params = list(model.parameters())
        if self.importance_ is None:
            self.importance_ = [p.detach().new_zeros(p.shape) for p in params]
        self._start = [p.detach().clone() for p in params]
        self.path_ = [p.detach().new_zeros(p.shape) for p in params]

    def penalty(self, model: nn.Module, x: Tensor, logits: Tensor) -> Tensor | None:
        if self.anchor_ is None or self.importance_ is None:
            return None
        triples = zip(model.parameters(), self.importance_, self.anchor_, strict=True)
        return self.strength * total((o * (p - a) ** 2).sum() for p, o, a in triples)

    def after_backward(self, model: nn.Module) -> None:
        params = list(model.parameters())
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
        if self.anchor_ is not None and self.importance_ is not None:
            # Remove the penalty's share, 2 c Omega (theta - theta~): omega uses the task loss only.
            for g, p, o, a in zip(grads, params, self.importance_, self.anchor_, strict=True):
                g -= 2.0 * self.strength * o * (p.detach() - a)
        self._grads = grads
        self._before = [p.detach().clone() for p in params]

    def after_step(self, model: nn.Module) -> None:
        assert self.path_ is not None  # set by before_experience
        quads = zip(self.path_, self._grads, model.parameters(), self._before, strict=True)
        for w, g, p, before in quads:
            w -= g * (p.detach() - before)

    def after_experience(
        self, model: nn.Module, experience: Experience, x: Tensor, y: Tensor
    ) -> None:
        assert self.path_ is not None and self.importance_ is not None
        params = [p.detach() for p in model.parameters()]
        for o, w, p, start in zip(self.importance_, self.path_, params, self._start, strict=True):
            o += w / ((p - start) ** 2 + self.damping)
        self.anchor_ = [p.clone() for p in params]
        self.path_ = [p.new_zeros(p.shape) for p in params]
