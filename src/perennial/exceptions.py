"""Every error perennial raises on purpose.

Each exception subclasses the built-in it resembles, so ``except ValueError`` keeps working, and
each message names the bad value and what was expected. The CLI turns them into exit code 2 with
the message; the service turns them into a 4xx JSON error with the same message.
"""

from __future__ import annotations

__all__ = [
    "ClusterError",
    "CorruptedJournalError",
    "CorruptedModelError",
    "DatasetError",
    "DatasetNotFoundError",
    "EmptyInputError",
    "EncoderError",
    "FeatureDimensionError",
    "FormatVersionError",
    "ImageTooLargeError",
    "InputTypeError",
    "InvalidInputError",
    "InvalidParameterError",
    "LabelLengthError",
    "LimitExceededError",
    "ModelMismatchError",
    "NonFiniteInputError",
    "NotFittedError",
    "PerennialError",
    "PersistenceError",
    "ReadOnlyHeadError",
    "ServiceUnavailableError",
    "TooManyWaitersError",
    "TrainingDivergedError",
    "UnknownLabelError",
    "UnreadableImageError",
]


class PerennialError(Exception):
    """Base class of every error raised on purpose by perennial."""


class InvalidParameterError(PerennialError, ValueError):
    """A constructor or function parameter has a value outside its allowed set."""


class InputTypeError(PerennialError, TypeError):
    """An input has the wrong type (for example a number where text was expected)."""


class InvalidInputError(PerennialError, ValueError):
    """An input has the right type but a value that cannot be learned or predicted."""


class EmptyInputError(InvalidInputError):
    """An empty batch, or an empty text."""


class NonFiniteInputError(InvalidInputError):
    """Features that contain NaN or infinity."""


class FeatureDimensionError(InvalidInputError):
    """Features whose width differs from what the model was built for."""


class LabelLengthError(InvalidInputError):
    """A batch whose number of labels differs from its number of inputs."""


class UnknownLabelError(PerennialError, KeyError):
    """A label the model does not know (for example ``forget`` of a class never learned)."""

    def __str__(self) -> str:
        # KeyError quotes its argument with repr(); keep the message readable instead.
        return str(self.args[0]) if self.args else ""


class NotFittedError(PerennialError, RuntimeError):
    """Prediction asked of a model that has learned nothing yet."""


class DatasetError(PerennialError, ValueError):
    """A dataset file exists but is malformed; the message names the path and the expected format."""


class DatasetNotFoundError(PerennialError, FileNotFoundError):
    """A dataset file or folder is missing; the message names the path and the expected format."""


class EncoderError(PerennialError, RuntimeError):
    """An encoder could not be built or loaded (missing package, weights that do not fit, ...)."""


class ClusterError(PerennialError, RuntimeError):
    """A Dask cluster could not be reached or started, or lost work it could not redo."""


class PersistenceError(PerennialError, ValueError):
    """A saved model cannot be read."""


class CorruptedModelError(PersistenceError):
    """A saved model whose files are damaged (bad checksum, truncated, unreadable)."""


class FormatVersionError(PersistenceError):
    """A saved model written in a format version this release does not read."""


class ModelMismatchError(PersistenceError):
    """A saved model whose contents disagree with its metadata or with the expected configuration."""


class ReadOnlyHeadError(PerennialError, RuntimeError):
    """Learning, forgetting or saving asked of a prediction-only copy of a head."""


class TrainingDivergedError(PerennialError, FloatingPointError):
    """Gradient training left non-finite weights (a learning rate or penalty strength too large)."""


class CorruptedJournalError(CorruptedModelError):
    """A service journal damaged before its last record, or with a gap in its versions."""


class LimitExceededError(InvalidInputError):
    """A request over a configured limit (body size, batch size, text length); names the limit."""


class UnreadableImageError(InvalidInputError):
    """An image that cannot be read; names the file, or the index of the input in its batch.

    A missing, empty, truncated or damaged file, a folder, data in no image format perennial
    reads, or pixels in a mode it cannot turn into RGB.
    """


class ImageTooLargeError(LimitExceededError):
    """An image with more pixels than allowed (a decompression bomb), refused before decoding."""


class ServiceUnavailableError(PerennialError, RuntimeError):
    """The service cannot answer now (its model failed to update, or a version did not arrive)."""


class TooManyWaitersError(ServiceUnavailableError):
    """Too many requests already wait for a model version (in all, or from one client)."""
