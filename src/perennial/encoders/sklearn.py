"""perennial's encoders as scikit-learn transformers, for a ``Pipeline`` or a ``ColumnTransformer``.

Importing this module imports scikit-learn (the ``sklearn`` extra); ``import perennial`` does
not.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from perennial.encoders.base import Encoder, Float32Array
from perennial.encoders.cache import FeatureCache
from perennial.exceptions import InputTypeError, InvalidInputError, InvalidParameterError

__all__ = ["EncoderTransformer"]

# Encoders built from a registry name, shared by every transformer in the process: they are
# frozen, and loading a model's weights once spares a cross-validation one load per fold (each
# fold fits a clone of the transformer).
_SHARED: dict[str, Encoder] = {}
_SHARED_LOCK = threading.Lock()


def _shared_encoder(kind: str, params: dict[str, Any]) -> Encoder:
    from perennial.encoders import make_encoder

    key = repr((kind, sorted(params.items())))
    with _SHARED_LOCK:
        encoder = _SHARED.get(key)
        if encoder is None:
            encoder = _SHARED[key] = make_encoder(kind, **params)
    return encoder


def _one_column(X: Any) -> Any:
    """The batch of inputs in ``X``: a 1-D sequence, or the one column of a 2-D table."""
    columns = getattr(X, "columns", None)
    if columns is not None and hasattr(X, "iloc"):  # a pandas DataFrame
        if len(columns) != 1:
            raise InvalidInputError(
                f"expected one column of inputs, got a DataFrame with {len(columns)} columns "
                f"({list(columns)}); select one column, e.g. in a ColumnTransformer"
            )
        return X.iloc[:, 0].tolist()
    if hasattr(X, "iloc"):  # a pandas Series
        return X.tolist()
    if isinstance(X, np.ndarray) and X.dtype.kind in "OUS" and X.ndim in (1, 2):
        if X.ndim == 2 and X.shape[1] != 1:
            raise InvalidInputError(
                f"expected one column of inputs, got an array of shape {X.shape}"
            )
        return X.ravel().tolist()
    return X


class EncoderTransformer(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """A frozen perennial encoder as a stateless scikit-learn transformer.

    ``transform`` turns one column of inputs (texts for ``"text"``, images or image files for
    ``"image"``) into the encoder's features, so a ``ColumnTransformer`` can send a text column
    of a DataFrame to a perennial classifier beside numeric columns. Nothing is learned: ``fit``
    only checks the parameters.

    Parameters
    ----------
    encoder
        A registry name (``"text"``, ``"image"``, ``"identity"``) or an encoder object (with
        ``.name`` and ``.encode``). Encoders built from a name are shared by every transformer
        of the same name and parameters in the process, so their weights load once.
    encoder_params
        Constructor arguments of the encoder named (for example ``{"backend": "onnx"}``); None
        for its defaults.
    cache
        A folder for a :class:`~perennial.encoders.FeatureCache`: a batch encoded before is
        read back from it. None (default): no cache.

    Examples
    --------
    >>> from perennial.encoders import FunctionEncoder
    >>> lengths = FunctionEncoder(lambda texts: [[len(t)] for t in texts], name="length")
    >>> EncoderTransformer(lengths).fit_transform(np.array([["hello"], ["hi"]]))
    array([[5.],
           [2.]], dtype=float32)
    """

    def __init__(
        self,
        encoder: Any = "text",
        encoder_params: dict[str, Any] | None = None,
        cache: str | os.PathLike[str] | None = None,
    ) -> None:
        self.encoder = encoder
        self.encoder_params = encoder_params
        self.cache = cache

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.one_d_array = True
        tags.input_tags.string = True
        return tags

    def _encoder(self) -> Encoder:
        params = {} if self.encoder_params is None else self.encoder_params
        if not isinstance(params, dict):
            raise InvalidParameterError(
                f"encoder_params must be a dict or None, got {type(params).__name__} ({params!r})"
            )
        if isinstance(self.encoder, str):
            return _shared_encoder(self.encoder, params)
        if params:
            raise InvalidParameterError(
                "encoder_params applies to an encoder given by name; got an encoder object "
                f"({self.encoder!r}) and encoder_params={params!r}"
            )
        if isinstance(self.encoder, Encoder):
            return self.encoder
        raise InvalidParameterError(
            "encoder must be a registry name ('text', 'image', 'identity') or an encoder (with "
            f".name and .encode), got {type(self.encoder).__name__} ({self.encoder!r})"
        )

    def fit(self, X: Any, y: Any = None) -> EncoderTransformer:
        """Check the parameters (the encoder is frozen: nothing to learn); returns self."""
        self._encoder()
        return self

    def transform(self, X: Any) -> Float32Array:
        """The encoder's features of the inputs in ``X``: shape (n, dim), float32.

        ``X`` is a 1-D batch (a list, a pandas Series, an array) or a table of one column (a
        DataFrame, or an array of shape (n, 1)) of texts, image paths, and so on.
        """
        if isinstance(X, (str, bytes)):
            raise InputTypeError(
                f"expected a column of inputs, got one {type(X).__name__}; wrap it in a list"
            )
        encoder = self._encoder()
        inputs = _one_column(X)
        if self.cache is None:
            return encoder.encode(inputs)
        return FeatureCache(os.fspath(self.cache)).encode(encoder, inputs)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """``"<encoder kind><i>"`` for each of the encoder's ``dim`` features."""
        encoder = self._encoder()
        dim = getattr(encoder, "dim", None)
        if not isinstance(dim, int):
            raise InvalidParameterError(
                f"encoder {encoder.name!r} does not state its width (no .dim); its feature "
                "names are unknown until it encodes"
            )
        prefix = getattr(encoder, "kind", None) or "feature"
        return np.asarray([f"{prefix}{i}" for i in range(dim)], dtype=object)
