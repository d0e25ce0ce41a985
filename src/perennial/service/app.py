"""The HTTP API of ``perennial serve``: FastAPI routes over a :class:`ModelStore`.

The routes hold no learning logic: they check requests against the limits, encode inputs (through
a :class:`BatchingEncoder`), and hand features to the store. Every error is answered as JSON
``{"error": message}`` with a 4xx status naming the problem; a bad request changes nothing.
A prediction that asks for a ``min_version`` waits on the event loop, never in a worker thread
(:class:`~perennial.service.waiters.VersionWaiters`).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at run
# time, and the request models are built inside create_app (their item types and documented limits
# depend on the encoder and the configuration), where string annotations could not be resolved.

import asyncio
import base64
import binascii
import contextlib
import hashlib
import inspect
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, create_model
from pydantic.config import JsonDict
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.exceptions import HTTPException

from perennial.exceptions import (
    EmptyInputError,
    EncoderError,
    FeatureDimensionError,
    ImageTooLargeError,
    InputTypeError,
    InvalidInputError,
    LabelLengthError,
    LimitExceededError,
    NotFittedError,
    PerennialError,
    ServiceUnavailableError,
    TooManyWaitersError,
    UnknownLabelError,
    UnreadableImageError,
)
from perennial.heads.base import check_label, check_labels
from perennial.service.auth import KeyRing
from perennial.service.batching import BatchingEncoder
from perennial.service.metrics import Metrics
from perennial.service.review import ReviewQueue
from perennial.service.store import ModelStore
from perennial.service.waiters import VersionWaiters

__all__ = ["Limits", "create_app"]

logger = logging.getLogger("perennial.service")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Limits:
    """What one request may hold; each limit is named in the error that enforces it.

    Parameters
    ----------
    max_body_bytes
        Bytes of request body (413 beyond).
    max_batch
        Inputs per request.
    max_text_chars
        Characters per text.
    max_label_chars
        Characters per label.
    max_image_pixels
        Pixels per decoded image (width times height).
    max_top
        Largest ``top`` a prediction may ask for.
    wait_seconds
        Longest a prediction waits for the ``min_version`` it asks for.
    max_waiters
        Predictions that may wait for a ``min_version`` at once (429 beyond).
    max_waiters_per_client
        Of those, how many may come from one client: one API key, or one remote address when
        there are no keys (429 beyond).
    """

    max_body_bytes: int = 1 << 20
    max_batch: int = 64
    max_text_chars: int = 2000
    max_label_chars: int = 200
    max_image_pixels: int = 4096 * 4096
    max_top: int = 20
    wait_seconds: float = 30.0
    max_waiters: int = 256
    max_waiters_per_client: int = 32


# --- response bodies (documented in the OpenAPI document) -----------------------------------------
class ErrorBody(BaseModel):
    error: str = Field(description="What was wrong, naming the value or the limit")


class TopLabel(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    label: str | None = Field(description="The best known label; null when the input is unknown")
    score: float = Field(description="The head's score of the best known label")
    unknown: bool = Field(description="Whether the input is unlike everything learned (open set)")
    top: list[TopLabel]
    novelty: float | None = Field(
        None,
        description=(
            "Novelty score (higher: less familiar); null until the open-set threshold is "
            "calibrated, or with open set off"
        ),
    )
    review_id: str | None = Field(None, description="Review queue item of an unknown input")
    source: str | None = Field(
        None,
        description=(
            'With a pretrained classifier only: the head that answered, "instant" (the learned '
            'classes, when the open-set gate takes the input for one of them) or "pretrained" '
            "(the pretrained classifier, otherwise: such a model calls nothing unknown)"
        ),
    )


class PredictResponse(BaseModel):
    version: int = Field(description="The model version that made these predictions")
    predictions: list[Prediction]


class LearnResponse(BaseModel):
    version: int = Field(description="The model version this update produced (durable)")
    learned: int


class UnlearnResponse(BaseModel):
    version: int
    unlearned: int


class ForgetResponse(BaseModel):
    version: int
    forgotten: str


class RestoreResponse(BaseModel):
    version: int
    restored: str


class ClassCount(BaseModel):
    label: str
    count: int


class ClassesResponse(BaseModel):
    version: int
    classes: list[ClassCount]


class ReviewEntry(BaseModel):
    id: str
    input: Any = Field(description="The raw input, as it was sent")
    label: str | None = Field(description="The best known label when it was predicted")
    score: float
    novelty: float | None
    top: list[TopLabel]
    version: int = Field(description="The model version that predicted it")
    queued_at: float = Field(description="Seconds since the epoch")
    expires_at: float


class ReviewList(BaseModel):
    items: list[ReviewEntry]


class PredictFields(BaseModel):
    """What a prediction request holds; the app refines the item types and documented limits."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[Any]
    top: int = 3
    min_version: int | None = None


