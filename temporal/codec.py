"""temporal: the payload codec — what Nudge hands Temporal is encrypted before it leaves
the process, so a workflow history holds no email address, phone number or event property
in the clear.

Every payload (workflow input, signal, activity argument and result, query answer, and —
with the failure converter below — failure messages and stack traces) is serialised, then
sealed with AES-GCM under the first configured key. The key's id travels in the payload's
metadata, so a payload sealed under an older key still opens after a rotation as long as
that key is still configured. Payloads that were never encrypted (histories recorded before
the codec, or by a client without it) pass through decoding untouched.

Not encrypted, because Temporal must read them: workflow ids, search attributes, activity
and signal names, timer durations.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from core.config import PayloadKey

ENCODING = b"binary/encrypted"
"""The `encoding` metadata of a sealed payload (the name Temporal's samples use, so
Temporal's tools recognise it as encrypted)."""
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12


class PayloadKeyMissing(Exception):
    """A payload was sealed under a key this process does not have."""


class PayloadTampered(Exception):
    """A payload's ciphertext or key id does not authenticate."""


class EncryptionCodec(PayloadCodec):
    """AES-GCM over whole serialised payloads; the first key seals, every key opens."""

    def __init__(self, keys: Sequence[PayloadKey]):
        if not keys:
            raise ValueError("EncryptionCodec needs at least one key")
        self._sealing = keys[0].id
        self._ciphers = {key.id: AESGCM(key.secret) for key in keys}

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.seal(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.open(p) for p in payloads]

    def seal(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        key_id = self._sealing.encode()
        # The key id is authenticated too: moving a payload under another id fails to open.
        sealed = self._ciphers[self._sealing].encrypt(nonce, payload.SerializeToString(), key_id)
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID: key_id},
            data=nonce + sealed,
        )

    def open(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadKeyMissing(
                f"payload sealed under key {key_id!r}, which is not in NUDGE_PAYLOAD_KEYS "
                f"(have: {', '.join(self._ciphers)})"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            plain = cipher.decrypt(nonce, sealed, key_id.encode())
        except InvalidTag:
            raise PayloadTampered(f"payload under key {key_id!r} does not authenticate") from None
        return Payload.FromString(plain)


def data_converter(keys: Sequence[PayloadKey]) -> DataConverter:
    """Pydantic payloads, sealed with `keys`; failure messages and stack traces too."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
