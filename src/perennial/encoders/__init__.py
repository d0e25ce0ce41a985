"""Frozen encoders: a batch of inputs in, a float32 array (n, dim) out."""

from __future__ import annotations

from collections.abc import Mapping
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
from perennial.encoders.image_loading import list_image_files, load_image
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
    "list_image_files",
    "load_image",
    "make_encoder",
    "rebuild_encoder",
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


#: Parameters added after models were first saved, with the value that gives the features a
#: record written before them meant (not today's default): an image model saved before
#: ``resize`` existed stretched its images.
_EARLIER_DEFAULTS: dict[str, dict[str, Any]] = {"image": {"resize": "stretch"}}


def rebuild_encoder(kind: str, params: Mapping[str, Any]) -> Encoder:
    """Build the encoder a saved record describes (its registry ``kind`` and ``params``).

    Unlike :func:`make_encoder`, a parameter the record lacks because it did not exist when the
    record was written takes the value that reproduces that record's features.

    Examples
    --------
    >>> rebuild_encoder("image", {"image_size": 32}).resize
    'stretch'
    >>> make_encoder("image", image_size=32).resize
    'crop'
    """
    return make_encoder(kind, **{**_EARLIER_DEFAULTS.get(kind, {}), **params})