class LearnFields(BaseModel):
    """What a learn or unlearn request holds; refined like :class:`PredictFields`."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[Any]
    labels: list[str]


#: What a label must be (perennial.heads.base.check_labels), as the API documents it.
_LABEL_RULE = (
    "one line of valid Unicode text: no lone surrogates, no control characters such as newline "
    "or tab, not blank; kept, answered and matched in NFC"
)


class ReviewAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: StrictStr = Field(description=f"The label to learn the input with ({_LABEL_RULE})")


class ReviewLearned(BaseModel):
    id: str
    version: int
    learned: int


class ReviewDiscarded(BaseModel):
    id: str
    discarded: bool


class ModelInfo(BaseModel):
    version: int = Field(description="Latest acknowledged (durable) version")
    served_version: int = Field(description="Version predictions use now")
    encoder: dict[str, Any]
    head: dict[str, Any]
    classes: list[str] = Field(description="Labels at the acknowledged version")
    counts: dict[str, int] = Field(description="Examples per class at the acknowledged version")
    examples: int = Field(description="Examples in the served model's statistics")
    state_bytes: int = Field(description="Bytes of learned statistics (served model)")
    open_set: dict[str, Any]
    journal: dict[str, Any]
    review_queue: int
    limits: dict[str, Any]
    pretrained: dict[str, Any] | None = Field(
        None,
        description="The pretrained classifier kept beside the head, if any: its name, the "
        "SHA-256 of its weights and of its class names, its number of classes, and those "
        "forgotten",
    )


class Health(BaseModel):
    status: str = Field(
        description='"ok", or "degraded" while a background task fails (predictions go on)'
    )
    version: int
    served_version: int
    problems: dict[str, str] = Field(
        description="Each background task failing now (snapshot, compaction, ...) and why"
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "Malformed JSON"),
        (401, "No API key, or an unknown one"),
        (403, "The key's role does not allow this"),
        (404, "Unknown class or review item"),
        (409, "The model has learned nothing yet"),
        (413, "Over a limit: body size, batch size, text length, image size"),
        (422, "Invalid request: wrong types, empty inputs, mismatched labels"),
        (429, "Too many predictions waiting for a min_version (Retry-After)"),
        (503, "The model cannot update now"),
    )
}

# Error classes to statuses, most specific first.
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (UnknownLabelError, 404),
    (LimitExceededError, 413),
    (NotFittedError, 409),
    (TooManyWaitersError, 429),
    (ServiceUnavailableError, 503),
    (EncoderError, 503),
    (InvalidInputError, 422),
    (InputTypeError, 422),
)


def _status_of(error: PerennialError) -> int:
    return next((code for cls, code in _STATUS if isinstance(error, cls)), 400)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    # A lone surrogate quoted from a request could not be encoded as UTF-8: escape it.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _location(parts: tuple[Any, ...]) -> str:
    text = ""
    for part in parts:
        if part == "body" and not text:
            continue
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the request body"


def describe_validation(errors: list[Any]) -> tuple[int, str]:
    """Status and message for pydantic's errors about a request body."""
    first = errors[0]
    if first.get("type") == "string_unicode":  # an object key holding a lone surrogate
        shown = repr(first.get("input"))[:60]
        return 422, f"the request body holds a key that is not valid Unicode text ({shown})"
    if tuple(first.get("loc", ())) == ("body",) and isinstance(first.get("input"), (bytes, str)):
        # The body was not parsed as JSON: malformed, or sent without a JSON content type.
        try:
            json.loads(first["input"])
        except ValueError as problem:
            return 400, f"malformed JSON: {problem}"
        return 422, 'the request body must be sent with "Content-Type: application/json"'
    if first.get("type") == "json_invalid":
        position = first["loc"][1] if len(first.get("loc", ())) > 1 else "?"
        reason = (first.get("ctx") or {}).get("error", "JSON decode error")
        return 400, f"malformed JSON: {reason} at character {position}"
    parts = []
    for error in errors[:3]:
        where = _location(tuple(error.get("loc", ())))
        if error.get("type") == "missing" and where == "the request body":
            parts.append('the request has no JSON body; expected an object with "inputs"')
            continue
        text = f"{where}: {error.get('msg', 'invalid')}"
        if error.get("type") != "missing" and "input" in error:
            shown = repr(error["input"])
            text += f" (got {shown[:60]}{'...' if len(shown) > 60 else ''})"
        parts.append(text)
    if len(errors) > 3:
        parts.append(f"and {len(errors) - 3} more problems")
    return 422, "; ".join(parts)


