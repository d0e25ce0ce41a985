"""Frozen encoders: a batch of inputs in, a float32 array (n, dim) out."""

from __future__ import annotations

from typing import Any

from perennial.encoders.base import (
    Encoder,
    FunctionEncoder,
    IdentityEncoder,
    Precomputed,
    as_encoder,
    encoder_spec,
)
from perennial.encoders.cache import FeatureCache
from perennial.exceptions import InvalidParameterError

__all__ = [
    "ENCODERS",
    "Encoder",
    "FeatureCache",
    "FunctionEncoder",
    "IdentityEncoder",
    "Precomputed",
    "as_encoder",
    "encoder_spec",
    "make_encoder",
]

#: Encoders by the name the command line, the service and saved models use.
ENCODERS = ("text", "image", "identity")


def make_encoder(name: str, **params: Any) -> Encoder:
    """Build an encoder from its registry name (``text``, ``image`` or ``identity``).

    Examples
    --------
    >>> make_encoder("identity")
    IdentityEncoder()
    """
    if name == "text":
        from perennial.encoders.text import TextEncoder

        return TextEncoder(**params)
    if name == "image":
        from perennial.encoders.image import ImageEncoder

        return ImageEncoder(**params)
    if name == "identity":
        return IdentityEncoder(**params)
    raise InvalidParameterError(f"unknown encoder {name!r}; expected one of {', '.join(ENCODERS)}")
