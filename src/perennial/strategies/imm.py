"""Incremental moment matching (Lee et al., 2017): merge the tasks' networks, mean or mode."""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Unpack

import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from perennial.scenarios.base import Experience
from perennial.strategies.base import CommonParams, GradientStrategy, check_number, total
from perennial.strategies.ewc import empirical_fisher

__all__ = ["IMMMean", "IMMMode"]


class _IMM(GradientStrategy):
    """Train each experience from the last one's weights; answer with the merged network.

    Each experience ``k`` is learned by SGD starting from the weights ``theta_{k-1}`` of the one
    before ("weight-transfer"), optionally pulled towards them by ``l2_transfer / 2 *
    ||theta - theta_{k-1}||^2`` ("L2-transfer"). Its solution ``theta_k`` is kept as running sums,
    and predictions come from the merge of ``theta_1 ... theta_t`` with equal weights ``1/t``:
    the mean (:class:`IMMMean`) or the Fisher-weighted mode (:class:`IMMMode`), after "Overcoming
    Catastrophic Forgetting by Incremental Moment Matching" (Lee, Kim, Jun, Ha & Zhang, 2017,
    NeurIPS), equations 4 and 7. Training goes on from ``theta_t``, not from the merge.
    """

    uses_fisher: ClassVar[bool] = False

    def __init__(self, *, l2_transfer: float = 0.0, **common: Unpack[CommonParams]) -> None:
        super().__init__(**common)
        self.l2_transfer = l2_transfer

    def check_params(self) -> None:
        super().check_params()
        check_number("l2_transfer", self.l2_transfer, 0.0)

    merged_: nn.Module | None = None
    _anchor: list[Tensor] | None = None

    def penalty(self, model: nn.Module, x: Tensor, logits: Tensor) -> Tensor | None:
        if self._anchor is None or self.l2_transfer == 0:
            return None
        pairs = zip(model.parameters(), self._anchor, strict=True)
        return 0.5 * float(self.l2_transfer) * total(((p - a) ** 2).sum() for p, a in pairs)

    def after_experience(
        self, model: nn.Module, experience: Experience, x: Tensor, y: Tensor
    ) -> None:
        weights = [p.detach().clone().double() for p in model.parameters()]
        if self.uses_fisher:
            fisher = [f.double() for f in empirical_fisher(model, self.trainer_, x, y)]
        else:
            fisher = [torch.ones_like(w) for w in weights]
        if getattr(self, "sum_fisher_", None) is None:
            self.sum_fisher_ = [torch.zeros_like(w) for w in weights]
            self.sum_weighted_ = [torch.zeros_like(w) for w in weights]
            self.sum_weights_ = [torch.zeros_like(w) for w in weights]
        self.sum_fisher_ = [s + f for s, f in zip(self.sum_fisher_, fisher, strict=True)]
        self.sum_weighted_ = [
            s + f * w for s, f, w in zip(self.sum_weighted_, fisher, weights, strict=True)
        ]
        self.sum_weights_ = [s + w for s, w in zip(self.sum_weights_, weights, strict=True)]
        self._anchor = [p.detach().clone() for p in model.parameters()]
        merged = copy.deepcopy(model)
        with torch.no_grad():
            for target, value in zip(merged.parameters(), self.merged_weights(), strict=True):
                target.copy_(value.to(target.dtype))
        self.merged_ = merged

    def merged_weights(self) -> list[Tensor]:
        """The merge of the experiences' solutions so far (float64, one tensor per parameter)."""
        count = self.n_experiences_ + 1  # after_experience runs before the count is increased
        out = []
        for s_f, s_fw, s_w in zip(
            self.sum_fisher_, self.sum_weighted_, self.sum_weights_, strict=True
        ):
            mean = s_w / count
            # Where no experience's Fisher is positive the mode is undefined: the mean stands in.
            out.append(torch.where(s_f > 0, s_fw / torch.where(s_f > 0, s_f, 1.0), mean))
        return out

    def logits(self, x: NDArray[Any]) -> Tensor:
        merged = self.merged_
        if merged is None:
            return super().logits(x)
        trained = self.trainer_.model
        self.trainer_.model = merged
        try:
            return super().logits(x)
        finally:
            self.trainer_.model = trained


class IMMMean(_IMM):
    """Mean-IMM: predictions from the average ``sum_k theta_k / t`` of the experiences' weights.

    See :class:`_IMM` for the training; Lee et al. (2017), equation 4, with equal mixing weights.

    Parameters
    ----------
    l2_transfer
        Strength of the pull towards the previous experience's weights while training; default
        0 (weight-transfer alone). Lee et al. combine the merge with weight-transfer,
        L2-transfer and drop-transfer, and tune the L2 strength per benchmark.
    **common
        The keywords of :class:`~perennial.strategies.base.GradientStrategy`.

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = IMMMean(hidden=(16,))
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> strategy.merged_ is not None
    True
    """


class IMMMode(_IMM):
    """Mode-IMM: predictions from the Fisher-weighted merge of the experiences' weights.

    Each parameter is ``sum_k F_k theta_k / sum_k F_k``, with ``F_k`` the diagonal empirical
    Fisher of experience ``k`` at ``theta_k`` (as :class:`~perennial.strategies.EWC` computes
    it): the mode of the product of the experiences' Laplace approximations, Lee et al. (2017),
    equation 7, with equal mixing weights. A parameter no experience's Fisher weighs takes the
    mean.

    Parameters
    ----------
    l2_transfer
        As for :class:`IMMMean`; default 0.
    **common
        The keywords of :class:`~perennial.strategies.base.GradientStrategy`.
    """

    uses_fisher = True