class _LabelConvertor(PathConvertor):
    """A label in the path: the rest of it, line breaks included.

    ``path`` stops at a line break, so a label holding one found no route (404); the route
    now refuses it by name (422), as it does every label that is not valid text.
    """

    regex = "(?s:.*)"


register_url_convertor("label", _LabelConvertor())


# --- ASGI middleware ----------------------------------------------------------------------------------
class _BodyTooLargeError(HTTPException):
    """A body read past the limit.

    An HTTP error, because FastAPI's body parsing lets those through as they are; it answers
    any other error there with 400 "error parsing the body".
    """


class BodyLimitMiddleware:
    """Answer 413 to a body over ``max_bytes``, declared or streamed, before it is parsed.

    A declared ``Content-Length`` over the limit is refused before the app runs; a body sent
    without one (chunked) is counted as it is read, and the read that passes the limit raises
    the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"the request body is over the limit of {self.max_bytes} bytes (max_body_bytes)"

    def _refuse(self) -> JSONResponse:
        return _error(413, self._message())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._refuse()(scope, receive, send)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLargeError(413, self._message())
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLargeError:
            if not started:
                await self._refuse()(scope, receive, send)


class MetricsMiddleware:
    """Count every answered request and its latency, by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(
                scope.get("method", "?"), template, status, time.perf_counter() - started
            )


_BEARER = HTTPBearer(auto_error=False, description="An API key from the keys file")


