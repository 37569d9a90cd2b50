"""api: reading Segment tracking requests — auth, gzip, size limits, validation, normalizing.

Everything here happens before the database. A request as a whole is either refused
(`TrackingError`: the status and message Segment would give) or read into a `Parsed`: the
messages turned into `NewEvent`s (and the traits they carry), and the messages refused one
by one, each with the problems that name its fields.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from pydantic import ValidationError

from core.events import (
    MAX_BATCH_BYTES,
    MAX_EVENT_BYTES,
    MAX_JSON_DEPTH,
    MAX_PROBLEMS,
    TRAIT_CHANGED,
    Alias,
    Group,
    Identify,
    Page,
    Screen,
    SegmentMessage,
    Track,
    format_path,
    loads,
    safe_text,
)
from core.routing import INTERNAL_TYPE
from store.events import NewEvent
from store.rejected import Rejection

MAX_BATCH_ITEMS = 2500
"""500 KB holds no more messages than this (an empty-ish one is about 200 bytes)."""
MAX_SHOWN_ID = 512

SINGLE: dict[str, type[SegmentMessage]] = {
    "track": Track,
    "identify": Identify,
    "page": Page,
    "screen": Screen,
    "group": Group,
    "alias": Alias,
}
"""Segment's message types. All are stored; only track is routed to journeys."""


class TrackingError(Exception):
    """A request refused before anything was stored."""

    def __init__(
        self, status_code: int, problems: list[str], headers: Mapping[str, str] | None = None
    ):
        self.status_code = status_code
        self.problems = problems
        self.headers = dict(headers or {})
        super().__init__("; ".join(problems))


def unauthorized(reason: str) -> TrackingError:
    return TrackingError(401, [reason], {"WWW-Authenticate": 'Basic realm="nudge"'})


def too_large(what: str) -> TrackingError:
    return TrackingError(400, [what])


def kb(n: int) -> str:
    return f"{n // 1024} KB"


# -- auth ----------------------------------------------------------------------------------


def basic_username(request: Request) -> str | None:
    """The write key Segment libraries send as the HTTP Basic username; None when absent."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise unauthorized("use HTTP Basic auth with the write key as username")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise unauthorized("the Authorization header is not valid HTTP Basic") from exc
    return decoded.partition(":")[0]


def check_write_key(given: object, expected: str) -> None:
    if not isinstance(given, str) or not given:
        raise unauthorized("missing write key: send it as the HTTP Basic username")
    # surrogatepass: a key sent as a JSON string may hold a lone surrogate; it is wrong, not
    # a reason to fail encoding it.
    if not secrets.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode()):
        raise unauthorized("wrong write key")


# -- body ----------------------------------------------------------------------------------


async def read_body(request: Request, *, limit: int = MAX_BATCH_BYTES) -> bytes:
    """The request body, gunzipped when sent with `Content-Encoding: gzip`.

    Both the bytes on the wire and the decompressed bytes are bounded by `limit`, and the
    body is read chunk by chunk, so neither a huge upload nor a zip bomb is ever held whole.
    """
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip", ""):
        raise TrackingError(
            415, [f"Content-Encoding {encoding!r} is not supported; send gzip or nothing"]
        )
    over = f"request body is over {kb(limit)}; the limit is {kb(limit)} per batch request"
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(over)
    gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding in ("gzip", "x-gzip") else None
    wire = 0
    out = bytearray()
    try:
        async for chunk in request.stream():
            wire += len(chunk)
            if wire > limit:
                raise too_large(over)
            if gunzip is None:
                out += chunk
                continue
            if gunzip.eof:
                continue  # trailing bytes after the gzip member are ignored, as gzip does
            out += gunzip.decompress(chunk, limit + 1 - len(out))
            if len(out) > limit or gunzip.unconsumed_tail:
                raise too_large(over + " (decompressed)")
        if gunzip is not None:
            out += gunzip.flush()
            if len(out) > limit:
                raise too_large(over + " (decompressed)")
            if not gunzip.eof:
                raise TrackingError(400, ["the gzip body is truncated"])
    except zlib.error as exc:
        raise TrackingError(400, [f"the body is not valid gzip: {exc}"]) from exc
    return bytes(out)


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying why not. Nesting is bounded here, for the
    whole body, before anything walks it."""
    try:
        data = loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrackingError(400, [f"the body is not valid JSON: {exc}"]) from exc
    except RecursionError as exc:
        raise TrackingError(400, [f"the body nests deeper than {MAX_JSON_DEPTH} levels"]) from exc
    if not isinstance(data, dict):
        raise TrackingError(400, ["the body must be a JSON object"])
    if _depth(data) > MAX_JSON_DEPTH:
        raise TrackingError(400, [f"the body nests deeper than {MAX_JSON_DEPTH} levels"])
    return data


