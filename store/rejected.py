"""store: the rejected-events log — messages refused at ingestion, with why, for an operator.

A sender whose messages are refused may never read the answer (Segment's SDKs drop a 4xx
and log at most a line), so every refused message is kept here, as it was sent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.events import safe_text
from store.models import RejectedEvent, now

MAX_ITEM_CHARS = 16 * 1024
"""The item is cut here: enough to see what was wrong, bounded whatever was sent."""
MAX_REASON_CHARS = 4000
MAX_ID_CHARS = 512
"""The message_id column's size; user_id's is 520, for `anon:` and an id of 512."""


@dataclass(frozen=True)
class Rejection:
    """One refused message: where (endpoint and index in a batch), who, why, and what."""

    endpoint: str
    position: int | None
    message_id: str | None
    user_id: str | None
    reason: str
    item: Any
    """The message as received (any JSON value, NaN and lone surrogates included)."""


def item_text(item: Any) -> str:
    """The item as JSON with every non-ASCII character escaped, so NUL and lone surrogates
    survive on every backend as `\\u0000`, `\\ud800`; cut at MAX_ITEM_CHARS."""
    try:
        text = json.dumps(item, ensure_ascii=True, separators=(",", ":"), default=repr)
    except (ValueError, RecursionError):
        text = ascii(item)
    return text[:MAX_ITEM_CHARS]


def _row(rejection: Rejection, received_at: Any) -> dict[str, Any]:
    def cut(text: str | None, limit: int) -> str | None:
        return None if text is None else safe_text(text)[:limit]

    return {
        "received_at": received_at,
        "endpoint": rejection.endpoint,
        "position": rejection.position,
        "message_id": cut(rejection.message_id, MAX_ID_CHARS),
        "user_id": cut(rejection.user_id, MAX_ID_CHARS + len("anon:")),
        "reason": cut(rejection.reason, MAX_REASON_CHARS),
        "item": item_text(rejection.item),
    }


async def record_rejections(*, session: AsyncSession, rejections: Sequence[Rejection]) -> None:
    """Keep refused messages, in the order given (ids increase with it). Whatever was sent,
    the row can be stored: ids and reasons are escaped with `safe_text` and cut to their
    columns. The caller commits."""
    if not rejections:
        return
    received_at = now()
    await session.execute(
        insert(RejectedEvent), [_row(rejection, received_at) for rejection in rejections]
    )


async def list_rejections(
    *, session: AsyncSession, limit: int = 50, before: int | None = None
) -> list[RejectedEvent]:
    """Refused messages, newest first; `before` (an id from the previous page) pages on."""
    statement = select(RejectedEvent).order_by(RejectedEvent.id.desc()).limit(limit)
    if before is not None:
        statement = statement.where(RejectedEvent.id < before)
    return list((await session.scalars(statement)).all())


async def prune_rejections(*, session: AsyncSession, before: datetime) -> int:
    """Forget refused messages received before `before`; how many. The caller commits."""
    result = await session.execute(delete(RejectedEvent).where(RejectedEvent.received_at < before))
    return int(getattr(result, "rowcount", 0) or 0)
