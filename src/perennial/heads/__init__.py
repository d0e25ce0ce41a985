"""Streaming heads on encoded features: numpy only, additive statistics, exact solutions."""

from perennial.heads.base import Head
from perennial.heads.ensemble import RidgeEnsembleHead
from perennial.heads.ncm import NCMHead
from perennial.heads.ridge import RidgeHead
from perennial.heads.slda import SLDAHead

__all__ = [
    "HEADS",
    "Head",
    "NCMHead",
    "RidgeEnsembleHead",
    "RidgeHead",
    "SLDAHead",
    "make_head",
    "registered_name",
]

#: Heads by the name the command line and the service use.
HEADS: dict[str, type[Head]] = {
    cls.name: cls for cls in (RidgeHead, RidgeEnsembleHead, SLDAHead, NCMHead)
}


def registered_name(head: Head) -> str | None:
    """The registry name of ``head``'s exact type (None for a class the registry does not hold)."""
    return head.name if HEADS.get(head.name) is type(head) else None


def make_head(name: str, **params: object) -> Head:
    """Build a head from its registry name and constructor parameters.

    Examples
    --------
    >>> make_head("ridge", n_features=128, max_pending=64)
    RidgeHead(n_features=128, ridge='auto', seed=0, exact_forget=False, max_pending=64, max_dual_examples='auto', balance_classes=False)
    """
    from perennial.exceptions import InvalidParameterError

    try:
        cls = HEADS[name]
    except KeyError:
        raise InvalidParameterError(
            f"unknown head {name!r}; expected one of {', '.join(sorted(HEADS))}"
        ) from None
    return cls(**params)
