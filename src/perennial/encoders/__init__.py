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
from perennial.encoders.text_models import TEXT_MODEL_ALIASES, TEXT_MODELS, text_model
from perennial.exceptions import InvalidParameterError

__all__ = [
    "ENCODERS",
    "ENCODER_NAMES",
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
    "recorded_params",
    "resolve_encoder",
]

#: Encoder kinds, as saved models and the service's records name them.
ENCODERS = ("text", "image", "identity")

#: What ``--encoder`` and :func:`make_encoder` accept: the kinds, and a text model by its alias or
#: name, which means the text encoder of that model (``mpnet``: ``text`` with
#: ``model="all-mpnet-base-v2"``).
ENCODER_NAMES = (*ENCODERS, *TEXT_MODEL_ALIASES, *TEXT_MODELS)


def resolve_encoder(
    name: str, params: Mapping[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """The encoder kind and parameters that ``name`` and ``params`` mean.

    A text model's name or alias is the ``text`` kind with that ``model``; a ``model`` parameter
    that names another model is an error.

    Examples
    --------
    >>> resolve_encoder("mpnet", {"pooling": "last"})
    ('text', {'pooling': 'last', 'model': 'all-mpnet-base-v2'})
    >>> resolve_encoder("image", {"image_size": 64})
    ('image', {'image_size': 64})
    """
    params = dict(params or {})
    if name in ENCODERS:
        return name, params
    if name in ENCODER_NAMES:
        model = text_model(name).name
        asked = params.get("model")
        if asked is not None and text_model(asked).name != model:
            raise InvalidParameterError(
                f"encoder {name!r} is the text encoder of {model}; got model={asked!r} as well"
            )
        return "text", {**params, "model": model}
    raise InvalidParameterError(
        f"unknown encoder {name!r}; expected one of {', '.join(ENCODER_NAMES)}"
    )


def make_encoder(name: str, **params: Any) -> Encoder:
    """Build an encoder from its registry name (``text``, ``image``, ``identity``, or a text model).

    Examples
    --------
    >>> make_encoder("identity")
    IdentityEncoder()
    >>> make_encoder("mpnet").model
    'all-mpnet-base-v2'
    """
    name, params = resolve_encoder(name, params)
    if name == "text":
        from perennial.encoders.text import TextEncoder

        return TextEncoder(**params)
    if name == "image":
        from perennial.encoders.image import ImageEncoder

        return ImageEncoder(**params)
    return IdentityEncoder(**params)


#: Parameters added after models were first saved, with the value that gives the features a
#: record written before them meant (not today's default): an image model saved before
#: ``resize`` existed stretched its images; a text model saved before ``model`` existed used
#: all-MiniLM-L6-v2.
_EARLIER_DEFAULTS: dict[str, dict[str, Any]] = {
    "image": {"resize": "stretch"},
    "text": {"model": "all-MiniLM-L6-v2"},
}


def recorded_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """A saved record's encoder parameters, completed with those it predates.

    Examples
    --------
    >>> recorded_params("text", {"pooling": "last"})
    {'model': 'all-MiniLM-L6-v2', 'pooling': 'last'}
    """
    return {**_EARLIER_DEFAULTS.get(kind, {}), **params}


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
    return make_encoder(kind, **recorded_params(kind, params))
