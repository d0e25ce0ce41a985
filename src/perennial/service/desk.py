"""The support desk: a customer's chat page and an operator's console over a text model.

``/chat`` predicts each message of a customer. A known intent is answered with its reply text; an
unknown message is answered "Let me bring in a colleague" and handed over: it goes to the
service's review queue (the same items ``GET /v1/review`` lists) and its conversation to the
operator's queue. ``/console`` shows that queue; the operator answers the customer, and assigns an
existing or a new intent in one action, which teaches the model at once. The customer's next
message is predicted at the latest acknowledged version (it waits for it to be served, as a
``min_version`` does), so a label given in the console reaches it.

What is kept where:

- **Replies** (intent -> text) are saved in the model's directory, ``desk-replies.json``, through a
  synced temporary file and a rename: a crash leaves the old file or the new one, never half of
  one. A reply is dropped when its intent is forgotten through the desk.
- **Handed-over conversations** are kept on disk too, from the moment of their hand-over until
  they expire (with the review queue's time-to-live, after their last message): one file per
  conversation in ``desk-handovers/`` (written as the replies are), holding its messages and its
  review items still waiting, with their raw texts. A restart restores them: the operator's queue
  shows them again, their items are back in the review queue with their ids and expiry times, and
  the customer's page goes on polling the same conversation. Conversations never handed over are
  kept in memory only: after a restart the chat page says the conversation is gone, keeps what it
  showed, and starts a new one with the next message.
- **Nothing is learned twice.** An item of the review queue is claimed once (a second answer from
  another tab gets the 404 the API gives). Before the model learns an item of a hand-over, the
  item's file records the label, the model version before it and a digest of the item's features
  (synced); after the learning the item is removed from the file. An item found so recorded at
  the start was being learned when the service stopped: it counts as learned if the model's
  journal holds that learning (a record after that version with the same features and label),
  and is back in the queue otherwise. Should a snapshot have taken those records out of the
  journal meanwhile, it counts as learned (logged): a label may then be lost, never learned twice.

Keys: the desk uses the service's roles. The chat needs the ``read`` role (give the chat page a
read key of its own, ``/chat#key=KEY``: whoever holds the page holds that key, and a read key can
predict but never teach); the console signs in with a key and needs ``write`` to teach, answer,
rename and forget. Without a keys file (loopback only) nobody is asked for a key.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at run time.

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from perennial.exceptions import (
    EmptyInputError,
    LimitExceededError,
    PersistenceError,
    ServiceUnavailableError,
    UnknownLabelError,
)
from perennial.heads.base import check_label
from perennial.persistence import atomic_write_bytes, fsync_directory
from perennial.service.journal import Record
from perennial.service.review import ReviewItem, ReviewQueue

__all__ = [
    "HANDOVERS_DIR",
    "HANDOVER_REPLY",
    "REPLIES_FILE",
    "Desk",
    "add_desk_routes",
    "default_reply",
]

logger = logging.getLogger("perennial.service")

#: The file in the model's directory that holds the replies.
REPLIES_FILE = "desk-replies.json"
#: The folder in the model's directory that keeps the handed-over conversations, a file each.
HANDOVERS_DIR = "desk-handovers"
_CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: What the customer is told when a message is handed over.
HANDOVER_REPLY = "Let me bring in a colleague."
#: Files the pages load (``/desk/NAME``); nothing else under static/ is served.
STATIC_FILES = {
    "desk.css": "text/css; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}
#: The pages may load their own files only: an HTML fragment that slipped into the page could
#: not run a script (the pages also never write user data as HTML).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


def default_reply(label: str) -> str:
    """The reply of an intent the operator has written none for.

    Examples
    --------
    >>> default_reply("card_arrival")
    'I can help with that: card arrival.'
    """
    return f"I can help with that: {label.replace('_', ' ')}."


@dataclass
class _Conversation:
    id: str
    started_at: float
    touched_at: float
    messages: list[dict[str, Any]] = field(default_factory=list)
    review_ids: list[str] = field(default_factory=list)
    handed_over: bool = False
    #: Kept on disk (from its hand-over on).
    kept: bool = False


def features_digest(features: Any) -> str:
    """SHA-256 of features as the journal holds them (float32, little-endian, row-major)."""
    array = np.ascontiguousarray(np.asarray(features, dtype=np.float32), dtype="<f4")
    return hashlib.sha256(array.tobytes()).hexdigest()


class Desk:
    """Replies per intent and handed-over conversations (saved in ``directory``), and the
    conversations of the chat.

    Parameters
    ----------
    directory
        The model's directory; the replies live in ``directory / REPLIES_FILE``, the
        handed-over conversations in ``directory / HANDOVERS_DIR``.
    ttl
        Seconds a conversation lives after its last message.
    max_conversations, max_messages
        Bounds: the oldest conversation is dropped for a new one; a conversation keeps its
        last ``max_messages`` messages.
    clock
        Seconds since the epoch (tests pass a fake one).
    version
        The model's acknowledged version (recorded before an item of a hand-over is learned).

    Examples
    --------
    >>> import tempfile
    >>> desk = Desk(tempfile.mkdtemp(), clock=lambda: 0.0)
    >>> desk.set_reply("card_arrival", "Cards arrive within 5 days.")
    >>> desk.reply_for("card_arrival"), desk.reply_for("exchange_rate")
    ('Cards arrive within 5 days.', 'I can help with that: exchange rate.')
    >>> talk = desk.start()
    >>> [m["text"] for m in desk.post(talk, "customer", "hi")]
    ['hi']
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        ttl: float = 3600.0,
        max_conversations: int = 1000,
        max_messages: int = 200,
        clock: Callable[[], float] = time.time,
        version: Callable[[], int] = lambda: 0,
    ) -> None:
        self.directory = Path(directory)
        self.ttl = ttl
        self.max_conversations = max_conversations
        self.max_messages = max_messages
        self.clock = clock
        self.version = version
        self._lock = threading.Lock()
        self._conversations: dict[str, _Conversation] = {}
        self._by_review: dict[str, str] = {}
        #: The review items of kept conversations, as their files hold them, by id.
        self._items: dict[str, dict[str, Any]] = {}
        self._replies = self._read_replies()
        self._stored_items = self._read_handovers()

    # --- replies ----------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.directory / REPLIES_FILE

    def _read_replies(self) -> dict[str, str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as error:
            raise PersistenceError(
                f"cannot read the desk's replies {self.path}: {error}"
            ) from error
        try:
            replies = json.loads(text)
        except ValueError as error:
            raise PersistenceError(
                f"the desk's replies {self.path} are not valid JSON: {error}"
            ) from error
        if not isinstance(replies, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in replies.items()
        ):
            raise PersistenceError(
                f"the desk's replies {self.path} must be a JSON object of texts, got "
                f"{type(replies).__name__}"
            )
        return dict(replies)

    def replies(self) -> dict[str, str]:
        """The replies the operator wrote, by intent."""
        with self._lock:
            return dict(self._replies)

    def reply_for(self, label: str) -> str:
        with self._lock:
            return self._replies.get(label) or default_reply(label)

    def set_reply(self, label: str, text: str) -> None:
        """Save ``text`` as the reply of ``label`` (durable when this returns)."""
        with self._lock:
            replies = {**self._replies, label: text}
            self._save(replies)
            self._replies = replies

    def drop_reply(self, label: str) -> None:
        with self._lock:
            if label in self._replies:
                replies = {k: v for k, v in self._replies.items() if k != label}
                self._save(replies)
                self._replies = replies

    def _save(self, replies: dict[str, str]) -> None:
        data = json.dumps(replies, ensure_ascii=False, indent=1, sort_keys=True)
        atomic_write_bytes(self.path, data.encode("utf-8"))

    # --- conversations ----------------------------------------------------------------------------
    def start(self) -> str:
        """Open a new conversation; returns its id."""
        now = self.clock()
        with self._lock:
            self._purge(now)
            while len(self._conversations) >= self.max_conversations:
                self._drop(next(iter(self._conversations)))
            talk = _Conversation(secrets.token_urlsafe(12), now, now)
            self._conversations[talk.id] = talk
            return talk.id

    def _get(self, conversation: str) -> _Conversation:
        self._purge(self.clock())
        talk = self._conversations.get(conversation)
        if talk is None:
            raise UnknownLabelError(
                f"no conversation {conversation!r}: it expired (conversations live "
                f"{self.ttl:g} s after their last message) or the service restarted; "
                "start a new one"
            )
        return talk

    def post(self, conversation: str, sender: str, text: str, **extra: Any) -> list[dict[str, Any]]:
        """Add a message from ``sender`` (customer, bot or operator); returns it in a list."""
        now = self.clock()
        with self._lock:
            talk = self._get(conversation)
            number = talk.messages[-1]["seq"] + 1 if talk.messages else 1
            message = {"seq": number, "from": sender, "text": text, "at": now, **extra}
            talk.messages.append(message)
            del talk.messages[: -self.max_messages]
            talk.touched_at = now
            self._write(talk)
            return [dict(message)]

    def hand_over(self, conversation: str, item: ReviewItem | None) -> None:
        """Put ``conversation`` in the operator's queue, with the review item of its message;
        from now on it is kept on disk."""
        with self._lock:
            talk = self._get(conversation)
            talk.handed_over = True
            talk.kept = True
            if item is not None:
                talk.review_ids.append(item.id)
                self._by_review[item.id] = conversation
                self._items[item.id] = _item_entry(item)
            self._write(talk)

    def close(self, conversation: str) -> None:
        """Take ``conversation`` out of the operator's queue (the bot answers it again)."""
        with self._lock:
            talk = self._get(conversation)
            talk.handed_over = False
            self._write(talk)

    def conversation_of(self, review_id: str) -> str | None:
        with self._lock:
            return self._by_review.get(review_id)

    def messages(self, conversation: str, after: int = 0) -> tuple[bool, list[dict[str, Any]]]:
        """Whether ``conversation`` is handed over, and its messages numbered after ``after``."""
        with self._lock:
            talk = self._get(conversation)
            return talk.handed_over, [dict(m) for m in talk.messages if m["seq"] > after]

    def handed_over(self, waiting: set[str]) -> list[dict[str, Any]]:
        """The conversations in the operator's queue (oldest first), each with its review
        items still ``waiting`` in the review queue."""
        with self._lock:
            self._purge(self.clock())
            return [
                {
                    "id": talk.id,
                    "started_at": talk.started_at,
                    "messages": [dict(m) for m in talk.messages],
                    "pending": [i for i in talk.review_ids if i in waiting],
                }
                for talk in self._conversations.values()
                if talk.handed_over
            ]

    def __len__(self) -> int:
        with self._lock:
            return len(self._conversations)

    def _purge(self, now: float) -> None:
        for talk in [t for t in self._conversations.values() if t.touched_at + self.ttl <= now]:
            self._drop(talk.id)

    def _drop(self, conversation: str) -> None:
        talk = self._conversations.pop(conversation)
        for review_id in talk.review_ids:
            self._by_review.pop(review_id, None)
            self._items.pop(review_id, None)
        if talk.kept:
            with contextlib.suppress(OSError):  # a file left behind expires at the next start
                self._file(talk.id).unlink(missing_ok=True)

    # --- keeping hand-overs on disk ---------------------------------------------------------------
    @property
    def handovers(self) -> Path:
        return self.directory / HANDOVERS_DIR

    def _file(self, conversation: str) -> Path:
        return self.handovers / f"{conversation}.json"

    def _write(self, talk: _Conversation, *, strict: bool = False) -> None:
        """Save a kept conversation (lock held). A failure is logged, or raised as
        :class:`ServiceUnavailableError` when ``strict``."""
        if not talk.kept:
            return
        data = {
            "format": 1,
            "id": talk.id,
            "started_at": talk.started_at,
            "touched_at": talk.touched_at,
            "handed_over": talk.handed_over,
            "messages": talk.messages,
            "review_ids": talk.review_ids,
            "items": [self._items[i] for i in talk.review_ids if i in self._items],
        }
        try:
            if not self.handovers.is_dir():
                self.handovers.mkdir(exist_ok=True)
                fsync_directory(self.directory)
            text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
            atomic_write_bytes(self._file(talk.id), text.encode("utf-8"))
        except OSError as error:
            message = f"could not save the handed-over conversation {talk.id!r}: {error}"
            if strict:
                raise ServiceUnavailableError(message) from error
            logger.warning("desk: %s; it is kept in memory only until the next save", message)

    def _read_handovers(self) -> list[dict[str, Any]]:
        """Load the kept conversations (dropping the expired ones, and the oldest over the
        bound); returns their review items as the files hold them, for :meth:`keep`."""
        if not self.handovers.is_dir():
            return []
        for temporary in self.handovers.glob(".*.tmp"):  # of a write cut short by a crash
            temporary.unlink(missing_ok=True)
        now = self.clock()
        talks: list[tuple[_Conversation, list[dict[str, Any]]]] = []
        for path in self.handovers.glob("*.json"):
            talk, items = self._read_handover(path)
            if talk.touched_at + self.ttl <= now:
                path.unlink(missing_ok=True)
                continue
            talks.append((talk, items))
        talks.sort(key=lambda pair: pair[0].touched_at)
        for talk, _ in talks[: max(0, len(talks) - self.max_conversations)]:
            self._file(talk.id).unlink(missing_ok=True)
        talks = talks[max(0, len(talks) - self.max_conversations) :]
        stored = []
        for talk, items in talks:
            self._conversations[talk.id] = talk
            for review_id in talk.review_ids:
                self._by_review[review_id] = talk.id
            stored += [{**item, "conversation": talk.id} for item in items]
        return stored

    def _read_handover(self, path: Path) -> tuple[_Conversation, list[dict[str, Any]]]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            talk = _Conversation(
                id=str(data["id"]),
                started_at=float(data["started_at"]),
                touched_at=float(data["touched_at"]),
                messages=[dict(m) for m in data["messages"]],
                review_ids=[str(i) for i in data["review_ids"]],
                handed_over=bool(data["handed_over"]),
                kept=True,
            )
            items = [dict(item) for item in data["items"]]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
            raise PersistenceError(
                f"cannot read the handed-over conversation {path}: {error!r}; it was written "
                "through a synced temporary file and a rename, so only damage on the disk can "
                "cause this (move the file away to start without it)"
            ) from error
        if talk.id != path.stem or not _CONVERSATION_ID.fullmatch(talk.id):
            raise PersistenceError(
                f"the handed-over conversation {path} names the conversation {talk.id!r}; "
                f"expected {path.stem!r}"
            )
        return talk, items

    def keep(
        self, review: ReviewQueue, records_after: Callable[[int], list[Record] | None]
    ) -> None:
        """Put the stored review items back in ``review`` and keep its items from now on.

        An item that was being learned when the service stopped is settled by the model's
        journal (``records_after(version)``: the records after a version, or None if some are no
        longer in the journal): learned if it holds that learning, back in the queue if not.
        """
        with self._lock:
            changed = set()
            back = []
            for entry in self._stored_items:
                conversation = entry.pop("conversation")
                if entry.get("state") == "labelling" and _was_learned(entry, records_after):
                    changed.add(conversation)
                    continue
                if entry.get("state") != "waiting":
                    changed.add(conversation)
                back.append((conversation, _waiting(entry)))
            # restore() puts each item first: the newest goes back first, the oldest last.
            for conversation, entry in sorted(back, key=lambda pair: -pair[1]["queued_at"]):
                review.restore(_review_item(entry))
                if review.get(entry["id"]) is not None:
                    self._items[entry["id"]] = entry
                else:  # expired meanwhile
                    changed.add(conversation)
            self._stored_items = []
            for conversation in changed:
                self._write(self._conversations[conversation])
            review.keeper = self
            if back:
                logger.info("desk: %d handed-over review items are back in the queue", len(back))

    # --- the review queue's keeper (perennial.service.review.ReviewKeeper) -------------------------
    def labelling(self, item: ReviewItem, label: str, features: Any) -> None:
        """Record, durably, that ``item`` is about to be learned as ``label``."""
        with self._lock:
            entry = self._items.get(item.id)
            conversation = self._by_review.get(item.id)
            if entry is None or conversation not in self._conversations:
                return  # not an item of a kept conversation
            self._items[item.id] = {
                **_waiting(entry),
                "state": "labelling",
                "label": label,
                "before": self.version(),
                "digest": features_digest(features),
            }
            try:
                self._write(self._conversations[conversation], strict=True)
            except ServiceUnavailableError:
                self._items[item.id] = entry
                raise

    def settled(self, item: ReviewItem) -> None:
        """``item`` was learned or discarded: it leaves its conversation's file."""
        self._update(item, None)

    def restored(self, item: ReviewItem) -> None:
        """A failed learning put ``item`` back: it waits again in its conversation's file."""
        self._update(item, "waiting")

    def _update(self, item: ReviewItem, state: str | None) -> None:
        with self._lock:
            conversation = self._by_review.get(item.id)
            if conversation not in self._conversations:
                return
            if state is None:
                self._items.pop(item.id, None)
            else:
                self._items[item.id] = _item_entry(item)
            # Best effort: should this fail, the file still says "labelling", and the next
            # start asks the journal whether the item was learned.
            self._write(self._conversations[conversation])


def _item_entry(item: ReviewItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "input": item.input,
        "size": item.size,
        "prediction": item.prediction,
        "version": item.version,
        "queued_at": item.queued_at,
        "expires_at": item.expires_at,
        "state": "waiting",
    }


def _waiting(entry: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "input", "size", "prediction", "version", "queued_at", "expires_at")
    return {**{k: entry[k] for k in keys}, "state": "waiting"}


def _review_item(entry: dict[str, Any]) -> ReviewItem:
    return ReviewItem(
        id=str(entry["id"]),
        input=entry["input"],
        size=int(entry["size"]),
        prediction=dict(entry["prediction"]),
        version=int(entry["version"]),
        queued_at=float(entry["queued_at"]),
        expires_at=float(entry["expires_at"]),
    )


def _was_learned(
    entry: dict[str, Any], records_after: Callable[[int], list[Record] | None]
) -> bool:
    """Whether the journal holds the learning of ``entry`` (recorded as being labelled)."""
    records = records_after(int(entry["before"]))
    if records is None:
        logger.warning(
            "desk: review item %r was being learned as %r when the service stopped, and a "
            "snapshot has since taken the journal's records after version %d: it counts as "
            "learned (never learned twice; the label may be lost)",
            entry["id"],
            entry["label"],
            entry["before"],
        )
        return True
    label = unicodedata.normalize("NFC", str(entry["label"]))
    for record in records:
        if (
            record.operation == "learn"
            and record.labels == (label,)
            and record.features is not None
            and features_digest(record.features) == entry["digest"]
        ):
            logger.info(
                "desk: review item %r was learned as %r (version %d) before the restart",
                entry["id"],
                label,
                record.version,
            )
            return True
    return False


# --- the API ---------------------------------------------------------------------------------------
class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conversation: StrictStr | None = Field(None, description="Null to start a conversation")
    text: StrictStr


class DeskText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr


class DeskAssignment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: StrictStr = Field(description="An existing intent or a new one")
    answer: StrictStr | None = Field(
        None,
        description="Sent to the customer; also saved as the intent's reply if it has none",
    )


def _static(name: str) -> bytes:
    return (resources.files("perennial.service") / "static" / name).read_bytes()


def add_desk_routes(app: FastAPI, service: Any, read: Any, write: Any) -> Desk:
    """Serve the desk's pages and routes from ``app`` (the service of a text model).

    ``service`` is the app's shared state (store, batching encoder, review queue, limits,
    metrics, waiters); ``read`` and ``write`` are its role dependencies.
    """
    store = service.store
    review = service.review
    limits = service.limits
    desk = Desk(
        store.directory,
        ttl=review.ttl if review.enabled else 3600.0,
        version=lambda: int(store.version),
    )
    desk.keep(review, store.records_after)
    app.state.desk = desk

    def check_text(text: str, name: str) -> str:
        if not text.strip():
            raise EmptyInputError(f"{name} is empty ({text!r}); expected some words")
        if len(text) > limits.max_text_chars:
            raise LimitExceededError(
                f"{name} has {len(text)} characters, over the limit of "
                f"{limits.max_text_chars} (max_text_chars)"
            )
        return text.strip()

    async def predict(request: Request, text: str, top: int) -> tuple[int, dict[str, Any], int]:
        """Predict one text at the latest acknowledged version: version, row, size in bytes."""
        prepared, sizes = service.prepare([text])
        await service.waiters.wait(store.version, limits.wait_seconds, service.client_of(request))
        version, rows = await asyncio.wrap_future(service.batching.submit(prepared, top=top))
        row = rows[0]
        served = store.served
        return (
            version,
            {
                "label": None if row["unknown"] else str(row["label"]),
                "score": row["score"],
                "unknown": bool(row["unknown"]),
                "top": [{"label": str(t["label"]), "score": t["score"]} for t in row["top"]],
                "novelty": row["novelty"] if served.open_set == "on" else None,
            },
            sizes[0],
        )

    def page(name: str) -> Response:
        return Response(_static(name), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @app.get("/chat", include_in_schema=False)
    def chat_page() -> Response:
        return page("chat.html")

    @app.get("/console", include_in_schema=False)
    def console_page() -> Response:
        return page("console.html")

    @app.get("/desk/{name}", include_in_schema=False)
    def desk_file(name: str) -> Response:
        if name not in STATIC_FILES:
            return JSONResponse({"error": f"no desk file {name!r}"}, status_code=404)
        return Response(_static(name), media_type=STATIC_FILES[name], headers=PAGE_HEADERS)

    # --- the customer's side ----------------------------------------------------------------------
    @app.post("/v1/chat", dependencies=[Depends(read)], summary="A customer's message")
    async def chat(body: ChatMessage, request: Request) -> dict[str, Any]:
        text = check_text(body.text, "text")
        conversation = body.conversation
        if conversation is not None:
            desk.messages(conversation, after=1 << 62)  # 404 before anything is predicted
        version, prediction, size = await predict(request, text, 3)
        if conversation is None:
            conversation = desk.start()
        sent = desk.post(conversation, "customer", text)
        service.metrics.increment("perennial_predicted_inputs_total")
        if prediction["unknown"]:
            service.metrics.increment("perennial_unknown_inputs_total")
            best = prediction["top"][0]["label"] if prediction["top"] else None
            review_id = review.add(text, {**prediction, "label": best}, version=version, size=size)
            desk.hand_over(conversation, review.get(review_id) if review_id else None)
            sent += desk.post(conversation, "bot", HANDOVER_REPLY, handed_over=True)
        else:
            reply = desk.reply_for(prediction["label"])
            sent += desk.post(conversation, "bot", reply, intent=prediction["label"])
        return {
            "conversation": conversation,
            "version": version,
            "prediction": prediction,
            "messages": sent,
        }

    @app.get(
        "/v1/chat/{conversation}",
        dependencies=[Depends(read)],
        summary="A conversation's messages after number `after`",
    )
    def chat_messages(conversation: str, after: int = 0) -> dict[str, Any]:
        handed_over, messages = desk.messages(conversation, after)
        return {"conversation": conversation, "handed_over": handed_over, "messages": messages}

    # --- the operator's side ----------------------------------------------------------------------
    def entry(item: Any) -> dict[str, Any]:
        return {
            "id": item.id,
            "input": item.input if isinstance(item.input, str) else str(item.input),
            "label": item.prediction.get("label"),
            "score": item.prediction.get("score"),
            "novelty": item.prediction.get("novelty"),
            "top": item.prediction.get("top", []),
            "queued_at": item.queued_at,
            "conversation": desk.conversation_of(item.id),
        }

    @app.get(
        "/v1/desk/queue",
        dependencies=[Depends(write)],
        summary="Handed-over conversations and the review items of no conversation",
    )
    def desk_queue() -> dict[str, Any]:
        items = {item.id: entry(item) for item in review.items()}
        conversations = desk.handed_over(set(items))
        for talk in conversations:
            talk["pending"] = [items[i] for i in talk["pending"]]
        return {
            "conversations": conversations,
            "items": [i for i in items.values() if i["conversation"] is None],
        }

    @app.post(
        "/v1/desk/conversations/{conversation}/answer",
        dependencies=[Depends(write)],
        summary="Send the operator's answer to the customer",
    )
    def desk_answer(conversation: str, body: DeskText) -> dict[str, Any]:
        text = check_text(body.text, "text")
        return {"messages": desk.post(conversation, "operator", text)}

    @app.post(
        "/v1/desk/conversations/{conversation}/close",
        dependencies=[Depends(write)],
        summary="Hand the conversation back to the bot",
    )
    def desk_close(conversation: str) -> dict[str, Any]:
        desk.close(conversation)
        return {"conversation": conversation, "handed_over": False}

    @app.post(
        "/v1/desk/review/{item_id}",
        dependencies=[Depends(write)],
        summary="Assign an intent to a review item (teaches the model), optionally answering",
    )
    def desk_assign(item_id: str, body: DeskAssignment) -> dict[str, Any]:
        label = service.check_label(body.label)
        answer = check_text(body.answer, "answer") if body.answer is not None else None
        # Claimed once (a second claim of the same item answers 404); put back on failure.
        version = review.label(item_id, label, service.features_of, store.learn)
        service.metrics.increment("perennial_learned_examples_total")
        conversation = desk.conversation_of(item_id)
        if answer is not None:
            if label not in desk.replies():
                desk.set_reply(label, answer)
            if conversation is not None:
                desk.post(conversation, "operator", answer)
        return {"id": item_id, "version": version, "learned": 1, "label": label}

    @app.post(
        "/v1/desk/try",
        dependencies=[Depends(read)],
        summary="Predict a message without queueing it",
    )
    async def desk_try(body: DeskText, request: Request) -> dict[str, Any]:
        text = check_text(body.text, "text")
        version, prediction, _ = await predict(request, text, 5)
        label = prediction["label"]
        reply = HANDOVER_REPLY if label is None else desk.reply_for(label)
        return {"version": version, "prediction": prediction, "reply": reply}

    @app.get("/v1/desk/intents", dependencies=[Depends(read)], summary="Intents and replies")
    def desk_intents() -> dict[str, Any]:
        version, counts = store.classes()
        replies = desk.replies()
        return {
            "version": version,
            "intents": [
                {
                    "label": label,
                    "count": count,
                    "reply": replies.get(label) or default_reply(label),
                    "custom": label in replies,
                }
                for label, count in counts
            ],
        }

    @app.put(
        "/v1/desk/replies/{label:label}",
        dependencies=[Depends(write)],
        summary="Save an intent's reply (durable)",
    )
    def desk_set_reply(label: str, body: DeskText) -> dict[str, Any]:
        label = str(check_label(label))
        text = check_text(body.text, "text")
        _, counts = store.classes()
        if label not in dict(counts):
            raise UnknownLabelError(f"no intent {label!r}: the model has no such class")
        desk.set_reply(label, text)
        return {"label": label, "reply": text}

    @app.delete(
        "/v1/desk/intents/{label:label}",
        dependencies=[Depends(write)],
        summary="Forget an intent and its reply (durable)",
    )
    def desk_forget(label: str) -> dict[str, Any]:
        label = str(check_label(label))
        version = store.forget(label)
        service.metrics.increment("perennial_forgotten_classes_total")
        desk.drop_reply(label)
        return {"version": version, "forgotten": label}

    @app.get("/v1/desk/stats", dependencies=[Depends(read)], summary="Figures for the chart")
    def desk_stats() -> dict[str, Any]:
        metrics = service.metrics
        return {
            "time": time.time(),
            "version": store.version,
            "served_version": store.served.version,
            "predicted": metrics.counter("perennial_predicted_inputs_total"),
            "unknown": metrics.counter("perennial_unknown_inputs_total"),
            "learned": metrics.counter("perennial_learned_examples_total"),
            "review_queue": len(review),
            "conversations": len(desk),
        }

    return desk
