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
- **Conversations** are kept in memory only, as the review queue keeps raw inputs, and expire
  with it. After a restart a conversation is gone: the chat page says so, keeps what it showed,
  and starts a new conversation with the next message. Nothing is learned twice: an item of the
  review queue is claimed once (a second answer from another tab gets the 404 the API gives).

Keys: the desk uses the service's roles. The chat needs the ``read`` role (give the chat page a
read key of its own, ``/chat#key=KEY``: whoever holds the page holds that key, and a read key can
predict but never teach); the console signs in with a key and needs ``write`` to teach, answer,
rename and forget. Without a keys file (loopback only) nobody is asked for a key.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at run time.

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from perennial.exceptions import (
    EmptyInputError,
    LimitExceededError,
    PersistenceError,
    UnknownLabelError,
)
from perennial.heads.base import check_label
from perennial.persistence import atomic_write_bytes

__all__ = ["HANDOVER_REPLY", "REPLIES_FILE", "Desk", "add_desk_routes", "default_reply"]

#: The file in the model's directory that holds the replies.
REPLIES_FILE = "desk-replies.json"
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


class Desk:
    """Replies per intent (saved in ``directory``) and the conversations of the chat.

    Parameters
    ----------
    directory
        The model's directory; the replies live in ``directory / REPLIES_FILE``.
    ttl
        Seconds a conversation lives after its last message.
    max_conversations, max_messages
        Bounds: the oldest conversation is dropped for a new one; a conversation keeps its
        last ``max_messages`` messages.
    clock
        Seconds since the epoch (tests pass a fake one).

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
    ) -> None:
        self.directory = Path(directory)
        self.ttl = ttl
        self.max_conversations = max_conversations
        self.max_messages = max_messages
        self.clock = clock
        self._lock = threading.Lock()
        self._conversations: dict[str, _Conversation] = {}
        self._by_review: dict[str, str] = {}
        self._replies = self._read_replies()

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
            return [dict(message)]

    def hand_over(self, conversation: str, review_id: str | None) -> None:
        """Put ``conversation`` in the operator's queue, with the review item of its message."""
        with self._lock:
            talk = self._get(conversation)
            talk.handed_over = True
            if review_id is not None:
                talk.review_ids.append(review_id)
                self._by_review[review_id] = conversation

    def close(self, conversation: str) -> None:
        """Take ``conversation`` out of the operator's queue (the bot answers it again)."""
        with self._lock:
            self._get(conversation).handed_over = False

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
    desk = Desk(store.directory, ttl=review.ttl if review.enabled else 3600.0)
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
            desk.hand_over(conversation, review_id)
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
        item = review.claim(item_id)  # once: a second claim of the same item answers 404
        try:
            prepared, _ = service.prepare([item.input])
            version = store.learn(service.encode(prepared), [label])
        except BaseException:
            review.restore(item)
            raise
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
