"""Parameter checks, written once: each names the parameter and the value it got.

Every constructor and function that takes a user parameter checks it through these, so every
message reads the same: ``"<name> must be <what>, got <value>"``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import numpy as np

from perennial.exceptions import InvalidParameterError

__all__ = ["check_choice", "check_fraction", "check_int", "check_positive"]

T = TypeVar("T")


def check_choice(name: str, value: T, choices: Iterable[Any]) -> T:
    """``value`` if it is one of ``choices``.

    Examples
    --------
    >>> check_choice("metric", "cosine", ("cosine", "euclidean"))
    'cosine'
    """
    options = list(choices)
    if not isinstance(value, type(options[0])) or value not in options:
        raise InvalidParameterError(
            f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}"
        )
    return value


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """``value`` as an int (bools refused), at least ``minimum`` when given.

    Examples
    --------
    >>> check_int("n_features", 64, minimum=1)
    64
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidParameterError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise InvalidParameterError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_fraction(
    name: str, value: Any, *, low_open: bool = True, high_open: bool = True
) -> float:
    """``value`` as a float in the interval (0, 1), with either end closed on request.

    Examples
    --------
    >>> check_fraction("unknown_rate", 0.02)
    0.02
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise InvalidParameterError(
            f"{name} must be a number in {_interval(low_open, high_open)}, got {value!r}"
        )
    number = float(value)
    low_ok = number > 0.0 if low_open else number >= 0.0
    high_ok = number < 1.0 if high_open else number <= 1.0
    if not (np.isfinite(number) and low_ok and high_ok):
        raise InvalidParameterError(
            f"{name} must be a number in {_interval(low_open, high_open)}, got {value!r}"
        )
    return number


def check_positive(name: str, value: Any) -> float:
    """``value`` as a finite float above 0.

    Examples
    --------
    >>> check_positive("ridge", 0.5)
    0.5
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.floating, np.integer))
        or not np.isfinite(value)
        or value <= 0
    ):
        raise InvalidParameterError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _interval(low_open: bool, high_open: bool) -> str:
    return ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