class RoleCheck:
    """A route's dependency on the role of the request's API key (``role``: the one needed).

    The routes' dependencies say which role each needs (tests enumerate them from the app).
    """

    def __init__(self, keys: KeyRing | None, role: str) -> None:
        self.keys = keys
        self.role = role

    async def __call__(  # async: a plain comparison, no thread needed
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
    ) -> None:
        keys = self.keys
        if keys is None:
            return
        if credentials is None:
            raise HTTPException(
                401,
                "this service needs an API key: send 'Authorization: Bearer KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        role = keys.role_of(credentials.credentials)
        if role is None:
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        if not keys.allows(role, self.role):
            raise HTTPException(403, f"this key has the {role!r} role; this needs {self.role!r}")


# --- the application -------------------------------------------------------------------------------------
class _Service:
    """What the routes share: the store, the encoder, the limits, the queue and the metrics."""

    def __init__(
        self,
        store: ModelStore,
        batching: BatchingEncoder,
        kind: str,
        limits: Limits,
        keys: KeyRing | None,
        review: ReviewQueue,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.batching = batching
        self.encode = batching.encode
        self.kind = kind
        self.limits = limits
        self.keys = keys
        self.review = review
        self.metrics = metrics
        self.waiters = VersionWaiters(store, limits.max_waiters, limits.max_waiters_per_client)

    def client_of(self, request: Request) -> str:
        """Who sent ``request``, for the bounds on waiting: its API key, else its address."""
        if self.keys is not None:
            key = request.headers.get("authorization", "").partition(" ")[2].strip()
            return "key " + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
        return "address " + (request.client.host if request.client is not None else "?")

    def problems(self) -> dict[str, str]:
        """Background tasks failing now, and why (the store's and the encoder's worker's)."""
        problems = self.store.status()["problems"]
        if self.batching.problem is not None:
            problems["encoder"] = self.batching.problem
        return dict(problems)

    def features_of(self, raw: Any) -> Any:
        """The encoded features of one raw input, as a batch of one (a review item's)."""
        prepared, _ = self.prepare([raw])
        return self.encode(prepared)

    # --- checks, cheapest first; nothing is encoded before they pass ---------------------------------
    def prepare(self, inputs: list[Any], names: list[str] | None = None) -> tuple[Any, list[int]]:
        """Inputs as the encoder takes them, and the size of each raw input in bytes.

        ``names``: how errors name each input (default ``inputs[i]``; uploads give their file).
        """
        limits = self.limits
        if len(inputs) == 0:
            raise EmptyInputError(f"inputs is empty; expected 1 to {limits.max_batch} inputs")
        if len(inputs) > limits.max_batch:
            raise LimitExceededError(
                f"a batch of {len(inputs)} inputs is over the limit of {limits.max_batch} inputs "
                "per request (max_batch)"
            )
        if self.kind == "identity":
            return self._prepare_vectors(inputs)
        if self.kind == "image":
            names = names or [f"inputs[{i}]" for i in range(len(inputs))]
            images = [
                self._decode_image(data, name) for data, name in zip(inputs, names, strict=True)
            ]
            return images, [len(data) for data in inputs]
        sizes = []
        for i, text in enumerate(inputs):
            if not text.strip():
                raise EmptyInputError(
                    f"inputs[{i}] is an empty text ({text!r}); expected some words"
                )
            if len(text) > limits.max_text_chars:
                raise LimitExceededError(
                    f"inputs[{i}] has {len(text)} characters, over the limit of "
                    f"{limits.max_text_chars} (max_text_chars)"
                )
            try:
                sizes.append(len(text.encode("utf-8")))
            except UnicodeEncodeError as error:  # JSON's "\ud800" escapes decode to these
                raise InvalidInputError(
                    f"inputs[{i}] is not valid Unicode text: it holds a lone surrogate "
                    f"({text[error.start]!r}) at character {error.start}"
                ) from None
        return list(inputs), sizes

    def _prepare_vectors(self, rows: list[list[float]]) -> tuple[Any, list[int]]:
        width = len(rows[0])
        for i, row in enumerate(rows):
            if len(row) == 0:
                raise EmptyInputError(f"inputs[{i}] is an empty vector; expected numbers")
            if len(row) != width:
                raise InvalidInputError(
                    f"inputs[{i}] has {len(row)} numbers but inputs[0] has {width}; every "
                    "vector must have the same length"
                )
        expected = self.store.dim
        if expected is not None and width != expected:
            raise FeatureDimensionError(f"expected vectors of {expected} numbers, got {width}")
        array = np.asarray(rows, dtype=np.float64)
        too_big = np.abs(array) > np.finfo(np.float32).max
        if too_big.any():
            i, j = np.argwhere(too_big)[0]
            raise InvalidInputError(
                f"inputs[{i}][{j}] = {float(array[i, j])!r} is beyond the float32 range the "
                "model uses"
            )
        return array, [row.nbytes for row in array]

    def _decode_image(self, data: str | bytes, what: str) -> Any:
        """One image of a request as an RGB array, read as the library reads image files.

        ``data`` is base64 text (a JSON body) or the bytes of an uploaded file; either way it
        goes through :func:`~perennial.encoders.image_loading.load_image`: EXIF orientation
        applied, transparency composited on white, 16-bit scaled, and the pixel limit checked
        from the header, before any pixel is decoded.
        """
        from perennial.encoders.image_loading import load_image

        if isinstance(data, str):
            try:
                data = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError) as error:
                raise InvalidInputError(f"{what} is not valid base64: {error}") from error
        if not data:
            raise EmptyInputError(f"{what} is empty; expected an encoded image (PNG, JPEG, ...)")
        limit = self.limits.max_image_pixels
        try:
            return load_image(data, max_pixels=limit)
        except ImageTooLargeError as error:
            raise ImageTooLargeError(
                f"{what}: {error}".replace("(max_pixels)", "(max_image_pixels)")
            ) from None
        except UnreadableImageError as error:
            raise UnreadableImageError(
                f"{what} is not a readable image (PNG, JPEG, ...): {error}"
            ) from None

    def check_labels(self, labels: list[str], n: int) -> list[str]:
        """The labels as the model keeps them (:func:`~perennial.heads.base.check_labels`)."""
        if len(labels) != n:
            raise LabelLengthError(f"got {n} inputs but {len(labels)} labels; they must match")
        checked = [str(label) for label in check_labels(labels, n)]
        for i, label in enumerate(checked):
            self._check_label_length(label, f"labels[{i}]")
        return checked

    def check_label(self, label: str) -> str:
        """One label (the review answer's) as the model keeps it."""
        checked = str(check_label(label))
        self._check_label_length(checked, "label")
        return checked

    def _check_label_length(self, label: str, name: str) -> None:
        if len(label) > self.limits.max_label_chars:
            raise LimitExceededError(
                f"{name} has {len(label)} characters, over the limit of "
                f"{self.limits.max_label_chars} (max_label_chars)"
            )

    def role_needed(self, needed: str) -> RoleCheck:
        return RoleCheck(self.keys, needed)


Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def _body_model(model: type[BaseModel]) -> Callable[[Endpoint], Endpoint]:
    """Show FastAPI the request model of an endpoint's ``body``, built at run time.

    The endpoint is annotated with the static base class (for the type checker); FastAPI reads
    ``__signature__``, which names the refined model (for validation and the OpenAPI document).
    """

    def decorate(function: Endpoint) -> Endpoint:
        signature = inspect.signature(function)
        parameters = [
            p.replace(annotation=model) if p.name == "body" else p
            for p in signature.parameters.values()
        ]
        function.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return function

    return decorate


def _vector_item() -> Any:
    return list[Annotated[float, Field(strict=True, allow_inf_nan=False)]]


def create_app(
    store: ModelStore,
    *,
    keys: KeyRing | None = None,
    limits: Limits | None = None,
    review: ReviewQueue | None = None,
    metrics: Metrics | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """The FastAPI application serving ``store``.

    Parameters
    ----------
    store
        The model; its encoder encodes the inputs (through a :class:`BatchingEncoder`, so that
        concurrent requests share forward passes and predictions).
    keys
        API keys with roles; None: no authentication (the caller binds loopback only).
    limits, review, metrics
        Request limits, the review queue, the metrics registry.
    on_shutdown
        Called when the server shuts down cleanly, after the last request (``serve`` closes the
        store there: uvicorn re-raises SIGTERM once it has stopped, so code after it never runs).
    """
    limits = limits or Limits()
    kind = str(getattr(store.encoder, "kind", "text"))

    def predict_rows(features: Any, top: int) -> tuple[int, list[dict[str, Any]]]:
        served = store.served
        if served.model is None:
            raise NotFittedError(
                "the model has learned nothing yet; teach it with POST /v1/learn first"
            )
        rows = served.model.predict_detailed(features, top=top)
        if served.open_set != "on":
            # Before the threshold exists (too few examples, or open set off) a novelty value
            # has nothing to be compared with, and with one example per class it is huge.
            for row in rows:
                row["novelty"] = None
        return served.version, rows

    batching = BatchingEncoder(
        store.encoder, max_rows=max(limits.max_batch, 16), predict=predict_rows
    )
    # Load the weights now, and in the thread that will encode: torch's OpenMP threads belong
    # to the thread that first ran it; encoding from another one doubled single-text latency.
    if kind == "image":
        batching.encode([np.zeros((32, 32, 3), dtype=np.uint8)])
    elif kind == "text":
        batching.encode(["warming up"])
    service = _Service(
        store,
        batching,
        kind,
        limits,
        keys,
        review if review is not None else ReviewQueue(),
        metrics or Metrics(),
    )

    if kind == "identity":
        item: Any = _vector_item()
        what = "feature vectors (lists of numbers, all of one length)"
    elif kind == "image":
        item = Annotated[StrictStr, Field(json_schema_extra={"minLength": 1})]
        what = "base64-encoded images (PNG, JPEG, or any format Pillow reads)"
    else:
        item = Annotated[
            StrictStr,
            Field(json_schema_extra={"minLength": 1, "maxLength": limits.max_text_chars}),
        ]
        what = f"texts (valid Unicode, at most {limits.max_text_chars} characters each)"
    label_item = Annotated[
        StrictStr, Field(json_schema_extra={"minLength": 1, "maxLength": limits.max_label_chars})
    ]
    batch: JsonDict = {"minItems": 1, "maxItems": limits.max_batch}
    inputs_field = Field(description=f"1 to {limits.max_batch} {what}", json_schema_extra=batch)
    predict_request = create_model(
        "PredictRequest",
        __base__=PredictFields,
        inputs=(list[item], inputs_field),
        top=(StrictInt, Field(3, ge=1, le=limits.max_top, description="Labels to list per input")),
        min_version=(
            StrictInt | None,
            Field(
                None,
                ge=0,
                description="Wait (at most "
                f"{limits.wait_seconds:g} s) until the served model holds this version",
            ),
        ),
    )
    learn_request = create_model(
        "LearnRequest",
        __base__=LearnFields,
        inputs=(list[item], inputs_field),
        labels=(
            list[label_item],
            Field(description=f"One label per input ({_LABEL_RULE})", json_schema_extra=batch),
        ),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.waiters.close()
        batching.close()
        if on_shutdown is not None:
            on_shutdown()

    app = FastAPI(
        lifespan=lifespan,
        title="perennial",
        version="1",
        summary="A classifier that learns while it serves",
        description=(
            "Predict with open-set recognition, learn new labels at once (durably), unlearn, "
            'forget classes, and review unknown inputs. Every error is JSON {"error": ...}.'
        ),
    )
    store_ = service.store
    read = Depends(service.role_needed("read"))
    write = Depends(service.role_needed("write"))

    # --- error handlers -----------------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, error: RequestValidationError) -> JSONResponse:
        status, message = describe_validation(list(error.errors()))
        return _error(status, message)

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, error: HTTPException) -> JSONResponse:
        detail = error.detail if isinstance(error.detail, str) else str(error.detail)
        if error.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}; see /docs"
        elif error.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return _error(error.status_code, detail, getattr(error, "headers", None))

    @app.exception_handler(PerennialError)
    async def on_perennial(request: Request, error: PerennialError) -> JSONResponse:
        status = _status_of(error)
        return _error(status, str(error), {"Retry-After": "1"} if status == 429 else None)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
        return _error(500, f"internal error ({type(error).__name__}); see the server log")

    # --- predictions ------------------------------------------------------------------------------------
    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=_ERRORS,
        dependencies=[read],
        summary="Label a batch of inputs",
    )
    @_body_model(predict_request)
    async def predict(body: PredictFields, request: Request) -> JSONResponse:
        if kind == "image":  # decoding images takes a while: not on the event loop
            prepared, sizes = await run_in_threadpool(service.prepare, body.inputs)
        else:
            prepared, sizes = service.prepare(body.inputs)
        return await answer(request, body.inputs, prepared, sizes, body.top, body.min_version)

    async def answer(
        request: Request,
        raw_inputs: list[Any],
        prepared: Any,
        sizes: list[int],
        top: int,
        min_version: int | None,
    ) -> JSONResponse:
        """Predict ``prepared`` (after waiting for ``min_version``); queue the unknown ones."""
        if min_version is not None:  # on the event loop: a wait holds no thread
            await service.waiters.wait(min_version, limits.wait_seconds, service.client_of(request))
        # Encoded and predicted with whatever other requests are waiting, on the newest version.
        version, rows = await asyncio.wrap_future(batching.submit(prepared, top=top))
        predictions = []
        unknown = 0
        for raw, size, row in zip(raw_inputs, sizes, rows, strict=True):
            prediction = {
                "label": None if row["unknown"] else str(row["label"]),
                "score": row["score"],
                "unknown": row["unknown"],
                "top": [{"label": str(t["label"]), "score": t["score"]} for t in row["top"]],
                "novelty": row["novelty"],
                "review_id": None,
            }
            if "source" in row:  # a model with a pretrained classifier
                prediction["source"] = row["source"]
            if row["unknown"]:
                unknown += 1
                best = row["top"][0]
                prediction["review_id"] = service.review.add(
                    raw,
                    {**prediction, "label": str(best["label"])},
                    version=version,
                    size=size,
                )
            predictions.append(prediction)
        service.metrics.increment("perennial_predicted_inputs_total", len(rows))
        if unknown:
            service.metrics.increment("perennial_unknown_inputs_total", unknown)
        # Built here rather than through the response model: the answer is already exact.
        return JSONResponse({"version": version, "predictions": predictions})

    if kind == "image":
        upload_files = File(
            description=f"1 to {limits.max_batch} image files (PNG, JPEG, or any format "
            f"Pillow reads), at most {limits.max_image_pixels} pixels each, "
            f"{limits.max_body_bytes} bytes in all"
        )

        async def read_uploads(files: list[UploadFile]) -> tuple[list[str], Any, list[int]]:
            """The uploads as base64 (as a JSON body holds them), decoded images, sizes."""
            contents = [await upload.read() for upload in files]
            names = [f"files[{i}] ({upload.filename!r})" for i, upload in enumerate(files)]
            prepared, sizes = await run_in_threadpool(service.prepare, contents, names)
            # The review queue keeps an unknown image as a JSON body would have sent it.
            raw = [base64.b64encode(data).decode("ascii") for data in contents]
            return raw, prepared, sizes

        @app.post(
            "/v1/predict/upload",
            response_model=PredictResponse,
            responses=_ERRORS,
            dependencies=[read],
            summary="Label uploaded image files (multipart/form-data)",
            description="As POST /v1/predict, with the images as files of a form: the field "
            "`files`, once per image, and optionally `top` and `min_version`.",
        )
        async def predict_upload(
            request: Request,
            files: Annotated[list[UploadFile], upload_files],
            top: Annotated[int, Form(ge=1, le=limits.max_top)] = 3,
            min_version: Annotated[int | None, Form(ge=0)] = None,
        ) -> JSONResponse:
            raw, prepared, sizes = await read_uploads(files)
            return await answer(request, raw, prepared, sizes, top, min_version)

        @app.post(
            "/v1/learn/upload",
            response_model=LearnResponse,
            responses=_ERRORS,
            dependencies=[write],
            summary="Learn uploaded image files (multipart/form-data); durable",
            description="As POST /v1/learn, with the images as files of a form: the field "
            "`files` once per image and the field `labels` once per image, in the same order.",
        )
        async def learn_upload(
            files: Annotated[list[UploadFile], upload_files],
            labels: Annotated[list[str], Form(description="One label per file, in order")],
        ) -> dict[str, Any]:
            checked = service.check_labels(labels, len(files))
            _, prepared, _ = await read_uploads(files)

            def learn_prepared() -> int:
                return store_.learn(service.encode(prepared), checked)

            version = await run_in_threadpool(learn_prepared)
            service.metrics.increment("perennial_learned_examples_total", len(checked))
            return {"version": version, "learned": len(checked)}

    # --- updates ------------------------------------------------------------------------------------------
    @app.post(
        "/v1/learn",
        response_model=LearnResponse,
        responses=_ERRORS,
        dependencies=[write],
        summary="Learn labelled inputs; answers once the update is durable",
    )
    @_body_model(learn_request)
    def learn(body: LearnFields) -> dict[str, Any]:
        labels = service.check_labels(body.labels, len(body.inputs))
        prepared, _ = service.prepare(body.inputs)
        version = store_.learn(service.encode(prepared), labels)
        service.metrics.increment("perennial_learned_examples_total", len(labels))
        return {"version": version, "learned": len(labels)}

    @app.post(
        "/v1/unlearn",
        response_model=UnlearnResponse,
        responses=_ERRORS,
        dependencies=[write],
        summary="Remove examples learned before (send them again); durable",
        description=(
            "Examples whose removal would leave a class with statistics no examples have (a "
            "negative variance, say: what examples a class never learned almost always do) "
            "answer 422 naming the class, and nothing is journaled."
        ),
    )
    @_body_model(learn_request)
    def unlearn(body: LearnFields) -> dict[str, Any]:
        labels = service.check_labels(body.labels, len(body.inputs))
        prepared, _ = service.prepare(body.inputs)
        version = store_.unlearn(service.encode(prepared), labels)
        service.metrics.increment("perennial_unlearned_examples_total", len(labels))
        return {"version": version, "unlearned": len(labels)}

    @app.get(
        "/v1/classes",
        response_model=ClassesResponse,
        responses=_ERRORS,
        dependencies=[read],
        summary="The classes and their example counts",
    )
    def classes() -> dict[str, Any]:
        version, counts = store_.classes()
        return {
            "version": version,
            "classes": [{"label": label, "count": count} for label, count in counts],
        }

    @app.delete(
        "/v1/classes/{label:label}",
        response_model=ForgetResponse,
        responses=_ERRORS,
        dependencies=[write],
        summary="Forget a class; durable",
        description="The label is matched in NFC, as classes are kept. With a pretrained "
        "classifier, a class of it is hidden (never answered; its weights stay, and POST "
        "/v1/classes/{label}/restore brings it back), and a learned class of that name, if "
        "any, is forgotten.",
    )
    def forget(label: str) -> dict[str, Any]:
        label = str(check_label(label))  # in NFC, as the model keeps it
        version = store_.forget(label)
        service.metrics.increment("perennial_forgotten_classes_total")
        return {"version": version, "forgotten": label}

    @app.post(
        "/v1/classes/{label:label}/restore",
        response_model=RestoreResponse,
        responses=_ERRORS,
        dependencies=[write],
        summary="Answer again a forgotten class of the pretrained classifier; durable",
        description="Only for a model with a pretrained classifier (409 otherwise); 404 for a "
        "label that is not one of its classes, 400 for one not forgotten. A learned class of "
        "that name forgotten with it stays forgotten.",
    )
    def restore(label: str) -> dict[str, Any]:
        label = str(check_label(label))
        version = store_.restore(label)
        return {"version": version, "restored": label}

    # --- the review queue -------------------------------------------------------------------------------
    @app.get(
        "/v1/review",
        response_model=ReviewList,
        responses=_ERRORS,
        dependencies=[write],
        summary="Inputs predicted unknown, waiting for a label (oldest first)",
        description="A model with a pretrained classifier calls nothing unknown (the "
        "pretrained classifier answers what the learned classes do not), so its queue stays "
        "empty; teach it through POST /v1/learn.",
    )
    def review_list() -> dict[str, Any]:
        items = []
        for item in service.review.items():
            items.append(
                {
                    "id": item.id,
                    "input": item.input.tolist()
                    if isinstance(item.input, np.ndarray)
                    else item.input,
                    "label": item.prediction.get("label"),
                    "score": item.prediction.get("score", math.nan),
                    "novelty": item.prediction.get("novelty"),
                    "top": item.prediction.get("top", []),
                    "version": item.version,
                    "queued_at": item.queued_at,
                    "expires_at": item.expires_at,
                }
            )
        return {"items": items}

    @app.post(
        "/v1/review/{item_id}",
        response_model=ReviewLearned,
        responses=_ERRORS,
        dependencies=[write],
        summary="Label a queued input: the model learns it, and the item is deleted",
    )
    def review_answer(item_id: str, body: ReviewAnswer) -> dict[str, Any]:
        label = service.check_label(body.label)
        version = service.review.label(item_id, label, service.features_of, store_.learn)
        service.metrics.increment("perennial_learned_examples_total")
        return {"id": item_id, "version": version, "learned": 1}

    @app.delete(
        "/v1/review/{item_id}",
        response_model=ReviewDiscarded,
        responses=_ERRORS,
        dependencies=[write],
        summary="Discard a queued input without learning it",
    )
    def review_discard(item_id: str) -> dict[str, Any]:
        service.review.discard(item_id)
        return {"id": item_id, "discarded": True}

    # --- about the model ------------------------------------------------------------------------------
    @app.get(
        "/v1/model",
        response_model=ModelInfo,
        responses=_ERRORS,
        dependencies=[read],
        summary="Versions, classes, counts and state size",
    )
    def model_info() -> dict[str, Any]:
        served = store_.served
        status = store_.status()
        version, counts = store_.classes()
        return {
            "version": version,
            "served_version": served.version,
            "encoder": {"kind": kind, "name": store_.encoder.name},
            "head": store_.head_spec,
            "classes": [label for label, _ in counts],
            "counts": dict(counts),
            "examples": served.n_seen,
            "state_bytes": served.state_bytes,
            "open_set": {
                "state": served.open_set,
                "status": served.open_set_status,
                "unknown_rate": served.unknown_rate,
                "threshold": served.threshold,
            },
            "journal": {
                "records": status["journal_records"],
                "bytes": status["journal_bytes"],
                "snapshot_version": status["snapshot_version"],
            },
            "review_queue": len(service.review),
            "limits": asdict(limits),
            "pretrained": store_.pretrained(),
        }

    @app.get(
        "/healthz",
        response_model=Health,
        responses={503: {"model": ErrorBody, "description": "The model stopped updating"}},
    )
    def healthz() -> Any:
        failure = store_.failure
        if failure is not None:
            return _error(503, f"the model stopped updating: {failure}")
        problems = service.problems()
        return {
            "status": "degraded" if problems else "ok",
            "version": store_.version,
            "served_version": store_.served.version,
            "problems": problems,
        }

    # Uptime probes and load balancers often ask with HEAD: the same status, without the body.
    app.add_api_route(
        "/healthz", healthz, methods=["HEAD"], response_model=Health, include_in_schema=False
    )

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses=_ERRORS,
        dependencies=[read],
        summary="Prometheus text format",
    )
    def metrics_text() -> PlainTextResponse:
        served = store_.served
        status = store_.status()
        gauges = {
            "perennial_model_version": ("Latest acknowledged model version.", status["version"]),
            "perennial_served_version": ("Model version predictions use.", served.version),
            "perennial_classes": ("Classes the model knows.", status["classes"]),
            "perennial_examples": ("Examples in the served model.", served.n_seen),
            "perennial_state_bytes": ("Bytes of learned statistics.", served.state_bytes),
            "perennial_journal_records": (
                "Journal records since the snapshot.",
                status["journal_records"],
            ),
            "perennial_snapshot_version": (
                "Version of the last snapshot.",
                status["snapshot_version"],
            ),
            "perennial_review_queue_items": ("Inputs waiting for review.", len(service.review)),
            "perennial_review_dropped": (
                "Unknown inputs not queued (queue full).",
                service.review.dropped,
            ),
            "perennial_last_solve_seconds": (
                "Time to solve the last published version.",
                served.solve_seconds,
            ),
            "perennial_min_version_waiters": (
                "Predictions waiting for their min_version.",
                len(service.waiters),
            ),
        }
        failures = {**status["background_failures"], "encoder": service.batching.failures}
        problems = service.problems()
        labelled = {
            "perennial_background_failures_total": (
                "counter",
                "Failures of background tasks (snapshot and compaction are retried).",
                "task",
                failures,
            ),
            "perennial_background_failing": (
                "gauge",
                "Whether a background task is failing now (1) or not (0).",
                "task",
                {task: float(task in problems) for task in failures},
            ),
        }
        return PlainTextResponse(
            service.metrics.render(gauges, labelled),
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )

    if kind == "text":  # the support desk: /chat and /console (perennial.service.desk)
        from perennial.service.desk import add_desk_routes

        add_desk_routes(
            app, service, read=service.role_needed("read"), write=service.role_needed("write")
        )

    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    app.state.service = service
    return app
