"""Continual-learning strategies: one file per method, one small training loop for all of them.

Every strategy is built from a name and keyword parameters (:func:`make_strategy`), learns a
stream experience by experience (``fit_experience``; ``fit_stream`` for :class:`Joint`) and
answers ``predict``. The gradient methods share :class:`~perennial.strategies.base.GradientStrategy`
(an MLP, minibatch SGD) and differ only in the hooks of :mod:`perennial.strategies.trainer` they
override. This package imports torch; ``import perennial`` does not import it.
"""

from __future__ import annotations

from typing import Any

from perennial.exceptions import InvalidParameterError
from perennial.strategies.agem import AGEM
from perennial.strategies.base import GradientStrategy, Strategy
from perennial.strategies.cumulative import Cumulative
from perennial.strategies.derpp import DERpp
from perennial.strategies.dgr import DGR
from perennial.strategies.er import ER
from perennial.strategies.ewc import EWC
from perennial.strategies.gdumb import GDumb
from perennial.strategies.gem import GEM
from perennial.strategies.icarl import ICaRL
from perennial.strategies.imm import IMMMean, IMMMode
from perennial.strategies.joint import Joint
from perennial.strategies.l2 import L2
from perennial.strategies.lifelong import Lifelong
from perennial.strategies.lwf import LwF
from perennial.strategies.mas import MAS
from perennial.strategies.mbpa import MbPA
from perennial.strategies.mc_sgd import MCSGD
from perennial.strategies.naive import Naive
from perennial.strategies.online_ewc import OnlineEWC
from perennial.strategies.packnet import PackNet
from perennial.strategies.pnn import PNN
from perennial.strategies.si import SI
from perennial.strategies.stable_sgd import StableSGD
from perennial.strategies.vcl import VCL

__all__ = [
    "AGEM",
    "DGR",
    "ER",
    "EWC",
    "GEM",
    "L2",
    "MAS",
    "MCSGD",
    "PNN",
    "SI",
    "STRATEGIES",
    "STRATEGY_NAMES",
    "VCL",
    "Cumulative",
    "DERpp",
    "GDumb",
    "GradientStrategy",
    "ICaRL",
    "IMMMean",
    "IMMMode",
    "Joint",
    "Lifelong",
    "LwF",
    "MbPA",
    "Naive",
    "OnlineEWC",
    "PackNet",
    "StableSGD",
    "Strategy",
    "make_strategy",
]

#: Strategies by the name the runner, the command line and the service use.
STRATEGIES: dict[str, type[Strategy]] = {
    "naive": Naive,
    "joint": Joint,
    "cumulative": Cumulative,
    "l2": L2,
    "ewc": EWC,
    "online-ewc": OnlineEWC,
    "si": SI,
    "mas": MAS,
    "lwf": LwF,
    "er": ER,
    "agem": AGEM,
    "gem": GEM,
    "derpp": DERpp,
    "stable-sgd": StableSGD,
    "mc-sgd": MCSGD,
    "imm-mean": IMMMean,
    "imm-mode": IMMMode,
    "icarl": ICaRL,
    "packnet": PackNet,
    "pnn": PNN,
    "dgr": DGR,
    "vcl": VCL,
    "mbpa": MbPA,
    "gdumb": GDumb,
    "lifelong": Lifelong,
}

STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)


def make_strategy(name: str, **params: Any) -> Strategy:
    """Build a strategy from its registry name and keyword parameters, checked before training.

    Raises :class:`~perennial.exceptions.InvalidParameterError` for an unknown name (listing the
    valid ones), an unknown parameter (listing the accepted ones) or an invalid value.

    Examples
    --------
    >>> make_strategy("ewc", strength=10.0, hidden=(64,))
    EWC(strength=10.0, hidden=(64,), epochs=1, batch_size=10, lr=0.01, momentum=0.0, seed=0, threads=1)
    >>> make_strategy("ewc", lamda=10.0)
    Traceback (most recent call last):
    ...
    perennial.exceptions.InvalidParameterError: strategy 'ewc' has no parameter 'lamda'; its parameters are strength, hidden, epochs, batch_size, lr, momentum, seed, threads
    """
    try:
        cls = STRATEGIES[name]
    except (KeyError, TypeError):
        raise InvalidParameterError(
            f"unknown strategy {name!r}; expected one of {', '.join(STRATEGY_NAMES)}"
        ) from None
    accepted = cls.param_names()
    unknown = [key for key in params if key not in accepted]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise InvalidParameterError(
            f"strategy {name!r} has no parameter{plural} {', '.join(repr(k) for k in unknown)}; "
            f"its parameters are {', '.join(accepted)}"
        )
    strategy = cls(**params)
    strategy.check_params()
    return strategy