def _depth(value: Any) -> int:
    """How deeply containers nest, found without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        node, level = todo.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                children = node.values() if isinstance(node, dict) else node
                todo.extend((child, level + 1) for child in children)
    return deepest


# -- validation and normalizing -------------------------------------------------------------


def event_size(message: Any) -> int:
    """A message's size as Segment counts it: its compact JSON serialization, in bytes.

    Counted before validation, so a lone surrogate (refused later, naming its field) is
    counted as the three bytes it would take rather than failing the count."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    return len(text.encode("utf-8", "surrogatepass"))


def validation_problems(err: ValidationError) -> list[str]:
    """One line per problem, `path: message`. A path can hold a key as sent (NUL, a lone
    surrogate): lines are `safe_text`, since they are stored and answered."""
    problems = []
    for e in err.errors():
        where = format_path(tuple(e["loc"]))
        msg = str(e["msg"]).removeprefix("Value error, ")
        problems.append(safe_text(f"{where}: {msg}" if where else msg))
    return problems


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` wins, nested mappings merge: how a batch's context reaches its items."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _merge_shared(shared: Mapping[str, Any], own: Any) -> Any:
    """The batch's shared object under the item's own; a non-object is left for validation
    to name."""
    if own is None:
        return dict(shared)
    return deep_merge(shared, own) if isinstance(own, Mapping) else own


@dataclass(frozen=True)
class Incoming:
    """One accepted message, ready for the outbox, the traits it carries and the ids it
    says are one person."""

    event: NewEvent
    traits: dict[str, Any]
    links: tuple[tuple[str, str], ...] = ()
    """(id, user id): `id`, as events name it, is the person `user id` is (see `links`)."""


def links(message: SegmentMessage) -> tuple[tuple[str, str], ...]:
    """The ids a message says are one person, Segment's way: any message with both a userId
    and an anonymousId links `anon:<anonymousId>` to the userId; an `alias` links its
    previousId to its user. A previousId that is the message's own anonymousId is that
    visitor; any other may be a former userId (server-side libraries) or an anonymousId
    (a browser's, sent on by a server): both readings are linked, since an id that names
    nobody costs one row and matches nothing."""
    found: list[tuple[str, str]] = []
    if message.user_id and message.anonymous_id:
        found.append((f"anon:{message.anonymous_id}", message.user_id))
    if isinstance(message, Alias) and message.previous_id != message.anonymous_id:
        found.append((message.previous_id, message.user_key))
        found.append((f"anon:{message.previous_id}", message.user_key))
    return tuple(found)


def trait_changed_events(
    *,
    message_id: str,
    timestamp: datetime,
    user_id: str,
    changes: Mapping[str, tuple[Any, Any]],
    watched: frozenset[str] | None,
) -> list[NewEvent]:
    """One internal `Trait Changed` event per changed trait that a campaign watches (every
    changed trait when `watched` is None: the routing index is not loaded, and an event
    no campaign wants is only ignored by the relay, while one not written is lost).

    Its messageId derives from the message that changed the trait (`message_id`), so the
    event is written once per change however often ingestion meets it; `user_id` is the
    person's canonical id; its time is the message's (`timestamp`)."""
    found = []
    for trait, (old, new) in changes.items():
        if old == new or (watched is not None and trait not in watched):
            continue
        digest = hashlib.sha256(f"{message_id}\n{trait}".encode()).hexdigest()
        own_id = f"nudge:trait:{digest[:40]}"
        found.append(
            NewEvent(
                message_id=own_id,
                type=INTERNAL_TYPE,
                name=TRAIT_CHANGED,
                user_id=user_id,
                timestamp=timestamp,
                payload={
                    "type": INTERNAL_TYPE,
                    "event": TRAIT_CHANGED,
                    "userId": user_id,
                    "messageId": own_id,
                    "timestamp": timestamp.isoformat(),
                    "properties": {"trait": trait, "old": old, "new": new},
                },
            )
        )
    return found


def normalize(message: SegmentMessage, received_at: datetime) -> Incoming:
    """Fill what Segment fills (messageId, timestamp) and shape the stored payload."""
    message_id = message.message_id or f"nudge-{uuid.uuid4()}"
    timestamp = message.timestamp or received_at
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    payload = message.model_dump(mode="json", by_alias=True, exclude={"write_key"})
    payload.update(
        messageId=message_id,
        timestamp=timestamp.isoformat(),
        receivedAt=received_at.isoformat(),
    )
    context_traits = message.context.get("traits")
    traits = dict(context_traits) if isinstance(context_traits, Mapping) else {}
    name: str | None = None
    if isinstance(message, Track):
        name = message.event
    elif isinstance(message, Page | Screen):
        name = message.name
    elif isinstance(message, Identify):
        traits.update(message.traits)
    event = NewEvent(
        message_id=message_id,
        type=payload["type"],
        name=name,
        user_id=message.user_key,
        timestamp=timestamp,
        payload=payload,
    )
    return Incoming(event=event, traits=traits, links=links(message))


@dataclass(frozen=True)
class Rejected:
    """One message refused on its own: where it was in the request, what was sent, and
    each problem naming its field."""

    position: int | None
    """Its index in a batch; None for a single-message call."""
    item: Any
    problems: list[str]

    @property
    def reason(self) -> str:
        return "; ".join(self.problems)

    @property
    def message_id(self) -> str | None:
        """The messageId as sent, when there is one to show (escaped by `safe_text`)."""
        return _shown_id(self.item.get("messageId")) if isinstance(self.item, dict) else None

    @property
    def user_id(self) -> str | None:
        """Who it was about, as the outbox would have named them (`anon:` for anonymous)."""
        if not isinstance(self.item, dict):
            return None
        user = _shown_id(self.item.get("userId"))
        anonymous = _shown_id(self.item.get("anonymousId"))
        return user or (f"anon:{anonymous}" if anonymous else None)

    def rejection(self, endpoint: str) -> Rejection:
        """What the rejected-events log keeps of it."""
        return Rejection(
            endpoint=endpoint,
            position=self.position,
            message_id=self.message_id,
            user_id=self.user_id,
            reason=self.reason,
            item=self.item,
        )


def _shown_id(value: Any) -> str | None:
    """An id as sent, made safe to store and answer (and short: a refused one may be long)."""
    if isinstance(value, str) and value:
        return safe_text(value)[:MAX_SHOWN_ID]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)[:MAX_SHOWN_ID]
    return None


@dataclass
class Parsed:
    """A readable request: the messages to store, and those refused one by one."""

    accepted: list[Incoming]
    rejected: list[Rejected]


def check_message(
    item: Any,
    received_at: datetime,
    *,
    kind: str | None = None,
    shared: Mapping[str, Mapping[str, Any]] | None = None,
) -> Incoming | list[str]:
    """One message checked — its shape and size as sent, its type, then its fields — and
    normalized; or its problems. `kind` is the route's, or None for a batch item, whose own
    `type` says; `shared` is the batch's context and integrations, under the item's own."""
    if not isinstance(item, dict):
        return ["must be a JSON object"]
    size = event_size(item)
    if size > MAX_EVENT_BYTES:
        return [f"event is {size} bytes; the limit is {kb(MAX_EVENT_BYTES)} per event"]
    kind = kind or item.get("type")
    if not (isinstance(kind, str) and kind in SINGLE):
        return [f"type: must be one of {', '.join(repr(k) for k in SINGLE)}"]
    merged = dict(item)
    for key, value in (shared or {}).items():
        if value:
            merged[key] = _merge_shared(value, item.get(key))
    try:
        message = SINGLE[kind].model_validate(merged)
    except ValidationError as exc:
        return validation_problems(exc)[:MAX_PROBLEMS]
    return normalize(message, received_at)


def parse_single(kind: str, data: dict[str, Any], received_at: datetime) -> Parsed:
    """One message posted to /v1/track, /v1/identify, /v1/page, /v1/screen, /v1/group or
    /v1/alias (or a short path)."""
    checked = check_message(data, received_at, kind=kind)
    if isinstance(checked, Incoming):
        return Parsed(accepted=[checked], rejected=[])
    return Parsed(accepted=[], rejected=[Rejected(position=None, item=data, problems=checked)])


def parse_batch(data: dict[str, Any], received_at: datetime) -> Parsed:
    """A /v1/batch body. Only a `batch` that is not a list of messages refuses the request;
    otherwise each message is judged on its own, so one bad message costs no good one."""
    items = data.get("batch")
    if not isinstance(items, list) or not items:
        raise TrackingError(400, ["batch: must be a non-empty list of messages"])
    if len(items) > MAX_BATCH_ITEMS:
        raise TrackingError(400, [f"batch: {len(items)} messages; the limit is {MAX_BATCH_ITEMS}"])
    shared = {
        key: data[key] for key in ("context", "integrations") if isinstance(data.get(key), Mapping)
    }
    parsed = Parsed(accepted=[], rejected=[])
    for i, item in enumerate(items):
        checked = check_message(item, received_at, shared=shared)
        if isinstance(checked, Incoming):
            parsed.accepted.append(checked)
        else:
            parsed.rejected.append(Rejected(position=i, item=item, problems=checked))
    return parsed
