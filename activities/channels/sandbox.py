"""activities.channels: `sandbox` — keeps the message in the database instead of sending it."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from activities.channels.base import OutgoingMessage, Provider, Receipt
from store.deliveries import store_sandbox_message


class SandboxProvider(Provider):
    """The default for `nudge dev`: nothing leaves the machine; `nudge messages` and
    `GET /v1/messages` show what was kept.

    Storing is idempotent per delivery, so a retried send keeps one message.
    """

    channel = "sandbox"

    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions

    async def send(self, message: OutgoingMessage) -> Receipt:
        async with self._sessions() as session, session.begin():
            message_id = await store_sandbox_message(
                session=session,
                delivery_id=message.delivery_id,
                user_id=message.user_id,
                subject=message.subject,
                body=message.body,
                data=message.data or None,
            )
        return Receipt(provider_message_id=f"sandbox-{message_id}")
