"""api: reading Segment tracking requests — auth, gzip, size limits, validation, normalizing.

Everything here happens before the database: a request is either turned into `NewEvent`s
(and the traits they carry) or refused with the status and message Segment would give.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from pydantic import TypeAdapter, ValidationError

from core.events import (
    MAX_BATCH_BYTES,
    MAX_EVENT_BYTES,
    Alias,
    BatchItem,
    Group,
    Identify,
    Page,
    Screen,
    SegmentMessage,
    Track,
)
from store.events import NewEvent

MAX_PROBLEMS = 20
"""A batch of 2500 bad items gets the first few problems, not a 2500-line answer."""

BATCH_ITEM = TypeAdapter(BatchItem)
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
    if not secrets.compare_digest(given.encode(), expected.encode()):
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


MAX_JSON_DEPTH = 64
"""Nesting deeper than this is refused: no event needs it, and a recursive parser would."""


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
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
    """A message's size as Segment counts it: its compact JSON serialization, in bytes."""
    return len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())


def format_loc(prefix: str, loc: tuple[Any, ...], type_tag: str | None) -> str:
    out = prefix
    for i, part in enumerate(loc):
        if i == 0 and part == type_tag:
            continue  # pydantic names the union member it used; the sender knows the type
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_problems(prefix: str, err: ValidationError, type_tag: str | None) -> list[str]:
    problems = []
    for e in err.errors():
        where = format_loc(prefix, tuple(e["loc"]), type_tag)
        msg = str(e["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {msg}" if where else msg)
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
    """One accepted message, ready for the outbox, and the traits it carries."""

    event: NewEvent
    traits: dict[str, Any]


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
    return Incoming(event=event, traits=traits)


def parse_single(kind: str, data: dict[str, Any], received_at: datetime) -> Incoming:
    """One message posted to /v1/track, /v1/identify, /v1/page, /v1/screen, /v1/group or
    /v1/alias (or a short path)."""
    size = event_size(data)
    if size > MAX_EVENT_BYTES:
        raise too_large(f"event is {size} bytes; the limit is {kb(MAX_EVENT_BYTES)} per event")
    try:
        message = SINGLE[kind].model_validate(data)
    except ValidationError as exc:
        raise TrackingError(400, validation_problems("", exc, None)[:MAX_PROBLEMS]) from exc
    return normalize(message, received_at)


def parse_batch(data: dict[str, Any], received_at: datetime) -> list[Incoming]:
    """A /v1/batch body: every item checked (size, then fields) before any is accepted."""
    items = data.get("batch")
    if not isinstance(items, list) or not items:
        raise TrackingError(400, ["batch: must be a non-empty list of messages"])
    if len(items) > 2500:
        raise TrackingError(400, [f"batch: {len(items)} messages; the limit is 2500"])
    shared_context = data.get("context") if isinstance(data.get("context"), Mapping) else {}
    shared_integrations = (
        data.get("integrations") if isinstance(data.get("integrations"), Mapping) else {}
    )
    problems: list[str] = []
    accepted: list[Incoming] = []
    for i, item in enumerate(items):
        where = f"batch[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be a JSON object")
            continue
        size = event_size(item)
        if size > MAX_EVENT_BYTES:
            problems.append(
                f"{where}: event is {size} bytes; the limit is {kb(MAX_EVENT_BYTES)} per event"
            )
            continue
        kind = item.get("type")
        if kind not in SINGLE:
            kinds = ", ".join(repr(k) for k in SINGLE)
            problems.append(f"{where}.type: must be one of {kinds}")
            continue
        merged = dict(item)
        if shared_context:
            merged["context"] = _merge_shared(shared_context, item.get("context"))
        if shared_integrations:
            merged["integrations"] = _merge_shared(shared_integrations, item.get("integrations"))
        try:
            message = BATCH_ITEM.validate_python(merged)
        except ValidationError as exc:
            problems.extend(validation_problems(where, exc, kind))
            continue
        if not problems:
            accepted.append(normalize(message, received_at))
    if problems:
        raise TrackingError(400, problems[:MAX_PROBLEMS])
    return accepted
