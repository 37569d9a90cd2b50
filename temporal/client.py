"""temporal: the one way Nudge connects to Temporal — the data converter, the client, and
which RPC errors mean Temporal is out of reach (wait) rather than a bug (give up)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from datetime import timedelta

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.service import RPCError, RPCStatusCode

from core.config import DEV_PAYLOAD_KEYS, Settings, parse_payload_keys
from temporal.codec import EncryptionCodec, data_converter

log = logging.getLogger("nudge.temporal")


@functools.lru_cache(maxsize=8)
def _converter(payload_keys: str) -> DataConverter:
    return data_converter(parse_payload_keys(payload_keys))


DATA_CONVERTER = _converter(DEV_PAYLOAD_KEYS)
"""The converter under the dev keys: what `nudge dev`, the tests and the bench use unless
their settings name other keys."""

CONNECT_TIMEOUT = 10.0
RECONNECT_MAX_SECONDS = 5.0


def converter_for(settings: Settings) -> DataConverter:
    """The data converter for `settings`' payload keys: one per key set, shared."""
    return _converter(settings.payload_keys)


def codec_for(settings: Settings) -> EncryptionCodec:
    codec = converter_for(settings).payload_codec
    assert isinstance(codec, EncryptionCodec)
    return codec


async def connect(
    address: str, namespace: str = "default", *, converter: DataConverter = DATA_CONVERTER
) -> Client:
    return await Client.connect(address, namespace=namespace, data_converter=converter)


async def connect_with(settings: Settings) -> Client:
    """A client for `settings`: their server, namespace and payload keys."""
    return await connect(
        settings.temporal_address, settings.temporal_namespace, converter=converter_for(settings)
    )


class TemporalUnavailable(Exception):
    """Temporal cannot be reached right now; whatever needed it should be retried later."""


OUTAGE_CODES = frozenset({RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED})
"""RPC codes that mean the server (not this one call) is out of reach."""
TRANSIENT_CODES = OUTAGE_CODES | {
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.ABORTED,
    RPCStatusCode.CANCELLED,
}
"""RPC codes worth retrying for as long as it takes."""


def is_outage(exc: BaseException) -> bool:
    """True when the error says Temporal as a whole is out of reach."""
    if isinstance(exc, RPCError):
        return exc.status in OUTAGE_CODES
    if isinstance(exc, TemporalUnavailable | ConnectionError | TimeoutError):
        return True
    # The SDK reports a failed (re)connect as a RuntimeError with this text.
    return isinstance(exc, RuntimeError) and "connect" in str(exc).lower()


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same call later can succeed: an outage or back-pressure."""
    if isinstance(exc, RPCError):
        return exc.status in TRANSIENT_CODES
    return is_outage(exc)


class TemporalConnection:
    """The API process's one Temporal client.

    The API must start (and accept events) while Temporal is down, so a failed connect at
    start-up is not fatal: `start()` tries once, then keeps trying in the background.
    """

    def __init__(
        self,
        address: str,
        namespace: str = "default",
        *,
        converter: DataConverter = DATA_CONVERTER,
    ):
        self.address = address
        self.namespace = namespace
        self.converter = converter
        self._client: Client | None = None
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def client(self) -> Client | None:
        return self._client

    def require(self) -> Client:
        if self._client is None:
            raise TemporalUnavailable(
                f"not connected to Temporal at {self.address}"
                + (f": {self.last_error}" if self.last_error else "")
            )
        return self._client

    async def start(self) -> None:
        if not await self._try_connect():
            self._task = asyncio.create_task(self._keep_trying(), name="temporal-connect")

    async def healthy(self, timeout: float = 2.0) -> str | None:
        """None when Temporal answers; otherwise what is wrong, for /readyz."""
        if self._client is None:
            return f"not connected to {self.address}: {self.last_error or 'connecting'}"
        try:
            ok = await self._client.service_client.check_health(timeout=timedelta(seconds=timeout))
        except Exception as exc:
            return f"{self.address}: {exc}"
        return None if ok else f"{self.address}: health check failed"

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # temporalio has no Client.close(); dropping the last reference before the
        # process exits is what avoids the exit-time abort (temporalio/sdk-python#300).
        self._client = None

    async def _try_connect(self) -> bool:
        try:
            client = await asyncio.wait_for(
                connect(self.address, self.namespace, converter=self.converter),
                timeout=CONNECT_TIMEOUT,
            )
        except Exception as exc:
            self.last_error = str(exc) or type(exc).__name__
            return False
        self._client = client
        self.last_error = None
        log.info("connected to Temporal at %s", self.address)
        return True

    async def _keep_trying(self) -> None:
        log.warning(
            "Temporal at %s is unreachable (%s); events stay pending until it is back",
            self.address,
            self.last_error,
        )
        delay = 0.2
        while not await self._try_connect():
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)
