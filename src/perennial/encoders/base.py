"""The encoder protocol and the adapters for plain feature arrays and user callables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from perennial.exceptions import EmptyInputError, EncoderError, InputTypeError
from perennial.heads.base import check_features

__all__ = [
    "Encoder",
    "FunctionEncoder",
    "IdentityEncoder",
    "Precomputed",
    "as_encoder",
    "encoder_spec",
]

Float32Array = NDArray[np.float32]


@runtime_checkable
class Encoder(Protocol):
    """Anything that maps a batch of inputs to a float32 array of shape (n, dim).

    ``name`` identifies the encoder and its weights; caches and saved models record it, so two
    encoders with the same name must give the same features.
    """

    @property
    def name(self) -> str: ...

    def encode(self, inputs: Any) -> Float32Array: ...


class IdentityEncoder:
    """Numeric feature vectors passed through unchanged (validated, as float32).

    Examples
    --------
    >>> IdentityEncoder().encode([[1, 2], [3, 4]]).dtype
    dtype('float32')
    """

    kind = "identity"

    def __init__(self) -> None:
        pass

    def get_params(self) -> dict[str, Any]:
        return {}

    @property
    def name(self) -> str:
        return "identity"

    def encode(self, inputs: Any) -> Float32Array:
        """Validated float32 features; inputs of shape (n, ...) are flattened to (n, -1)."""
        if isinstance(inputs, np.ndarray) and inputs.ndim > 2:
            inputs = inputs.reshape(inputs.shape[0], int(np.prod(inputs.shape[1:])))
        return check_features(inputs).astype(np.float32)

    def __repr__(self) -> str:
        return "IdentityEncoder()"


class FunctionEncoder:
    """Wrap a callable that maps a batch to an array of shape (n, dim).

    Examples
    --------
    >>> enc = FunctionEncoder(lambda batch: [[len(t), t.count(" ")] for t in batch], name="len")
    >>> enc.encode(["a b", "c"]).tolist()
    [[3.0, 1.0], [1.0, 0.0]]
    """

    kind = "function"

    def __init__(self, function: Callable[[Any], Any], name: str | None = None) -> None:
        self.function = function
        self._name: str = name or str(getattr(function, "__qualname__", type(function).__name__))

    @property
    def name(self) -> str:
        return self._name

    def encode(self, inputs: Any) -> Float32Array:
        if isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)) and not inputs:
            raise EmptyInputError("expected at least one input, got an empty batch")
        try:
            output = self.function(inputs)
        except Exception as error:
            raise EncoderError(f"encoder {self.name!r} failed: {error}") from error
        features = check_features(output, name=f"features from encoder {self.name!r}")
        n = len(inputs) if hasattr(inputs, "__len__") else features.shape[0]
        if features.shape[0] != n:
            raise EncoderError(
                f"encoder {self.name!r} returned {features.shape[0]} rows for {n} inputs"
            )
        return features.astype(np.float32)

    def __repr__(self) -> str:
        return f"FunctionEncoder({self.function!r}, name={self._name!r})"


class Precomputed:
    """Stands in for an encoder whose features are already computed.

    A model built on ``Precomputed(encoder)`` takes the features ``encoder`` would give (from a
    cache, a journal, another process) and records the real encoder when saved, so it loads with
    it. ``encode`` only validates the features and checks their width against ``dim`` if given.

    Examples
    --------
    >>> Precomputed(IdentityEncoder()).encode([[1, 2]]).dtype
    dtype('float32')
    """

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.kind = getattr(encoder, "kind", None)

    @property
    def name(self) -> str:
        return self.encoder.name

    def get_params(self) -> dict[str, Any]:
        get_params = getattr(self.encoder, "get_params", None)
        return dict(get_params()) if callable(get_params) else {}

    def encode(self, inputs: Any) -> Float32Array:
        return check_features(inputs, name=f"features from {self.name!r}").astype(np.float32)

    def __repr__(self) -> str:
        return f"Precomputed({self.encoder!r})"


def encoder_spec(encoder: Encoder) -> dict[str, Any]:
    """What rebuilds ``encoder``: its registry kind, its name and its parameters.

    Examples
    --------
    >>> encoder_spec(IdentityEncoder())
    {'kind': 'identity', 'name': 'identity', 'params': {}}
    """
    get_params = getattr(encoder, "get_params", None)
    params = dict(get_params()) if callable(get_params) else {}
    return {"kind": getattr(encoder, "kind", None), "name": encoder.name, "params": params}


def as_encoder(encoder: Any) -> Encoder:
    """An :class:`Encoder` from an encoder, a registry name, a callable, or None (identity)."""
    if encoder is None:
        return IdentityEncoder()
    if isinstance(encoder, str):
        from perennial.encoders import make_encoder

        return make_encoder(encoder)
    if isinstance(encoder, Encoder):
        return encoder
    if callable(encoder):
        return FunctionEncoder(encoder)
    raise InputTypeError(
        f"expected an encoder (an object with .name and .encode), a callable, a name or None, "
        f"got {type(encoder).__name__}"
    )
